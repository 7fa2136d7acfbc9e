//! Hand-written CPU kernels for the hot paths candle serves poorly, with runtime CPU-feature
//! dispatch and a portable fallback.

pub mod attention;
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
pub mod quant_gemm;
pub mod quant_matmul;
pub mod simd;
pub mod small_m;
#[cfg(target_arch = "x86_64")]
pub mod small_m_int8;
pub mod softmax;
pub mod spin_pool;
pub mod step_heads;
pub mod widen_gemm;
pub mod winograd;

/// The `gemm` crate's f32 product with a row-major destination and left operand: dst (m × n,
/// row stride `dst_rs`) = [dst +] lhs (m × k, row stride `lhs_rs`) · rhs (k × n, element
/// (i, j) at i·`rhs_rs` + j·`rhs_cs`).
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

/// All threads for a product of at least 2¹⁶ multiply-adds, one below (splitting costs more).
pub(crate) fn gemm_parallelism(macs: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && macs >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}
