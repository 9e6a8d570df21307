//! The GEMM ladder (see the crate docs). Filled in by the GEMM work.
