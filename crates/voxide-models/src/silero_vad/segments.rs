//! Speech segments from window probabilities: `get_speech_timestamps` of the silero-vad
//! Python package, ported line by line from `src/silero_vad/utils_vad.py` of silero-vad
//! 6.2.1 (snakers4/silero-vad 806dcba; the function is unchanged in the 6.2.1 wheel),
//! including its max-duration splitting (`use_max_poss_sil_at_max_speech`) and its
//! arithmetic: durations in samples are floats (`sampling_rate * ms / 1000`), padded
//! boundaries are truncated with `int()`, gaps are halved with `//`.
//!
//! whisper.cpp's port (`whisper_vad_segments_from_probs`) differs: it merges segments less
//! than 200 ms apart and keeps the older max-duration rule, so it is not followed here.

use super::{SAMPLE_RATE, WINDOW};

/// `get_speech_timestamps`' parameters (its defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VadParams {
    /// Probabilities at or above this are speech (0.5).
    pub threshold: f64,
    /// While in speech, probabilities below this are silence; `None`: `threshold − 0.15`,
    /// at least 0.01.
    pub neg_threshold: Option<f64>,
    /// Speech shorter than this is dropped (250 ms).
    pub min_speech_duration_ms: u32,
    /// Longer speech is split (infinity: never); at the longest silence of more than
    /// `min_silence_at_max_speech_ms` inside it if any, else just before this length.
    pub max_speech_duration_s: f64,
    /// Silence shorter than this does not end a segment (100 ms).
    pub min_silence_duration_ms: u32,
    /// Each segment is widened by this on both sides (30 ms), or by half the gap when the
    /// gap to its neighbour is shorter than twice this.
    pub speech_pad_ms: u32,
    /// Silences counted as split points at the maximum duration (98 ms).
    pub min_silence_at_max_speech_ms: u32,
    /// Split at the longest such silence (true) or at the last one (false, the older rule).
    pub use_max_poss_sil_at_max_speech: bool,
}

impl Default for VadParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_duration_ms: 250,
            max_speech_duration_s: f64::INFINITY,
            min_silence_duration_ms: 100,
            speech_pad_ms: 30,
            min_silence_at_max_speech_ms: 98,
            use_max_poss_sil_at_max_speech: true,
        }
    }
}

/// A stretch of speech, in samples at 16 kHz: `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeechSegment {
    pub start: usize,
    pub end: usize,
}

impl SpeechSegment {
    /// Start in seconds.
    pub fn start_s(&self) -> f64 {
        self.start as f64 / SAMPLE_RATE as f64
    }

    /// End in seconds.
    pub fn end_s(&self) -> f64 {
        self.end as f64 / SAMPLE_RATE as f64
    }
}

/// The speech segments of `n_samples` samples of 16 kHz audio whose 512-sample windows have
/// the speech probabilities `probs` (from [`super::SileroVad::probabilities`]).
pub fn speech_segments(probs: &[f32], n_samples: usize, params: &VadParams) -> Vec<SpeechSegment> {
    let sr = SAMPLE_RATE as f64;
    let window = WINDOW as i64;
    let threshold = params.threshold;
    let neg_threshold = params
        .neg_threshold
        .unwrap_or_else(|| (threshold - 0.15).max(0.01));
    let min_speech_samples = sr * params.min_speech_duration_ms as f64 / 1000.0;
    let speech_pad_samples = sr * params.speech_pad_ms as f64 / 1000.0;
    let max_speech_samples =
        sr * params.max_speech_duration_s - window as f64 - 2.0 * speech_pad_samples;
    let min_silence_samples = sr * params.min_silence_duration_ms as f64 / 1000.0;
    let min_silence_samples_at_max_speech =
        sr * params.min_silence_at_max_speech_ms as f64 / 1000.0;
    let use_max_poss = params.use_max_poss_sil_at_max_speech;
    let audio_length_samples = n_samples as i64;

    // (start, end) in samples.
    let mut speeches: Vec<(i64, i64)> = Vec::new();
    // `current_speech`: Python's dict is empty or holds a start; it is non-empty exactly
    // when `triggered` is true, so one Option stands for both.
    let mut current: Option<i64> = None;
    // Potential segment end (tolerating some silence), and the segment limits kept for the
    // maximum duration; 0 means unset, as in Python.
    let (mut temp_end, mut prev_end, mut next_start) = (0i64, 0i64, 0i64);
    // (end, silence duration) of the silences inside the current speech.
    let mut possible_ends: Vec<(i64, i64)> = Vec::new();

    for (i, &prob) in probs.iter().enumerate() {
        let speech_prob = prob as f64;
        let cur_sample = window * i as i64;

        // Speech returns after a temp_end: record the silence if long enough.
        if speech_prob >= threshold && temp_end != 0 {
            let sil_dur = cur_sample - temp_end;
            if sil_dur as f64 > min_silence_samples_at_max_speech {
                possible_ends.push((temp_end, sil_dur));
            }
            temp_end = 0;
            if next_start < prev_end {
                next_start = cur_sample;
            }
        }

        // Start of speech.
        if speech_prob >= threshold && current.is_none() {
            current = Some(cur_sample);
            continue;
        }

        // Maximum length reached: decide where to cut.
        if let Some(start) = current {
            if (cur_sample - start) as f64 > max_speech_samples {
                if use_max_poss && !possible_ends.is_empty() {
                    // The longest silence (Python's max: the first of equals).
                    let (end, dur) =
                        possible_ends
                            .iter()
                            .copied()
                            .fold(
                                possible_ends[0],
                                |best, e| if e.1 > best.1 { e } else { best },
                            );
                    prev_end = end;
                    speeches.push((start, prev_end));
                    next_start = prev_end + dur;
                    // (sic: upstream compares with prev_end + cur_sample.)
                    current = if next_start < prev_end + cur_sample {
                        Some(next_start)
                    } else {
                        None
                    };
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                    possible_ends.clear();
                } else if prev_end != 0 {
                    // Older rule: the last silence long enough.
                    speeches.push((start, prev_end));
                    current = if next_start < prev_end {
                        None
                    } else {
                        Some(next_start)
                    };
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                    possible_ends.clear();
                } else {
                    // No silence: cut here.
                    speeches.push((start, cur_sample));
                    current = None;
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                    possible_ends.clear();
                    continue;
                }
            }
        }

        // Silence while in speech.
        if let Some(start) = current {
            if speech_prob < neg_threshold {
                if temp_end == 0 {
                    temp_end = cur_sample;
                }
                let sil_dur_now = cur_sample - temp_end;
                if !use_max_poss && sil_dur_now as f64 > min_silence_samples_at_max_speech {
                    prev_end = temp_end;
                }
                if (sil_dur_now as f64) < min_silence_samples {
                    continue;
                }
                if (temp_end - start) as f64 > min_speech_samples {
                    speeches.push((start, temp_end));
                }
                current = None;
                (prev_end, next_start, temp_end) = (0, 0, 0);
                possible_ends.clear();
                continue;
            }
        }
    }

    if let Some(start) = current {
        if (audio_length_samples - start) as f64 > min_speech_samples {
            speeches.push((start, audio_length_samples));
        }
    }

    // Padding: `speech_pad` on each side, or half the gap between close neighbours.
    // Python's int() of a float truncates toward zero; these values are never negative.
    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - speech_pad_samples).max(0.0) as i64;
        }
        if i != n - 1 {
            let silence_duration = speeches[i + 1].0 - speeches[i].1;
            if (silence_duration as f64) < 2.0 * speech_pad_samples {
                let half = silence_duration.div_euclid(2);
                speeches[i].1 += half;
                speeches[i + 1].0 = (speeches[i + 1].0 - half).max(0);
            } else {
                speeches[i].1 = (audio_length_samples as f64)
                    .min(speeches[i].1 as f64 + speech_pad_samples)
                    as i64;
                speeches[i + 1].0 = (speeches[i + 1].0 as f64 - speech_pad_samples).max(0.0) as i64;
            }
        } else {
            speeches[i].1 =
                (audio_length_samples as f64).min(speeches[i].1 as f64 + speech_pad_samples) as i64;
        }
    }

    speeches
        .into_iter()
        .map(|(start, end)| SpeechSegment {
            start: start.max(0) as usize,
            end: end.max(0) as usize,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(probs: &[f32], params: &VadParams) -> Vec<(usize, usize)> {
        speech_segments(probs, probs.len() * WINDOW, params)
            .iter()
            .map(|s| (s.start, s.end))
            .collect()
    }

    #[test]
    fn silence_has_no_segments() {
        assert!(segments(&[0.0; 100], &VadParams::default()).is_empty());
        assert!(segments(&[], &VadParams::default()).is_empty());
    }

    #[test]
    fn one_burst_is_padded() {
        // Speech in windows 10..30 (5120..15360), silence after.
        let mut p = vec![0.0f32; 60];
        p[10..30].fill(0.9);
        assert_eq!(
            segments(&p, &VadParams::default()),
            [(5120 - 480, 15360 + 480)]
        );
    }

    #[test]
    fn short_speech_is_dropped_and_short_silence_kept() {
        let mut p = vec![0.0f32; 100];
        p[10..14].fill(0.9); // 2048 samples < 250 ms: dropped
        p[40..60].fill(0.9);
        p[61] = 0.9; // a 1-window dip (512 < 1600 samples) does not split
        p[62..80].fill(0.9);
        p[60] = 0.1;
        assert_eq!(
            segments(&p, &VadParams::default()),
            [(40 * 512 - 480, 80 * 512 + 480)]
        );
    }

    #[test]
    fn hysteresis_between_thresholds() {
        // 0.4 is between neg_threshold (0.35) and threshold: it continues speech but never
        // starts it.
        let mut p = vec![0.4f32; 60];
        p[..10].fill(0.0);
        p[10] = 0.9;
        p[50..].fill(0.0);
        assert_eq!(
            segments(&p, &VadParams::default()),
            [(10 * 512 - 480, 50 * 512 + 480)]
        );
        assert!(segments(&[0.4; 60], &VadParams::default()).is_empty());
    }

    #[test]
    fn close_segments_split_the_gap() {
        let params = VadParams {
            speech_pad_ms: 100, // 1600 samples > half of the 2560-sample gap
            ..VadParams::default()
        };
        let mut p = vec![0.0f32; 100];
        p[10..30].fill(0.9);
        p[35..60].fill(0.9);
        assert_eq!(
            segments(&p, &params),
            [
                (10 * 512 - 1600, 30 * 512 + 1280),
                (35 * 512 - 1280, 60 * 512 + 1600)
            ]
        );
    }

    #[test]
    fn speech_to_the_end_ends_at_the_last_sample() {
        let mut p = vec![0.0f32; 40];
        p[20..].fill(0.9);
        assert_eq!(
            speech_segments(&p, 40 * 512 - 100, &VadParams::default())
                .iter()
                .map(|s| (s.start, s.end))
                .collect::<Vec<_>>(),
            [(20 * 512 - 480, 40 * 512 - 100)]
        );
    }
}
