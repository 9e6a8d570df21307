//! The llama2.c fixtures (`tests/fixtures/llama2c_run_c.json`, `llama2c_runq_c.json`): what
//! each case records, and its checkpoint regenerated from its seed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tt_models::llama2c::checkpoint::{write_legacy, write_q80};
use tt_models::weights::{LlamaParams, LlamaWeights, RopePairs};

#[derive(Deserialize)]
pub struct FixtureCase {
    pub name: String,
    pub format: String,
    pub group_size: Option<usize>,
    pub params: FixtureParams,
    pub seed: u64,
    pub std: f32,
    pub checkpoint_bytes: u64,
    pub checkpoint_sha256: String,
    pub prompt: Vec<usize>,
    /// The ids run.c / runq.c generated greedily after the prompt.
    pub generated: Vec<usize>,
    /// At each generated step, the top logit minus the runner-up, as run.c computed it.
    pub top2_gaps: Vec<f32>,
}

#[derive(Deserialize)]
pub struct FixtureParams {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub tied: bool,
}

#[derive(Deserialize)]
pub struct Fixture {
    pub cases: Vec<FixtureCase>,
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Writes `case`'s checkpoint into `dir`, returning its path.
pub fn write_fixture_checkpoint(case: &FixtureCase, dir: &Path) -> PathBuf {
    let p = &case.params;
    let params = LlamaParams {
        dim: p.dim,
        hidden_dim: p.hidden_dim,
        n_layers: p.n_layers,
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        vocab_size: p.vocab_size,
        seq_len: p.seq_len,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_pairs: RopePairs::Interleaved,
        tied: p.tied,
    };
    let weights = LlamaWeights::random(params, case.seed, case.std).unwrap();
    let path = dir.join(format!("{}.bin", case.name));
    match (case.format.as_str(), case.group_size) {
        ("legacy", None) => write_legacy(&path, &weights).unwrap(),
        ("q80", Some(group)) => write_q80(&path, &weights, group).unwrap(),
        (f, g) => panic!("{}: unknown format {f} with group size {g:?}", case.name),
    }
    path
}
