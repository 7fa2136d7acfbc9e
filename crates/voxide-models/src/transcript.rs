//! A transcription result common to every speech-to-text family; the front ends format it.

use serde::Serialize;
use std::ops::Range;

/// openai-whisper's `clip_timestamps` (seconds: start, end, start, end, …) as stretches of an
/// input of `len` units at `per_second` units a second (mel frames, samples): the last stretch
/// of an odd count ends with the input, none means all of it; times are rounded as Python's
/// `round` (halves to even) and clamped to the input, so a stretch past its end is empty.
pub fn clip_stretches(clip_timestamps: &[f64], per_second: f64, len: usize) -> Vec<Range<usize>> {
    let mut points: Vec<usize> = clip_timestamps
        .iter()
        .map(|&t| ((t * per_second).round_ties_even() as usize).min(len))
        .collect();
    if points.is_empty() {
        points.push(0);
    }
    if points.len() % 2 == 1 {
        points.push(len);
    }
    points.chunks_exact(2).map(|p| p[0]..p[1]).collect()
}

/// How far a transcription has got: the fraction of the audio done, the segments found so
/// far (each call sees the earlier ones again; models that segment only at the end pass none
/// until then), and the text decoded past the last of them (`pending`: what such models have
/// said so far, without leading whitespace; it only grows until it becomes a segment). The
/// callback that receives it returns whether to go on: `false` stops the transcription at
/// that point with [`crate::Error::Cancelled`] (a client that went away).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub fraction: f64,
    pub segments: &'a [Segment],
    pub pending: &'a str,
}

impl Progress<'static> {
    /// Nothing done yet (a model's work before its first text: encoder windows, a prefill).
    pub const NOTHING_YET: Self = Progress {
        fraction: 0.0,
        segments: &[],
        pending: "",
    };
}

/// One timed stretch of text.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Segment {
    /// Index in the transcript.
    pub id: usize,
    /// Position (in 10 ms mel frames) of the window that produced it.
    pub seek: usize,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text.
    pub text: String,
    /// Token ids of the segment (timestamps included).
    pub tokens: Vec<u32>,
    /// Sampling temperature of the window's accepted decode.
    pub temperature: f32,
    /// Mean log-probability per token of the window's decode.
    pub avg_logprob: f32,
    /// UTF-8 length / zlib-compressed length of the window's text.
    pub compression_ratio: f32,
    /// Probability that the window holds no speech.
    pub no_speech_prob: f32,
    /// The segment's words with their times, when word timestamps were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<Word>>,
}

/// One word and when it was spoken (openai-whisper's `word_timestamps=True`): the text keeps
/// its leading space and attached punctuation, as openai-whisper returns it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Word {
    /// Text of the word.
    pub word: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Mean probability of the word's tokens.
    pub probability: f64,
}

/// The result of transcribing one input.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Transcript {
    /// Language code (detected or requested).
    pub language: String,
    /// Length of the audio, seconds.
    pub duration: f64,
    /// Full text.
    pub text: String,
    /// Timed segments.
    pub segments: Vec<Segment>,
    /// Every generated token id in order, special tokens included, forced prompts excluded.
    pub token_ids: Vec<u32>,
}

/// Where the time of one transcription went (all durations in ms).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Timings {
    /// Feature extraction.
    pub mel_ms: f64,
    /// Encoder passes (windows, language detection and nothing else).
    pub encoder_ms: f64,
    /// Number of encoder passes.
    pub encoder_calls: usize,
    /// Language detection's decoder pass.
    pub language_ms: f64,
    /// Prefills: the initial tokens of each decode, up to its first sampled token.
    pub prefill_ms: f64,
    /// Number of prefills (one per decode, fallbacks included).
    pub prefills: usize,
    /// Single-token decoder steps (decoder, logit rules, search).
    pub steps_ms: f64,
    /// Number of steps.
    pub steps: usize,
    /// Bytes of keys and values the steps' self-attention read, summed over the steps (models
    /// whose caches grow with the sequence; a bandwidth floor counts them beside the weights).
    pub steps_kv_bytes: usize,
    /// Word alignment: the teacher-forced pass over each window's text and the time warping.
    pub alignment_ms: f64,
    /// Number of windows aligned.
    pub alignments: usize,
    /// From the start of the transcription to its first sampled token.
    pub first_token_ms: Option<f64>,
}

impl Timings {
    /// Adds the times and counts of a later transcription of the same request (the first
    /// token stays the first's).
    pub fn add(&mut self, later: &Timings) {
        self.mel_ms += later.mel_ms;
        self.encoder_ms += later.encoder_ms;
        self.encoder_calls += later.encoder_calls;
        self.language_ms += later.language_ms;
        self.prefill_ms += later.prefill_ms;
        self.prefills += later.prefills;
        self.steps_ms += later.steps_ms;
        self.steps += later.steps;
        self.steps_kv_bytes += later.steps_kv_bytes;
        self.alignment_ms += later.alignment_ms;
        self.alignments += later.alignments;
        self.first_token_ms = self.first_token_ms.or(later.first_token_ms);
    }

    /// Mean time of one decoder step, ms (0 without steps).
    pub fn ms_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.steps_ms / self.steps as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_become_stretches_as_openai_whisper_pairs_them() {
        let bounds = |clips: &[f64], per_second: f64, len: usize| -> Vec<(usize, usize)> {
            clip_stretches(clips, per_second, len)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect()
        };
        // In mel frames (100 a second) of 9998.
        let frames = |clips: &[f64]| bounds(clips, 100.0, 9998);
        assert_eq!(frames(&[]), [(0, 9998)]);
        assert_eq!(frames(&[60.0]), [(6000, 9998)]);
        assert_eq!(frames(&[5.0, 20.5, 31.255]), [(500, 2050), (3126, 9998)]);
        // Past the end: an empty stretch.
        assert_eq!(frames(&[200.0]), [(9998, 9998)]);
        // Python's round(): 12.5 units round to 12.
        assert_eq!(frames(&[0.125, 1.0]), [(12, 100)]);
        // In samples (16 000 a second).
        assert_eq!(
            bounds(&[1.0, 4.0, 6.0], 16_000.0, 176_000),
            [(16_000, 64_000), (96_000, 176_000)]
        );
    }
}
