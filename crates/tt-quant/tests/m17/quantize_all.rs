//! Shared by the m17 suite and the load-peak test: a GPT with every linear layer and its token
//! table (which the tied head shares) quantized.

use std::sync::Arc;

use ndarray::Array2;
use tt_quant::{
    quantize_dynamic, quantize_embeddings, quantize_int4, Activations, Int4Linear, Int8Linear, WeightConfig,
};
use tt_tensor::projection::Projection;
use tt_transformer::Gpt;

/// `m` with every linear and the token table in int4 of group 32, or in int8 per channel.
pub fn quantize_all(mut m: Gpt, int4: bool) -> Gpt {
    if int4 {
        quantize_int4(&mut m, 32).unwrap();
    } else {
        quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).unwrap();
    }
    let table = |t: &Array2<f32>| -> tt_quant::Result<Arc<dyn Projection>> {
        Ok(if int4 {
            Arc::new(Int4Linear::new(t, 32)?)
        } else {
            Arc::new(Int8Linear::new(t, WeightConfig::PER_CHANNEL, Activations::Dynamic)?)
        })
    };
    assert_eq!(quantize_embeddings(&mut m, &table).unwrap(), 1);
    m
}
