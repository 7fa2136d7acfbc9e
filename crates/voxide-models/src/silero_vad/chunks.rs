//! Transcribing only the speech: the segments' audio joined into one clip, and times in that
//! clip mapped back to the original, as faster-whisper's `vad_filter` does (`collect_chunks`,
//! `SpeechTimestampsMap`, `restore_speech_timestamps` in its `vad.py` / `transcribe.py`).

use super::segments::{SpeechSegment, VadParams};
use super::SAMPLE_RATE;

impl VadParams {
    /// faster-whisper's `VadOptions` defaults: no minimum speech length, silences under 2 s
    /// kept, 400 ms of padding (wide, so that words are not clipped).
    pub fn faster_whisper() -> Self {
        Self {
            min_speech_duration_ms: 0,
            min_silence_duration_ms: 2000,
            speech_pad_ms: 400,
            ..Self::default()
        }
    }
}

impl VadParams {
    /// faster-whisper's batched pipeline's options (its `BatchedInferencePipeline.transcribe`):
    /// [`Self::faster_whisper`] with speech split at 30 s and silences of 160 ms ending it,
    /// split by its port's rule (at the last silence, not the longest).
    pub fn faster_whisper_batched() -> Self {
        Self {
            max_speech_duration_s: 30.0,
            min_silence_duration_ms: 160,
            use_max_poss_sil_at_max_speech: false,
            ..Self::faster_whisper()
        }
    }
}

/// The speech segments of a clip, joined: [`Self::collect`] builds the joined audio and
/// [`Self::original_time`] maps a time in it back to the clip.
#[derive(Clone, Debug, Default)]
pub struct SpeechChunks {
    segments: Vec<SpeechSegment>,
    /// Per segment: its end in the joined audio, in samples.
    joined_end: Vec<usize>,
    /// Per segment: the silence removed before it, in seconds.
    silence_before_s: Vec<f64>,
}

impl SpeechChunks {
    /// `segments` in order, without overlaps (as [`super::speech_segments`] returns them).
    pub fn new(segments: &[SpeechSegment]) -> Self {
        let (mut previous_end, mut silence) = (0, 0);
        let mut joined_end = Vec::with_capacity(segments.len());
        let mut silence_before_s = Vec::with_capacity(segments.len());
        for s in segments {
            silence += s.start.saturating_sub(previous_end);
            previous_end = s.end;
            joined_end.push(s.end - silence);
            silence_before_s.push(silence as f64 / SAMPLE_RATE as f64);
        }
        Self {
            segments: segments.to_vec(),
            joined_end,
            silence_before_s,
        }
    }

    /// The speech of `samples` (16 kHz), joined.
    pub fn collect(&self, samples: &[f32]) -> Vec<f32> {
        self.segments
            .iter()
            .flat_map(|s| &samples[s.start.min(samples.len())..s.end.min(samples.len())])
            .copied()
            .collect()
    }

    /// The joined audio cut at segment boundaries into chunks of at most `max_len` samples,
    /// as ranges of it (faster-whisper's `collect_chunks` with `max_duration`): each segment
    /// joins the chunk before it while their lengths add up to at most `max_len`; a segment
    /// longer than that is a chunk alone (where faster-whisper also emits an empty chunk
    /// before a first segment that long).
    pub fn chunks(&self, max_len: usize) -> Vec<std::ops::Range<usize>> {
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for &end in &self.joined_end {
            match chunks.last_mut() {
                Some(last) if end - last.start <= max_len => last.end = end,
                _ => chunks.push(start..end),
            }
            start = end;
        }
        chunks
    }

    /// Seconds of speech kept.
    pub fn duration_s(&self) -> f64 {
        self.joined_end.last().copied().unwrap_or(0) as f64 / SAMPLE_RATE as f64
    }

    /// The time in the clip of `time` (seconds) in the joined audio, rounded to 10 ms as
    /// faster-whisper rounds it. A segment's end (`is_end`) that falls exactly on a join
    /// belongs to the chunk before it, not the one after.
    pub fn original_time(&self, time: f64, is_end: bool) -> f64 {
        if self.joined_end.is_empty() {
            return time;
        }
        let sample = (time * SAMPLE_RATE as f64) as usize;
        let chunk = match self.joined_end.iter().position(|&e| e == sample) {
            Some(i) if is_end => i,
            // bisect_right: the first chunk ending after `sample`.
            _ => self
                .joined_end
                .partition_point(|&e| e <= sample)
                .min(self.joined_end.len() - 1),
        };
        ((self.silence_before_s[chunk] + time) * 100.0).round() / 100.0
    }
}

/// `segments` merged into stretches of at most `max_len` samples for models that transcribe
/// each stretch on its own: a segment joins the stretch before it (with the silence between
/// them) while the stretch, from its first start to that segment's end, stays within
/// `max_len`; a segment longer than `max_len` is a stretch alone. WhisperX's `merge_chunks`
/// (as faster-whisper's batched pipeline), which cuts the audio into 30 s stretches for
/// models that give no times of their own.
pub fn merge_into_stretches(segments: &[SpeechSegment], max_len: usize) -> Vec<SpeechSegment> {
    let mut stretches: Vec<SpeechSegment> = Vec::new();
    for s in segments {
        match stretches.last_mut() {
            Some(last) if s.end.saturating_sub(last.start) <= max_len => last.end = s.end,
            _ => stretches.push(*s),
        }
    }
    stretches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_s: f64, end_s: f64) -> SpeechSegment {
        let at = |s: f64| (s * SAMPLE_RATE as f64) as usize;
        SpeechSegment {
            start: at(start_s),
            end: at(end_s),
        }
    }

    /// faster-whisper's `collect_chunks`: segments packed while their lengths fit, a new
    /// chunk where the next would overflow, an overlong segment alone.
    #[test]
    fn joined_speech_cut_into_chunks() {
        // Joined lengths 10, 15, 6, 40, 3 s.
        let segments = [
            seg(0.0, 10.0),
            seg(12.0, 27.0),
            seg(27.0, 33.0),
            seg(40.0, 80.0),
            seg(81.0, 84.0),
        ];
        let at = |s: f64| (s * SAMPLE_RATE as f64) as usize;
        let chunks = SpeechChunks::new(&segments).chunks(at(30.0));
        assert_eq!(
            chunks,
            vec![
                at(0.0)..at(25.0),
                at(25.0)..at(31.0),
                at(31.0)..at(71.0),
                at(71.0)..at(74.0)
            ]
        );
        // Exactly full: 10 + 20 s is one chunk of 30 s.
        let full = SpeechChunks::new(&[seg(0.0, 10.0), seg(11.0, 31.0)]).chunks(at(30.0));
        assert_eq!(full, vec![at(0.0)..at(30.0)]);
        assert!(SpeechChunks::new(&[]).chunks(at(30.0)).is_empty());
    }

    /// Speech at 1–3 s and 5–6 s of a 7 s clip: 2 s of joined audio, then 1 s.
    #[test]
    fn joins_speech_and_maps_times_back() {
        let segments = [seg(1.0, 3.0), seg(5.0, 6.0)];
        let chunks = SpeechChunks::new(&segments);
        let samples: Vec<f32> = (0..7 * SAMPLE_RATE as usize).map(|i| i as f32).collect();
        let joined = chunks.collect(&samples);
        assert_eq!(joined.len(), 3 * SAMPLE_RATE as usize);
        assert_eq!(joined[0], SAMPLE_RATE as f32);
        assert_eq!(joined[2 * SAMPLE_RATE as usize], 5.0 * SAMPLE_RATE as f32);
        assert_eq!(chunks.duration_s(), 3.0);
        assert_eq!(chunks.original_time(0.0, false), 1.0);
        assert_eq!(chunks.original_time(1.5, false), 2.5);
        // On the join: a start belongs to the second chunk, an end to the first.
        assert_eq!(chunks.original_time(2.0, false), 5.0);
        assert_eq!(chunks.original_time(2.0, true), 3.0);
        assert_eq!(chunks.original_time(2.5, true), 5.5);
        // Past the end: the last chunk's offset.
        assert_eq!(chunks.original_time(3.2, true), 6.2);
    }

    /// Stretches of at most 30 s: segments join while the stretch stays within it, one
    /// longer than it stands alone, nothing is dropped or reordered.
    #[test]
    fn segments_merge_into_stretches_of_at_most_the_limit() {
        let at = |s: f64| (s * SAMPLE_RATE as f64) as usize;
        let stretches = merge_into_stretches(
            &[
                seg(1.0, 3.0),
                seg(5.0, 20.0),
                seg(22.0, 31.0),
                seg(31.5, 40.0),
                seg(45.0, 90.0),
                seg(91.0, 92.0),
            ],
            at(30.0),
        );
        let got: Vec<(f64, f64)> = stretches.iter().map(|s| (s.start_s(), s.end_s())).collect();
        assert_eq!(got, [(1.0, 31.0), (31.5, 40.0), (45.0, 90.0), (91.0, 92.0)]);
        assert!(merge_into_stretches(&[], at(30.0)).is_empty());
        // Exactly the limit still joins.
        let exact = merge_into_stretches(&[seg(0.0, 10.0), seg(20.0, 30.0)], at(30.0));
        assert_eq!(exact.len(), 1);
    }

    #[test]
    fn no_speech_keeps_nothing() {
        let chunks = SpeechChunks::new(&[]);
        assert!(chunks.collect(&[0.5; 100]).is_empty());
        assert_eq!(chunks.duration_s(), 0.0);
    }
}
