//! # tt-profile
//!
//! Measure before optimizing (course module 15). Works on any [`tt_tensor::Module`] through the
//! tensor library's op hook — no list of known layer types.
//!
//! - [`params`]: total, trainable, per-layer parameter counts and bytes.
//! - [`profiler`]: every op's name, layer, shapes, FLOPs, bytes and wall time; a summary table like
//!   `torch.profiler`'s; a Chrome trace (Perfetto / chrome://tracing).
//! - [`flops`]: analytic counts for linear, conv2d, attention and the whole GPT, with the Kaplan
//!   comparison and an explicit causal-mask convention.
//! - [`alloc`]: a counting global allocator for measured peak heap.
//! - [`stats`]: latency statistics (interpolated and MLPerf percentiles, bootstrap CI of the
//!   median, Tukey outlier labels).
//! - [`roofline`]: measured peak FLOP/s and STREAM bandwidth, and where each op sits.

pub mod alloc;
pub mod flops;
pub mod params;
pub mod profiler;
pub mod roofline;
pub mod stats;
