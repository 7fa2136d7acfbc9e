//! Winograd minimal filtering F(m, r) for stride-1 1-D convolutions over many channels (Lavin
//! & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015, with the Toom–Cook
//! construction of their `wincnn`): m outputs of an r-tap filter from α = m + r − 1 products
//! instead of m · r. Over C input and O output channels every product is an O × C GEMM column,
//! so a k7 convolution in tiles of 4 outputs does 10 / 28 of the multiply-adds of one GEMM per
//! tap; the transforms are O(α²) per tile and channel, vectorised across tiles. The products
//! run on the panel kernel (`kernels::panels`: U packed at load in panels of output
//! channels, each block of V packed into strips once), ahead of the `gemm` crate's on these
//! shapes.
//!
//! ```text
//! per tile:  V = Bᵀ d   (α × C, d: the tile's α input frames)
//!            M_f = U_f · V_f   for f < α   (U_f = Σₖ G[f][k] Wₖ: α matrices O × C, made at load)
//!            y = bias + Aᵀ M   (m × O)
//! ```
//!
//! A dilated convolution is d interleaved undilated ones (outputs j ≡ p mod d read inputs
//! ≡ p mod d), tiled per phase; the tiles of all phases share the GEMMs. Where U stays cached
//! (few channels: the codec's last blocks), each thread takes whole blocks of tiles through
//! all three stages; otherwise each stage runs across the threads (`Schedule`). f32 rounding grows
//! with the points' range: over 384 channels the largest error of F(4, 7) is ~7e-5 of the
//! outputs' RMS (F(2, 7): ~1.4e-5, for 1.75× instead of 2.8× fewer multiply-adds). Through
//! the full-size Qwen3-TTS codec decoder the waveform moves by ≤ 2.3e-7 (peak 0.03).

use super::gemv::OutPtr;
use super::machine::{machine, CacheSizes};
use super::ops::contiguous_f32;
use super::panels::{Panels, Product, UNKNOWN_L2};
use super::simd::{isa_entries, Isa, Simd};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::Cell;

/// Interpolation points after 0: magnitudes close to 1 keep the transforms' entries, and the
/// rounding they amplify, small (this order measured best for F(4, 7)).
const POINTS: [f64; 11] = [
    0.0,
    1.0,
    -1.0,
    2.0,
    -2.0,
    0.5,
    -0.5,
    3.0,
    1.0 / 3.0,
    -3.0,
    -1.0 / 3.0,
];

/// Outputs per tile.
pub const TILE: usize = 4;

/// The widest vector of f32 a path has (AVX-512): blocks hold whole vectors of it.
const MAX_LANES: usize = 16;

/// Scratch of one pass (transformed inputs and products), in bytes: a few MB, so that a pass
/// stays in the last-level cache; at least [`MIN_COLUMNS`] tiles, so that each Uₖ read from
/// memory serves many columns.
const PASS_BYTES: usize = 4 << 20;
const MIN_COLUMNS: usize = 256;

/// Columns a block takes at least where its scratch fits twice L2: four vectors, two strips
/// of the product kernel on AVX-512. Measured when `gemm` ran the products (its micro-kernel
/// as wide): on Zen 4 (1 MB L2) the codec's 16-frame chunk at 384 channels (16-column blocks
/// by half of L2) took 11.9–12.6 ms a convolution against 10.8–12.1 in blocks of 64 (scratch
/// 2 MB), at 192 channels (32) 12.3–14.3 against 12.2–13.7.
const WIDE_BLOCK: usize = 4 * MAX_LANES;

/// The largest filter the points cover in tiles of [`TILE`].
pub const MAX_TAPS: usize = POINTS.len() + 2 - TILE;

/// Calls `$f::<$s, A>($args)` with α as the constant `A`, so that the transforms' loops over
/// α unroll and their sums stay in registers (α = m + r − 1 for r = 1…[`MAX_TAPS`]).
macro_rules! with_alpha {
    ($alpha:expr, $f:ident::<$s:ty>($($arg:expr),*)) => {
        match $alpha {
            4 => $f::<$s, 4>($($arg),*),
            5 => $f::<$s, 5>($($arg),*),
            6 => $f::<$s, 6>($($arg),*),
            7 => $f::<$s, 7>($($arg),*),
            8 => $f::<$s, 8>($($arg),*),
            9 => $f::<$s, 9>($($arg),*),
            10 => $f::<$s, 10>($($arg),*),
            11 => $f::<$s, 11>($($arg),*),
            12 => $f::<$s, 12>($($arg),*),
            other => unreachable!("no Winograd transform of {other} points"),
        }
    };
}
const _: () = assert!(
    TILE == 4 && TILE + MAX_TAPS - 1 == 12,
    "with_alpha covers α = 4…12"
);

/// A stride-1, one-group convolution with r taps and dilation d, weights transformed.
#[derive(Clone, Debug)]
pub struct WinogradConv {
    /// The α matrices Uf = Σₖ G[f][k] Wₖ (O × C), packed in panels of output channels.
    u: Panels,
    bias: Vec<f32>,
    /// Aᵀ (m × α) and Bᵀ (α × α), row-major.
    at: Vec<f32>,
    bt: Vec<f32>,
    alpha: usize,
    taps: usize,
    out_channels: usize,
    in_channels: usize,
    dilation: usize,
}

/// `E(n)`: α × n, row i the powers 0..n of point i, the last row (the point at infinity) the
/// leading coefficient.
fn evaluation(alpha: usize, n: usize) -> Vec<f64> {
    let mut e = vec![0f64; alpha * n];
    for (i, &p) in POINTS[..alpha - 1].iter().enumerate() {
        for j in 0..n {
            e[i * n + j] = p.powi(j as i32);
        }
    }
    e[(alpha - 1) * n + n - 1] = 1.0;
    e
}

/// Inverse of an n × n matrix (Gauss–Jordan with partial pivoting; n ≤ 14 and well
/// conditioned by the choice of points).
fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| m[x * n + col].abs().total_cmp(&m[y * n + col].abs()))
            .expect("rows left");
        for j in 0..n {
            m.swap(col * n + j, pivot * n + j);
            inv.swap(col * n + j, pivot * n + j);
        }
        let scale = 1.0 / m[col * n + col];
        for j in 0..n {
            m[col * n + j] *= scale;
            inv[col * n + j] *= scale;
        }
        for row in (0..n).filter(|&r| r != col) {
            let f = m[row * n + col];
            if f != 0.0 {
                for j in 0..n {
                    m[row * n + j] -= f * m[col * n + j];
                    inv[row * n + j] -= f * inv[col * n + j];
                }
            }
        }
    }
    inv
}

/// How one call's columns (tiles) are spread over the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// Passes of `columns`, each stage of a pass on all threads: the input transform and the
    /// output transform split by channel, the products by (f, panel of U) pairs. U is read
    /// once per pass, shared: right where it is too large to stay cached.
    Passes { columns: usize },
    /// Blocks of `columns`, each block transformed, multiplied and written back by one thread:
    /// no fork-join per stage or per Uf product, and the block's scratch in that core's L2
    /// (half of it, or up to twice it for blocks of [`WIDE_BLOCK`] columns).
    /// Every block reads all of U, so U must stay cached. Measured on Zen 4, 2 threads, a
    /// 16-frame codec chunk's k7 convolutions: 96 channels 21 → 12 ms (d = 1), 34 → 14 ms
    /// (d = 9); 192 channels 20 → 13, 28 → 14 ms (phase by phase, before the columns were
    /// interleaved).
    Blocks { columns: usize },
}

impl Schedule {
    /// `u_bytes` of transformed weights, `column_bytes` of scratch per column (its α inputs
    /// and α products over all channels), `columns` in all, on `threads` threads of a machine
    /// with these caches.
    fn choose(
        u_bytes: usize,
        column_bytes: usize,
        columns: usize,
        threads: usize,
        caches: &CacheSizes,
    ) -> Self {
        let passes = Self::Passes {
            columns: (PASS_BYTES / column_bytes).max(MIN_COLUMNS),
        };
        let l2 = if caches.l2_per_core > 0 {
            caches.l2_per_core
        } else {
            UNKNOWN_L2
        };
        // Each thread re-reads U for every block it takes: U has to stay in this thread's
        // share of the caches beside the activations (half of it, at most: on Zen 4, with 16
        // MB a thread, the codec's 384-channel convolutions (U 5.9 MB) gain from blocks, its
        // 768-channel ones (23.6 MB) lose: chunks of 16 frames 21.0–21.7 ms a frame against
        // 23.0–25.5 with passes at 384 channels, 24.1–26.5 with blocks at 768 too).
        let cached = (caches.l3 / threads.max(1)).max(l2);
        if u_bytes > cached / 2 {
            return passes;
        }
        // Half of L2 for the block's scratch, in whole vectors of columns.
        let per_block = (l2 / 2 / column_bytes / MAX_LANES * MAX_LANES).max(MAX_LANES);
        // At least two blocks a thread, so that the last blocks even out.
        let shared = |block: usize| columns.div_ceil(block) >= 2 * threads.max(1);
        // Wider blocks where their scratch stays within twice L2 and they are still shared.
        let wide = per_block.max(WIDE_BLOCK);
        if wide * column_bytes <= 2 * l2 && shared(wide) {
            Self::Blocks { columns: wide }
        } else if shared(per_block) {
            Self::Blocks { columns: per_block }
        } else {
            passes
        }
    }
}

/// n columns rounded up to whole vectors of this CPU's kernels: the scratch rows' length.
fn whole_vectors(n: usize) -> usize {
    n.next_multiple_of(Isa::detect().lanes())
}

thread_local! {
    /// The last call's transformed inputs and products. Taken, not borrowed: a rayon thread
    /// that runs another convolution while waiting finds them empty.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

impl WinogradConv {
    /// From tap-major weights `taps[k][o][c]` (as [`super::conv_gemm::ConvTaps`]) and a bias;
    /// `None` for filters longer than [`MAX_TAPS`].
    pub fn new(
        taps: &[f32],
        bias: &[f32],
        out_channels: usize,
        in_channels: usize,
        kernel: usize,
        dilation: usize,
    ) -> Option<Self> {
        if kernel == 0 || kernel > MAX_TAPS || dilation == 0 {
            return None;
        }
        let (m, r) = (TILE, kernel);
        let alpha = m + r - 1;
        // Correlation y_i = Σₖ gₖ d_{i+k} is the transpose of the polynomial product
        // c = E(α)⁻¹ [(E(r) g) ⊙ (E(m) h)]: y = E(m)ᵀ [(E(r) g) ⊙ (E(α)⁻ᵀ d)].
        let g = evaluation(alpha, r);
        let em = evaluation(alpha, m);
        let inv = inverse(&evaluation(alpha, alpha), alpha);
        let at = (0..m * alpha)
            .map(|idx| em[(idx % alpha) * m + idx / alpha] as f32)
            .collect();
        let bt = (0..alpha * alpha)
            .map(|idx| inv[(idx % alpha) * alpha + idx / alpha] as f32)
            .collect();
        let oc = out_channels * in_channels;
        let mut u = vec![0f32; alpha * oc];
        for (f, uf) in u.chunks_mut(oc).enumerate() {
            let mut acc = vec![0f64; oc];
            for k in 0..r {
                let gk = g[f * r + k];
                if gk != 0.0 {
                    for (a, &w) in acc.iter_mut().zip(&taps[k * oc..(k + 1) * oc]) {
                        *a += gk * w as f64;
                    }
                }
            }
            for (u, a) in uf.iter_mut().zip(acc) {
                *u = a as f32;
            }
        }
        Some(Self {
            u: Panels::pack(&u, alpha, out_channels, in_channels),
            bias: bias.to_vec(),
            at,
            bt,
            alpha,
            taps: r,
            out_channels,
            in_channels,
            dilation,
        })
    }

    /// x (C × len, row-major) → y (O × t), t = len − (r − 1) · d ≥ 1.
    pub fn forward(&self, x: &[f32], len: usize, y: &mut [f32]) {
        let column_bytes = self.alpha * (self.in_channels + self.out_channels) * 4;
        self.forward_with(x, len, y, |columns| {
            Schedule::choose(
                self.u.bytes(),
                column_bytes,
                columns,
                rayon::current_num_threads(),
                &machine().caches,
            )
        });
    }

    /// [`Self::forward`] on the schedule that `schedule` picks for the number of columns.
    fn forward_with(
        &self,
        x: &[f32],
        len: usize,
        y: &mut [f32],
        schedule: impl FnOnce(usize) -> Schedule,
    ) {
        let (o, c, d) = (self.out_channels, self.in_channels, self.dilation);
        let field = (self.taps - 1) * d + 1;
        assert!(
            len >= field && x.len() == c * len,
            "winograd: x must be {c} rows of at least {field} frames"
        );
        let t = len + 1 - field;
        assert_eq!(
            y.len(),
            o * t,
            "winograd: y must be {o} rows of {t} outputs"
        );
        // Column ℓ is tile ⌊ℓ / d⌋ of phase ℓ mod d (the phases interleaved tile by tile, each
        // as long as the first): its outputs are s(ℓ) + d·i for i < m, s(ℓ) = m·d·⌊ℓ / d⌋ +
        // ℓ mod d, and d columns on is the same phase's next tile. A block of consecutive
        // columns thus reads and writes runs of d consecutive samples (one phase's tiles
        // alone would read every (m·d)-th sample: at d = 9 each sample's cache line came from
        // memory 9 times), and a few tiles of each phase fill whole vectors together.
        let columns = (t.div_ceil(d).div_ceil(TILE) * d).max(1);
        let rows = OutPtr(y.as_mut_ptr());
        match schedule(columns) {
            Schedule::Blocks { columns: per_block } => (0..columns.div_ceil(per_block))
                .into_par_iter()
                .for_each(|block| {
                    let start = block * per_block;
                    let n = per_block.min(columns - start);
                    self.columns(x, len, start, n, (rows, t), false);
                }),
            Schedule::Passes { columns: per_pass } => {
                for start in (0..columns).step_by(per_pass) {
                    let n = per_pass.min(columns - start);
                    self.columns(x, len, start, n, (rows, t), true);
                }
            }
        }
    }

    /// Columns start..start + n through the three stages, into y's rows of t outputs; with
    /// `split`, each stage across the threads, else all on this one.
    fn columns(
        &self,
        x: &[f32],
        len: usize,
        start: usize,
        n: usize,
        (rows, t): (OutPtr, usize),
        split: bool,
    ) {
        let (o, c, alpha) = (self.out_channels, self.in_channels, self.alpha);
        // A parallel iterator never split runs inline, on the calling thread.
        let min_len = if split { 4 } else { usize::MAX };
        // The scratch rows hold whole vectors: the columns past n are transformed and
        // multiplied (finite: the inputs past the block are real or zero) but never written.
        let np = whole_vectors(n);
        // This thread's scratch from the last call: fresh 4 MB buffers cost a page fault per
        // 4 kB and a zero fill on every call (the codec runs 13 of these convolutions per chunk).
        let (mut v, mut products) = SCRATCH.take();
        v.resize(c * alpha * np, 0f32);
        products.resize(o * alpha * np, 0f32);
        v.par_chunks_mut(alpha * np)
            .zip(x.par_chunks(len))
            .with_min_len(min_len)
            .for_each_init(Vec::new, |staging, (vc, xc)| {
                self.transform_inputs(xc, len, start, n, vc, staging)
            });
        self.multiply(&v, np, &mut products, split);
        products
            .par_chunks(alpha * np)
            .zip(&self.bias)
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(Vec::new, |staging, (oo, (po, &bias))| {
                // SAFETY: row oo of y; these columns' outputs are written by this call
                // alone, each row's by one task.
                unsafe {
                    self.transform_outputs(po, bias, start, n, t, rows.add(oo * t).0, staging)
                }
            });
        SCRATCH.set((v, products));
    }

    /// Calls `run(entry, sample, count)` over entries 0..count of a row of columns from
    /// `column`: entry e stands for sample s(column + e) + `offset`, s(ℓ) = m·d·⌊ℓ / d⌋ +
    /// ℓ mod d the first output of column ℓ; the d columns of a tile have consecutive samples,
    /// so each call is one contiguous run.
    fn runs(
        &self,
        column: usize,
        count: usize,
        offset: usize,
        mut run: impl FnMut(usize, usize, usize),
    ) {
        let d = self.dilation;
        let (mut entry, mut tile, mut phase) = (0, column / d, column % d);
        while entry < count {
            let len = (d - phase).min(count - entry);
            run(entry, TILE * d * tile + phase + offset, len);
            entry += len;
            (tile, phase) = (tile + 1, 0);
        }
    }

    /// Columns start..start + n of one input channel: vc[f][u] = Σₖ Bᵀ[f][k] · xc[s + d·k]
    /// for s = s(start + u) (0 past the input), u < [`whole_vectors`]`(n)` (vc's rows),
    /// `residues` a scratch.
    fn transform_inputs(
        &self,
        xc: &[f32],
        len: usize,
        start: usize,
        n: usize,
        vc: &mut [f32],
        residues: &mut Vec<f32>,
    ) {
        let (alpha, d) = (self.alpha, self.dilation);
        // residues[ρ][u] = x[s(start + u) + d·ρ]: input k of column start + u is
        // residues[k mod m][u + d·(k / m)] (d columns on is the same phase's next tile), so
        // every input row is contiguous (rows padded with zeros for whole vectors).
        let width = n + (alpha - 1) / TILE * d;
        let np = whole_vectors(n);
        let span = np + (alpha - 1) / TILE * d;
        residues.resize(TILE * span, 0f32);
        for (rho, row) in residues.chunks_mut(span).enumerate() {
            if d == 1 {
                // Runs of one sample: a strided copy, the index arithmetic out of the loop.
                let first = TILE * start + rho;
                let inside = len.saturating_sub(first).div_ceil(TILE).min(width);
                if inside > 0 {
                    let src = xc[first..].iter().step_by(TILE);
                    for (r, &value) in row[..inside].iter_mut().zip(src) {
                        *r = value;
                    }
                }
                row[inside..].fill(0.0);
            } else {
                self.runs(start, width, d * rho, |entry, sample, count| {
                    let inside = len.saturating_sub(sample).min(count);
                    if inside > 0 {
                        row[entry..entry + inside].copy_from_slice(&xc[sample..sample + inside]);
                    }
                    row[entry + inside..entry + count].fill(0.0);
                });
                row[width..].fill(0.0);
            }
        }
        input_tiles(Isa::detect(), &self.bt, alpha, residues, span, d, np, vc);
    }

    /// products[o][f][col] = Σ_c U_f[o][c] · v[c][f][col] for col < n (a multiple of
    /// the vector; v's and products' rows hold α · n values), one (f, panel of U) pair after
    /// another, those of one f together so that its block of v is packed once; with `split`,
    /// the pairs across the threads.
    fn multiply(&self, v: &[f32], n: usize, products: &mut [f32], split: bool) {
        let (o, c, alpha) = (self.out_channels, self.in_channels, self.alpha);
        assert!(v.len() >= c * alpha * n && products.len() >= o * alpha * n);
        let job = Product {
            w: &self.u,
            b: v,
            b_stride: alpha * n,
            b_step: n,
            n,
            out: OutPtr(products.as_mut_ptr()),
            out_stride: alpha * n,
            out_step: n,
            accumulate: false,
        };
        // SAFETY: products holds o rows of α · n values (asserted), and each pair writes its
        // own rows' block f.
        unsafe {
            if split {
                job.run_split();
            } else {
                job.run(0..self.u.pairs());
            }
        }
    }

    /// Columns start..start + n of one output channel: yo[s(start + u) + d·i] =
    /// bias + Σ_f Aᵀ[i][f] · po[f][u], for outputs below t (po's rows: [`whole_vectors`]`(n)`);
    /// `rows` a scratch.
    ///
    /// # Safety
    /// `yo` is a row of t outputs, and no other thread writes these columns' outputs.
    #[allow(clippy::too_many_arguments)]
    unsafe fn transform_outputs(
        &self,
        po: &[f32],
        bias: f32,
        start: usize,
        n: usize,
        t: usize,
        yo: *mut f32,
        rows: &mut Vec<f32>,
    ) {
        let (alpha, d) = (self.alpha, self.dilation);
        // rows[i][u]: output i of column start + u.
        let span = whole_vectors(n);
        rows.resize(TILE * span, 0f32);
        output_tiles(Isa::detect(), &self.at, alpha, po, span, bias, rows);
        for (i, row) in rows.chunks(span).enumerate() {
            if d == 1 {
                // Output i of each tile is every TILE-th sample from its first.
                let first = TILE * start + i;
                for (u, &value) in row[..t.saturating_sub(first).div_ceil(TILE).min(n)]
                    .iter()
                    .enumerate()
                {
                    // SAFETY: output first + TILE·u < t exists.
                    unsafe { *yo.add(first + TILE * u) = value };
                }
            } else {
                self.runs(start, n, d * i, |entry, sample, count| {
                    let inside = t.saturating_sub(sample).min(count);
                    if inside > 0 {
                        // SAFETY: outputs sample..sample + inside < t exist.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                row[entry..].as_ptr(),
                                yo.add(sample),
                                inside,
                            )
                        };
                    }
                });
            }
        }
    }
}

isa_entries! {
    /// One segment of one channel's input transform: out[f·n + i] = Σₖ Bᵀ[f][k] ·
    /// residues[k mod m][i + k / m] for i < n, a multiple of the vector.
    fn input_tiles<>(
        bt: &[f32],
        alpha: usize,
        residues: &[f32],
        span: usize,
        step: usize,
        n: usize,
        out: &mut [f32],
    ) => input_body
}

#[inline(always)]
unsafe fn input_body<S: Simd>(
    bt: &[f32],
    alpha: usize,
    residues: &[f32],
    span: usize,
    step: usize,
    n: usize,
    out: &mut [f32],
) {
    // Every row read below ends within a row of `span` ≥ n plus the reach ((α − 1) / m) ·
    // step, and every store within out's α blocks of n, in whole vectors.
    assert!(n.is_multiple_of(S::LANES));
    assert!(residues.len() >= TILE * span && span >= n + (alpha - 1) / TILE * step);
    assert!(bt.len() == alpha * alpha && out.len() >= alpha * n);
    with_alpha!(
        alpha,
        input_vectors::<S>(bt, residues.as_ptr(), span, step, n, out.as_mut_ptr())
    )
}

/// [`input_body`] for α = `A`: each input vector is loaded once and feeds the α sums, which
/// are independent, so their FMAs overlap (one sum at a time, a chain of α dependent FMAs
/// behind a branch per zero coefficient, ran the codec's 96-channel transforms at ~1/8 of the
/// FMA rate). The zeros of Bᵀ are multiplied, not skipped: for finite inputs the same values.
#[inline(always)]
unsafe fn input_vectors<S: Simd, const A: usize>(
    bt: &[f32],
    rows: *const f32,
    span: usize,
    step: usize,
    n: usize,
    out: *mut f32,
) {
    for u0 in (0..n).step_by(S::LANES) {
        let mut acc = [S::zero(); A];
        for k in 0..A {
            let input = S::load(rows.add((k % TILE) * span + u0 + k / TILE * step));
            for (f, acc) in acc.iter_mut().enumerate() {
                *acc = S::fma(S::splat(bt[f * A + k]), input, *acc);
            }
        }
        for (f, &acc) in acc.iter().enumerate() {
            S::store(out.add(f * n + u0), acc);
        }
    }
}

isa_entries! {
    /// One output channel's transform: rows[i][u] = bias + Σ_f Aᵀ[i][f] · products[f·n + u]
    /// for u < n, a multiple of the vector (rows of n).
    fn output_tiles<>(
        at: &[f32],
        alpha: usize,
        products: &[f32],
        n: usize,
        bias: f32,
        rows: &mut [f32],
    ) => output_body
}

#[inline(always)]
unsafe fn output_body<S: Simd>(
    at: &[f32],
    alpha: usize,
    products: &[f32],
    n: usize,
    bias: f32,
    rows: &mut [f32],
) {
    assert!(n.is_multiple_of(S::LANES));
    assert!(at.len() == TILE * alpha && products.len() >= alpha * n && rows.len() >= TILE * n);
    with_alpha!(alpha, output_vectors::<S>(at, products, n, bias, rows))
}

/// [`output_body`] for α = `A`: each product vector is loaded once and feeds the tile's
/// [`TILE`] independent sums (as [`input_vectors`] does).
#[inline(always)]
unsafe fn output_vectors<S: Simd, const A: usize>(
    at: &[f32],
    products: &[f32],
    n: usize,
    bias: f32,
    rows: &mut [f32],
) {
    for u0 in (0..n).step_by(S::LANES) {
        let mut acc = [S::splat(bias); TILE];
        for f in 0..A {
            let m = S::load(products.as_ptr().add(f * n + u0));
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = S::fma(S::splat(at[i * A + f]), m, *acc);
            }
        }
        for (i, &acc) in acc.iter().enumerate() {
            S::store(rows.as_mut_ptr().add(i * n + u0), acc);
        }
    }
}

/// candle op over a contiguous f32 (batch, C, len) input → (batch, O, len − (r − 1)·d).
impl CustomOp1 for WinogradConv {
    fn name(&self) -> &'static str {
        "conv1d-winograd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = contiguous_f32("conv1d-winograd", s, l)?;
        let (batch, c, len) = l.shape().dims3()?;
        if c != self.in_channels {
            candle_core::bail!(
                "conv1d-winograd: {c} input channels, the kernel has {}",
                self.in_channels
            );
        }
        let t = (len + 1).saturating_sub((self.taps - 1) * self.dilation + 1);
        let o = self.out_channels;
        let mut y = vec![0f32; batch * o * t];
        if t > 0 {
            for (yb, xb) in y.chunks_mut(o * t).zip(v.chunks(c * len)) {
                self.forward(xb, len, yb);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, o, t))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition in f64: kernels of 1 to MAX_TAPS taps, dilations, output
    /// lengths that do and do not fill the last tile of each phase (phases of unequal length),
    /// on the schedule the machine picks and on both schedules forced, with passes and blocks
    /// that end inside a tile's phases.
    #[test]
    fn equals_the_direct_convolution() {
        let val = |i: usize| ((i * 7919 % 211) as f32 / 105.0) - 1.0;
        for &(c, o, k, d, t) in &[
            (3, 2, 7, 1, 1),
            (5, 4, 7, 1, 13),
            (8, 6, 7, 3, 40),
            (16, 8, 7, 9, 37),
            (4, 5, 5, 2, 9),
            (6, 3, 3, 1, 10),
            (2, 2, 1, 1, 6),
            (64, 32, 7, 1, 5000),
            (3, 2, MAX_TAPS, 2, 21),
            // The other filter lengths, so that every α the transforms take has run.
            (3, 4, 2, 1, 11),
            (4, 3, 4, 3, 17),
            (5, 2, 6, 1, 9),
            (2, 3, 8, 2, 14),
        ] {
            let len = t + (k - 1) * d;
            let x: Vec<f32> = (0..c * len).map(val).collect();
            let w: Vec<f32> = (0..k * o * c).map(|i| val(i + 77) * 0.3).collect();
            let bias: Vec<f32> = (0..o).map(|i| val(i + 5)).collect();
            let conv = WinogradConv::new(&w, &bias, o, c, k, d).expect("supported");
            let forced = [
                Some(Schedule::Passes { columns: 3 }),
                Some(Schedule::Passes { columns: 1000 }),
                Some(Schedule::Blocks { columns: 1 }),
                Some(Schedule::Blocks { columns: 5 }),
                Some(Schedule::Blocks { columns: 16 }),
            ];
            for schedule in std::iter::once(None).chain(forced) {
                let mut y = vec![f32::NAN; o * t];
                match schedule {
                    None => conv.forward(&x, len, &mut y),
                    Some(s) => conv.forward_with(&x, len, &mut y, |_| s),
                }
                for oo in 0..o {
                    for j in 0..t {
                        let mut want = bias[oo] as f64;
                        for kk in 0..k {
                            for cc in 0..c {
                                want += w[(kk * o + oo) * c + cc] as f64
                                    * x[cc * len + j + kk * d] as f64;
                            }
                        }
                        let got = y[oo * t + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({c}, {o}, k{k}, d{d}, t{t}, {schedule:?}) y[{oo}][{j}] = {got}, \
                             want {want}"
                        );
                    }
                }
            }
        }
        assert!(WinogradConv::new(&[0.0; 20], &[0.0], 1, 1, MAX_TAPS + 1, 1).is_none());
    }

    /// The rounding stated above, at a codec's width: over 384 channels of random weights and
    /// inputs, a k7 filter's largest error stays within 1.5e-4 of the outputs' RMS (7e-5
    /// measured).
    #[test]
    fn rounding_stays_small_over_many_channels() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let (c, o, k, t) = (384, 384, 7, 64);
        let len = t + k - 1;
        let x: Vec<f32> = (0..c * len).map(|_| random()).collect();
        let w: Vec<f32> = (0..k * o * c).map(|_| random() * 0.05).collect();
        let conv = WinogradConv::new(&w, &vec![0.0; o], o, c, k, 1).expect("supported");
        let mut y = vec![0f32; o * t];
        conv.forward(&x, len, &mut y);
        let (mut worst, mut power) = (0f64, 0f64);
        for oo in 0..o {
            for j in 0..t {
                let want: f64 = (0..k)
                    .flat_map(|kk| (0..c).map(move |cc| (kk, cc)))
                    .map(|(kk, cc)| w[(kk * o + oo) * c + cc] as f64 * x[cc * len + j + kk] as f64)
                    .sum();
                worst = worst.max((y[oo * t + j] as f64 - want).abs());
                power += want * want;
            }
        }
        let rms = (power / (o * t) as f64).sqrt();
        assert!(worst < 1.5e-4 * rms, "largest error {worst}, RMS {rms}");
    }

    /// The schedule from the machine's caches: blocks per thread where U stays cached and
    /// there are enough blocks to share, passes otherwise; blocks of at least 64 columns
    /// where their scratch fits twice L2, else sized to half of L2.
    #[test]
    fn schedule_follows_the_caches() {
        let zen4 = CacheSizes {
            l1d_per_core: 32 << 10,
            l2_per_core: 1 << 20,
            l3: 32 << 20,
        };
        let xeon = CacheSizes {
            l1d_per_core: 48 << 10,
            l2_per_core: 2 << 20,
            l3: 480 << 20,
        };
        let unknown = CacheSizes {
            l1d_per_core: 0,
            l2_per_core: 0,
            l3: 0,
        };
        let small_l2 = CacheSizes {
            l1d_per_core: 32 << 10,
            l2_per_core: 256 << 10,
            l3: 64 << 20,
        };
        use Schedule::{Blocks, Passes};
        // (channels C = O of a k7 convolution (α = 10), columns, caches, schedule)
        for (channels, columns, caches, want) in [
            // The codec's blocks in a 16-frame chunk: 96 channels, 7680 columns; 192, 2560;
            // 384, 640.
            (96, 7680, &zen4, Blocks { columns: 64 }),
            (192, 2560, &zen4, Blocks { columns: 64 }),
            (384, 640, &zen4, Blocks { columns: 64 }),
            // A 1-frame chunk's 192 channels: too few columns for two wide blocks a thread,
            // enough for two by half of L2; at 96 columns not even those.
            (192, 160, &zen4, Blocks { columns: 32 }),
            (192, 96, &zen4, Passes { columns: 273 }),
            // 768 channels: U (23.6 MB) would be re-read from memory by every block on a
            // 32 MB L3, not on a 480 MB one.
            (768, 128, &zen4, Passes { columns: 256 }),
            (768, 1024, &xeon, Blocks { columns: 64 }),
            // A small L2: wide blocks' scratch (983 KB) past twice its size.
            (192, 2560, &small_l2, Blocks { columns: 16 }),
            // Unknown caches: blocks only where U fits half of the assumed 512 KB L2.
            (32, 7680, &unknown, Blocks { columns: 96 }),
            (96, 7680, &unknown, Passes { columns: 546 }),
        ] {
            let (u, column) = (10 * channels * channels * 4, 10 * 2 * channels * 4);
            assert_eq!(
                Schedule::choose(u, column, columns, 2, caches),
                want,
                "{channels} channels, {columns} columns, {caches:?}"
            );
        }
    }
}
