//! llama2.c's files: checkpoints ([`checkpoint`]) and `tokenizer.bin` ([`tokenizer`]).

pub mod checkpoint;
pub mod tokenizer;
