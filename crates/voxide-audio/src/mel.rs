//! Mel spectrograms: Whisper's log-mel (openai-whisper `log_mel_spectrogram`) and, at the end,
//! qwen-tts' log-magnitude mel ([`LogMagnitudeMel`], the Qwen3-TTS speaker encoder's input).
//!
//! Whisper:
//! 16 kHz mono input; STFT with n_fft 400, hop 160, periodic Hann window,
//! centred with reflect padding, last frame dropped; power spectrum; Slaney
//! mel filter bank (computed here exactly as librosa does, so it matches
//! `mel_filters.npz`); `log10(max(x, 1e-10))`; clamp to `max - 8` with the
//! max over the whole input; `(x + 4) / 4`.
//!
//! The FFT, power and mel products run in f64 and only the result is rounded
//! to f32, so the output is closer to the exact value than torch's f32 path;
//! the remaining difference to openai-whisper is torch's rounding.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Whisper's input rate in Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Number of FFT bins kept (`N_FFT / 2 + 1`).
pub const N_FREQS: usize = N_FFT / 2 + 1;
/// Samples in one 30 s window.
pub const N_SAMPLES: usize = 480_000;
/// Frames in one 30 s window (the encoder's input width).
pub const N_FRAMES: usize = 3000;

/// Slaney-style mel filter bank for 16 kHz, `n_fft` 400, 0–8000 Hz, as
/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` (htk=False,
/// norm='slaney', float32) — the arrays openai-whisper ships in
/// `mel_filters.npz`. Row-major `[n_mels][N_FREQS]`.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    slaney_mel_filters(sr, N_FFT, n_mels, 0.0, sr / 2.0)
}

/// Slaney-style mel filter bank, as `librosa.filters.mel(sr=sample_rate, n_fft=n_fft,
/// n_mels=n_mels, fmin=fmin, fmax=fmax)` (htk=False, norm='slaney', float32). Row-major
/// `[n_mels][n_fft / 2 + 1]`.
///
/// librosa builds the triangles in f64, stores them into an f32 array, then
/// multiplies by the Slaney area normalisation in f64 and stores f32 again;
/// the two roundings are reproduced here.
pub fn slaney_mel_filters(
    sample_rate: f64,
    n_fft: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    // np.fft.rfftfreq(n_fft, 1/sr): k * (1 / (n * d)).
    let df = 1.0 / (n_fft as f64 * (1.0 / sample_rate));
    let fftfreqs: Vec<f64> = (0..n_freqs).map(|k| k as f64 * df).collect();
    // np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2), then mel_to_hz.
    let n_pts = n_mels + 2;
    let (lo, hi) = (hz_to_mel(fmin), hz_to_mel(fmax));
    let step = (hi - lo) / (n_pts - 1) as f64;
    let mel_f: Vec<f64> = (0..n_pts)
        .map(|i| {
            if i == n_pts - 1 {
                mel_to_hz(hi)
            } else {
                mel_to_hz(i as f64 * step + lo)
            }
        })
        .collect();
    let mut w = vec![0f32; n_mels * n_freqs];
    for i in 0..n_mels {
        let fdiff_lo = mel_f[i + 1] - mel_f[i];
        let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (k, &f) in fftfreqs.iter().enumerate() {
            // ramps[j] = mel_f[j] - f
            let lower = -(mel_f[i] - f) / fdiff_lo;
            let upper = (mel_f[i + 2] - f) / fdiff_hi;
            let tri = lower.min(upper).max(0.0) as f32;
            w[i * n_freqs + k] = (tri as f64 * enorm) as f32;
        }
    }
    w
}

/// Per mel row of `filters` (`[n_mels][n_freqs]`), the range of bins where the filter is
/// non-zero: each triangle covers a few bins, and skipping the zeros makes the product ~20x
/// cheaper than the dense matmul.
fn filter_support(filters: &[f32], n_mels: usize, n_freqs: usize) -> Vec<(usize, usize)> {
    (0..n_mels)
        .map(|m| {
            let row = &filters[m * n_freqs..(m + 1) * n_freqs];
            let lo = row.iter().position(|&v| v != 0.0).unwrap_or(0);
            let hi = row.iter().rposition(|&v| v != 0.0).map_or(lo, |i| i + 1);
            (lo, hi)
        })
        .collect()
}

/// librosa `hz_to_mel` (Slaney): linear below 1 kHz, logarithmic above.
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

/// librosa `mel_to_hz` (Slaney).
fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// A log-mel spectrogram, row-major `[n_mels][n_frames]` (one row per mel
/// bin, 100 frames per second), values in Whisper's normalised domain.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    /// Number of mel bins (rows).
    pub n_mels: usize,
    /// Number of frames (columns).
    pub n_frames: usize,
    /// `data[m * n_frames + t]`.
    pub data: Vec<f32>,
}

impl LogMel {
    /// Value of mel bin `m` at frame `t`.
    pub fn get(&self, m: usize, t: usize) -> f32 {
        self.data[m * self.n_frames + t]
    }

    /// Cut `n_frames` frames starting at `start_frame`; frames past the end
    /// are 0.0 (openai-whisper's `pad_or_trim` on the mel, which pads in the
    /// normalised domain). Use `n_frames = N_FRAMES` for an encoder window.
    pub fn window(&self, start_frame: usize, n_frames: usize) -> LogMel {
        let mut data = vec![0f32; self.n_mels * n_frames];
        let avail = self.n_frames.saturating_sub(start_frame).min(n_frames);
        if avail > 0 {
            for m in 0..self.n_mels {
                let src = &self.data[m * self.n_frames + start_frame..][..avail];
                data[m * n_frames..][..avail].copy_from_slice(src);
            }
        }
        LogMel {
            n_mels: self.n_mels,
            n_frames,
            data,
        }
    }
}

/// Whisper feature extractor: mel filters, window and FFT plan, built once
/// and reusable (and shareable across threads) for any number of inputs.
pub struct WhisperMel {
    n_mels: usize,
    /// `[n_mels][N_FREQS]`, f32 like `mel_filters.npz`.
    filters: Vec<f32>,
    /// Per mel row, the range of bins where the filter is non-zero.
    support: Vec<(usize, usize)>,
    /// Periodic Hann window of N_FFT samples (torch.hann_window(400)).
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for WhisperMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperMel")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl WhisperMel {
    /// Feature extractor with `n_mels` bins (80 for Whisper v1/v2, 128 for
    /// large-v3 and Voxtral). Panics if `n_mels` is 0.
    pub fn new(n_mels: usize) -> Self {
        assert!(n_mels > 0, "n_mels must be > 0");
        let filters = mel_filters(n_mels);
        let support = filter_support(&filters, n_mels, N_FREQS);
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .map(|w| w as f32 as f64) // torch builds the window in f32
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            filters,
            support,
            window,
            fft,
        }
    }

    /// Number of mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The mel filter bank, row-major `[n_mels][N_FREQS]`.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// Log-mel spectrogram of 16 kHz mono `samples` with `padding_samples`
    /// zeros appended first, as openai-whisper's
    /// `log_mel_spectrogram(audio, n_mels, padding)`.
    ///
    /// Returns `(len + padding) / 160` frames (the centred STFT yields one
    /// more; Whisper drops it). The clamp to `max - 8` uses the maximum over
    /// all returned frames. openai-whisper's `transcribe` takes it with
    /// `padding_samples = N_SAMPLES` and cuts [`LogMel::window`]s; Whisper's pipeline here
    /// computes the same windows on demand ([`Self::log_mel_windows`]).
    pub fn log_mel(&self, samples: &[f32], padding_samples: usize) -> LogMel {
        let (mut mel, max) = self.log10_mel(samples, padding_samples);
        normalise(&mut mel.data, max - 8.0);
        mel
    }

    /// Voxtral Realtime's features (transformers `VoxtralRealtimeFeatureExtractor`, centred):
    /// as [`Self::log_mel`] without padding, but clamped at the fixed `global_log_mel_max − 8`
    /// instead of the input's own maximum.
    pub fn log_mel_fixed_max(&self, samples: &[f32], global_log_mel_max: f32) -> LogMel {
        let (mut mel, _) = self.log10_mel(samples, 0);
        normalise(&mut mel.data, global_log_mel_max as f64 - 8.0);
        mel
    }

    /// `log10(max(mel, 1e-10))` of every frame, and the largest value.
    fn log10_mel(&self, samples: &[f32], padding_samples: usize) -> (LogMel, f64) {
        let frames = FrameSource::new(samples, padding_samples);
        let n_mels = self.n_mels;
        let n_frames = frames.n_frames;
        let mut out = vec![0f32; n_mels * n_frames];
        let mut scratch = FrameScratch::new(self);
        let mut column = vec![0f32; n_mels];
        let mut max = f64::NEG_INFINITY;
        for t in 0..n_frames {
            max = max.max(frames.log10(self, t, &mut scratch, &mut column));
            for (m, &v) in column.iter().enumerate() {
                out[m * n_frames + t] = v;
            }
        }
        let mel = LogMel {
            n_mels,
            n_frames,
            data: out,
        };
        (mel, max)
    }

    /// [`Self::log_mel`] window by window: one pass over the frames finds the maximum, and
    /// [`MelWindows::write`] computes the frames a window asks for when it asks (the same
    /// values). A long input never holds its whole spectrogram (151 s: 5.8 MB at 80 bins),
    /// for a second FFT of the frames the windows read.
    pub fn log_mel_windows<'a>(
        &'a self,
        samples: &'a [f32],
        padding_samples: usize,
    ) -> MelWindows<'a> {
        let frames = FrameSource::new(samples, padding_samples);
        let mut scratch = FrameScratch::new(self);
        let mut column = vec![0f32; self.n_mels];
        let max = (0..frames.n_frames)
            .map(|t| frames.log10(self, t, &mut scratch, &mut column))
            .fold(f64::NEG_INFINITY, f64::max);
        MelWindows {
            mel: self,
            frames,
            floor: max - 8.0,
        }
    }

    /// `log10(max(mel, 1e-10))` of one frame of N_FFT samples into `out` (n_mels values);
    /// returns their maximum (before rounding to f32).
    fn frame_log10(&self, samples: &[f32], scratch: &mut FrameScratch, out: &mut [f32]) -> f64 {
        let FrameScratch {
            frame,
            spec,
            fft,
            power,
        } = scratch;
        for ((d, &s), &w) in frame.iter_mut().zip(samples).zip(&self.window) {
            *d = s as f64 * w;
        }
        // Lengths come from the plan itself, so this cannot fail.
        self.fft
            .process_with_scratch(frame, spec, fft)
            .expect("FFT buffers sized by the plan");
        for (p, c) in power.iter_mut().zip(spec.iter()) {
            *p = c.norm_sqr();
        }
        let mut max = f64::NEG_INFINITY;
        for (m, o) in out.iter_mut().enumerate() {
            let (lo, hi) = self.support[m];
            let row = &self.filters[m * N_FREQS..];
            let mut acc = 0f64;
            for k in lo..hi {
                acc += row[k] as f64 * power[k];
            }
            let v = acc.max(1e-10).log10();
            max = max.max(v);
            *o = v as f32;
        }
        max
    }
}

/// FFT buffers for [`WhisperMel::frame_log10`], allocated once per input or stream.
struct FrameScratch {
    frame: Vec<f64>,
    spec: Vec<realfft::num_complex::Complex<f64>>,
    fft: Vec<realfft::num_complex::Complex<f64>>,
    power: Vec<f64>,
}

impl FrameScratch {
    fn new(mel: &WhisperMel) -> Self {
        Self {
            frame: mel.fft.make_input_vec(),
            spec: mel.fft.make_output_vec(),
            fft: mel.fft.make_scratch_vec(),
            power: vec![0f64; N_FREQS],
        }
    }
}

/// Centred frames over samples ++ zeros(padding), reflect-padded by N_FFT/2 on both sides;
/// read in place (a padded copy of a long input would be tens of MB).
#[derive(Clone, Copy, Debug)]
struct FrameSource<'a> {
    samples: &'a [f32],
    /// Samples with the padding.
    total: usize,
    /// `total / HOP_LENGTH`: Whisper drops the centred STFT's last frame.
    n_frames: usize,
}

impl<'a> FrameSource<'a> {
    fn new(samples: &'a [f32], padding_samples: usize) -> Self {
        let total = samples.len() + padding_samples;
        Self {
            samples,
            total,
            n_frames: total / HOP_LENGTH,
        }
    }

    /// Frame t's `log10(max(mel, 1e-10))` into `column`; returns its maximum.
    fn log10(
        &self,
        mel: &WhisperMel,
        t: usize,
        scratch: &mut FrameScratch,
        column: &mut [f32],
    ) -> f64 {
        let half = N_FFT / 2;
        let first = t * HOP_LENGTH;
        if first >= half && first - half + N_FFT <= self.samples.len() {
            let src = &self.samples[first - half..first - half + N_FFT];
            return mel.frame_log10(src, scratch, column);
        }
        let mut frame = [0f32; N_FFT];
        for (i, d) in frame.iter_mut().enumerate() {
            let j = reflect((first + i) as i64 - half as i64, self.total);
            *d = self.samples.get(j).copied().unwrap_or(0.0);
        }
        mel.frame_log10(&frame, scratch, column)
    }
}

/// Whisper's log-mel of one input, computed a window at a time ([`WhisperMel::log_mel_windows`]).
#[derive(Debug)]
pub struct MelWindows<'a> {
    mel: &'a WhisperMel,
    frames: FrameSource<'a>,
    /// The input's largest log10 value − 8.
    floor: f64,
}

impl MelWindows<'_> {
    /// Frames of the input with its padding.
    pub fn n_frames(&self) -> usize {
        self.frames.n_frames
    }

    /// Frames start..start + count (those before [`Self::n_frames`]) of [`WhisperMel::log_mel`]
    /// into `out`, row m at `m · stride`; the rest of `out` is left as it is.
    pub fn write(&self, start: usize, count: usize, out: &mut [f32], stride: usize) {
        let n_mels = self.mel.n_mels;
        let end = start.saturating_add(count).min(self.frames.n_frames);
        assert!(
            end <= start || (count <= stride && out.len() >= (n_mels - 1) * stride + count),
            "mel windows: {n_mels} rows of {count} frames do not fit a stride of {stride}"
        );
        let mut scratch = FrameScratch::new(self.mel);
        let mut column = vec![0f32; n_mels];
        for t in start..end {
            self.frames.log10(self.mel, t, &mut scratch, &mut column);
            normalise(&mut column, self.floor);
            for (m, &v) in column.iter().enumerate() {
                out[m * stride + t - start] = v;
            }
        }
    }
}

/// Whisper's normalisation: clamp below at `floor`, then `(x + 4) / 4`.
fn normalise(values: &mut [f32], floor: f64) {
    let floor = floor as f32;
    for v in values {
        *v = (v.max(floor) + 4.0) / 4.0;
    }
}

/// Incremental log-mel features with a fixed global maximum (Voxtral Realtime): feed samples
/// in chunks of any size and get each frame as soon as its window is complete.
///
/// The stream is assumed to start and end with at least N_FFT/2 zeros (Voxtral pads 2.56 s
/// of silence before the audio and 1.4 s after), so the centring's reflect padding is zeros
/// and every frame equals the offline [`WhisperMel::log_mel_fixed_max`] frame bit for bit.
/// Consumed samples are dropped, so an endless stream holds only the current window.
pub struct MelStream {
    /// Samples not yet consumed; `pending[0]` is sample `160 · next_frame − N_FFT/2` of the
    /// centred stream.
    pending: Vec<f32>,
    next_frame: usize,
    /// Samples pushed, excluding the centring pad.
    pushed: usize,
    floor: f64,
    scratch: FrameScratch,
}

impl std::fmt::Debug for MelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelStream")
            .field("next_frame", &self.next_frame)
            .field("pushed", &self.pushed)
            .finish_non_exhaustive()
    }
}

impl MelStream {
    /// A new stream for `mel`'s geometry, clamping at `global_log_mel_max − 8`.
    pub fn new(mel: &WhisperMel, global_log_mel_max: f32) -> Self {
        Self {
            pending: vec![0.0; N_FFT / 2],
            next_frame: 0,
            pushed: 0,
            floor: global_log_mel_max as f64 - 8.0,
            scratch: FrameScratch::new(mel),
        }
    }

    /// Frames produced so far.
    pub fn frames(&self) -> usize {
        self.next_frame
    }

    /// Appends samples; returns the newly complete frames, time-major `[t][n_mels]`.
    pub fn push(&mut self, mel: &WhisperMel, samples: &[f32]) -> Vec<f32> {
        self.pending.extend_from_slice(samples);
        self.pushed += samples.len();
        self.drain(mel, usize::MAX)
    }

    /// Ends the stream: the last frames, up to `pushed / 160` in all as offline (the centred
    /// STFT's extra frame is dropped), reading zeros past the end.
    pub fn finish(&mut self, mel: &WhisperMel) -> Vec<f32> {
        self.pending.extend(std::iter::repeat_n(0.0, N_FFT / 2));
        self.drain(mel, self.pushed / HOP_LENGTH)
    }

    fn drain(&mut self, mel: &WhisperMel, frame_limit: usize) -> Vec<f32> {
        let mut out = Vec::new();
        let mut column = vec![0f32; mel.n_mels];
        let mut used = 0;
        while self.next_frame < frame_limit && used + N_FFT <= self.pending.len() {
            mel.frame_log10(
                &self.pending[used..used + N_FFT],
                &mut self.scratch,
                &mut column,
            );
            normalise(&mut column, self.floor);
            out.extend_from_slice(&column);
            used += HOP_LENGTH;
            self.next_frame += 1;
        }
        self.pending.drain(..used);
        out
    }
}

/// Geometry of a [`LogMagnitudeMel`] (the window is `n_fft` samples long).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MelGeometry {
    /// Input rate in Hz.
    pub sample_rate: u32,
    /// FFT size and window length.
    pub n_fft: usize,
    /// Hop between frames.
    pub hop_length: usize,
    /// Number of mel bins.
    pub n_mels: usize,
    /// Lowest filter edge in Hz.
    pub fmin: f64,
    /// Highest filter edge in Hz.
    pub fmax: f64,
}

impl MelGeometry {
    /// qwen-tts `extract_speaker_embedding` (the Base checkpoints' speaker encoder input):
    /// 24 kHz, n_fft and window 1024, hop 256, 128 mels over 0–12 kHz.
    pub const QWEN3_TTS_SPEAKER: Self = Self {
        sample_rate: 24_000,
        n_fft: 1024,
        hop_length: 256,
        n_mels: 128,
        fmin: 0.0,
        fmax: 12_000.0,
    };

    /// Samples of reflect padding on each side: `(n_fft − hop) / 2`.
    fn pad(&self) -> usize {
        (self.n_fft - self.hop_length) / 2
    }
}

/// The HiFi-GAN-style log-magnitude mel spectrogram of qwen-tts `mel_spectrogram` (the
/// speaker encoder's features): reflect padding of `(n_fft − hop) / 2` samples on both sides,
/// an uncentred STFT with the periodic Hann window, magnitude `sqrt(re² + im² + 1e-9)`,
/// Slaney mel filters, `ln(max(x, 1e-5))`.
///
/// Like [`WhisperMel`], the FFT and the products run in f64 and only the result is rounded to
/// f32; torch's f32 STFT misses that exact value by up to ~2e-4 in the quietest bins (near the
/// 1e-5 floor, where the FFT's rounding error is large relative to the bin) and by ~1e-6 on
/// average.
pub struct LogMagnitudeMel {
    geometry: MelGeometry,
    /// `[n_mels][n_fft / 2 + 1]`, f32 like librosa's.
    filters: Vec<f32>,
    support: Vec<(usize, usize)>,
    /// torch.hann_window(n_fft) (periodic), as torch rounds it in f32.
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for LogMagnitudeMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMagnitudeMel")
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl LogMagnitudeMel {
    /// Feature extractor for `geometry`. Panics unless `0 < hop_length ≤ n_fft`,
    /// `n_mels > 0` and `0 ≤ fmin < fmax` (a programming error: geometries are constants).
    pub fn new(geometry: MelGeometry) -> Self {
        let g = geometry;
        assert!(
            g.hop_length > 0 && g.hop_length <= g.n_fft && g.n_mels > 0,
            "invalid mel geometry {g:?}"
        );
        assert!(0.0 <= g.fmin && g.fmin < g.fmax, "invalid mel band {g:?}");
        let n_freqs = g.n_fft / 2 + 1;
        let filters = slaney_mel_filters(g.sample_rate as f64, g.n_fft, g.n_mels, g.fmin, g.fmax);
        let support = filter_support(&filters, g.n_mels, n_freqs);
        // torch.hann_window in f32: arange · (2π / n), cos, · −0.5 + 0.5. The f64 cosine of the
        // f32 argument, rounded, is within one ulp of torch's f32 cosine.
        let step = (2.0 * std::f64::consts::PI / g.n_fft as f64) as f32;
        let window = (0..g.n_fft)
            .map(|n| {
                let c = ((n as f32 * step) as f64).cos() as f32;
                (c * -0.5 + 0.5) as f64
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(g.n_fft);
        Self {
            geometry,
            filters,
            support,
            window,
            fft,
        }
    }

    /// The geometry.
    pub fn geometry(&self) -> &MelGeometry {
        &self.geometry
    }

    /// The fewest samples that give at least `frames` frames (and at least one): torch's
    /// reflect padding needs more samples than the pad, the STFT one full window.
    pub fn min_samples(&self, frames: usize) -> usize {
        let g = &self.geometry;
        let pad = g.pad();
        let for_frames = (frames.max(1) - 1) * g.hop_length + g.n_fft;
        (pad + 1).max(for_frames.saturating_sub(2 * pad))
    }

    /// Log-mel spectrogram of mono `samples` at the geometry's rate, time-major
    /// `[frames][n_mels]` with `frames = (len + 2·pad − n_fft) / hop + 1`; `None` when there
    /// are fewer than [`Self::min_samples`]`(1)` samples (torch raises there).
    pub fn log_mel(&self, samples: &[f32]) -> Option<Vec<f32>> {
        if samples.len() < self.min_samples(1) {
            return None;
        }
        let g = &self.geometry;
        let (pad, n_fft) = (g.pad(), g.n_fft);
        let n_frames = (samples.len() + 2 * pad - n_fft) / g.hop_length + 1;
        let mut out = Vec::with_capacity(n_frames * g.n_mels);
        let mut frame = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut magnitude = vec![0f64; spec.len()];
        let n_freqs = spec.len();
        for t in 0..n_frames {
            // Frame t covers padded samples t·hop .. t·hop + n_fft, i.e. input offsets from
            // t·hop − pad; the pad is shorter than the input, so one reflection suffices.
            let first = (t * g.hop_length) as i64 - pad as i64;
            for (i, (d, &w)) in frame.iter_mut().zip(&self.window).enumerate() {
                *d = samples[reflect(first + i as i64, samples.len())] as f64 * w;
            }
            // Lengths come from the plan itself, so this cannot fail.
            self.fft
                .process_with_scratch(&mut frame, &mut spec, &mut scratch)
                .expect("FFT buffers sized by the plan");
            for (m, c) in magnitude.iter_mut().zip(&spec) {
                *m = (c.norm_sqr() + 1e-9).sqrt();
            }
            for (m, &(lo, hi)) in self.support.iter().enumerate() {
                let row = &self.filters[m * n_freqs..];
                let acc: f64 = (lo..hi).map(|k| row[k] as f64 * magnitude[k]).sum();
                out.push(acc.max(1e-5).ln() as f32);
            }
        }
        Some(out)
    }
}

/// numpy/torch "reflect" padding index (edge not repeated) for any offset,
/// folding repeatedly so even inputs shorter than the pad stay in range.
fn reflect(mut i: i64, n: usize) -> usize {
    let n = n as i64;
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_and_window() {
        let mel = WhisperMel::new(80);
        let x = vec![0.01f32; 16000];
        let lm = mel.log_mel(&x, 0);
        assert_eq!(lm.n_frames, 100);
        let lm = mel.log_mel(&x, N_SAMPLES);
        assert_eq!(lm.n_frames, 3100);
        let w = lm.window(3000, N_FRAMES);
        assert_eq!(w.n_frames, N_FRAMES);
        assert_eq!(w.get(0, 99), lm.get(0, 3099));
        assert_eq!(w.get(5, 100), 0.0);
        assert!(mel.log_mel(&[0.0; 10], 0).data.is_empty());
    }

    /// Windows computed on demand equal the whole input's log-mel cut into windows, bit for
    /// bit: inside, across the padding, past the end, empty, and for inputs shorter than one
    /// FFT (reflected) or with no padding.
    #[test]
    fn mel_windows_equal_the_whole_log_mel() {
        let mel = WhisperMel::new(80);
        let signal: Vec<f32> = (0..50_000)
            .map(|i| ((i as f32 * 0.013).sin() + (i as f32 * 0.0007).cos()) * 0.3)
            .collect();
        for (samples, padding) in [
            (&signal[..], N_SAMPLES),
            (&signal[..], 0),
            (&signal[..150], 1000),
        ] {
            let whole = mel.log_mel(samples, padding);
            let windows = mel.log_mel_windows(samples, padding);
            assert_eq!(windows.n_frames(), whole.n_frames);
            for (start, count) in [
                (0, 100),
                (17, 250),
                (whole.n_frames.saturating_sub(40), 100),
                (whole.n_frames + 5, 10),
                (3, 0),
            ] {
                let stride = count + 3;
                let mut got = vec![-9.0f32; 80 * stride];
                windows.write(start, count, &mut got, stride);
                let want = whole.window(start, count);
                for m in 0..80 {
                    for j in 0..stride {
                        let g = got[m * stride + j];
                        if j < count && start + j < whole.n_frames {
                            assert_eq!(g, want.get(m, j), "bin {m}, frame {}", start + j);
                        } else {
                            assert_eq!(g, -9.0, "bin {m}: column {j} past the frames written");
                        }
                    }
                }
            }
        }
    }

    /// Streaming frames equal the offline fixed-max frames bit for bit, for any chunking,
    /// when the signal starts and ends with silence.
    #[test]
    fn mel_stream_equals_offline() {
        let mel = WhisperMel::new(128);
        let mut x = vec![0f32; 9000];
        for (i, v) in x.iter_mut().enumerate().skip(1000).take(6000) {
            *v = (i as f32 * 0.05).sin() * 0.3 + ((i * 7919) % 13) as f32 * 0.01;
        }
        let offline = mel.log_mel_fixed_max(&x, 1.5);
        assert_eq!(offline.n_frames, 9000 / HOP_LENGTH);
        for chunk in [40, 1280, 3001, 9000] {
            let mut stream = MelStream::new(&mel, 1.5);
            let mut frames = Vec::new();
            for c in x.chunks(chunk) {
                frames.extend(stream.push(&mel, c));
            }
            frames.extend(stream.finish(&mel));
            assert_eq!(frames.len(), offline.n_frames * 128, "chunk {chunk}");
            for t in 0..offline.n_frames {
                for m in 0..128 {
                    assert_eq!(
                        frames[t * 128 + m],
                        offline.get(m, t),
                        "chunk {chunk} t {t}"
                    );
                }
            }
        }
        // Digital silence is (1.5 - 8 + 4) / 4.
        assert_eq!(offline.get(0, 0), -0.625);
    }

    /// Frame counts and the shortest accepted input of the speaker geometry (pad 384).
    #[test]
    fn log_magnitude_mel_frames() {
        let mel = LogMagnitudeMel::new(MelGeometry::QWEN3_TTS_SPEAKER);
        assert_eq!(mel.min_samples(1), 385);
        assert_eq!(mel.min_samples(5), 1280);
        let x: Vec<f32> = (0..72_000).map(|i| (i as f32 * 0.01).sin() * 0.1).collect();
        assert_eq!(mel.log_mel(&x).unwrap().len(), 281 * 128);
        assert_eq!(mel.log_mel(&x[..1280]).unwrap().len(), 5 * 128);
        assert_eq!(mel.log_mel(&x[..1279]).unwrap().len(), 4 * 128);
        assert_eq!(mel.log_mel(&x[..385]).unwrap().len(), 128);
        assert!(mel.log_mel(&x[..384]).is_none());
        // Digital silence: each bin's magnitude is sqrt(1e-9), and no filter sums to the 1e-5
        // floor over that (each sums to about 1024 / 24000), so every value is ln(1e-5).
        let silence = mel.log_mel(&[0.0; 4096]).unwrap();
        assert!(silence.iter().all(|&v| v == 1e-5f64.ln() as f32));
    }

    #[test]
    fn reflect_matches_numpy() {
        // np.pad(np.arange(5), 3, mode="reflect") -> 3 2 1 0 1 2 3 4 3 2 1
        let idx: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(idx, vec![3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
    }
}
