//! Hand-written CPU kernels for the hot paths candle serves poorly, with runtime CPU-feature
//! dispatch and a portable fallback.

pub mod attention;
pub mod gemv;
