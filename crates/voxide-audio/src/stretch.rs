//! Speech made faster or slower without changing its pitch: WSOLA (waveform-similarity
//! overlap-add, Verhelst & Roelands, ICASSP 1993), streamed chunk by chunk.
//!
//! Output frames of `N` samples (25 ms) under a Hann window are overlap-added every `N / 2`
//! samples; frame `k` is read from the input near `k · N / 2 · speed`, shifted by up to ±10 ms
//! to where it best continues the previous frame (the largest normalised cross-correlation with
//! the samples that followed the previous frame in the input), so that pitch periods line up
//! instead of beating. A chunk's output is written as soon as no later frame can overlap it; the
//! decisions depend on the samples only, so any chunking gives the same output.

/// Slowest and fastest speeds (OpenAI's speech API range).
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// A streaming time-stretcher at a fixed speed.
pub struct TimeStretch {
    speed: f64,
    /// Frame length (even) and hop of the output.
    frame: usize,
    hop: usize,
    /// Largest shift of a frame from its nominal input position.
    tolerance: usize,
    window: Vec<f32>,
    /// Input some frame still to come may read; `input[0]` is sample `offset` of the input,
    /// counted with the `hop` zeros put in front so that the first samples are overlap-added
    /// in full.
    input: Vec<f32>,
    offset: usize,
    /// Real input samples taken.
    seen: usize,
    /// Frames placed; where the last one was read.
    frames: usize,
    previous: Option<usize>,
    /// The output under the next frame, overlap-added so far (`frame` samples from
    /// `frames · hop`).
    overlap: Vec<f32>,
    /// Output samples of the zeros in front still to drop; final output not yet handed out;
    /// output handed out.
    skip: usize,
    ready: Vec<f32>,
    written: usize,
}

impl TimeStretch {
    /// A stretcher for audio at `sample_rate` played `speed` times as fast (2 halves the
    /// duration), `speed` brought into [`SPEED_RANGE`] (NaN: 1): at 0 no frame would advance.
    pub fn new(sample_rate: u32, speed: f32) -> Self {
        let speed = if speed.is_nan() {
            1.0
        } else {
            speed.clamp(*SPEED_RANGE.start(), *SPEED_RANGE.end())
        };
        let frame = ((sample_rate as usize * 25 / 1000) / 2 * 2).max(4);
        let hop = frame / 2;
        // Periodic Hann: windows a hop apart sum to exactly 1.
        let window = (0..frame)
            .map(|n| {
                let phase = std::f64::consts::PI * n as f64 / frame as f64;
                phase.sin().powi(2) as f32
            })
            .collect();
        Self {
            speed: f64::from(speed),
            frame,
            hop,
            tolerance: (sample_rate as usize / 100).max(1),
            window,
            input: vec![0.0; hop],
            offset: 0,
            seen: 0,
            frames: 0,
            previous: None,
            overlap: vec![0.0; frame],
            skip: (hop as f64 / f64::from(speed)).round() as usize,
            ready: Vec::new(),
            written: 0,
        }
    }

    /// Output samples the whole input of `samples` samples gives: `samples / speed`, rounded.
    pub fn output_len(&self, samples: usize) -> usize {
        (samples as f64 / self.speed).round() as usize
    }

    /// Takes the next input chunk; appends the output it completes to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        self.input.extend_from_slice(samples);
        self.seen += samples.len();
        self.run(false, out);
    }

    /// Ends the input; appends the rest of the output to `out`.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        self.run(true, out);
    }

    /// Where frame `k` is nominally read in the (padded) input.
    fn nominal(&self, k: usize) -> usize {
        (k as f64 * self.hop as f64 * self.speed).round() as usize
    }

    /// Places every frame whose input is all here (when `last`, every frame up to the output's
    /// length, the input padded with silence), then hands out the output that is final. While
    /// the input may go on, at most `seen / speed` samples: the final length may be no more.
    fn run(&mut self, last: bool, out: &mut Vec<f32>) {
        let total = self.output_len(self.seen);
        while !(last && self.written + self.ready.len() >= total) {
            let nominal = self.nominal(self.frames);
            let reach = nominal + self.tolerance + self.frame;
            let needed = self
                .previous
                .map_or(reach, |p| reach.max(p + self.hop + self.frame));
            // At the end a frame whose search reaches past the input is read where it is due:
            // the silence after the end would decide its shift.
            let start = if needed <= self.offset + self.input.len() {
                self.best_start(nominal)
            } else if last {
                self.input.resize(needed - self.offset, 0.0);
                nominal
            } else {
                break;
            };
            self.place(start);
            // What neither the next frame's search nor its continuation reads is done with.
            let next =
                (self.nominal(self.frames).saturating_sub(self.tolerance)).min(start + self.hop);
            let done = next.saturating_sub(self.offset).min(self.input.len());
            self.input.drain(..done);
            self.offset += done;
        }
        let cap = if last {
            total
        } else {
            (self.seen as f64 / self.speed) as usize
        };
        let n = self.ready.len().min(cap.saturating_sub(self.written));
        out.extend(self.ready.drain(..n));
        self.written += n;
    }

    /// The input position of the next frame: its nominal one, shifted by up to the tolerance
    /// to where it best continues the previous frame.
    fn best_start(&self, nominal: usize) -> usize {
        let Some(previous) = self.previous else {
            return nominal;
        };
        let input = |at: usize| &self.input[at - self.offset..at - self.offset + self.frame];
        let natural = input(previous + self.hop);
        let lowest = nominal.saturating_sub(self.tolerance).max(self.offset);
        // Nearest the nominal position first; a farther one must score higher by more than
        // rounding (a periodic sound scores alike a period away), so a tie keeps the shift
        // smallest.
        let shifts = (0..=self.tolerance).flat_map(|d| [nominal + d, nominal.wrapping_sub(d)]);
        let mut best = (f64::MIN, nominal);
        for candidate in shifts.filter(|&c| c >= lowest && c <= nominal + self.tolerance) {
            // Normalised by the candidate's energy: the natural continuation itself scores
            // highest, and a loud stretch does not win for being loud.
            let (dot, energy) = dot_and_energy(input(candidate), natural);
            let score = f64::from(dot) / (f64::from(energy) + 1e-12).sqrt();
            if score > best.0 + 1e-4 * best.0.abs() {
                best = (score, candidate);
            }
        }
        best.1
    }

    /// Overlap-adds the frame read at `start`; its first hop is then final.
    fn place(&mut self, start: usize) {
        let source = &self.input[start - self.offset..start - self.offset + self.frame];
        for ((y, &x), &w) in self.overlap.iter_mut().zip(source).zip(&self.window) {
            *y += x * w;
        }
        self.frames += 1;
        self.previous = Some(start);
        let skipped = self.skip.min(self.hop);
        self.skip -= skipped;
        self.ready
            .extend_from_slice(&self.overlap[skipped..self.hop]);
        self.overlap.drain(..self.hop);
        self.overlap.resize(self.frame, 0.0);
    }
}

/// `Σ a·b` and `Σ a²`, in eight lanes so that the loop vectorises.
fn dot_and_energy(a: &[f32], b: &[f32]) -> (f32, f32) {
    let (mut dot, mut energy) = ([0f32; 8], [0f32; 8]);
    let (a_lanes, b_lanes) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_lanes.remainder().iter().zip(b_lanes.remainder());
    for (a, b) in a_lanes.zip(b_lanes) {
        for i in 0..8 {
            dot[i] += a[i] * b[i];
            energy[i] += a[i] * a[i];
        }
    }
    let (mut d, mut e) = (dot.iter().sum::<f32>(), energy.iter().sum::<f32>());
    for (&a, &b) in tail {
        d += a * b;
        e += a * a;
    }
    (d, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stretch(samples: &[f32], speed: f32, chunks: &[usize]) -> Vec<f32> {
        let mut s = TimeStretch::new(24_000, speed);
        let mut out = Vec::new();
        let mut rest = samples;
        for &n in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            s.push(chunk, &mut out);
            rest = tail;
        }
        s.finish(&mut out);
        out
    }

    fn tone(hz: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / 24_000.0).sin())
            .collect()
    }

    #[test]
    fn lengths_follow_the_speed() {
        for speed in [0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0] {
            for n in [0, 1, 100, 1921, 24_000] {
                let out = stretch(&tone(200.0, n), speed, &[1920]);
                let want = (n as f64 / f64::from(speed)).round() as usize;
                assert_eq!(out.len(), want, "speed {speed}, {n} samples");
            }
        }
    }

    #[test]
    fn speeds_out_of_range_are_brought_into_it() {
        let input = tone(200.0, 4000);
        for (speed, len) in [
            (0.0, 16_000),
            (100.0, 1000),
            (f32::NAN, 4000),
            (-1.0, 16_000),
        ] {
            assert_eq!(stretch(&input, speed, &[1920]).len(), len, "{speed}");
        }
    }

    #[test]
    fn any_chunking_gives_the_same_output() {
        let input = tone(180.0, 30_000);
        for speed in [0.5, 1.5, 4.0] {
            let whole = stretch(&input, speed, &[usize::MAX]);
            for chunks in [&[1920][..], &[1, 7, 500, 4000], &[333]] {
                assert!(
                    stretch(&input, speed, chunks) == whole,
                    "{speed} in {chunks:?}"
                );
            }
        }
    }

    #[test]
    fn speed_one_is_the_input() {
        let input = tone(150.0, 10_000);
        let out = stretch(&input, 1.0, &[1920]);
        let errors: Vec<f32> = out.iter().zip(&input).map(|(a, b)| (a - b).abs()).collect();
        let worst = errors.iter().copied().fold(0.0, f32::max);
        let at = errors.iter().position(|&e| e == worst);
        assert!(worst < 1e-6, "{worst} at {at:?} of {}", out.len());
    }

    #[test]
    fn a_tone_keeps_its_pitch_and_level_without_clicks() {
        let hz = 220.0;
        let input = tone(hz, 48_000);
        for speed in [0.5, 2.0, 3.0] {
            let out = stretch(&input, speed, &[1920]);
            // Away from the ends: rising zero crossings per second, RMS, the largest step.
            let body = &out[1000..out.len() - 1000];
            let rises = body
                .windows(2)
                .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
                .count();
            let measured = rises as f32 * 24_000.0 / body.len() as f32;
            assert!(
                (measured / hz - 1.0).abs() < 0.02,
                "speed {speed}: {measured} Hz"
            );
            let rms = (body.iter().map(|x| x * x).sum::<f32>() / body.len() as f32).sqrt();
            assert!(
                (rms / (0.5 / 2f32.sqrt()) - 1.0).abs() < 0.05,
                "speed {speed}: RMS {rms}"
            );
            let step = body
                .windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0, f32::max);
            let sine_step = 0.5 * 2.0 * std::f32::consts::PI * hz / 24_000.0;
            assert!(step < 1.1 * sine_step, "speed {speed}: a step of {step}");
        }
    }
}
