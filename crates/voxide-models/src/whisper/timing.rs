//! Word-level timestamps, as openai-whisper's `timing.py` computes them: the cross-attention of
//! the alignment heads over one teacher-forced pass of a window's text, normalised per frame,
//! median-filtered, averaged over heads, then dynamic time warping from tokens to 20 ms audio
//! frames; words are the tokenizer's word splits with punctuation merged into its neighbours,
//! and long words at sentence and segment boundaries are clipped to twice the median word.
//!
//! Every step follows openai-whisper's arithmetic (f32 DTW costs, NumPy's tie-breaking and
//! Python's substring tests for punctuation), so the words equal its own.

use crate::transcript::Word;

/// Characters merged into the following word (openai-whisper's `prepend_punctuations`).
pub const PREPEND_PUNCTUATIONS: &str = "\"'“¿([{-";
/// Characters merged into the preceding word (openai-whisper's `append_punctuations`).
pub const APPEND_PUNCTUATIONS: &str = "\"'.。,，!！?？:：”)]}、";
/// Width of the median filter over frames (openai-whisper's `medfilt_width`).
pub const MEDIAN_FILTER_WIDTH: usize = 7;
/// Audio frames (cross-attention positions) per second.
const TOKENS_PER_SECOND: f64 = 50.0;

/// One word of the alignment: its text, tokens, times within the window and probability.
#[derive(Clone, Debug, PartialEq)]
pub struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f64,
}

/// Row-major (rows, cols) f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..][..self.cols]
    }
}

/// Median filter of odd `width` along each row, with reflected edges (torch's `F.pad(mode=
/// "reflect")`, then `unfold().sort()`); rows no longer than `width / 2` stay as they are.
pub fn median_filter(x: &mut Matrix, width: usize) {
    let pad = width / 2;
    if x.cols <= pad {
        return;
    }
    let n = x.cols;
    let mut padded = vec![0f32; n + 2 * pad];
    let mut window = vec![0f32; width];
    for r in 0..x.rows {
        let row = &mut x.data[r * n..][..n];
        for (i, p) in padded.iter_mut().enumerate() {
            // Reflect without repeating the edge: -1 -> 1, n -> n - 2.
            let j = i as isize - pad as isize;
            let j = if j < 0 {
                -j
            } else if j >= n as isize {
                2 * (n as isize - 1) - j
            } else {
                j
            };
            *p = row[j as usize];
        }
        for (i, out) in row.iter_mut().enumerate() {
            window.copy_from_slice(&padded[i..i + width]);
            window.sort_unstable_by(f32::total_cmp);
            *out = window[pad];
        }
    }
}

/// Dynamic time warping over a cost matrix (rows: tokens, cols: frames), openai-whisper's
/// `dtw_cpu`: costs accumulate in f32; the diagonal move wins only when strictly cheapest, then
/// the move down, and every other case moves right. Returns the path as (token indices, frame
/// indices) from the start; its first entries are -1 where the path runs along an edge.
pub fn dtw(x: &Matrix) -> (Vec<i64>, Vec<i64>) {
    let (n, m) = (x.rows, x.cols);
    let w = m + 1;
    let mut cost = vec![f32::INFINITY; (n + 1) * w];
    let mut trace = vec![-1i8; (n + 1) * w];
    cost[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            // NumPy adds the f64 cost to the f32 total and stores the sum as f32.
            cost[i * w + j] = (x.data[(i - 1) * m + j - 1] as f64 + c as f64) as f32;
            trace[i * w + j] = t;
        }
    }
    trace[..w].fill(2);
    for i in 0..=n {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::with_capacity(n + m);
    while i > 0 || j > 0 {
        path.push((i as i64 - 1, j as i64 - 1));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path.into_iter().unzip()
}

/// The token-to-frame cost matrix from cross-attention scores: `scores` holds, per alignment
/// head, (tokens, frames) pre-softmax scores over the whole teacher-forced sequence. As
/// openai-whisper: keep the window's `frames`, softmax over frames, standardise each frame over
/// the tokens, median-filter along frames, average the heads, keep the rows from `first_row`
/// up to the last (exclusive), and negate.
pub fn alignment_cost(
    scores: &[Matrix],
    frames: usize,
    first_row: usize,
    median_width: usize,
) -> Matrix {
    let tokens = scores.first().map_or(0, |s| s.rows);
    let frames = frames.min(scores.first().map_or(0, |s| s.cols));
    let mut mean = Matrix {
        rows: tokens,
        cols: frames,
        data: vec![0f32; tokens * frames],
    };
    let mut mean64 = vec![0f64; tokens * frames];
    for head in scores {
        let mut w = Matrix {
            rows: tokens,
            cols: frames,
            data: Vec::with_capacity(tokens * frames),
        };
        for r in 0..tokens {
            let row = &head.row(r)[..frames];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f64> = row.iter().map(|&s| ((s - max) as f64).exp()).collect();
            let sum: f64 = exp.iter().sum();
            w.data.extend(exp.iter().map(|&e| (e / sum) as f32));
        }
        for f in 0..frames {
            let column = (0..tokens).map(|r| w.data[r * frames + f] as f64);
            let mu = column.clone().sum::<f64>() / tokens as f64;
            let var = column.map(|v| (v - mu) * (v - mu)).sum::<f64>() / tokens as f64;
            let sd = var.sqrt();
            for r in 0..tokens {
                let v = &mut w.data[r * frames + f];
                *v = ((*v as f64 - mu) / sd) as f32;
            }
        }
        median_filter(&mut w, median_width);
        for (acc, &v) in mean64.iter_mut().zip(&w.data) {
            *acc += v as f64;
        }
    }
    for (out, acc) in mean.data.iter_mut().zip(&mean64) {
        *out = -((acc / scores.len() as f64) as f32);
    }
    let rows = tokens.saturating_sub(first_row + 1);
    Matrix {
        rows,
        cols: frames,
        data: mean.data[first_row.min(tokens) * frames..][..rows * frames].to_vec(),
    }
}

/// Words and their times from a cost matrix (one row per text token plus the row before them)
/// and the tokenizer's word split of the text tokens plus end-of-text. `token_probs` holds
/// each text token's probability. Returns no words when the text is empty.
pub fn words_from_cost(
    cost: &Matrix,
    words: Vec<(String, Vec<u32>)>,
    token_probs: &[f32],
) -> Vec<WordTiming> {
    if words.len() <= 1 {
        return Vec::new();
    }
    let (text_indices, time_indices) = dtw(cost);
    let jump_times: Vec<f64> = (0..text_indices.len())
        .filter(|&k| k == 0 || text_indices[k] != text_indices[k - 1])
        .map(|k| time_indices[k] as f64 / TOKENS_PER_SECOND)
        .collect();
    let mut boundaries = vec![0usize];
    for (_, tokens) in &words[..words.len() - 1] {
        boundaries.push(boundaries.last().expect("non-empty") + tokens.len());
    }
    words
        .into_iter()
        .zip(boundaries.windows(2))
        .map(|((word, tokens), b)| {
            let probs = &token_probs[b[0]..b[1]];
            WordTiming {
                word,
                tokens,
                start: jump_times[b[0]],
                end: jump_times[b[1]],
                probability: probs.iter().map(|&p| p as f64).sum::<f64>() / probs.len() as f64,
            }
        })
        .collect()
}

/// Merges leading punctuation into the following word and trailing punctuation into the
/// preceding one (openai-whisper's `merge_punctuations`; its tests are Python substring tests,
/// so an empty word counts as punctuation).
pub fn merge_punctuations(alignment: &mut [WordTiming], prepended: &str, appended: &str) {
    if alignment.len() >= 2 {
        let mut j = alignment.len() - 1;
        for i in (0..alignment.len() - 1).rev() {
            let previous = &alignment[i];
            if previous.word.starts_with(' ') && prepended.contains(previous.word.trim()) {
                let previous = std::mem::take(&mut alignment[i].word);
                let tokens = std::mem::take(&mut alignment[i].tokens);
                let following = &mut alignment[j];
                following.word = previous + &following.word;
                following.tokens = [tokens, std::mem::take(&mut following.tokens)].concat();
            } else {
                j = i;
            }
        }
    }
    let mut i = 0;
    for j in 1..alignment.len() {
        if !alignment[i].word.ends_with(' ') && appended.contains(alignment[j].word.as_str()) {
            let word = std::mem::take(&mut alignment[j].word);
            let tokens = std::mem::take(&mut alignment[j].tokens);
            alignment[i].word.push_str(&word);
            alignment[i].tokens.extend(tokens);
        } else {
            i = j;
        }
    }
}

/// A segment of one window as openai-whisper's `add_word_timestamps` sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedSegment {
    pub start: f64,
    pub end: f64,
    /// Text tokens (timestamps and other special tokens removed).
    pub text_tokens: Vec<u32>,
    pub words: Vec<Word>,
}

/// Python's `round(x, 2)`: the decimal nearest to the exact binary value.
fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().expect("a formatted float parses")
}

fn is_sentence_end(word: &str) -> bool {
    ".。!！?？".contains(word)
}

/// Distributes a window's alignment over its segments, with openai-whisper's clipping of long
/// words at sentence ends, after pauses and at segment boundaries, and its adjustment of the
/// segments' start and end to their words. `time_offset` is the window's start (s);
/// `last_speech_timestamp` the end of the last word before this window.
pub fn add_word_timestamps(
    segments: &mut [TimedSegment],
    mut alignment: Vec<WordTiming>,
    time_offset: f64,
    mut last_speech_timestamp: f64,
    prepended: &str,
    appended: &str,
) {
    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|t| t.end - t.start)
        .filter(|&d| d != 0.0)
        .collect();
    durations.sort_unstable_by(f64::total_cmp);
    let median = match durations.len() {
        0 => 0.0,
        n if n % 2 == 1 => durations[n / 2],
        n => (durations[n / 2 - 1] + durations[n / 2]) / 2.0,
    };
    let median_duration = median.min(0.7);
    let max_duration = median_duration * 2.0;

    if !durations.is_empty() {
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if is_sentence_end(&alignment[i].word) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if is_sentence_end(&alignment[i - 1].word) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment, prepended, appended);

    let mut word_index = 0;
    for segment in segments.iter_mut() {
        let mut saved_tokens = 0;
        let mut words: Vec<Word> = Vec::new();
        while word_index < alignment.len() && saved_tokens < segment.text_tokens.len() {
            let timing = &alignment[word_index];
            if !timing.word.is_empty() {
                words.push(Word {
                    word: timing.word.clone(),
                    start: round2(time_offset + timing.start),
                    end: round2(time_offset + timing.end),
                    probability: timing.probability,
                });
            }
            saved_tokens += timing.tokens.len();
            word_index += 1;
        }
        if let Some(first) = words.first() {
            let long_first = first.end - first.start > max_duration;
            let long_pair = words.len() > 1 && words[1].end - first.start > max_duration * 2.0;
            if first.end - last_speech_timestamp > median_duration * 4.0
                && (long_first || long_pair)
            {
                if words.len() > 1 && words[1].end - words[1].start > max_duration {
                    let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            if segment.start < words[0].end && segment.start - 0.5 > words[0].start {
                words[0].start = (words[0].end - median_duration).min(segment.start).max(0.0);
            } else {
                segment.start = words[0].start;
            }
            let last = words.len() - 1;
            if segment.end > words[last].start && segment.end + 0.5 < words[last].end {
                words[last].end = (words[last].start + median_duration).max(segment.end);
            } else {
                segment.end = words[last].end;
            }
            last_speech_timestamp = segment.end;
        }
        segment.words = words;
    }
}

/// Punctuation that a word of this text alone does not count as a word when judging a
/// segment (openai-whisper's `punctuation` in `transcribe`; tested as a substring, as there).
const HALLUCINATION_PUNCTUATION: &str = "\"'“¿([{-\"'.。,，!！?？:：”)]}、";

/// How unlikely a word looks as speech (openai-whisper's `word_anomaly_score`): improbable
/// (p < 0.15), very short (< 133 ms) or very long (> 2 s) words score.
pub fn word_anomaly_score(word: &Word) -> f64 {
    let duration = word.end - word.start;
    let mut score = 0.0;
    if word.probability < 0.15 {
        score += 1.0;
    }
    if duration < 0.133 {
        score += (0.133 - duration) * 15.0;
    }
    if duration > 2.0 {
        score += duration - 2.0;
    }
    score
}

/// Whether a segment looks like a hallucination (openai-whisper's `is_segment_anomaly`): its
/// first eight words that are not punctuation score 3 or more, or nearly one each. A segment
/// without words is not one.
pub fn is_segment_anomaly(segment: Option<&TimedSegment>) -> bool {
    let Some(segment) = segment.filter(|s| !s.words.is_empty()) else {
        return false;
    };
    let words: Vec<&Word> = segment
        .words
        .iter()
        .filter(|w| !HALLUCINATION_PUNCTUATION.contains(w.word.as_str()))
        .take(8)
        .collect();
    let score: f64 = words.iter().map(|w| word_anomaly_score(w)).sum();
    score >= 3.0 || score + 0.01 >= words.len() as f64
}

/// The first of `segments` that has words (openai-whisper's `next_words_segment`).
pub fn next_words_segment(segments: &[TimedSegment]) -> Option<&TimedSegment> {
    segments.iter().find(|s| !s.words.is_empty())
}

/// The end of the last word of `segments`, else the last segment's end (openai-whisper's
/// `get_end`).
pub fn last_end(segments: &[TimedSegment]) -> Option<f64> {
    segments
        .iter()
        .rev()
        .find_map(|s| s.words.last().map(|w| w.end))
        .or_else(|| segments.last().map(|s| s.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, data: &[f32]) -> Matrix {
        Matrix {
            rows,
            cols,
            data: data.to_vec(),
        }
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        // Width 3, row [5, 1, 4, 2]: padded [1, 5, 1, 4, 2, 4] -> medians [1, 4, 2, 4]; row
        // [0, 0, 9, 0]: padded [0, 0, 0, 9, 0, 9] -> [0, 0, 0, 9] (torch gives the same).
        let mut x = matrix(2, 4, &[5.0, 1.0, 4.0, 2.0, 0.0, 0.0, 9.0, 0.0]);
        median_filter(&mut x, 3);
        assert_eq!(x.data, [1.0, 4.0, 2.0, 4.0, 0.0, 0.0, 0.0, 9.0]);
        // width 5 on [3, 1, 2]: padded [2, 1, 3, 1, 2, 1, 3] -> [2, 1, 2].
        let mut x = matrix(1, 3, &[3.0, 1.0, 2.0]);
        median_filter(&mut x, 5);
        assert_eq!(x.data, [2.0, 1.0, 2.0]);
        // Rows no longer than the half width are left alone (torch cannot reflect-pad them).
        let mut x = matrix(1, 3, &[3.0, 1.0, 2.0]);
        median_filter(&mut x, 7);
        assert_eq!(x.data, [3.0, 1.0, 2.0]);
    }

    #[test]
    fn dtw_follows_the_cheap_diagonal_and_breaks_ties_leftwards() {
        // A clear diagonal through a 3 x 3 matrix.
        let x = matrix(3, 3, &[0.0, 9.0, 9.0, 9.0, 0.0, 9.0, 9.0, 9.0, 0.0]);
        assert_eq!(dtw(&x), (vec![0, 1, 2], vec![0, 1, 2]));
        // Two tokens over four frames: token 0 holds frames 0-1, token 1 frames 2-3.
        let x = matrix(2, 4, &[0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 0.0, 0.0]);
        assert_eq!(dtw(&x), (vec![0, 0, 1, 1], vec![0, 1, 2, 3]));
        // All equal: cost [[0, inf, inf], [inf, 1, 2], [inf, 2, 2]]; at (2, 2) the diagonal's
        // 1 is strictly cheapest.
        let x = matrix(2, 2, &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(dtw(&x), (vec![0, 1], vec![0, 1]));
        // More tokens than frames: the path moves down the only column.
        let x = matrix(3, 1, &[1.0, 1.0, 1.0]);
        assert_eq!(dtw(&x), (vec![0, 1, 2], vec![0, 0, 0]));
    }

    fn timing(word: &str, tokens: &[u32], start: f64, end: f64) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: tokens.to_vec(),
            start,
            end,
            probability: 0.5,
        }
    }

    fn timed_word(word: &str, duration: f64, probability: f64) -> Word {
        Word {
            word: word.into(),
            start: 1.0,
            end: 1.0 + duration,
            probability,
        }
    }

    #[test]
    fn improbable_short_and_long_words_score_as_openai_whisper_scores_them() {
        assert_eq!(word_anomaly_score(&timed_word(" a", 0.5, 0.5)), 0.0);
        assert_eq!(word_anomaly_score(&timed_word(" a", 0.5, 0.1)), 1.0);
        let short = word_anomaly_score(&timed_word(" a", 0.1, 0.1));
        assert!((short - (1.0 + 0.033 * 15.0)).abs() < 1e-9, "{short}");
        let long = word_anomaly_score(&timed_word(" a", 2.5, 0.5));
        assert!((long - 0.5).abs() < 1e-9, "{long}");
    }

    #[test]
    fn a_segment_is_judged_by_its_first_eight_words_that_are_not_punctuation() {
        let segment = |words: Vec<Word>| TimedSegment {
            start: 0.0,
            end: 1.0,
            text_tokens: vec![1; words.len()],
            words,
        };
        let good = || timed_word(" a", 0.5, 0.9);
        let bad = || timed_word(" a", 0.5, 0.01);
        assert!(!is_segment_anomaly(None));
        assert!(!is_segment_anomaly(Some(&segment(vec![]))));
        assert!(is_segment_anomaly(Some(&segment(vec![bad()]))));
        assert!(!is_segment_anomaly(Some(&segment(vec![good(), bad()]))));
        // Punctuation does not count (a substring test, as openai-whisper's `in`)...
        let dot = timed_word(".", 0.01, 0.01);
        assert!(!is_segment_anomaly(Some(&segment(vec![
            good(),
            dot.clone()
        ]))));
        // ...so punctuation alone is an anomaly (a score of 0 for no words).
        assert!(is_segment_anomaly(Some(&segment(vec![dot]))));
        // Three improbable words among the first eight: 3 points.
        let mut words = vec![bad(), bad(), bad()];
        words.extend((0..7).map(|_| good()));
        assert!(is_segment_anomaly(Some(&segment(words))));
        // ...but not after them.
        let mut words: Vec<Word> = (0..8).map(|_| good()).collect();
        words.extend((0..3).map(|_| bad()));
        assert!(!is_segment_anomaly(Some(&segment(words))));
    }

    #[test]
    fn punctuation_joins_its_neighbours() {
        let mut a = vec![
            timing(" \"", &[1], 0.0, 0.1),
            timing(" Hello", &[2], 0.1, 0.5),
            timing(",", &[3], 0.5, 0.6),
            timing(" world", &[4], 0.6, 1.0),
            timing(".\"", &[5], 1.0, 1.1),
        ];
        merge_punctuations(&mut a, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS);
        let words: Vec<_> = a
            .iter()
            .map(|t| (t.word.as_str(), t.tokens.clone()))
            .collect();
        // ".\"" is not a substring of the appended set, so it stays a word of its own.
        assert_eq!(
            words,
            [
                ("", vec![]),
                (" \" Hello,", vec![1, 2, 3]),
                ("", vec![]),
                (" world", vec![4]),
                (".\"", vec![5]),
            ]
        );
    }

    #[test]
    fn words_take_the_times_of_their_first_token_jumps() {
        // Rows: the row before the text, " Hi", " there"; words " Hi", " there", <eot>.
        let cost = matrix(
            3,
            6,
            &[
                0.0, 0.0, 9.0, 9.0, 9.0, 9.0, //
                9.0, 9.0, 0.0, 0.0, 9.0, 9.0, //
                9.0, 9.0, 9.0, 9.0, 0.0, 0.0,
            ],
        );
        let words = vec![
            (" Hi".to_string(), vec![10]),
            (" there".to_string(), vec![11]),
            ("<|endoftext|>".to_string(), vec![50257]),
        ];
        let got = words_from_cost(&cost, words, &[0.25, 0.75]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].start, got[0].end, got[0].probability),
            (0.0, 0.04, 0.25)
        );
        assert_eq!(
            (got[1].start, got[1].end, got[1].probability),
            (0.04, 0.08, 0.75)
        );
    }

    #[test]
    fn long_words_are_clipped_at_sentence_ends_and_segments_follow_their_words() {
        let alignment = vec![
            timing(" One", &[1], 0.0, 0.2),
            timing(" two", &[2], 0.2, 0.4),
            timing(".", &[3], 0.4, 3.0),
            timing(" Three", &[4], 3.0, 3.2),
        ];
        let mut segments = vec![TimedSegment {
            start: 0.0,
            end: 3.4,
            text_tokens: vec![1, 2, 3, 4],
            words: Vec::new(),
        }];
        add_word_timestamps(
            &mut segments,
            alignment,
            10.0,
            10.0,
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
        );
        let w = &segments[0].words;
        // Durations 0.2, 0.2, 2.6, 0.2: median 0.2, so "." is clipped to 0.4 s before merging
        // into " two".
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[1].word.as_str(), w[1].start, w[1].end),
            (" two.", 10.2, 10.4)
        );
        assert_eq!((segments[0].start, segments[0].end), (10.0, 13.2));
        assert_eq!(last_end(&segments), Some(13.2));
    }
}
