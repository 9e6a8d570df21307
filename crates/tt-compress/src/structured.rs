//! Structured pruning that physically shrinks the model: removed hidden units, CNN channels or
//! attention heads disappear from the producer's output rows and the consumer's input columns,
//! so dense kernels do less work (masking a dense matrix would not —
//! `../shared/reference/semantics.md` §3).
//!
//! What is ranked, always by an **L2 norm** (L2, not L1, weighs the largest weights most, as
//! `torch.nn.utils.prune.ln_structured` with `n = 2` does):
//! - **MLP hidden units**: the unit's incoming weights (the producer's row, bias included) — a
//!   unit whose row is small contributes little before the nonlinearity whatever its input.
//! - **CNN channels**: the channel's filter `[C_in, k, k]` and its bias — the same argument, one
//!   filter being one output channel's incoming weights.
//! - **Attention heads**: the product of the L2 norms of the head's **value path** — its V rows
//!   of `qkv` (bias included) and its columns of the output projection. A head adds
//!   `W_o,h · (W_v,h · x̄ + b_v,h)` to the residual stream, where `x̄` is a convex combination of
//!   the (layer-normed) inputs; so `‖W_o,h‖·‖[W_v,h b_v,h]‖` bounds what it can add. Its Q and K
//!   rows only choose the mixing weights (which sum to 1 whatever their size), so they do not
//!   enter. A product, not a sum: the head is unchanged when `W_v,h` is scaled by `c` and `W_o,h`
//!   by `1/c`, and so is the product.
//!
//! Ties go to the lower index; kept units stay in their order. Every pruning leaves a model that
//! equals the dense one with the removed units zeroed (tested).
//!
//! Layers are rebuilt from their stored weights, so a layer carrying a forward transform (a
//! pruning mask, an unfinished low-rank factorization, QAT's fake quantization) is refused,
//! before anything changes: the rebuilt layer would silently drop it (pruned weights would
//! regrow, a factored layer would revert to its unused weight). Make the mask permanent, finish
//! the factorization or convert QAT first.

use tt_tensor::nn::{Conv2d, Linear, Sequential};
use tt_tensor::{Module, Tensor};

use crate::error::{CompressError, Result};

/// The indices kept when removing `round(amount · n)` of `norms` (the smallest; ties to the
/// lower index), in their original order.
fn keep_by_norm(op: &'static str, norms: &[f64], amount: f64, what: &str) -> Result<Vec<usize>> {
    if !(0.0..=1.0).contains(&amount) {
        return Err(CompressError::arg(op, format!("amount {amount} must be a fraction in [0, 1]")));
    }
    let n = norms.len();
    let remove = ((amount * n as f64).round_ties_even() as usize).min(n);
    if remove == n {
        return Err(CompressError::arg(op, format!("removing {remove} of {n} {what} leaves none")));
    }
    let mut order: Vec<(f64, usize)> = norms.iter().copied().zip(0..).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut keep: Vec<usize> = order[remove..].iter().map(|&(_, o)| o).collect();
    keep.sort_unstable();
    Ok(keep)
}

fn sum_sq(xs: &[f32]) -> f64 {
    xs.iter().map(|&v| (v as f64).powi(2)).sum()
}

/// The error for `layer` (a name, or a description where there is none) carrying the forward
/// transform `transform`, which rebuilding the layer would drop (see the module docs).
fn dropped_transform(op: &'static str, layer: &str, transform: &str) -> CompressError {
    CompressError::arg(
        op,
        format!(
            "{layer} carries a '{transform}' forward transform, which rebuilding it would drop: make it permanent \
             or finish it first (Pruning::make_permanent, Factored::finish, QAT's conversion)"
        ),
    )
}

/// Refuses `m` if a layer of `names` (the layers a structured pruning rebuilds) carries a
/// forward transform, or an installed projection in another format than dense f32: rebuilt from
/// its dense weight, the layer would silently lose it (an int8 layer would come back f32).
fn refuse_transforms(op: &'static str, m: &mut dyn Module, names: &[String]) -> Result<()> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Some((n, t)) = crate::prune::transform_on(m, &names, |_, _| false)? {
        return Err(dropped_transform(op, &format!("layer '{n}'"), t));
    }
    let mut installed = None;
    let mut check = |n: &str, p: Option<&std::sync::Arc<dyn tt_tensor::Projection>>| {
        if let Some(p) = p.filter(|p| names.contains(&n) && p.format() != "f32") {
            installed.get_or_insert((n.to_string(), p.format()));
        }
    };
    tt_tensor::nn::map_linears(m, |n, l| {
        check(n, l.installed_projection());
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |n, c| {
        check(n, c.installed_projection());
        Ok(())
    })?;
    match installed {
        Some((n, format)) => Err(CompressError::arg(
            op,
            format!(
                "layer '{n}' runs an installed '{format}' projection, which rebuilding it from its dense weight would \
                 drop: prune before quantizing, packing or factoring"
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses a bias that does not hold one entry per unit (the layers' fields are public).
fn check_bias(op: &'static str, what: &str, units: usize, bias: Option<&Tensor>) -> Result<()> {
    match bias.map(Tensor::numel) {
        Some(n) if n != units => Err(CompressError::arg(op, format!("a bias of {n} for {units} {what}"))),
        _ => Ok(()),
    }
}

/// Checks a producer's `units` (rows of `per_unit` weights each, and `bias`) before ranking them
/// allocates per unit: its bias ([`check_bias`]), and a weight in every unit — `2⁴⁰` units of no
/// inputs and no bias are a layer with no element, for which ranking would allocate terabytes.
fn check_units(op: &'static str, what: &str, units: usize, per_unit: usize, bias: Option<&Tensor>) -> Result<()> {
    check_bias(op, what, units, bias)?;
    if bias.is_none() && per_unit == 0 && units > 0 {
        return Err(CompressError::arg(
            op,
            format!("{units} {what} with no weights and no bias: nothing to rank them by"),
        ));
    }
    Ok(())
}

/// Refuses `keep` unless it is strictly increasing and below `n`: kept units stay in their order,
/// and with no index twice the rebuilt layer is no larger than the original (repeated indices
/// would let a few bytes of them ask for terabytes of copies).
fn check_keep(op: &'static str, keep: &[usize], n: usize, what: &str) -> Result<()> {
    if let Some(&bad) = keep.iter().find(|&&k| k >= n) {
        return Err(CompressError::arg(op, format!("{what} {bad} of {n}")));
    }
    if let Some(p) = keep.windows(2).find(|p| p[0] >= p[1]) {
        return Err(CompressError::arg(
            op,
            format!("kept {what}s must be strictly increasing: {} then {}", p[0], p[1]),
        ));
    }
    Ok(())
}

/// The hidden units kept when removing `round(amount · width)` of them by L2 norm of the rows of
/// `producer` (its `[out, in]` weight and bias), in their original order.
///
/// # Errors
/// An amount outside `[0, 1]`, or one that would remove every unit; a bias not of one entry per
/// unit, or units with neither inputs nor a bias (nothing to rank).
pub fn units_to_keep(producer: &Linear, amount: f64) -> Result<Vec<usize>> {
    let (out_f, in_f) = (producer.out_features(), producer.in_features());
    check_units("units_to_keep", "units", out_f, in_f, producer.bias.as_ref())?;
    let w = producer.weight.to_vec();
    let b = producer.bias.as_ref().map(Tensor::to_vec);
    let norms: Vec<f64> = (0..out_f)
        .map(|o| {
            let bias = b.as_ref().map_or(0.0, |b| (b[o] as f64).powi(2));
            (sum_sq(&w[o * in_f..(o + 1) * in_f]) + bias).sqrt()
        })
        .collect();
    keep_by_norm("units_to_keep", &norms, amount, "units")
}

/// A `Linear` with only the output rows `keep` of `l`.
///
/// # Errors
/// An index out of range, `keep` not strictly increasing, or `l` carrying a forward transform
/// (see the module docs).
pub fn keep_outputs(l: &Linear, keep: &[usize]) -> Result<Linear> {
    let (out_f, in_f) = (l.out_features(), l.in_features());
    if let Some(t) = l.transform() {
        return Err(dropped_transform("keep_outputs", "the Linear", t.name()));
    }
    check_keep("keep_outputs", keep, out_f, "unit")?;
    check_bias("keep_outputs", "units", out_f, l.bias.as_ref())?;
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
/// An index out of range, `keep` not strictly increasing, or `l` carrying a forward transform
/// (see the module docs).
pub fn keep_inputs(l: &Linear, keep: &[usize]) -> Result<Linear> {
    let (out_f, in_f) = (l.out_features(), l.in_features());
    if let Some(t) = l.transform() {
        return Err(dropped_transform("keep_inputs", "the Linear", t.name()));
    }
    check_keep("keep_inputs", keep, in_f, "input")?;
    let w = l.weight.to_vec();
    // Nothing kept: no column to copy from any of the (possibly 2⁴⁰) rows, so do not walk them.
    let cols: Vec<f32> = if keep.is_empty() {
        Vec::new()
    } else {
        w.chunks_exact(in_f).flat_map(|row| keep.iter().map(|&i| row[i])).collect()
    };
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
/// Indices that are not `Linear` layers, widths that do not chain, a bad amount, or either layer
/// carrying a forward transform (see the module docs); the model is unchanged then.
pub fn prune_hidden_units(seq: &mut Sequential, producer: usize, consumer: usize, amount: f64) -> Result<Vec<usize>> {
    let op = "prune_hidden_units";
    refuse_transforms(op, seq, &[producer.to_string(), consumer.to_string()])?;
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
/// A bad amount, a block whose MLP does not chain, or an `mlp.fc` or `mlp.proj` carrying a
/// forward transform (see the module docs); all checked for every block before any changes.
pub fn prune_gpt_mlp(model: &mut tt_transformer::Gpt, amount: f64) -> Result<Vec<Vec<usize>>> {
    let names: Vec<String> =
        (0..model.blocks.len()).flat_map(|l| ["fc", "up", "proj"].map(|n| format!("blocks.{l}.mlp.{n}"))).collect();
    refuse_transforms("prune_gpt_mlp", model, &names)?;
    let mut plans = Vec::with_capacity(model.blocks.len());
    for b in &model.blocks {
        let up_ok = b.mlp.up.as_ref().is_none_or(|u| u.out_features() == b.mlp.fc.out_features());
        if b.mlp.fc.out_features() != b.mlp.proj.in_features() || !up_ok {
            return Err(CompressError::arg(
                "prune_gpt_mlp",
                "a block's mlp.fc (and mlp.up) does not feed its mlp.proj",
            ));
        }
        // Ranked by the gate's rows (fc; SwiGLU's w1): a unit whose gate is small contributes
        // little whatever its `up` row. SiLU(0)·u = 0 as GELU(0) = 0: removing a unit equals
        // zeroing it in both MLPs.
        let keep = units_to_keep(&b.mlp.fc, amount)?;
        let up = b.mlp.up.as_ref().map(|u| keep_outputs(u, &keep)).transpose()?;
        plans.push((keep_outputs(&b.mlp.fc, &keep)?, up, keep_inputs(&b.mlp.proj, &keep)?, keep));
    }
    let mut kept = Vec::with_capacity(plans.len());
    let mut widths = Vec::with_capacity(plans.len());
    for (b, (fc, up, proj, keep)) in model.blocks.iter_mut().zip(plans) {
        b.mlp.fc = fc;
        b.mlp.up = up;
        b.mlp.proj = proj;
        widths.push(keep.len());
        kept.push(keep);
    }
    model.config.mlp_hidden = Some(widths);
    Ok(kept)
}

/// The output channels of `conv` kept when removing `round(amount · C_out)` of them by the L2
/// norm of each filter `[C_in, k_h, k_w]` with its bias, in their original order.
///
/// # Errors
/// An amount outside `[0, 1]`, or one that would remove every channel; a bias not of one entry
/// per channel, or channels with neither weights nor a bias (nothing to rank).
pub fn channels_to_keep(conv: &Conv2d, amount: f64) -> Result<Vec<usize>> {
    let s = conv_shape("channels_to_keep", conv)?;
    let (c_out, per) = (s[0], s[1] * s[2] * s[3]);
    check_units("channels_to_keep", "channels", c_out, per, conv.bias.as_ref())?;
    let w = conv.weight.to_vec();
    let b = conv.bias.as_ref().map(Tensor::to_vec);
    let norms: Vec<f64> = (0..c_out)
        .map(|o| {
            let bias = b.as_ref().map_or(0.0, |b| (b[o] as f64).powi(2));
            (sum_sq(&w[o * per..(o + 1) * per]) + bias).sqrt()
        })
        .collect();
    keep_by_norm("channels_to_keep", &norms, amount, "channels")
}

/// `conv`'s weight shape `[C_out, C_in, k_h, k_w]`, checked: the field is public. Its product
/// cannot overflow, since the tensor holds that many elements (a zero axis aside, whose
/// product is 0).
fn conv_shape(op: &'static str, conv: &Conv2d) -> Result<[usize; 4]> {
    let s = conv.weight.shape();
    s.as_slice()
        .try_into()
        .map_err(|_| CompressError::arg(op, format!("Conv2d weight {s:?} is not [C_out, C_in, k_h, k_w]")))
}

/// A `Conv2d` like `like` (stride, padding) with `weight` `[C_out, C_in, k_h, k_w]` and `bias`.
fn conv_from(like: &Conv2d, weight: Vec<f32>, shape: [usize; 4], bias: Option<Vec<f32>>) -> Result<Conv2d> {
    // Conv2d has no from-tensors constructor; its tensors are public, so build one of the right
    // channel counts and replace them. Kernel 0: the random init it draws is discarded, and a
    // `k_h × k_h` one could be far larger than a tall `k_h × 1` weight.
    let mut c = Conv2d::new(shape[1], shape[0], 0, like.stride, like.padding, 0);
    c.weight = Tensor::param(
        ndarray::Array4::from_shape_vec(shape, weight)
            .map_err(|e| CompressError::arg("prune_conv_channels", e.to_string()))?
            .into_dyn(),
    );
    c.bias = bias.map(|b| Tensor::param(ndarray::Array1::from(b).into_dyn()));
    Ok(c)
}

/// Layers that map a zero channel to a zero channel, elementwise or within each channel, so a
/// removed channel's absence and its zeros are the same to the consumer.
const CHANNEL_WISE: [&str; 6] = ["Relu", "Gelu", "Tanh", "Dropout", "MaxPool2d", "AvgPool2d"];

/// Removes `amount` of the output channels of the `Conv2d` `seq.layers[producer]` (by the L2
/// norm of each filter and bias, [`channels_to_keep`]) and the matching inputs of its consumer
/// `seq.layers[consumer]`: the next `Conv2d`'s input channels, or — after a `Flatten` — the
/// following `Linear`'s input columns. Flatten is channel-major (`[B, C, H, W]` → column
/// `c·H·W + y·W + x`), so channel `c` owns the `H·W` columns from `c·H·W`. Between the two only
/// channel-wise layers may stand (ReLU, GELU, tanh, dropout, max/avg pooling; one Flatten before
/// a Linear), so the pruned model equals the dense one with those filters and biases zeroed.
/// Returns the kept channels.
///
/// # Errors
/// A producer that is not a `Conv2d`, a consumer that is neither a `Conv2d` nor a `Linear`, a
/// layer between them that mixes channels, widths that do not chain, a bad amount, or either
/// layer carrying a forward transform (see the module docs); the model is unchanged then.
pub fn prune_conv_channels(seq: &mut Sequential, producer: usize, consumer: usize, amount: f64) -> Result<Vec<usize>> {
    let op = "prune_conv_channels";
    refuse_transforms(op, seq, &[producer.to_string(), consumer.to_string()])?;
    let n = seq.layers.len();
    if producer >= consumer || consumer >= n {
        return Err(CompressError::arg(op, format!("layers {producer} → {consumer} of {n}: not a forward pair")));
    }
    let flattens = seq.layers[producer + 1..consumer].iter().filter(|l| l.kind() == "Flatten").count();
    if let Some(l) =
        seq.layers[producer + 1..consumer].iter().find(|l| l.kind() != "Flatten" && !CHANNEL_WISE.contains(&l.kind()))
    {
        return Err(CompressError::arg(op, format!("a {} between the two layers mixes or shifts channels", l.kind())));
    }
    let p = seq.layers[producer]
        .as_conv2d_mut()
        .ok_or_else(|| CompressError::arg(op, format!("layer {producer} is not a Conv2d")))?;
    let keep = channels_to_keep(p, amount)?;
    let ps = conv_shape(op, p)?;
    let (c_out, per) = (ps[0], ps[1] * ps[2] * ps[3]);
    let w = p.weight.to_vec();
    let rows: Vec<f32> = keep.iter().flat_map(|&o| w[o * per..(o + 1) * per].iter().copied()).collect();
    let bias = p.bias.as_ref().map(|b| {
        let b = b.to_vec();
        keep.iter().map(|&o| b[o]).collect::<Vec<f32>>()
    });
    let new_p = conv_from(p, rows, [keep.len(), ps[1], ps[2], ps[3]], bias)?;
    let new_c: Box<dyn tt_tensor::Module> = if let Some(c) = seq.layers[consumer].as_conv2d_mut() {
        let cs = conv_shape(op, c)?;
        if flattens != 0 || cs[1] != c_out {
            return Err(CompressError::arg(
                op,
                format!(
                    "layer {consumer} takes {} channels (and no Flatten may come before it), {producer} makes {c_out}",
                    cs[1]
                ),
            ));
        }
        let k = cs[2] * cs[3];
        let w = c.weight.to_vec();
        // An empty kernel has nothing to copy: do not walk its (possibly 2⁴⁰) filters.
        let kept: Vec<f32> = if k == 0 {
            Vec::new()
        } else {
            w.chunks_exact(cs[1] * k)
                .flat_map(|f| keep.iter().flat_map(move |&i| &f[i * k..(i + 1) * k]))
                .copied()
                .collect()
        };
        let bias = c.bias.as_ref().map(Tensor::to_vec);
        Box::new(conv_from(c, kept, [cs[0], keep.len(), cs[2], cs[3]], bias)?)
    } else if let Some(l) = seq.layers[consumer].as_linear() {
        let in_f = l.in_features();
        if flattens != 1 || !in_f.is_multiple_of(c_out) {
            return Err(CompressError::arg(
                op,
                format!("layer {consumer} is a Linear of {in_f} inputs: it needs one Flatten before it and a multiple of {c_out} channels"),
            ));
        }
        let hw = in_f / c_out;
        let cols: Vec<usize> = keep.iter().flat_map(|&c| c * hw..(c + 1) * hw).collect();
        Box::new(keep_inputs(l, &cols)?)
    } else {
        return Err(CompressError::arg(op, format!("layer {consumer} is neither a Conv2d nor a Linear")));
    };
    seq.layers[producer] = Box::new(new_p);
    seq.layers[consumer] = new_c;
    Ok(keep)
}

/// Removes `amount` of every GPT block's attention heads: per block `round(amount · heads)` of
/// them with the smallest value-path norm (see the module docs). A removed head's Q, K and V rows
/// leave `attn.qkv` and its columns leave `attn.proj`; `attn.n_heads` and
/// `config.heads_per_block` record the new counts (the head width stays `d_model / n_heads`), so
/// the model saves and loads as a normal checkpoint and the KV-cached decoder caches only the
/// heads each block has. Heads are independent until the output projection, so the pruned model
/// equals the dense one with those heads' output-projection columns zeroed. Returns the kept
/// heads of each block.
///
/// # Errors
/// A bad amount, a block whose attention shapes do not match the config, or an `attn.qkv` or
/// `attn.proj` carrying a forward transform (see the module docs); all checked for every block
/// before any changes.
pub fn prune_gpt_heads(model: &mut tt_transformer::Gpt, amount: f64) -> Result<Vec<Vec<usize>>> {
    let op = "prune_gpt_heads";
    let names: Vec<String> =
        (0..model.blocks.len()).flat_map(|l| ["qkv", "proj"].map(|n| format!("blocks.{l}.attn.{n}"))).collect();
    refuse_transforms(op, model, &names)?;
    // Not `config.head_dim()`: the config's fields are public, 0 heads would divide by zero, and
    // heads of width 0 would let any head count below match empty layers.
    let (d, heads) = (model.config.d_model, model.config.n_heads);
    let hd = d.checked_div(heads).filter(|&hd| hd > 0);
    let hd = hd.ok_or_else(|| CompressError::arg(op, format!("d_model {d} over {heads} heads: no head width")))?;
    let mut plans = Vec::with_capacity(model.blocks.len());
    for (l, b) in model.blocks.iter().enumerate() {
        let (qkv, proj, h) = (&b.attn.qkv, &b.attn.proj, b.attn.n_heads);
        // Checked: `n_heads` is a public field, and a wrapped product could match the layers'
        // widths while the loops below walk `h` heads.
        let a = h.checked_mul(hd).filter(|&a| a.checked_mul(3) == Some(qkv.out_features()) && proj.in_features() == a);
        let Some(a) = a else {
            return Err(CompressError::arg(
                op,
                format!(
                    "blocks.{l}: {h} heads of width {hd} need qkv [3·{h}·{hd}, _] and proj [_, {h}·{hd}], not [{}, _] \
                     and [_, {}]",
                    qkv.out_features(),
                    proj.in_features()
                ),
            ));
        };
        let in_f = qkv.in_features();
        check_units(op, "qkv outputs", 3 * a, in_f, qkv.bias.as_ref())?;
        let (w, bias) = (qkv.weight.to_vec(), qkv.bias.as_ref().map(Tensor::to_vec));
        let (o, d) = (proj.weight.to_vec(), proj.out_features());
        let norms: Vec<f64> = (0..h)
            .map(|k| {
                let v_rows = 2 * a + k * hd..2 * a + (k + 1) * hd;
                let v = sum_sq(&w[v_rows.start * in_f..v_rows.end * in_f])
                    + bias.as_ref().map_or(0.0, |b| sum_sq(&b[v_rows.clone()]));
                let out: f64 = (0..d).map(|r| sum_sq(&o[r * a + k * hd..r * a + (k + 1) * hd])).sum();
                v.sqrt() * out.sqrt()
            })
            .collect();
        let keep = keep_by_norm(op, &norms, amount, "heads")?;
        let rows: Vec<usize> = (0..3)
            .flat_map(|part| keep.iter().flat_map(move |&k| part * a + k * hd..part * a + (k + 1) * hd))
            .collect();
        let cols: Vec<usize> = keep.iter().flat_map(|&k| k * hd..(k + 1) * hd).collect();
        plans.push((keep_outputs(qkv, &rows)?, keep_inputs(proj, &cols)?, keep));
    }
    let mut kept = Vec::with_capacity(plans.len());
    let mut counts = Vec::with_capacity(plans.len());
    for (b, (qkv, proj, keep)) in model.blocks.iter_mut().zip(plans) {
        b.attn.qkv = qkv;
        b.attn.proj = proj;
        b.attn.n_heads = keep.len();
        // Only multi-head blocks get here (a grouped-query qkv is not 3·a rows): K/V heads go
        // with their query heads.
        b.attn.n_kv_heads = keep.len();
        counts.push(keep.len());
        kept.push(keep);
    }
    model.config.heads_per_block = Some(counts);
    Ok(kept)
}
