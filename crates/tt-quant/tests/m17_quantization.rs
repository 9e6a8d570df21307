//! Module 17 — quantization: the math on known values and as properties, the observers on known
//! data, every integer kernel exactly equal to the scalar reference at every level (per-group
//! included), the int8 projection against the float formula, int8 models through the seam (tensor
//! model and KV-cached decoder), int4 weights (kernels exact at every level, `Int4Linear`, int4
//! models), and quantized checkpoints (safetensors with I8 and int4 tensors, hostile files, loaded into a
//! skeleton without f32 weights).
//!
//! Each part lives in its own file under `tests/m17/`.

#[path = "m17/boundaries.rs"]
mod boundaries;
#[path = "m17/checkpoint.rs"]
mod checkpoint;
#[path = "m17/groups.rs"]
mod groups;
#[path = "m17/int4.rs"]
mod int4;
#[path = "m17/int4_checkpoint.rs"]
mod int4_checkpoint;
#[path = "m17/kernels.rs"]
mod kernels;
#[path = "m17/linear.rs"]
mod linear;
#[path = "m17/models.rs"]
mod models;
#[path = "m17/observer.rs"]
mod observer;
#[path = "m17/qat.rs"]
mod qat;
#[path = "m17/quantize_all.rs"]
mod quantize_all;
#[path = "m17/requant.rs"]
mod requant;
#[path = "m17/scheme.rs"]
mod scheme;
#[path = "m17/skeleton.rs"]
mod skeleton;
