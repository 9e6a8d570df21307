//! # tt-quant
//!
//! Course module 17: FP32 → INT8 for real — weights stored as `i8` with f32 scales, products
//! computed in integers, bytes counted as they are stored.
//!
//! - [`scheme`]: the affine map `r = S·(q − Z)`, affine and symmetric schemes, per-tensor /
//!   per-channel / per-group parameters, [`QuantizedMatrix`] (codes + scales).
//! - [`observer`]: MinMax, MovingAverageMinMax, Histogram (L2-optimal range) and Percentile
//!   observers that choose an activation range from calibration data.
//! - [`kernels`]: the integer product `Σ u8·i8 → i32` over weights packed once, with AVX-512
//!   VNNI, AVX2 and scalar paths chosen at run time (through tt-accel's dispatch level), each
//!   exactly equal to the scalar reference; [`kernels::group`], the same for symmetric
//!   per-group weights (ggml's Q8_0), exact i32 per group, folded into f32 in one fixed order.
//! - [`linear`]: [`Int8Linear`], a `tt_tensor::Projection` (activations quantized per row into
//!   the workspace, integer product, zero points folded in; per-tensor, per-channel or
//!   per-group weights, held once, packed), and [`quantize_dynamic`], which
//!   installs it in every `Linear` and `Conv2d` of a model by name — the model, the KV-cached
//!   decoder and the evaluation code stay as they are.
//! - [`mod@calibrate`]: static quantization's calibration — an observer per layer watches its
//!   inputs on representative data (attached through the seam), then the frozen `(S, Z)` go to
//!   [`quantize_layers`].
//! - [`requant`]: a fully integer linear layer (u8 in, u8 out): int32 bias and a fixed-point
//!   requantization multiplier `M = M₀·2⁻³¹·2⁻ⁿ`, tested against the float formula.
//! - [`qat`]: quantization-aware training — a fake-quantize autograd op (straight-through inside
//!   the clamp range) installed in every layer as a forward transform, then converted to int8.
//! - [`int4`]: [`Int4Linear`], symmetric 4-bit weights per group of 32 (ggml's Q4_0: f16
//!   scales, two codes per byte, packed once) times int8 activations per group, exact in the
//!   integer kernels at every level, and [`quantize_int4`], which installs it by name.
//! - [`checkpoint`]: quantized models saved and loaded as safetensors with real `I8` weight
//!   tensors, their scales and zero points, and the scheme in the metadata — readable by any
//!   safetensors reader, loaded back bit for bit, hostile files rejected before anything changes.
//!
//! What it deliberately does not do: own a model or a decoder, or approximate what it does not
//! implement (affine per-group weights, and per-group weights in checkpoints and the fully
//! integer [`requant`] layer, are errors, not silent fallbacks).
//!
//! ```
//! use ndarray::array;
//! use tt_quant::{Activations, Int8Linear, WeightConfig};
//! use tt_tensor::projection::{project, Projection, Workspace};
//! let w = array![[0.5f32, -1.0, 0.25, 1.0], [1.0, 0.0, -0.5, 0.75]];
//! let q = Int8Linear::new(&w, WeightConfig::PER_CHANNEL, Activations::Dynamic).unwrap();
//! let (x, mut y, mut ws) = ([1.0f32, 2.0, -1.0, 0.5], [0.0f32; 2], Workspace::default());
//! ws.ensure(q.workspace_len(1));
//! project(&q, &x, 1, None, &mut y, ws.bytes()).unwrap();
//! // Exact: 0.5 − 2 − 0.25 + 0.5 = −1.25 and 1 + 0.5 + 0.375 = 1.875; int8 is close.
//! assert!((y[0] + 1.25).abs() < 0.02 && (y[1] - 1.875).abs() < 0.02);
//! assert_eq!(q.weight().storage_bytes(), 8 + 2 * 4); // 8 i8 codes + 2 f32 scales, vs 32 bytes of f32
//! ```

pub mod calibrate;
pub mod checkpoint;
pub mod error;
pub mod int4;
pub mod kernels;
pub mod linear;
pub mod observer;
pub mod qat;
pub mod requant;
mod rowops;
pub mod scheme;

pub use calibrate::{calibrate, Calibration};
pub use error::{QuantError, Result};
pub use int4::{quantize_int4, Int4Linear, PackedI4};
pub use kernels::{IntLevel, PackedI8};
pub use linear::{
    quantize_dynamic, quantize_embeddings, quantize_layers, Activations, Int8Linear, QuantizedLayer, TableFormat,
    WeightConfig,
};
pub use scheme::{Granularity, QParams, QRange, QuantizedMatrix, Scheme};
