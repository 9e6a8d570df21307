//! llama2.c checkpoints: our writers and reader agree with each other and with the layout `run.c`
//! and `runq.c` read; every hostile header, length or value is a clear error naming the field or
//! tensor; and the checkpoints the `llama2c_run_c.json` / `llama2c_runq_c.json` fixtures were
//! generated from are regenerated bit for bit from their seeds.

use std::path::PathBuf;

use tt_models::llama2c::checkpoint::{read, read_bytes, write_legacy, write_q80};
use tt_models::weights::{LlamaParams, LlamaWeights, Matrix, RopePairs};
use tt_models::ModelError;

#[path = "common/llama2c_fixture.rs"]
mod llama2c_fixture;
use llama2c_fixture::{fixture_path, write_fixture_checkpoint, Fixture};

fn params(n_kv_heads: usize, tied: bool) -> LlamaParams {
    LlamaParams {
        dim: 64,
        hidden_dim: 160,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        vocab_size: 96,
        seq_len: 64,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_pairs: RopePairs::Interleaved,
        tied,
    }
}

fn model(n_kv_heads: usize, tied: bool, seed: u64) -> LlamaWeights {
    LlamaWeights::random(params(n_kv_heads, tied), seed, 0.3).unwrap()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn legacy_bytes(w: &LlamaWeights) -> Vec<u8> {
    let dir = scratch();
    let path = dir.path().join("model.bin");
    write_legacy(&path, w).unwrap();
    std::fs::read(path).unwrap()
}

fn q80_bytes(w: &LlamaWeights, group: usize) -> Vec<u8> {
    let dir = scratch();
    let path = dir.path().join("model_q80.bin");
    write_q80(&path, w, group).unwrap();
    std::fs::read(path).unwrap()
}

/// The reason of a [`ModelError::Format`], failing the test on success or another error.
fn format_error(r: tt_models::Result<LlamaWeights>) -> String {
    match r {
        Err(ModelError::Format { reason, .. }) => reason,
        Err(e) => panic!("expected a format error, got {e}"),
        Ok(_) => panic!("expected a format error, the file was accepted"),
    }
}

fn assert_refused(bytes: &[u8], needle: &str) {
    let reason = format_error(read_bytes(bytes, "hostile.bin"));
    assert!(reason.contains(needle), "error {reason:?} does not mention {needle:?}");
}

fn put_i32(bytes: &mut [u8], at: usize, v: i32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(bytes: &mut [u8], at: usize, v: f32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn f32s(m: &Matrix) -> &[f32] {
    match m {
        Matrix::F32 { values, .. } => values,
        Matrix::Q8 { .. } => panic!("expected f32"),
    }
}

/// Independent Q8_0 reference (`export.py`'s `quantize_q80`): per group, scale = max|w|/127,
/// code = round-half-even(w / scale).
fn quantize_reference(values: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::new();
    let mut scales = Vec::new();
    for g in values.chunks(group) {
        let wmax = g.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let scale = wmax / 127.0;
        scales.push(scale);
        codes.extend(g.iter().map(|v| if scale == 0.0 { 0 } else { (v / scale).round_ties_even() as i8 }));
    }
    (codes, scales)
}

#[test]
fn legacy_round_trips_exactly_untied_gqa_and_tied() {
    for (kv, tied) in [(2, false), (4, true), (1, false)] {
        let w = model(kv, tied, 7);
        let dir = scratch();
        let path = dir.path().join("m.bin");
        write_legacy(&path, &w).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, w, "n_kv_heads {kv}, tied {tied}");
        assert_eq!(back.params.rope_pairs, RopePairs::Interleaved);
        assert_eq!((back.params.rope_theta, back.params.norm_eps), (10000.0, 1e-5));
        assert_eq!(read_bytes(&std::fs::read(&path).unwrap(), "m.bin").unwrap(), w);
    }
}

#[test]
fn legacy_layout_is_run_c_s() {
    let w = model(2, false, 3);
    let bytes = legacy_bytes(&w);
    let ints: Vec<i32> = bytes[..28].chunks(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
    // An untied head is a negative vocab_size.
    assert_eq!(ints, [64, 160, 2, 4, 2, -96, 64]);
    let float_at = |i: usize| f32::from_le_bytes(bytes[28 + 4 * i..32 + 4 * i].try_into().unwrap());
    // Token table first, then layer 0's attention norm, then layer 1's.
    assert_eq!(float_at(0), f32s(&w.tok_emb)[0]);
    assert_eq!(float_at(96 * 64), w.layers[0].attn_norm[0]);
    assert_eq!(float_at(96 * 64 + 64), w.layers[1].attn_norm[0]);
    assert_eq!(float_at(96 * 64 + 128), f32s(&w.layers[0].wq)[0]);
    // The output head is last.
    let last = f32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert_eq!(last, *f32s(w.lm_head.as_ref().unwrap()).last().unwrap());
    let floats = 96 * 64 * 2 + 2 * (64 * 2 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 160) + 64 + 64 * 16;
    assert_eq!(bytes.len(), 28 + 4 * floats);
    assert_eq!(legacy_bytes(&model(2, true, 3)).len(), 28 + 4 * (floats - 96 * 64));
}

#[test]
fn q80_round_trips_codes_and_scales_exactly() {
    for (kv, tied, group) in [(2, true, 32), (2, false, 16), (4, false, 32), (4, true, 64 / 2)] {
        let w = model(kv, tied, 11);
        let dir = scratch();
        let path = dir.path().join("q.bin");
        write_q80(&path, &w, group).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.params, w.params);
        assert_eq!(back.lm_head.is_some(), !tied);
        let pairs = std::iter::once((&w.tok_emb, &back.tok_emb))
            .chain(w.layers.iter().zip(&back.layers).flat_map(|(a, b)| a.matrices().into_iter().zip(b.matrices())))
            .chain(w.lm_head.iter().zip(back.lm_head.iter()));
        for (orig, q) in pairs {
            let Matrix::Q8 { rows, cols, group: g, codes, scales } = q else { panic!("expected Q8") };
            assert_eq!((*rows, *cols, *g), (orig.shape().0, orig.shape().1, group));
            let (want_codes, want_scales) = quantize_reference(f32s(orig), group);
            assert_eq!(codes, &want_codes);
            assert_eq!(scales, &want_scales);
            for (i, (v, c)) in f32s(orig).iter().zip(codes).enumerate() {
                let s = scales[i / group];
                assert!((v - f32::from(*c) * s).abs() <= s / 2.0 + 1e-7);
            }
        }
        for (a, b) in w.layers.iter().zip(&back.layers) {
            assert_eq!((&a.attn_norm, &a.ffn_norm), (&b.attn_norm, &b.ffn_norm));
        }
        assert_eq!(back.final_norm, w.final_norm);
        // Already-quantized matrices are written as they are: reading and writing again is the
        // identity on the bytes.
        let again = dir.path().join("again.bin");
        write_q80(&again, &back, group).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&path).unwrap());
    }
}

#[test]
fn q80_layout_is_runq_c_s() {
    let w = model(2, true, 5);
    let bytes = q80_bytes(&w, 32);
    assert_eq!(&bytes[..4], b"24ka", "0x616b3432 (\"ak42\") as a little-endian u32");
    let int = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(int(4), 2);
    assert_eq!((8..36).step_by(4).map(int).collect::<Vec<_>>(), [64, 160, 2, 4, 2, 96, 64]);
    assert_eq!(bytes[36], 1, "shared classifier");
    assert_eq!(int(37), 32, "group size");
    assert!(bytes[41..256].iter().all(|&b| b == 0));
    let norms = 4 * (2 * 2 + 1) * 64;
    let q = |numel: usize| numel + 4 * numel / 32;
    let expected = 256 + norms + q(96 * 64) + 2 * (q(64 * 64) * 2 + q(32 * 64) * 2 + q(64 * 160) * 3);
    assert_eq!(bytes.len(), expected);
    // The token table's codes follow the norms.
    let Matrix::F32 { values, .. } = &w.tok_emb else { unreachable!() };
    let (codes, scales) = quantize_reference(values, 32);
    assert_eq!(bytes[256 + norms] as i8, codes[0]);
    let at = 256 + norms + 96 * 64;
    assert_eq!(f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), scales[0]);
}

#[test]
fn an_all_zero_group_quantizes_to_scale_zero() {
    let mut w = model(2, true, 1);
    let Matrix::F32 { values, .. } = &mut w.layers[0].wq else { unreachable!() };
    values[..32].fill(0.0);
    let back = read_bytes(&q80_bytes(&w, 32), "zero.bin").unwrap();
    let Matrix::Q8 { codes, scales, .. } = &back.layers[0].wq else { unreachable!() };
    assert_eq!(scales[0], 0.0);
    assert!(codes[..32].iter().all(|&c| c == 0));
}

#[test]
fn the_seeded_model_is_deterministic_and_has_the_asked_spread() {
    let a = LlamaWeights::random(params(2, false), 42, 0.5).unwrap();
    assert_eq!(a, LlamaWeights::random(params(2, false), 42, 0.5).unwrap());
    assert_ne!(a, LlamaWeights::random(params(2, false), 43, 0.5).unwrap());
    a.check_shapes().unwrap();
    let v = f32s(&a.layers[0].w1);
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
    assert!((std - 0.5).abs() < 0.02, "std {std}");
    assert!(a.final_norm.iter().all(|&g| (0.5..1.5).contains(&g)));
    let mut bad = params(2, false);
    bad.n_heads = 5;
    assert!(LlamaWeights::random(bad, 1, 0.1).unwrap_err().contains("n_heads"));
    assert!(LlamaWeights::random(params(2, false), 1, f32::NAN).is_err());
}

#[test]
fn hostile_legacy_headers_are_refused_by_field() {
    let good = legacy_bytes(&model(2, false, 2));
    let field = |i: usize, v: i32, needle: &str| {
        let mut b = good.clone();
        put_i32(&mut b, 4 * i, v);
        assert_refused(&b, needle);
    };
    for (i, name) in
        ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"].iter().enumerate()
    {
        field(i, 0, name);
        if i != 5 {
            field(i, -1, name);
        }
        field(i, i32::MAX, name);
    }
    field(5, i32::MIN, "vocab_size");
    field(5, -(1 << 23), "vocab_size");
    // Sizes that pass their own bounds but imply terabytes: refused by the length, not allocated.
    let mut huge = good.clone();
    for (i, v) in [(0, 1 << 16), (1, 1 << 18), (2, 1 << 10), (3, 1 << 8), (4, 1 << 8), (5, 1 << 22), (6, 1 << 20)] {
        put_i32(&mut huge, 4 * i, v);
    }
    assert_refused(&huge, "header implies");
    field(3, 3, "n_heads 3 does not divide dim 64");
    field(4, 3, "n_kv_heads 3 does not divide n_heads 4");
    // dim 64 / 32 heads = head size 2 is fine; dim 12 / 4 heads = 3 is odd.
    let mut odd = good.clone();
    put_i32(&mut odd, 0, 12);
    assert_refused(&odd, "odd");
    field(4, 8, "n_kv_heads");
    assert_refused(&[], "shorter than a legacy header");
    assert_refused(&good[..27], "shorter than a legacy header");
}

#[test]
fn legacy_lengths_must_be_exact() {
    let good = legacy_bytes(&model(2, false, 2));
    assert_refused(&good[..good.len() - 1], "truncated");
    assert_refused(&good[..28], "truncated");
    let mut long = good.clone();
    long.push(0);
    assert_refused(&long, "trailing bytes");
    // A tied header on an untied file: the output head is trailing bytes.
    let mut tied = good.clone();
    put_i32(&mut tied, 20, 96);
    assert_refused(&tied, "trailing bytes");
}

#[test]
fn non_finite_weights_are_refused_by_tensor() {
    let w = model(2, false, 2);
    let good = legacy_bytes(&w);
    // Layer 1's wq, its value 5.
    let at = 28 + 4 * (96 * 64 + 2 * 64 + 64 * 64 + 5);
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut b = good.clone();
        put_f32(&mut b, at, v);
        assert_refused(&b, "layers.1.attention.wq: value 5");
    }
    let mut b = good.clone();
    let last = b.len() - 4;
    put_f32(&mut b, last, f32::NAN);
    assert_refused(&b, "output: value 6143");
    // The skipped RoPE tables are not weights: whatever they hold is ignored.
    let mut rope = good.clone();
    let rope_at = good.len() - 4 * 96 * 64 - 8;
    put_f32(&mut rope, rope_at, f32::NAN);
    assert_eq!(read_bytes(&rope, "rope.bin").unwrap(), w);
}

#[test]
fn hostile_q80_headers_are_refused_by_field() {
    let good = q80_bytes(&model(2, false, 4), 32);
    let at = |at: usize, v: i32, needle: &str| {
        let mut b = good.clone();
        put_i32(&mut b, at, v);
        assert_refused(&b, needle);
    };
    at(4, 1, "version 1");
    at(4, 3, "version 3");
    at(4, -2, "version -2");
    at(8 + 20, -96, "vocab_size");
    at(8, 0, "dim");
    at(8 + 8, 1 << 11, "n_layers");
    at(37, 0, "group size 0");
    at(37, -32, "group size 0");
    at(37, 24, "group size 24 does not divide");
    // 64 divides dim but not hidden_dim 160.
    at(37, 64, "group size 64 does not divide dim 64 and hidden_dim 160");
    // A group that divides both but changes the length.
    at(37, 16, "header implies");
    let mut shared = good.clone();
    shared[36] = 2;
    assert_refused(&shared, "shared_classifier is 2");
    assert_refused(&good[..255], "shorter than a version 2 header");
    assert_refused(&good[..4], "shorter than a version 2 header");
    assert_refused(&good[..good.len() - 1], "truncated");
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    assert_refused(&long, "trailing bytes");
}

#[test]
fn bad_q80_values_are_refused_by_tensor() {
    let good = q80_bytes(&model(2, true, 4), 32);
    let norms = 4 * 5 * 64;
    let scales_at = 256 + norms + 96 * 64;
    for (v, needle) in [
        (f32::NAN, "tok_embeddings scales: value 3 is NaN"),
        (f32::INFINITY, "tok_embeddings scales: value 3 is inf"),
        (-0.5, "tok_embeddings: scale 3 is negative"),
    ] {
        let mut b = good.clone();
        put_f32(&mut b, scales_at + 12, v);
        assert_refused(&b, needle);
    }
    let mut b = good.clone();
    put_f32(&mut b, 256 + 4 * 64 * 3, f32::NAN);
    assert_refused(&b, "layers.1.ffn_norm: value 0 is NaN");
}

#[test]
fn writers_refuse_what_the_format_cannot_hold() {
    let dir = scratch();
    let path = dir.path().join("w.bin");
    let w = model(2, false, 9);
    for group in [0, 24, 64] {
        let reason = format_error(write_q80(&path, &w, group).map(|_| w.clone()));
        assert!(reason.contains("group size"), "{reason}");
    }
    let q = read_bytes(&q80_bytes(&w, 32), "q.bin").unwrap();
    let reason = format_error(write_legacy(&path, &q).map(|_| w.clone()));
    assert!(reason.contains("tok_embeddings is Q8_0"), "{reason}");
    let reason = format_error(write_q80(&path, &q, 16).map(|_| w.clone()));
    assert!(reason.contains("groups of 32, not 16"), "{reason}");
    let mut nan = w.clone();
    let Matrix::F32 { values, .. } = &mut nan.layers[1].w2 else { unreachable!() };
    values[7] = f32::NAN;
    let reason = format_error(write_q80(&path, &nan, 32).map(|_| w.clone()));
    assert!(reason.contains("layers.1.feed_forward.w2: value 7 is NaN"), "{reason}");
    let mut short = w.clone();
    short.layers[0].ffn_norm.pop();
    let reason = format_error(write_legacy(&path, &short).map(|_| w.clone()));
    assert!(reason.contains("layers.0.ffn_norm"), "{reason}");
    let mut untied = w.clone();
    untied.params.tied = true;
    assert!(format_error(write_legacy(&path, &untied).map(|_| w.clone())).contains("output"));
    assert!(!path.exists(), "nothing is written when the weights are refused");
}

#[test]
fn a_missing_file_or_a_directory_is_a_clear_error() {
    let dir = scratch();
    let path = dir.path().join("absent.bin");
    match read(&path) {
        Err(e @ ModelError::Io { .. }) => assert!(e.to_string().contains("absent.bin")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(format_error(read(dir.path())).contains("not a regular file"));
}

/// One checkpoint a fixture was generated from (see the fixtures' `description`).
/// The fixtures' checkpoints regenerate from their seeds to the very bytes `run.c`/`runq.c` read.
/// With `TT_L2C_FIXTURE_DIR` set, they are kept there (how the fixtures were made).
#[test]
fn fixture_checkpoints_regenerate_bit_for_bit() {
    let tmp = scratch();
    let dir = std::env::var_os("TT_L2C_FIXTURE_DIR").map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    // Every checkpoint is written before any is judged, so a kept directory holds them all.
    let mut wrong = Vec::new();
    for file in ["llama2c_run_c.json", "llama2c_runq_c.json"] {
        let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(fixture_path(file)).unwrap()).unwrap();
        assert!(!fixture.cases.is_empty());
        for case in &fixture.cases {
            let path = write_fixture_checkpoint(case, &dir);
            let bytes = std::fs::read(&path).unwrap();
            let sha = tt_tensor::serialize::sha256_hex(&bytes);
            if (bytes.len() as u64, &sha) != (case.checkpoint_bytes, &case.checkpoint_sha256) {
                wrong.push(format!("{file} {}: {} bytes, SHA-256 {sha}", case.name, bytes.len()));
            }
            read(&path).unwrap().check_shapes().unwrap();
        }
    }
    assert!(wrong.is_empty(), "regenerated checkpoints differ from the fixtures':\n{}", wrong.join("\n"));
}

/// A plain transcription of `run.c`'s (and, with `quantize_activations`, `runq.c`'s) forward pass
/// over what the reader returned: reproducing the fixtures' ids proves the reader hands every
/// tensor to its role (a writer and reader swapping wk and wv alike would still round-trip).
fn reference_decode(w: &LlamaWeights, prompt: &[usize], n: usize, quantize_activations: bool) -> Vec<(usize, f32)> {
    let p = &w.params;
    let (dim, hd, kv_dim) = (p.dim, p.head_dim(), p.kv_dim());
    // Every matrix as f32 `[rows][cols]` (a Q8 one dequantized, as runq.c's token table).
    let dense = |m: &Matrix| -> Vec<f32> {
        match m {
            Matrix::F32 { values, .. } => values.clone(),
            Matrix::Q8 { codes, scales, group, .. } => {
                codes.iter().enumerate().map(|(i, &c)| f32::from(c) * scales[i / group]).collect()
            }
        }
    };
    // runq.c quantizes the activation per group (C's round: half away from zero) before every
    // matmul and multiplies integer dot products by both scales, group by group.
    let matmul = |m: &Matrix, x: &[f32]| -> Vec<f32> {
        let (rows, cols) = m.shape();
        match m {
            Matrix::Q8 { codes, scales, group, .. } if quantize_activations => {
                let (xq, xs): (Vec<i32>, Vec<f32>) = {
                    let mut q = Vec::new();
                    let mut s = Vec::new();
                    for g in x.chunks(*group) {
                        let scale = g.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        q.extend(g.iter().map(|v| (v / scale).round() as i32));
                        s.push(scale);
                    }
                    (q, s)
                };
                (0..rows)
                    .map(|r| {
                        (0..cols / group)
                            .map(|g| {
                                let dot: i32 =
                                    (g * group..(g + 1) * group).map(|j| i32::from(codes[r * cols + j]) * xq[j]).sum();
                                dot as f32 * scales[r * cols / group + g] * xs[g]
                            })
                            .sum()
                    })
                    .collect()
            }
            _ => {
                let d = dense(m);
                (0..rows).map(|r| (0..cols).map(|j| d[r * cols + j] * x[j]).sum()).collect()
            }
        }
    };
    let rmsnorm = |x: &[f32], g: &[f32]| -> Vec<f32> {
        let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5;
        let inv = 1.0 / ss.sqrt();
        x.iter().zip(g).map(|(v, g)| g * (inv * v)).collect()
    };
    let table = dense(&w.tok_emb);
    let head = w.lm_head.as_ref().unwrap_or(&w.tok_emb);
    let mut keys = vec![Vec::<Vec<f32>>::new(); p.n_layers];
    let mut values = vec![Vec::<Vec<f32>>::new(); p.n_layers];
    let mut token = prompt[0];
    let mut out = Vec::new();
    for pos in 0..prompt.len() - 1 + n {
        let mut x = table[token * dim..(token + 1) * dim].to_vec();
        for (l, layer) in w.layers.iter().enumerate() {
            let xb = rmsnorm(&x, &layer.attn_norm);
            let (mut q, mut k, v) = (matmul(&layer.wq, &xb), matmul(&layer.wk, &xb), matmul(&layer.wv, &xb));
            for i in (0..dim).step_by(2) {
                let freq = 1.0 / 10000f32.powf((i % hd) as f32 / hd as f32);
                let (c, s) = ((pos as f32 * freq).cos(), (pos as f32 * freq).sin());
                let rotate = |v: &mut [f32]| {
                    let (a, b) = (v[i], v[i + 1]);
                    v[i] = a * c - b * s;
                    v[i + 1] = a * s + b * c;
                };
                rotate(&mut q);
                if i < kv_dim {
                    rotate(&mut k);
                }
            }
            keys[l].push(k);
            values[l].push(v);
            let mut att_out = vec![0f32; dim];
            for h in 0..p.n_heads {
                let kh = h / (p.n_heads / p.n_kv_heads) * hd;
                let qh = &q[h * hd..(h + 1) * hd];
                let scores: Vec<f32> = keys[l]
                    .iter()
                    .map(|k| qh.iter().zip(&k[kh..kh + hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt())
                    .collect();
                let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                for (a, v) in e.iter().zip(&values[l]) {
                    for i in 0..hd {
                        att_out[h * hd + i] += a / sum * v[kh + i];
                    }
                }
            }
            x.iter_mut().zip(matmul(&layer.wo, &att_out)).for_each(|(x, d)| *x += d);
            let xb = rmsnorm(&x, &layer.ffn_norm);
            let gate = matmul(&layer.w1, &xb);
            let up = matmul(&layer.w3, &xb);
            let hidden: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            x.iter_mut().zip(matmul(&layer.w2, &hidden)).for_each(|(x, d)| *x += d);
        }
        let logits = matmul(head, &rmsnorm(&x, &w.final_norm));
        if pos + 1 < prompt.len() {
            token = prompt[pos + 1];
            continue;
        }
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        let second = (0..logits.len()).filter(|&i| i != best).map(|i| logits[i]).fold(f32::NEG_INFINITY, f32::max);
        out.push((best, logits[best] - second));
        token = best;
    }
    out
}

/// The fixtures' ids come out of a plain transcription of run.c/runq.c over what the reader
/// returned for the regenerated checkpoints.
#[test]
fn the_reader_feeds_a_run_c_transcription_the_fixture_ids() {
    let dir = scratch();
    for (file, quantized) in [("llama2c_run_c.json", false), ("llama2c_runq_c.json", true)] {
        let text = std::fs::read_to_string(fixture_path(file)).unwrap();
        let cases: Fixture = serde_json::from_str(&text).unwrap();
        for case in &cases.cases {
            let outcome = case;
            let w = read(&write_fixture_checkpoint(case, dir.path())).unwrap();
            let got = reference_decode(&w, &outcome.prompt, outcome.generated.len(), quantized);
            let ids: Vec<usize> = got.iter().map(|g| g.0).collect();
            assert_eq!(ids, outcome.generated, "{file} {}", case.name);
            for ((_, gap), want) in got.iter().zip(&outcome.top2_gaps) {
                assert!((gap - want).abs() < 1e-3, "{file} {}: gap {gap} vs {want}", case.name);
            }
        }
    }
}
