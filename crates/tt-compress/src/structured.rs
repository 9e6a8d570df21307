//! Structured pruning that physically shrinks the model: removed hidden units disappear from the
//! producer's output rows and the consumer's input columns, so dense kernels do less work
//! (masking a dense matrix would not — `../shared/reference/semantics.md` §3).
//!
//! Units are ranked by the **L2 norm of their incoming weights** (the producer's row, bias
//! included): a unit whose row is small contributes little before the nonlinearity whatever its
//! input, and L2 (not L1) weighs its largest weights most, as `torch.nn.utils.prune.ln_structured`
//! with `n = 2` does on dim 0. Ties go to the lower index; kept units stay in their order.

use tt_tensor::nn::{Linear, Sequential};
use tt_tensor::Tensor;

use crate::error::{CompressError, Result};

/// The hidden units kept when removing `round(amount · width)` of them by L2 norm of the rows of
/// `producer` (its `[out, in]` weight and bias), in their original order.
///
/// # Errors
/// An amount outside `[0, 1]`, or one that would remove every unit.
pub fn units_to_keep(producer: &Linear, amount: f64) -> Result<Vec<usize>> {
    if !(0.0..=1.0).contains(&amount) {
        return Err(CompressError::arg("units_to_keep", format!("amount {amount} must be a fraction in [0, 1]")));
    }
    let (out_f, in_f) = (producer.out_features(), producer.in_features());
    let remove = ((amount * out_f as f64).round_ties_even() as usize).min(out_f);
    if remove == out_f {
        return Err(CompressError::arg("units_to_keep", format!("removing {remove} of {out_f} units leaves none")));
    }
    let w = producer.weight.to_vec();
    let b = producer.bias.as_ref().map(Tensor::to_vec);
    let mut norms: Vec<(f64, usize)> = (0..out_f)
        .map(|o| {
            let row: f64 = w[o * in_f..(o + 1) * in_f].iter().map(|&v| (v as f64).powi(2)).sum();
            let bias = b.as_ref().map_or(0.0, |b| (b[o] as f64).powi(2));
            ((row + bias).sqrt(), o)
        })
        .collect();
    norms.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut keep: Vec<usize> = norms[remove..].iter().map(|&(_, o)| o).collect();
    keep.sort_unstable();
    Ok(keep)
}

/// A `Linear` with only the output rows `keep` of `l`.
///
/// # Errors
/// An index out of range.
pub fn keep_outputs(l: &Linear, keep: &[usize]) -> Result<Linear> {
    let (out_f, in_f) = (l.out_features(), l.in_features());
    if let Some(&bad) = keep.iter().find(|&&o| o >= out_f) {
        return Err(CompressError::arg("keep_outputs", format!("unit {bad} of {out_f}")));
    }
    let w = l.weight.to_vec();
    let rows: Vec<f32> = keep.iter().flat_map(|&o| w[o * in_f..(o + 1) * in_f].iter().copied()).collect();
    let weight = Tensor::param(
        ndarray::Array2::from_shape_vec((keep.len(), in_f), rows)
            .map_err(|e| CompressError::arg("keep_outputs", e.to_string()))?
            .into_dyn(),
    );
    let bias = l.bias.as_ref().map(|b| {
        let b = b.to_vec();
        Tensor::param(ndarray::Array1::from_iter(keep.iter().map(|&o| b[o])).into_dyn())
    });
    Ok(Linear::from_tensors(weight, bias)?)
}

/// A `Linear` with only the input columns `keep` of `l` (its bias unchanged).
///
/// # Errors
/// An index out of range.
pub fn keep_inputs(l: &Linear, keep: &[usize]) -> Result<Linear> {
    let (out_f, in_f) = (l.out_features(), l.in_features());
    if let Some(&bad) = keep.iter().find(|&&i| i >= in_f) {
        return Err(CompressError::arg("keep_inputs", format!("input {bad} of {in_f}")));
    }
    let w = l.weight.to_vec();
    let cols: Vec<f32> =
        (0..out_f).flat_map(|o| keep.iter().map(move |&i| (o, i))).map(|(o, i)| w[o * in_f + i]).collect();
    let weight = Tensor::param(
        ndarray::Array2::from_shape_vec((out_f, keep.len()), cols)
            .map_err(|e| CompressError::arg("keep_inputs", e.to_string()))?
            .into_dyn(),
    );
    Ok(Linear::from_tensors(weight, l.bias.as_ref().map(|b| Tensor::param(b.data().clone())))?)
}

/// Removes `amount` of the hidden units between `seq.layers[producer]` and
/// `seq.layers[consumer]` (both `Linear`, with only elementwise layers between them, e.g. ReLU):
/// the producer loses those output rows, the consumer those input columns. Returns the kept
/// units.
///
/// # Errors
/// Indices that are not `Linear` layers, widths that do not chain, or a bad amount; the model is
/// unchanged then.
pub fn prune_hidden_units(seq: &mut Sequential, producer: usize, consumer: usize, amount: f64) -> Result<Vec<usize>> {
    let op = "prune_hidden_units";
    let get = |i: usize| -> Result<&Linear> {
        seq.layers
            .get(i)
            .and_then(|l| l.as_linear())
            .ok_or_else(|| CompressError::arg(op, format!("layer {i} is not a Linear")))
    };
    let (p, c) = (get(producer)?, get(consumer)?);
    if producer >= consumer || p.out_features() != c.in_features() {
        return Err(CompressError::arg(
            op,
            format!(
                "layer {producer} ({} outputs) does not feed layer {consumer} ({} inputs)",
                p.out_features(),
                c.in_features()
            ),
        ));
    }
    let keep = units_to_keep(p, amount)?;
    let (np, nc) = (keep_outputs(p, &keep)?, keep_inputs(c, &keep)?);
    seq.layers[producer] = Box::new(np);
    seq.layers[consumer] = Box::new(nc);
    Ok(keep)
}

/// Removes `amount` of every GPT block's MLP hidden units (by the L2 norm of `fc`'s rows): `fc`
/// loses those rows, `proj` those columns, and `config.mlp_hidden` records the new per-block
/// widths, so the model saves and loads as a normal checkpoint and the KV-cached decoder runs the
/// narrower blocks as they are. GELU maps 0 to 0, so the shrunk model equals the dense model with
/// those units zeroed. Returns the kept units of each block.
///
/// # Errors
/// A bad amount (checked for every block before any changes), or a block whose MLP does not
/// chain.
pub fn prune_gpt_mlp(model: &mut tt_transformer::Gpt, amount: f64) -> Result<Vec<Vec<usize>>> {
    let mut plans = Vec::with_capacity(model.blocks.len());
    for b in &model.blocks {
        if b.mlp.fc.out_features() != b.mlp.proj.in_features() {
            return Err(CompressError::arg("prune_gpt_mlp", "a block's mlp.fc does not feed its mlp.proj"));
        }
        let keep = units_to_keep(&b.mlp.fc, amount)?;
        plans.push((keep_outputs(&b.mlp.fc, &keep)?, keep_inputs(&b.mlp.proj, &keep)?, keep));
    }
    let mut kept = Vec::with_capacity(plans.len());
    let mut widths = Vec::with_capacity(plans.len());
    for (b, (fc, proj, keep)) in model.blocks.iter_mut().zip(plans) {
        b.mlp.fc = fc;
        b.mlp.proj = proj;
        widths.push(keep.len());
        kept.push(keep);
    }
    model.config.mlp_hidden = Some(widths);
    Ok(kept)
}
