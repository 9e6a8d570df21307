//! llama2.c's files: checkpoints ([`checkpoint`]) and `tokenizer.bin` ([`tokenizer`]), and
//! [`load`], a checkpoint straight into the model.

pub mod checkpoint;
pub mod tokenizer;

use std::path::Path;

use tt_transformer::Gpt;

/// The model in a llama2.c checkpoint (legacy f32, or version 2's Q8_0 as per-group int8
/// projections), inference-only (see [`crate::model::build`]).
///
/// # Errors
/// As [`checkpoint::read`] and [`crate::model::build`].
pub fn load(path: &Path) -> crate::Result<Gpt> {
    crate::model::build(checkpoint::read(path)?, path)
}
