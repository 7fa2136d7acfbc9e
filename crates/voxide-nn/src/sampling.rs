//! Token selection on host logits: argmax, log-softmax, temperature sampling with top-k/top-p.
//!
//! Logits arrive as one f32 row per sequence; model families apply their own logit rules
//! (e.g. Whisper's timestamp rules) to the row before calling these.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Index of the largest finite value (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best
}

/// log(sum(exp(x))) computed stably; -inf for an empty or all -inf slice.
///
/// Called on every decoder step over the whole vocabulary (51 865 logits for Whisper), so the
/// exponentials are vectorised ([`crate::kernels::softmax`]).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    // exp in f32 (its argument is ≤ 0, its result in [0, 1]), sum in f64.
    max + crate::kernels::softmax::sum_exp_shifted(x, max).ln() as f32
}

/// Writes log_softmax(logits) into `out` (same length).
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let lse = log_sum_exp(logits);
    for (o, &v) in out.iter_mut().zip(logits) {
        *o = v - lse;
    }
}

/// A chosen token's log-probability under a step's logits, and the `top` most likely ids with
/// theirs, most likely first (the lower id first on ties): OpenAI's `logprobs` and
/// `top_logprobs`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// `id`'s entry under `logits` (one step's row), with its `top` alternatives.
    pub fn of(logits: &[f32], id: u32, top: usize) -> Self {
        let lse = log_sum_exp(logits);
        // The `top` largest so far, in order: one pass, most values fail the first compare.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        for (i, &v) in logits.iter().enumerate() {
            if top == 0 || v.is_nan() || (best.len() == top && v <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= v);
            best.insert(at, (i as u32, v));
            best.truncate(top);
        }
        Self {
            id,
            logprob: logits[id as usize] - lse,
            top: best.into_iter().map(|(i, v)| (i, v - lse)).collect(),
        }
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every id that occurs in `history` has its
/// logit divided by `penalty` when positive, multiplied when negative (once per id, however
/// often it occurs). `penalty` 1.0 changes nothing.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        let id = id as usize;
        if id < logits.len() && !std::mem::replace(&mut seen[id], true) {
            let v = logits[id];
            logits[id] = if v < 0.0 { v * penalty } else { v / penalty };
        }
    }
}

/// OpenAI's frequency and presence penalties (as vLLM applies them, over the generated ids):
/// every id generated so far, `count` times, loses `count · frequency + presence` from its
/// logit. The counts grow with each id ([`Self::push`]), so a step does not go over the
/// answer again. Both 0 change nothing and count nothing.
#[derive(Clone, Debug, Default)]
pub struct FrequencyPresencePenalties {
    frequency: f32,
    presence: f32,
    counts: std::collections::HashMap<u32, u32>,
}

impl FrequencyPresencePenalties {
    pub fn new(frequency: f32, presence: f32) -> Self {
        Self {
            frequency,
            presence,
            counts: Default::default(),
        }
    }

    fn active(&self) -> bool {
        self.frequency != 0.0 || self.presence != 0.0
    }

    /// Counts a generated id.
    pub fn push(&mut self, id: u32) {
        if self.active() {
            *self.counts.entry(id).or_default() += 1;
        }
    }

    /// Takes the penalties of the ids counted so far off `logits`.
    pub fn apply(&self, logits: &mut [f32]) {
        for (&id, &count) in &self.counts {
            if let Some(v) = logits.get_mut(id as usize) {
                *v -= count as f32 * self.frequency + self.presence;
            }
        }
    }
}

/// Parameters of stochastic sampling.
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    /// Softmax temperature (> 0).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
}

/// A seeded sampler; it reuses its scratch buffers, so sampling allocates nothing per token.
#[derive(Debug)]
pub struct Sampler {
    rng: StdRng,
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler whose draws are reproducible for a given seed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            probs: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Draws a token from softmax(logits / temperature), restricted by top-k / top-p.
    pub fn sample(&mut self, logits: &[f32], params: SamplingParams) -> usize {
        let inv_t = 1.0 / params.temperature.max(1e-6);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|&v| ((v - max) * inv_t).exp()));
        let restrict = params.top_k > 0 || params.top_p < 1.0;
        if restrict {
            self.order.clear();
            self.order
                .extend((0..logits.len() as u32).filter(|&i| self.probs[i as usize] > 0.0));
            let probs = &self.probs;
            let total: f32 = self.order.iter().map(|&i| probs[i as usize]).sum();
            let mut keep = if params.top_k > 0 {
                params.top_k.min(self.order.len())
            } else {
                self.order.len()
            };
            let most_likely_first =
                |&a: &u32, &b: &u32| probs[b as usize].total_cmp(&probs[a as usize]);
            // Only the kept tokens need an order: the k most likely found in linear time,
            // then sorted (Qwen3-TTS samples 16 times per frame, top 50 of 2048–3072).
            if keep > 0 && keep < self.order.len() {
                self.order
                    .select_nth_unstable_by(keep - 1, most_likely_first);
                self.order[..keep].sort_unstable_by(most_likely_first);
            } else {
                self.order.sort_unstable_by(most_likely_first);
            }
            let mut acc = 0.0;
            for (n, &i) in self.order.iter().enumerate().take(keep) {
                acc += probs[i as usize] / total;
                if acc >= params.top_p {
                    keep = n + 1;
                    break;
                }
            }
            for &i in &self.order[keep..] {
                self.probs[i as usize] = 0.0;
            }
        }
        let total: f32 = self.probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > 0.0 {
                if r < p {
                    return i;
                }
                r -= p;
            }
        }
        argmax(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_scales_each_seen_id_once() {
        let mut logits = [2.0f32, -2.0, 3.0, 0.5];
        apply_repetition_penalty(&mut logits, &[0, 1, 0, 7], 2.0);
        assert_eq!(logits, [1.0, -4.0, 3.0, 0.5]);
        apply_repetition_penalty(&mut logits, &[2], 1.0);
        assert_eq!(logits[2], 3.0);
    }

    #[test]
    fn frequency_and_presence_penalties_count_each_generated_id() {
        let penalised = |ids: &[u32], frequency: f32, presence: f32, logits: &mut [f32]| {
            let mut p = FrequencyPresencePenalties::new(frequency, presence);
            ids.iter().for_each(|&id| p.push(id));
            p.apply(logits);
        };
        let mut logits = [2.0f32, -2.0, 3.0, 0.5];
        // id 0 twice, id 1 once, id 9 out of range.
        penalised(&[0, 1, 0, 9], 0.5, 1.0, &mut logits);
        assert_eq!(logits, [0.0, -3.5, 3.0, 0.5]);
        penalised(&[2], 0.0, 0.0, &mut logits);
        assert_eq!(logits[2], 3.0);
        // Negative penalties favour repeats.
        penalised(&[3], -1.0, 0.0, &mut logits);
        assert_eq!(logits[3], 1.5);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
    }

    #[test]
    fn vectorised_log_sum_exp_matches_f64() {
        let x: Vec<f32> = (0..51865)
            .map(|i| {
                if i % 7 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 4001) as f32 / 100.0 - 20.0
                }
            })
            .collect();
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let got = log_sum_exp(&x) as f64;
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        assert!(
            (log_sum_exp(&[0.0, -1e9, 1.0]) - (1.0f32 + (1.0 + (-1.0f32).exp()).ln())).abs() < 1e-6
        );
    }

    #[test]
    fn log_softmax_normalises() {
        let mut out = [0.0; 3];
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let total: f32 = out.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((out[2] - out[1] - 1.0).abs() < 1e-6);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 2]), f32::NEG_INFINITY);
    }

    #[test]
    fn sampling_respects_masks_top_k_and_seed() {
        let logits = [0.0, 5.0, f32::NEG_INFINITY, 4.9, -3.0];
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        };
        let mut a = Sampler::new(7);
        let mut b = Sampler::new(7);
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            let t = a.sample(&logits, params);
            assert_eq!(t, b.sample(&logits, params), "same seed, same draws");
            seen[t] += 1;
        }
        assert_eq!(
            seen[0] + seen[2] + seen[4],
            0,
            "only the top 2 are drawn: {seen:?}"
        );
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
        let greedyish = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.1,
        };
        assert_eq!(a.sample(&logits, greedyish), 1);
        // top-p within the top k (ordered after a partial selection): 1 alone holds 0.52.
        let both = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            top_p: 0.5,
        };
        assert!((0..50).all(|_| a.sample(&logits, both) == 1));
    }

    #[test]
    fn token_logprobs_are_log_softmax_and_its_largest() {
        let logits: Vec<f32> = (0..50)
            .map(|i| ((i * 37) % 23) as f32 * 0.3 - 2.0)
            .collect();
        let mut all = vec![0.0; logits.len()];
        log_softmax(&logits, &mut all);
        let entry = TokenLogprobs::of(&logits, 7, 5);
        assert_eq!(entry.id, 7);
        assert!((entry.logprob - all[7]).abs() < 1e-6);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Most likely first, the lower id first on ties (a stable sort keeps index order).
        order.sort_by(|&a, &b| all[b as usize].total_cmp(&all[a as usize]));
        let want: Vec<(u32, f32)> = order[..5].iter().map(|&i| (i, all[i as usize])).collect();
        assert_eq!(entry.top.len(), 5);
        for ((id, lp), (want_id, want_lp)) in entry.top.iter().zip(&want) {
            assert_eq!(id, want_id);
            assert!((lp - want_lp).abs() < 1e-6);
        }
        assert!(TokenLogprobs::of(&logits, 0, 0).top.is_empty());
        assert_eq!(TokenLogprobs::of(&logits[..3], 1, 20).top.len(), 3);
    }
}
