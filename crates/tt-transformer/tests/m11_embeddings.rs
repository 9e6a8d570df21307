//! Module 11 — embeddings: token + learned or sinusoidal position embeddings.

mod common;

use tt_tensor::testing::assert_grads;
use tt_tensor::Module;
use tt_transformer::model::sinusoidal_table;
use tt_transformer::{Gpt, PositionEncoding};

#[test]
fn embedding_is_token_row_plus_position_row() {
    let m = common::tiny(10, 1);
    let e = m.embed(&[3, 7, 3], 1, 3, 0).unwrap().to_vec();
    let tok = m.tok_emb.weight.to_vec();
    let pos = m.pos_emb.to_vec();
    let d = 16;
    for (t, &id) in [3usize, 7, 3].iter().enumerate() {
        for j in 0..d {
            assert_eq!(e[t * d + j], tok[id * d + j] + pos[t * d + j]);
        }
    }
    // Starting offset selects later position rows (used by cached decoding).
    let e2 = m.embed(&[3], 1, 1, 5).unwrap().to_vec();
    assert_eq!(e2[0], tok[3 * d] + pos[5 * d]);
    assert!(m.embed(&[3], 1, 1, 32).is_err(), "position past max_seq_len");
}

#[test]
fn sinusoidal_table_values() {
    let t = sinusoidal_table(50, 8);
    assert_eq!(t.shape(), &[50, 8]);
    for i in 0..8 {
        assert!((t[[0, i]] - if i % 2 == 0 { 0.0 } else { 1.0 }).abs() < 1e-7);
    }
    assert!((t[[7, 0]] - 7f32.sin()).abs() < 1e-6);
    assert!((t[[7, 1]] - 7f32.cos()).abs() < 1e-6);
    // Dimension pair 2i uses frequency 1/10000^(2i/d).
    let f = 1.0 / 10000f64.powf(4.0 / 8.0);
    assert!((t[[9, 4]] as f64 - (9.0 * f).sin()).abs() < 1e-6);
}

#[test]
fn sinusoidal_positions_are_not_parameters() {
    let mut cfg = common::tiny_config(10, 0);
    cfg.position = PositionEncoding::Sinusoidal;
    let m = Gpt::new(cfg).unwrap();
    let names: Vec<String> = m.named_parameters().into_iter().map(|p| p.0).collect();
    assert!(!names.iter().any(|n| n.starts_with("pos_emb")));
    assert!(!m.pos_emb.requires_grad());
    let learned = common::tiny(10, 0);
    assert_eq!(learned.num_parameters(), m.num_parameters() + 32 * 16);
}

#[test]
fn embedding_gradients() {
    let m = common::tiny(6, 2);
    // Repeated id 2 accumulates gradient from both positions; position rows get their own.
    assert_grads(
        |p| {
            let tok = p[0].index_select_rows(&[2, 5, 2])?.reshape(&[1, 3, 16])?;
            tok.add(&p[1].narrow(0, 0, 3)?)
        },
        &[m.tok_emb.weight.detach(), m.pos_emb.detach()],
        1e-3,
        1e-2,
    );
}
