//! Fused row kernels (see the crate docs). Filled in by the fused-kernels work.
