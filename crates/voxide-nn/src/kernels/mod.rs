//! Hand-written CPU kernels for the hot paths candle serves poorly, with runtime CPU-feature
//! dispatch and a portable fallback.

pub mod attention;
pub mod bandwidth;
pub mod conv_gemm;
pub mod convert;
pub mod fma_peak;
pub mod gemv;
pub mod gemv_int8;
pub mod machine;
pub mod ops;
pub mod quant_gemm;
pub mod quant_matmul;
pub mod simd;
pub mod small_m;
pub mod softmax;
pub mod widen_gemm;
pub mod winograd;
