//! Sparsity: the fraction of weights that are exactly zero — a fraction in `[0, 1]` everywhere
//! (never a percentage in one place and a fraction in another).

use tt_tensor::{Module, Tensor};

use crate::error::Result;

/// Zeros and elements of a tensor.
pub fn counts(t: &Tensor) -> (usize, usize) {
    let d = t.data();
    (d.iter().filter(|&&v| v == 0.0).count(), d.len())
}

/// Fraction of `t`'s elements that are zero (0 for an empty tensor).
pub fn tensor(t: &Tensor) -> f64 {
    let (z, n) = counts(t);
    if n == 0 {
        0.0
    } else {
        z as f64 / n as f64
    }
}

/// The weight matrices pruning acts on — every `Linear`'s and `Conv2d`'s weight, by layer name
/// (biases, norms and embeddings are not counted).
///
/// # Errors
/// Never for today's layers; the visitors are fallible.
pub fn weights(m: &mut dyn Module) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    tt_tensor::nn::map_linears(m, |name, l| {
        out.push((name.to_string(), l.weight.clone()));
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |name, c| {
        out.push((name.to_string(), c.weight.clone()));
        Ok(())
    })?;
    Ok(out)
}

/// Fraction of zero weights over all of `m`'s `Linear` and `Conv2d` weights.
///
/// # Errors
/// As [`weights`].
pub fn model(m: &mut dyn Module) -> Result<f64> {
    let (mut z, mut n) = (0, 0);
    for (_, w) in weights(m)? {
        let (zi, ni) = counts(&w);
        z += zi;
        n += ni;
    }
    Ok(if n == 0 { 0.0 } else { z as f64 / n as f64 })
}
