//! A llama2.c checkpoint runs in the one model and the one cached decoder and produces the very
//! tokens llama2.c's own `run.c` produced on the same file (the fixtures record them; see
//! `tests/fixtures/llama2c_run_c.json`'s `description` for how they were made — our writer's
//! checkpoint from a fixed seed, `run.c` at a pinned commit built with gcc -O3, a harness that
//! feeds the prompt ids and takes the arg-max 40 times).

use tt_kvcache::{generate_cached, CachedGpt, OverflowPolicy};
use tt_transformer::generate::GenerateConfig;

#[path = "common/llama2c_fixture.rs"]
mod llama2c_fixture;
use llama2c_fixture::{fixture_path, write_fixture_checkpoint, Fixture, FixtureCase};

fn cases(file: &str) -> Vec<FixtureCase> {
    let f: Fixture = serde_json::from_str(&std::fs::read_to_string(fixture_path(file)).unwrap()).unwrap();
    f.cases
}

/// Greedy ids after `case.prompt`, by the cached decoder with the row kernels given.
fn greedy(model: &tt_transformer::Gpt, case: &FixtureCase, fused: bool) -> Vec<usize> {
    let mut engine = CachedGpt::new(model, 1, OverflowPolicy::Error).unwrap();
    if fused {
        engine.set_row_kernels(tt_accel::fused::row_kernels());
    }
    let trace =
        generate_cached(&mut engine, std::slice::from_ref(&case.prompt), &GenerateConfig::greedy(case.generated.len()))
            .unwrap();
    trace.tokens[0].clone()
}

#[test]
fn f32_checkpoints_generate_run_c_s_tokens_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases("llama2c_run_c.json") {
        let model = tt_models::llama2c::load(&write_fixture_checkpoint(&case, dir.path())).unwrap();
        for fused in [false, true] {
            assert_eq!(greedy(&model, &case, fused), case.generated, "{} (fused row kernels: {fused})", case.name);
        }
        // The tensor model (the training path) agrees.
        let mut seq = case.prompt.clone();
        for &want in &case.generated {
            let logits = tt_tensor::no_grad(|| model.forward_ids(&seq, 1, seq.len())).unwrap();
            let v = model.config.vocab_size;
            let last = &logits.to_vec()[(seq.len() - 1) * v..];
            let got = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
            assert_eq!(got, want, "{}: the tensor model at length {}", case.name, seq.len());
            seq.push(want);
        }
    }
}

/// Q8_0 loads straight into per-group int8 projections and follows `runq.c` until the first
/// near-tie. The weights are bit-identical codes and scales; the activations are not quantized
/// alike: `runq.c` rounds each group of 32 inputs to int8 with its own scale, our int8 layers
/// quantize a whole input row to u8 with one scale and zero point (tt-quant's dynamic scheme).
/// That moves logits by about 0.1 here, so a step whose top two logits `runq.c` saw within
/// [`NEAR_TIE`] may go the other way; before it every id must be `runq.c`'s.
#[test]
fn q80_checkpoints_follow_runq_c_until_a_near_tie() {
    const NEAR_TIE: f32 = 0.25;
    let dir = tempfile::tempdir().unwrap();
    for case in cases("llama2c_runq_c.json") {
        let model = tt_models::llama2c::load(&write_fixture_checkpoint(&case, dir.path())).unwrap();
        let names: Vec<&str> = CachedGpt::new(&model, 1, OverflowPolicy::Error)
            .unwrap()
            .projection_formats()
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert!(names.iter().all(|f| f.starts_with("int8")), "{}: every projection in int8: {names:?}", case.name);
        for fused in [false, true] {
            let got = greedy(&model, &case, fused);
            match got.iter().zip(&case.generated).position(|(a, b)| a != b) {
                None => {}
                Some(step) => {
                    let gap = case.top2_gaps[step];
                    assert!(
                        gap < NEAR_TIE && step >= 10,
                        "{}: diverged at step {step} where runq.c's top-2 gap is {gap} (fused {fused})",
                        case.name
                    );
                }
            }
        }
    }
}

#[path = "common/hf_writer.rs"]
mod hf_writer;

/// `m`'s Q (or K) rows from llama2.c's interleaved pairs to Hugging Face's half-split ones, as the
/// transformers conversion script permutes them: within each head, row `2i` becomes row `i` and
/// row `2i+1` row `i + head_dim/2`.
fn to_half_split(m: &tt_models::weights::Matrix, heads: usize) -> tt_models::weights::Matrix {
    let tt_models::weights::Matrix::F32 { rows, cols, values } = m else { panic!("f32 fixture") };
    let hd = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (from, to) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                let (src, dst) = ((h * hd + from) * cols, (h * hd + to) * cols);
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    tt_models::weights::Matrix::F32 { rows: *rows, cols: *cols, values: out }
}

/// The f32 fixtures converted to Hugging Face's layout (q/k rows permuted, half-split rotary
/// pairs) and loaded from a Hugging Face directory generate run.c's tokens too: the loader's
/// names, the permutation's inverse and the half-split rotation agree with llama2.c end to end.
#[test]
fn a_hugging_face_conversion_of_the_fixtures_generates_run_c_s_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases("llama2c_run_c.json") {
        let mut w = tt_models::llama2c::checkpoint::read(&write_fixture_checkpoint(&case, dir.path())).unwrap();
        w.params.rope_pairs = tt_models::weights::RopePairs::HalfSplit;
        let (nh, nkv) = (w.params.n_heads, w.params.n_kv_heads);
        for layer in &mut w.layers {
            layer.wq = to_half_split(&layer.wq, nh);
            layer.wk = to_half_split(&layer.wk, nkv);
        }
        let hf = dir.path().join(format!("{}-hf", case.name));
        std::fs::create_dir(&hf).unwrap();
        hf_writer::write_f32_dir(&hf, &w);
        let model = tt_models::model::build(tt_models::hf::load_weights(&hf).unwrap(), &hf).unwrap();
        assert_eq!(model.config.rope_pairs, tt_models::weights::RopePairs::HalfSplit);
        assert_eq!(greedy(&model, &case, true), case.generated, "{} from Hugging Face", case.name);
    }
}
