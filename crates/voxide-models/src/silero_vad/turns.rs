//! Turn detection on a live stream, as OpenAI's Realtime `server_vad` describes it: speech
//! starts at the first window at or above `threshold` (the turn's audio begins
//! `prefix_padding_ms` earlier), and stops once `silence_duration_ms` have passed without
//! speech (the turn's audio ends there, the silence included). While speaking, windows stay
//! speech down to the silero-vad package's lower threshold (`threshold − 0.15`), so a
//! probability hovering at the threshold does not end a turn.

use super::{SAMPLE_RATE, WINDOW};

/// `turn_detection` of type `server_vad` (OpenAI's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TurnParams {
    /// Probabilities at or above this start speech (0.5).
    pub threshold: f64,
    /// Audio kept before the first speech window (300 ms).
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn (500 ms).
    pub silence_duration_ms: u32,
}

impl Default for TurnParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// A change of turn, in samples at 16 kHz from the start of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// Speech began; the turn's audio starts at `start` (prefix padding included).
    Started { start: usize },
    /// The turn ended; its audio ends at `end` (the closing silence included).
    Stopped { end: usize },
}

/// Follows one stream's window probabilities.
#[derive(Clone, Debug)]
pub struct TurnDetector {
    params: TurnParams,
    /// In a turn: where its last speech window ended.
    last_speech_end: Option<usize>,
}

impl TurnDetector {
    /// A stream with no window seen yet.
    pub fn new(params: TurnParams) -> Self {
        Self {
            params,
            last_speech_end: None,
        }
    }

    /// Takes the speech probability of the next window, which starts at sample `start`;
    /// says whether a turn started or stopped.
    pub fn push(&mut self, start: usize, probability: f32) -> Option<TurnEvent> {
        let p = probability as f64;
        let end = start + WINDOW;
        let threshold = self.params.threshold;
        match self.last_speech_end {
            None if p >= threshold => {
                self.last_speech_end = Some(end);
                let prefix = samples(self.params.prefix_padding_ms);
                Some(TurnEvent::Started {
                    start: start.saturating_sub(prefix),
                })
            }
            None => None,
            Some(_) if p >= (threshold - 0.15).max(0.01) => {
                self.last_speech_end = Some(end);
                None
            }
            Some(last) if end - last >= samples(self.params.silence_duration_ms) => {
                self.last_speech_end = None;
                Some(TurnEvent::Stopped { end })
            }
            Some(_) => None,
        }
    }

    /// Ends a turn from outside (a client's commit): the next speech starts a new one.
    pub fn end_turn(&mut self) {
        self.last_speech_end = None;
    }
}

fn samples(ms: u32) -> usize {
    SAMPLE_RATE as usize * ms as usize / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(probs: &[f32], params: TurnParams) -> Vec<(usize, TurnEvent)> {
        let mut detector = TurnDetector::new(params);
        probs
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| detector.push(i * WINDOW, p).map(|e| (i, e)))
            .collect()
    }

    #[test]
    fn a_turn_starts_with_its_prefix_and_ends_after_the_silence() {
        // 20 silent windows, 30 speech, 20 silent (32 ms each).
        let mut probs = vec![0.05; 20];
        probs.extend([0.9; 30]);
        probs.extend([0.05; 20]);
        let got = events(&probs, TurnParams::default());
        // 300 ms = 4800 samples before window 20's start (10240).
        assert_eq!(
            got[0],
            (
                20,
                TurnEvent::Started {
                    start: 10240 - 4800
                }
            )
        );
        // Speech ends at window 50's start (25600); 500 ms = 8000 samples of silence are
        // complete at the end of the first window ending ≥ 33600: window 65 ends at 33792.
        assert_eq!(got[1], (65, TurnEvent::Stopped { end: 33792 }));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn hysteresis_keeps_a_wavering_turn_and_short_gaps_do_not_end_it() {
        let params = TurnParams {
            silence_duration_ms: 200,
            ..TurnParams::default()
        };
        // Speech, then 0.4 (above 0.35: still speech), a 5-window gap (160 ms < 200 ms),
        // speech, then silence long enough.
        let mut probs = vec![0.8; 5];
        probs.extend([0.4; 10]);
        probs.extend([0.1; 5]);
        probs.extend([0.8; 5]);
        probs.extend([0.1; 10]);
        let got = events(&probs, params);
        assert_eq!(got[0], (0, TurnEvent::Started { start: 0 }));
        assert!(matches!(got[1], (31, TurnEvent::Stopped { end }) if end == 32 * WINDOW));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_commit_ends_the_turn_and_speech_starts_another() {
        let mut detector = TurnDetector::new(TurnParams::default());
        assert!(matches!(
            detector.push(0, 0.9),
            Some(TurnEvent::Started { .. })
        ));
        detector.end_turn();
        assert_eq!(
            detector.push(WINDOW, 0.9),
            Some(TurnEvent::Started { start: 0 })
        );
    }
}
