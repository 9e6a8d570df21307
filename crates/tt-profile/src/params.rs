//! Parameter counts of any [`Module`]: total, trainable, per layer, bytes by storage type.

use serde::Serialize;
use tt_tensor::Module;

/// One layer's parameters (grouped by the name up to the last dot: `blocks.0.attn.qkv`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerParams {
    pub layer: String,
    pub params: usize,
    pub tensors: usize,
}

/// Parameter report of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ParamReport {
    pub total: usize,
    pub trainable: usize,
    pub layers: Vec<LayerParams>,
    /// Bytes per storage type; every tt-tensor parameter is f32 (4 bytes).
    pub bytes_by_dtype: Vec<(String, usize)>,
}

/// Counts the parameters of `model` from its named parameters.
pub fn count_parameters(model: &dyn Module) -> ParamReport {
    let mut layers: Vec<LayerParams> = Vec::new();
    let (mut total, mut trainable) = (0, 0);
    for (name, t) in model.named_parameters() {
        let n = t.numel();
        total += n;
        if t.requires_grad() {
            trainable += n;
        }
        let layer = name.rsplit_once('.').map_or(String::new(), |(l, _)| l.to_string());
        match layers.iter_mut().find(|l| l.layer == layer) {
            Some(l) => {
                l.params += n;
                l.tensors += 1;
            }
            None => layers.push(LayerParams { layer, params: n, tensors: 1 }),
        }
    }
    ParamReport { total, trainable, layers, bytes_by_dtype: vec![("f32".into(), 4 * total)] }
}
