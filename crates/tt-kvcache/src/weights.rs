//! A plain-array copy of a [`Gpt`]'s weights for inference without autograd bookkeeping.
//! Copied once when an engine is built (a few MB); decoding then reads slices, never locks.

use tt_tensor::Tensor;
use tt_transformer::Gpt;

/// One block's weights; matrices are `[out, in]` row-major like [`tt_tensor::nn::Linear`].
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub ln1_g: Vec<f32>,
    pub ln1_b: Vec<f32>,
    pub wqkv: Vec<f32>,
    pub bqkv: Vec<f32>,
    pub wo: Vec<f32>,
    pub bo: Vec<f32>,
    pub ln2_g: Vec<f32>,
    pub ln2_b: Vec<f32>,
    pub wfc: Vec<f32>,
    pub bfc: Vec<f32>,
    pub wproj: Vec<f32>,
    pub bproj: Vec<f32>,
}

/// Everything the decoder needs.
#[derive(Debug, Clone)]
pub struct GptWeights {
    pub d_model: usize,
    pub n_heads: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_seq_len: usize,
    pub eps: f32,
    pub tok_emb: Vec<f32>,
    pub pos_emb: Vec<f32>,
    pub blocks: Vec<BlockWeights>,
    pub lnf_g: Vec<f32>,
    pub lnf_b: Vec<f32>,
    /// Output head `[vocab, d]` (the token embedding when weights are tied).
    pub head: Vec<f32>,
}

fn v(t: &Tensor) -> Vec<f32> {
    t.to_vec()
}

fn bias(l: &tt_tensor::nn::Linear) -> Vec<f32> {
    l.bias.as_ref().map_or_else(|| vec![0.0; l.out_features()], v)
}

impl GptWeights {
    pub fn from_model(m: &Gpt) -> GptWeights {
        let c = &m.config;
        GptWeights {
            d_model: c.d_model,
            n_heads: c.n_heads,
            hidden: c.mlp_ratio * c.d_model,
            vocab: c.vocab_size,
            max_seq_len: c.max_seq_len,
            eps: m.ln_f.eps,
            tok_emb: v(&m.tok_emb.weight),
            pos_emb: v(&m.pos_emb),
            blocks: m
                .blocks
                .iter()
                .map(|b| BlockWeights {
                    ln1_g: v(&b.ln1.gamma),
                    ln1_b: v(&b.ln1.beta),
                    wqkv: v(&b.attn.qkv.weight),
                    bqkv: bias(&b.attn.qkv),
                    wo: v(&b.attn.proj.weight),
                    bo: bias(&b.attn.proj),
                    ln2_g: v(&b.ln2.gamma),
                    ln2_b: v(&b.ln2.beta),
                    wfc: v(&b.mlp.fc.weight),
                    bfc: bias(&b.mlp.fc),
                    wproj: v(&b.mlp.proj.weight),
                    bproj: bias(&b.mlp.proj),
                })
                .collect(),
            lnf_g: v(&m.ln_f.gamma),
            lnf_b: v(&m.ln_f.beta),
            head: match &m.lm_head {
                Some(h) => v(&h.weight),
                None => v(&m.tok_emb.weight),
            },
        }
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
    /// Parameter count, for cross-checking against the model.
    pub fn num_parameters(&self, tied: bool) -> usize {
        let b: usize = self
            .blocks
            .iter()
            .map(|b| {
                [
                    &b.ln1_g, &b.ln1_b, &b.wqkv, &b.bqkv, &b.wo, &b.bo, &b.ln2_g, &b.ln2_b, &b.wfc, &b.bfc, &b.wproj,
                    &b.bproj,
                ]
                .iter()
                .map(|x| x.len())
                .sum::<usize>()
            })
            .sum();
        self.tok_emb.len() + self.pos_emb.len() + b + 2 * self.d_model + if tied { 0 } else { self.head.len() }
    }
}
