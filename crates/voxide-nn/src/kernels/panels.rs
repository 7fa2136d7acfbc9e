//! Products by matrices packed at load in panels of rows, on a micro-kernel of our own (the
//! design of BLIS: Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
//! Functionality", 2015): a panel's P rows × two vectors of columns of sums in registers, each
//! weight broadcast once per column strip. The codec's convolutions (Winograd's products, the
//! 1×1 and the transposed ones) multiply by the same few weight matrices on every chunk, so
//! they are packed once, where the `gemm` crate packs its operand again on every call. Where
//! Intel's AMX tiles run, matrices whose every weight is a bf16 value (the 1×1 and transposed
//! convolutions' taps) are packed for the tiles instead and multiplied there at f32 precision
//! ([`super::amx_f32`]); callers cut the work by [`Panels::pairs`] alike.
//!
//! ```text
//! W: batches × rows × cols, packed [batch][⌈rows / P⌉][cols][P]   (a panel's column contiguous)
//! B: cols rows of n columns (any row stride), packed per call into strips of 2 vectors
//! out[batch][r][j] = [out[batch][r][j] +] Σ_k W[batch][r][k] · B[batch][k][j]
//! ```

use super::gemv::OutPtr;
use super::machine::machine;
use super::simd::{isa_entries, Isa, Simd};
use std::cell::Cell;
use std::ops::Range;

/// f32 values in a cache line, and in the widest vector (AVX-512).
const LINE_FLOATS: usize = 16;

/// The L2 assumed where the machine does not say (the smallest seen on our kinds).
pub(crate) const UNKNOWN_L2: usize = 512 << 10;

/// Columns that make whole strips of two vectors on every instruction set (one strip of
/// AVX-512's 16 lanes, two of AVX2's 8): a caller that cuts B into blocks of a multiple of
/// this leaves a short strip only at the end.
pub(crate) const STRIP_COLUMNS: usize = 32;

/// Rows of a panel on a CPU with this instruction set: the kernel holds a panel's rows × two
/// vectors of sums in registers, beside two input vectors and a broadcast weight. 6 rows fill
/// 15 of AVX2's 16 registers; AVX-512 has 32, and 12 rows (27) measured ahead of 6 and 8 on an
/// Intel Xeon (Emerald Rapids), the codec's k7 convolutions at 96–768 channels 0.48–1.13×
/// `gemm`'s time against 0.53–1.46× with 6 rows (PERFORMANCE.md #156). NEON (32 registers)
/// keeps 6: not measured.
pub(crate) fn panel_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        _ => 6,
    }
}

/// `batches` matrices of `rows` × `cols`, packed at load for this CPU: in panels of
/// [`panel_rows`] rows for the registers' kernel, `[batch][⌈rows / P⌉][cols][P]` (the rows past
/// `rows` zero), or, where AMX tiles run and every weight is a bf16 value, as bf16 A tiles in
/// row blocks of 32 ([`super::amx_f32`]).
#[derive(Clone, Debug)]
pub(crate) struct Panels {
    form: Form,
    batches: usize,
    rows: usize,
    cols: usize,
}

#[derive(Clone, Debug)]
enum Form {
    Registers {
        data: Vec<f32>,
        panel: usize,
    },
    #[cfg(target_arch = "x86_64")]
    Tiles(super::amx_f32::TilePanels),
}

impl Panels {
    /// From row-major matrices `w[batch][row][col]`, for this CPU's kernel.
    pub(crate) fn pack(w: &[f32], batches: usize, rows: usize, cols: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::small_m::amx_bf16_tiles() {
            if let Some(tiles) = super::amx_f32::TilePanels::pack(w, batches, rows, cols) {
                return Self::tiles(tiles);
            }
        }
        Self::pack_for(panel_rows(Isa::detect()), w, batches, rows, cols)
    }

    /// The tiles' form of the same matrices.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn tiles(tiles: super::amx_f32::TilePanels) -> Self {
        let (batches, rows, cols) = tiles.shape();
        Self {
            form: Form::Tiles(tiles),
            batches,
            rows,
            cols,
        }
    }

    fn pack_for(panel: usize, w: &[f32], batches: usize, rows: usize, cols: usize) -> Self {
        assert_eq!(
            w.len(),
            batches * rows * cols,
            "panels: weights of another shape"
        );
        let panels = rows.div_ceil(panel);
        let mut data = vec![0f32; batches * panels * panel * cols];
        for (packed, matrix) in data
            .chunks_mut(panels * panel * cols)
            .zip(w.chunks(rows * cols))
        {
            for (r, row) in matrix.chunks(cols).enumerate() {
                let dst = &mut packed[r / panel * panel * cols..];
                for (k, &value) in row.iter().enumerate() {
                    dst[k * panel + r % panel] = value;
                }
            }
        }
        Self {
            form: Form::Registers { data, panel },
            batches,
            rows,
            cols,
        }
    }

    /// Panels of one matrix.
    fn panels(&self) -> usize {
        self.rows.div_ceil(self.panel())
    }

    /// (batch, panel) pairs: the units [`products`] takes, ⌈rows / P⌉ per batch in order.
    pub(crate) fn pairs(&self) -> usize {
        self.batches * self.panels()
    }

    /// Rows of a panel (of a tiles' row block).
    pub(crate) fn panel(&self) -> usize {
        match &self.form {
            Form::Registers { panel, .. } => *panel,
            #[cfg(target_arch = "x86_64")]
            Form::Tiles(_) => super::amx::BLOCK,
        }
    }

    /// The registers' kernel's panels.
    fn registers(&self) -> &[f32] {
        match &self.form {
            Form::Registers { data, .. } => data,
            #[cfg(target_arch = "x86_64")]
            Form::Tiles(_) => unreachable!("the registers' kernel on the tiles' form"),
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn bytes(&self) -> usize {
        match &self.form {
            Form::Registers { data, .. } => data.len() * 4,
            #[cfg(target_arch = "x86_64")]
            Form::Tiles(tiles) => tiles.bytes(),
        }
    }
}

/// One call's operands: `out[g][r][j]` (at g·`out_step` + r·`out_stride` + j) =
/// [out[g][r][j] +] Σ_k W_g[r][k] · b[g·`b_step` + k·`b_stride` + j], for j < n.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub w: &'a Panels,
    pub b: &'a [f32],
    pub b_stride: usize,
    pub b_step: usize,
    pub n: usize,
    pub out: OutPtr,
    pub out_stride: usize,
    pub out_step: usize,
    /// Whether the product is added to what `out` holds (a residual and bias written there
    /// row by row: read only as the sums were stored, a block's rows, a whole row of y
    /// apart, stalled the kernel), or replaces it.
    pub accumulate: bool,
}

thread_local! {
    /// The last call's packed strips, reused: the codec runs dozens of products per chunk.
    static STRIPS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Product<'_> {
    /// Pairs `pairs` (of [`Panels::pairs`]) on this thread.
    ///
    /// # Safety
    /// `out` holds every element the pairs write (their rows, columns below n), and no other
    /// thread writes those.
    pub(crate) unsafe fn run(&self, pairs: Range<usize>) {
        let (w, n) = (self.w, self.n);
        assert!(pairs.end <= w.pairs());
        if n > 0 && w.cols > 0 && w.batches > 0 {
            let last = (w.batches - 1) * self.b_step + (w.cols - 1) * self.b_stride + n;
            assert!(self.b.len() >= last, "panels: b is shorter than its extent");
        }
        // Half of L2 for a group of panels, and half for a block of strips.
        let budget = match machine().caches.l2_per_core {
            0 => UNKNOWN_L2,
            l2 => l2,
        } / 2;
        match &w.form {
            Form::Registers { .. } => {
                let mut strips = STRIPS.take();
                // SAFETY: forwarded from the caller; b's extent checked above.
                unsafe { products(Isa::detect(), *self, pairs, budget, &mut strips) };
                STRIPS.set(strips);
            }
            // SAFETY: as above; the tiles' form is packed only where they run.
            #[cfg(target_arch = "x86_64")]
            Form::Tiles(tiles) => unsafe { tiles.products(self, pairs, budget) },
        }
    }

    /// All pairs, shared out across the threads (four tasks a thread, so that they even out).
    ///
    /// # Safety
    /// `out` holds every element the pairs write, and no other thread writes those.
    pub(crate) unsafe fn run_split(&self) {
        use rayon::prelude::*;
        let pairs = self.w.pairs();
        let per_task = pairs.div_ceil(4 * rayon::current_num_threads()).max(1);
        (0..pairs.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                // SAFETY: forwarded from the caller; the tasks' pairs are disjoint.
                unsafe { self.run(task * per_task..pairs.min((task + 1) * per_task)) }
            });
    }
}

isa_entries! {
    /// [`Product::run`] on an instruction set.
    ///
    /// # Safety
    /// As [`Product::run`], with b's extent checked; panel groups and
    /// column blocks of at most `budget` bytes.
    unsafe fn products<>(
        job: Product,
        pairs: Range<usize>,
        budget: usize,
        strips: &mut Vec<f32>,
    ) => products_body
}

#[inline(always)]
unsafe fn products_body<S: Simd>(
    job: Product,
    pairs: Range<usize>,
    budget: usize,
    strips: &mut Vec<f32>,
) {
    match job.w.panel() {
        6 => job.pairs::<S, 6>(pairs, budget, strips),
        12 => job.pairs::<S, 12>(pairs, budget, strips),
        other => unreachable!("no product kernel for panels of {other}"),
    }
}

impl Product<'_> {
    /// The pairs of each batch, its columns in blocks whose strips fill at most `budget`
    /// bytes: each block packed into strips once, then the panels in groups of at most
    /// `budget` bytes, each group against every strip of the block (a group stays in L2 while
    /// the strips pass, and the block's strips while the groups pass).
    #[inline(always)]
    unsafe fn pairs<S: Simd, const P: usize>(
        &self,
        pairs: Range<usize>,
        budget: usize,
        strips: &mut Vec<f32>,
    ) {
        let (c, n) = (self.w.cols, self.n);
        let panels = self.w.panels();
        let vectors = n.div_ceil(S::LANES);
        let group = (budget / (P * c * 4).max(1)).max(1);
        let per_block = (budget / (c * S::LANES * 4).max(1) / 2 * 2).max(2);
        let mut g = pairs.start;
        while g < pairs.end {
            let batch = g / panels;
            let end = pairs.end.min((batch + 1) * panels);
            for first_vector in (0..vectors).step_by(per_block) {
                let count = per_block.min(vectors - first_vector);
                let packed = self.pack::<S>(batch, first_vector, count, strips);
                for first in (g..end).step_by(group) {
                    let mut v = 0;
                    while v < count {
                        // Strips of two vectors, the last of one where their count is odd; a
                        // strip's rows of NV vectors lie one after another from v · c vectors.
                        let strip = packed.add(v * c * S::LANES);
                        for pair in first..end.min(first + group) {
                            if count - v >= 2 {
                                self.panel_strip::<S, P, 2>(pair, strip, first_vector + v);
                            } else {
                                self.panel_strip::<S, P, 1>(pair, strip, first_vector + v);
                            }
                        }
                        v += 2;
                    }
                }
            }
            g = end;
        }
    }

    /// Vectors first..first + count of B's columns, of one batch, into `strips` from the
    /// returned address (a cache line's start, so that no load straddles two): vectors v,
    /// v + 1 of the block and row k at (v · c + 2k) vectors (the last strip, if of one
    /// vector, at v · c + k), the columns past n zero. Row by row, so that each row of B is
    /// read in order (strip by strip, every row was a new stream: 22 % of the kernel's time).
    #[inline(always)]
    unsafe fn pack<S: Simd>(
        &self,
        batch: usize,
        first: usize,
        count: usize,
        strips: &mut Vec<f32>,
    ) -> *const f32 {
        let (c, n) = (self.w.cols, self.n);
        strips.resize(count * S::LANES * c + LINE_FLOATS, 0.0);
        let start = strips.as_ptr().align_offset(LINE_FLOATS * 4);
        let strips = &mut strips[start..];
        let b = &self.b[batch * self.b_step..];
        for k in 0..c {
            let row = &b[k * self.b_stride..];
            let mut v = 0;
            while v < count {
                let nv = (count - v).min(2);
                let (j, width) = ((first + v) * S::LANES, nv * S::LANES);
                let valid = width.min(n - j);
                let dst = &mut strips[v * c * S::LANES + k * width..][..width];
                let src = &row[j..j + valid];
                if valid == width {
                    // Whole vectors: moved as such, not by a `memcpy` call per row (11 % of
                    // the codec's time when they were).
                    for i in 0..nv {
                        let at = i * S::LANES;
                        S::store(dst.as_mut_ptr().add(at), S::load(src.as_ptr().add(at)));
                    }
                } else {
                    dst[..valid].copy_from_slice(src);
                    dst[valid..].fill(0.0);
                }
                v += nv;
            }
        }
        strips.as_ptr()
    }

    /// NV vectors of columns from vector v of one pair's panel: P × NV sums in registers,
    /// each weight broadcast once per row of the strip.
    #[inline(always)]
    unsafe fn panel_strip<S: Simd, const P: usize, const NV: usize>(
        &self,
        pair: usize,
        strip: *const f32,
        v: usize,
    ) {
        let (c, rows) = (self.w.cols, self.w.rows);
        let panels = self.w.panels();
        let (batch, p) = (pair / panels, pair % panels);
        let j = v * S::LANES;
        let (first_row, last_row) = (p * P, rows.min(p * P + P));
        let acc = sums::<S, P, NV>(self.w.registers().as_ptr().add(pair * P * c), strip, c);
        let valid = (NV * S::LANES).min(self.n - j);
        for (row, acc) in (first_row..last_row).zip(&acc) {
            let at = batch * self.out_step + row * self.out_stride + j;
            let out = self.out.add(at).0;
            if valid == NV * S::LANES {
                for (i, &a) in acc.iter().enumerate() {
                    let o = out.add(i * S::LANES);
                    S::store(
                        o,
                        if self.accumulate {
                            S::add(S::load(o), a)
                        } else {
                            a
                        },
                    );
                }
            } else {
                // The last columns: through a buffer, the lanes past n dropped.
                let mut lanes = [0f32; 2 * LINE_FLOATS];
                for (i, &a) in acc.iter().enumerate() {
                    S::store(lanes.as_mut_ptr().add(i * S::LANES), a);
                }
                for (l, &value) in lanes[..valid].iter().enumerate() {
                    let o = out.add(l);
                    *o = if self.accumulate { *o + value } else { value };
                }
            }
        }
    }
}

/// One panel (P rows of c weights, a column's P contiguous) times one strip (c rows of NV
/// vectors): P × NV sums, in registers (a function of its own so that they stay there: inlined
/// beside the stores' branches they spilled to the stack on every step).
#[inline(always)]
unsafe fn sums<S: Simd, const P: usize, const NV: usize>(
    panel: *const f32,
    strip: *const f32,
    c: usize,
) -> [[S::V; NV]; P] {
    let mut acc = [[S::zero(); NV]; P];
    let (mut w, mut x) = (panel, strip);
    for _ in 0..c {
        let xs: [S::V; NV] = std::array::from_fn(|i| S::load(x.add(i * S::LANES)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = S::splat(*w.add(r));
            for (a, &x) in acc.iter_mut().zip(&xs) {
                *a = S::fma(w, x, *a);
            }
        }
        w = w.add(P);
        x = x.add(NV * S::LANES);
    }
    acc
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A product's shape, its columns' counts and how it runs, for [`check_products`].
    pub(in crate::kernels) struct Case<'a> {
        pub w: &'a [f32],
        pub packed: &'a Panels,
        pub ns: &'a [usize],
        /// The pairs `range` of `job` with groups and blocks of at most `budget` bytes.
        pub run: &'a dyn Fn(&Product, Range<usize>, usize),
    }

    pub(in crate::kernels) fn val(i: usize) -> f32 {
        ((i * 7919 % 211) as f32 / 105.0 - 1.0) * (1.0 + i as f32 * 1e-3)
    }

    /// `case` against the f64 product, within f32's rounding of a sum of k terms (with room):
    /// strided rows and batches of B and of the output, the
    /// sums stored or added, pair ranges that start and end inside a batch, and panel groups
    /// and column blocks forced small (one panel, two vectors); columns past n never written.
    pub(in crate::kernels) fn check_products(case: Case) {
        let (w, packed) = (case.w, case.packed);
        let (batches, rows, cols) = (packed.batches, packed.rows, packed.cols);
        let pairs = packed.pairs();
        for &n in case.ns {
            let (b_stride, b_step) = (batches * n + 1, n);
            let (out_stride, out_step) = (n + 2, rows * (n + 2));
            let b: Vec<f32> = (0..cols * b_stride).map(|i| val(i + 3) * 3.7).collect();
            let before: Vec<f32> = (0..batches * out_step).map(|i| val(i + 11)).collect();
            for accumulate in [false, true] {
                // One group and block, or groups of one panel and blocks of two vectors.
                for (cuts, budget) in [
                    (vec![0, pairs], 1 << 20),
                    (vec![0, 1, 4.min(pairs), pairs], 1),
                ] {
                    // Columns past n hold NaN: never read, never written.
                    let mut out: Vec<f32> = before
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| if i % out_stride < n { v } else { f32::NAN })
                        .collect();
                    for range in cuts.windows(2).filter(|r| r[0] < r[1]) {
                        let job = Product {
                            w: packed,
                            b: &b,
                            b_stride,
                            b_step,
                            n,
                            out: OutPtr(out.as_mut_ptr()),
                            out_stride,
                            out_step,
                            accumulate,
                        };
                        (case.run)(&job, range[0]..range[1], budget);
                    }
                    for g in 0..batches {
                        for r in 0..rows {
                            for j in 0..out_stride {
                                let at = g * out_step + r * out_stride + j;
                                let got = out[at];
                                if j >= n {
                                    assert!(got.is_nan(), "column {j} ≥ n = {n} written");
                                    continue;
                                }
                                let (mut want, mut size) = (0f64, 0f64);
                                for k in 0..cols {
                                    let t = w[(g * rows + r) * cols + k] as f64
                                        * b[g * b_step + k * b_stride + j] as f64;
                                    want += t;
                                    size += t.abs();
                                }
                                if accumulate {
                                    want += before[at] as f64;
                                    size += (before[at] as f64).abs();
                                }
                                let tol = 4.0 * (cols as f64).sqrt() * size * 2f64.powi(-24);
                                assert!(
                                    (got as f64 - want).abs() <= tol,
                                    "{batches} × {rows} × {cols}, n {n}, {cuts:?}, accumulate \
                                     {accumulate}: out[{g}][{r}][{j}] = {got}, want {want} \
                                     (±{tol:e})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The registers' kernel on every instruction set this CPU runs, both panel heights:
    /// panels cut short by the rows, strips of two vectors and of one, columns that end inside
    /// a vector.
    #[test]
    fn products_equal_the_definition() {
        let (batches, rows, cols) = (3, 14, 5);
        let w: Vec<f32> = (0..batches * rows * cols).map(val).collect();
        for (isa, panel) in Isa::available().into_iter().flat_map(|i| [(i, 6), (i, 12)]) {
            let packed = Panels::pack_for(panel, &w, batches, rows, cols);
            let lanes = isa.lanes();
            check_products(Case {
                w: &w,
                packed: &packed,
                ns: &[3 * lanes, 3 * lanes - 3, 5 * lanes - 2, 2 * lanes + 1, 1],
                run: &|job, range, budget| {
                    let mut strips = Vec::new();
                    // SAFETY: out holds every pair's rows and columns; one thread.
                    unsafe { products(isa, *job, range, budget, &mut strips) };
                },
            });
        }
    }
}
