//! Hand-written CPU kernels for the hot paths candle serves poorly, with runtime CPU-feature
//! dispatch and a portable fallback.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
pub mod amx_bf16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx_f32;
#[cfg(target_arch = "x86_64")]
pub mod amx_int8;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod attention_many_rows;
pub mod bandwidth;
pub mod conv_gemm;
pub mod convert;
pub mod fma_peak;
pub mod gemv;
pub mod gemv_bf16;
pub mod gemv_int8;
pub mod machine;
mod next_matrix;
pub mod ops;
pub(crate) mod panels;
pub mod quant_gemm;
pub mod quant_matmul;
pub mod simd;
pub mod small_m;
#[cfg(target_arch = "x86_64")]
pub mod small_m_bf16;
#[cfg(target_arch = "x86_64")]
pub mod small_m_int8;
pub mod softmax;
pub mod spin_pool;
pub mod step_heads;
pub mod widen_gemm;
pub mod winograd;

/// Most columns for which a parallel product reads its left operand as the GEMV's weights
/// (all the rows of x the GEMV takes): the `gemm` crate runs such thin products at a fraction
/// of its rate (`cargo bench -p voxide-nn --bench gemv -- thin`, weights from memory, AMD Zen
/// 4, 2 threads: 768 × 768 by 2–4 columns 0.29–0.31 ms against the GEMV's 0.10–0.13, 1536 ×
/// 1024 0.52–0.54 against 0.23–0.31; by 8 columns, padded to 16, 0.21–0.23 against 0.14–0.15
/// and 0.42–0.47 against 0.37–0.41).
const GEMV_COLUMNS: usize = gemv::MAX_ROWS;

/// Below this many columns, `gemm` runs a product whose columns are not a multiple of
/// [`COLUMN_QUANTUM`] slower than the same product padded to one (the same bench: 768 × 768
/// by 9–12 columns 0.32 ms, padded to 16 0.23–0.26; by 24 0.41, padded to 32 0.34; 1536 × 1024
/// by 9–12 0.47–0.56 against 0.42–0.45; from 24–32 columns on, even).
const PADDED_COLUMNS_BELOW: usize = 32;
const COLUMN_QUANTUM: usize = 16;

/// f32 product with a row-major destination and left operand: dst (m × n, row stride
/// `dst_rs`) = [dst +] lhs (m × k, row stride `lhs_rs`) · rhs (k × n, element (i, j) at
/// i·`rhs_rs` + j·`rhs_cs`). The `gemm` crate's, except for the few columns it runs slowly
/// (a streaming codec's short chunks): up to [`GEMV_COLUMNS`] the GEMV, up to
/// [`PADDED_COLUMNS_BELOW`] `gemm` on columns padded with zeros.
///
/// # Safety
/// Each pointer must be valid for every element its extent and strides reach.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    let parallel = !matches!(parallelism, gemm::Parallelism::None);
    let thin = parallel && m > 0 && k > 0 && n > 0 && n < PADDED_COLUMNS_BELOW;
    if thin && n <= GEMV_COLUMNS && lhs_rs == k {
        // SAFETY: forwarded from the caller.
        return unsafe {
            gemv_product(
                (m, n, k),
                dst,
                dst_rs,
                accumulate,
                lhs,
                rhs,
                (rhs_rs, rhs_cs),
            )
        };
    }
    if thin && !n.is_multiple_of(COLUMN_QUANTUM) {
        let padded = n.next_multiple_of(COLUMN_QUANTUM);
        let mut b = vec![0f32; k * padded];
        for (i, row) in b.chunks_mut(padded).enumerate() {
            for (j, v) in row[..n].iter_mut().enumerate() {
                // SAFETY: (i, j) is inside rhs's extent.
                *v = unsafe { *rhs.add(i * rhs_rs + j * rhs_cs) };
            }
        }
        let mut c = vec![0f32; m * padded];
        if accumulate {
            for (i, row) in c.chunks_mut(padded).enumerate() {
                // SAFETY: row i of dst holds n values.
                row[..n]
                    .copy_from_slice(unsafe { std::slice::from_raw_parts(dst.add(i * dst_rs), n) });
            }
        }
        // SAFETY: c (m × padded) and b (k × padded) are row-major buffers of that size (and
        // `padded`, a multiple of the quantum, takes the `gemm` crate below).
        unsafe {
            gemm_f32(
                (m, padded, k),
                c.as_mut_ptr(),
                padded,
                accumulate,
                lhs,
                lhs_rs,
                b.as_ptr(),
                (padded, 1),
                parallelism,
            );
        }
        for (i, row) in c.chunks(padded).enumerate() {
            // SAFETY: row i of dst holds n values.
            unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n) }
                .copy_from_slice(&row[..n]);
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// [`gemm_f32`] by the GEMV: lhs (m × k, contiguous rows) as the weights, rhs's n ≤
/// [`gemv::MAX_ROWS`] columns as the rows of x.
///
/// # Safety
/// As [`gemm_f32`], with `lhs` holding m · k contiguous values.
unsafe fn gemv_product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let mut x = vec![0f32; n * k];
    for (j, row) in x.chunks_mut(k).enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            // SAFETY: (i, j) is inside rhs's extent.
            *v = unsafe { *rhs.add(i * rhs_rs + j * rhs_cs) };
        }
    }
    let mut y = vec![0f32; n * m];
    // SAFETY: the caller guarantees m · k values at lhs.
    let w = gemv::WeightMatrix::new(unsafe { std::slice::from_raw_parts(lhs, m * k) }, m, k);
    gemv::gemv(&x, &w, None, &mut y, n);
    for i in 0..m {
        // SAFETY: row i of dst holds n values.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n) };
        for (j, v) in row.iter_mut().enumerate() {
            let p = y[j * m + i];
            *v = if accumulate { *v + p } else { p };
        }
    }
}

/// All threads for a product of at least 2¹⁶ multiply-adds, one below (splitting costs more).
pub(crate) fn gemm_parallelism(macs: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && macs >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of [`gemm_f32`] (the GEMV for thin products, padded columns, `gemm` as it
    /// is) against the definition, with and without accumulation, on a strided right operand
    /// and destination.
    #[test]
    fn every_product_path_equals_the_definition() {
        let (m, k) = (37, 29);
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
            .collect();
        for n in [1, 3, 4, 5, 8, 9, 16, 17, 31, 32, 40] {
            // rhs (k × n) stored transposed: element (i, j) at j·k + i.
            let rhs: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) / 4.0)
                .collect();
            for accumulate in [false, true] {
                for parallelism in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
                    let dst_rs = n + 3;
                    let start: Vec<f32> = (0..m * dst_rs).map(|i| (i % 13) as f32).collect();
                    let mut dst = start.clone();
                    // SAFETY: every operand holds the extent its strides reach.
                    unsafe {
                        gemm_f32(
                            (m, n, k),
                            dst.as_mut_ptr(),
                            dst_rs,
                            accumulate,
                            lhs.as_ptr(),
                            k,
                            rhs.as_ptr(),
                            (1, k),
                            parallelism,
                        );
                    }
                    for i in 0..m {
                        for j in 0..dst_rs {
                            let got = dst[i * dst_rs + j];
                            let want = if j < n {
                                let p: f32 = (0..k).map(|t| lhs[i * k + t] * rhs[j * k + t]).sum();
                                p + if accumulate {
                                    start[i * dst_rs + j]
                                } else {
                                    0.0
                                }
                            } else {
                                // Past the n columns, dst is untouched.
                                start[i * dst_rs + j]
                            };
                            assert!(
                                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                                "n {n}, accumulate {accumulate}: ({i}, {j}) = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
