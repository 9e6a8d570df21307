//! Quantized checkpoints: a model with [`Int8Linear`] and [`Int4Linear`] layers saved as
//! **safetensors with real `I8` / packed `U8` tensors**, readable by any safetensors reader (Python's `safetensors`, candle, …), and
//! loaded back into a freshly built model of the same architecture with the same codes and
//! scales — so the loaded model's outputs equal the saved model's bit for bit. The model loaded
//! into may be an fp32 model or a skeleton that holds no weights at all (see [`load`]): then no
//! f32 copy of a quantized weight is ever built.
//!
//! # The format (`model.safetensors`)
//!
//! For every `Linear` / `Conv2d` / `Embedding` whose installed projection is an [`Int8Linear`],
//! named by its state-dict path `<layer>` (`"blocks.0.mlp.fc"`, `"0"`, `"tok_emb"`):
//!
//! | tensor                     | dtype | shape                                        |
//! |----------------------------|-------|----------------------------------------------|
//! | `<layer>.weight`           | `I8`  | the weight's own: `[out, in]`, `[C_out, C_in, k, k]`, `[rows, dim]` |
//! | `<layer>.weight_scale`     | `F32` | `[1]` per-tensor, `[out]` per-channel, `[out, ⌈K/G⌉]` per-group (row-major) |
//! | `<layer>.weight_zero_point`| `I8`  | as the scale; **affine weights only**        |
//!
//! The codes are row-major over the layer's `[out, in·k·k]` matrix, which is the same order as
//! the row-major weight tensor, so the weight keeps its real shape and `S·(q − Z)` in any reader
//! gives the dequantized weight (symmetric weights have `Z = 0` and store none).
//!
//! For every layer whose projection is an [`Int4Linear`] of group `G` (inputs `K = in·k·k`,
//! `N = ⌈K/G⌉` groups per row):
//!
//! | tensor                 | dtype | shape                  |
//! |------------------------|-------|------------------------|
//! | `<layer>.weight`       | `U8`  | `[out, N·G/2]`         |
//! | `<layer>.weight_scale` | `F16` | `[out, N]` (row-major) |
//!
//! Two codes per byte, ggml's Q4_0 order: in each block of 32 inputs of a row (16 bytes), byte `i`
//! holds input `i` in its low nibble and input `i + 16` in its high nibble, each as `q + 8` for
//! the code `q ∈ [−8, 7]`; inputs past `K` (a ragged last group) are code 0, nibble 8. Weight
//! `[o, i]` is `(nibble − 8)·scale[o, i/G]`. The codes keep the row-major `[out, K]` order, so a
//! convolution's weight is stored as its matrix, not in its 4-D shape.
//!
//! A token table (an `Embedding`, `[rows, dim]`) whose format is int8 or int4 is stored exactly as
//! a `Linear` of that shape (out = rows, in = dim), metadata included. Every other
//! parameter — biases, norms, position tables, embeddings and layers left in f32 or stored in
//! another format — is `F32` under its state-dict name, as in `tt_tensor::serialize`.
//!
//! `__metadata__` (string → string):
//! - `format`: [`FORMAT`];
//! - per int4 layer, `<layer>.int4_group`: `G`, in decimal (32, 64 or 128);
//! - per int8 layer, `<layer>.scheme` (`symmetric` | `affine`), `<layer>.granularity`
//!   (`per-tensor` | `per-channel` | `per-group-<G>`, symmetric only: groups of `G` inputs along a
//!   row of `K = in·k·k`, the last one ragged if `G` does not divide `K`) and `<layer>.activations`: `dynamic`, or
//!   `static:0x<bits>:<zero_point>` — the frozen input scale as its IEEE bit pattern (8 hex digits,
//!   so it round-trips exactly; in numpy `np.uint32(0x<bits>).view(np.float32)`) and the u8 zero
//!   point.
//!
//! Files of format 1 (`tt-quant int8 checkpoint 1`, int8 only) still load.
//!
//! Why this shape: the int8 bytes are what is stored (a quarter of the f32 file), the tensors
//! keep the names and shapes a reader of the fp32 model expects, and everything needed to rebuild
//! the integer kernels — which codes range, how the inputs are quantized — is in the file, not in
//! code that must match it. Kernel choice (VNNI / AVX2 / scalar) is not stored: the outputs are
//! bit-identical at every level. Nor are forward transforms (a pruning mask, a low-rank
//! factorization, QAT's fake quantization): they are training-time state, and a layer carrying
//! one computes something other than its stored weight, so saving it is refused until the
//! transform is finished; a loaded model keeps its own.
//!
//! [`save`] writes the file as one checkpoint unit (`tt_tensor::serialize::save_unit`: content
//! addressed, published by one atomic rename); [`load`] verifies its checksum
//! (`tt_tensor::serialize::open_unit_part`, streaming: the file is never held whole) and then,
//! like [`from_safetensors`] for bytes in memory, validates **everything before changing
//! anything**, reading one tensor at a time: the metadata, every tensor's name, dtype and shape against the
//! model's parameters and layers (no unknown or missing tensors or keys), then the values — f32
//! finite, scales positive normal f32s (int4: finite positive f16s), symmetric codes in
//! `[−127, 127]`, static activation zero points in `[0, 255]`, dequantized weights finite, int4
//! padding nibbles code 0. A file that fails any check is an `Err`
//! naming the tensor or key, and the model is left as it was.
//!
//! ```
//! use tt_quant::{checkpoint, quantize_dynamic, WeightConfig};
//! use tt_tensor::nn::{Linear, Relu, Sequential};
//! use tt_tensor::{no_grad, Module, Tensor};
//! let build = |seed| Sequential::new().layer(Linear::new(8, 16, true, seed)).layer(Relu).layer(Linear::new(16, 4, true, seed + 1));
//! let mut saved = build(0);
//! quantize_dynamic(&mut saved, WeightConfig::PER_CHANNEL).unwrap();
//! let bytes = checkpoint::to_safetensors(&mut saved).unwrap();
//! let mut loaded = build(7); // same architecture, other weights
//! let layers = checkpoint::from_safetensors(&mut loaded, &bytes).unwrap();
//! assert_eq!(layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["0", "2"]);
//! let x = Tensor::from_vec((0..16).map(|i| i as f32 / 8.0 - 1.0).collect(), &[2, 8]).unwrap();
//! let (a, b) = (no_grad(|| saved.forward(&x)).unwrap(), no_grad(|| loaded.forward(&x)).unwrap());
//! assert_eq!(a.to_vec(), b.to_vec());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use std::borrow::Cow;

use ndarray::{Array2, ArrayD, IxDyn};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::Dtype;
use tt_tensor::nn::{map_conv2ds, map_embeddings, map_linears, ForwardTransform};
use tt_tensor::projection::{DenseF32, Unloaded};
use tt_tensor::serialize::{open_unit_part, save_unit, UnitPart};
use tt_tensor::{Module, Projection, Tensor};

use crate::error::{QuantError, Result};
use crate::int4::{f16, Int4Linear, PackedI4, BLOCK};
use crate::linear::{carries_transform, Activations, Int8Linear, QuantizedLayer};
use crate::scheme::{Granularity, Part, QParams, QuantizedMatrix, Scheme};

/// The checkpoint unit's part holding the weights.
pub const WEIGHTS_PART: &str = "model.safetensors";
/// Metadata key naming the format.
pub const FORMAT_KEY: &str = "format";
/// The value of [`FORMAT_KEY`] this module writes (int8 and int4 layers).
pub const FORMAT: &str = "tt-quant checkpoint 2";
/// The previous format (int8 layers only), still read.
pub const FORMAT_1: &str = "tt-quant int8 checkpoint 1";

const SCALE: &str = "weight_scale";
const ZERO_POINT: &str = "weight_zero_point";
const META_FIELDS: [&str; 3] = ["scheme", "granularity", "activations"];
/// The one metadata field of an int4 layer.
const INT4_GROUP: &str = "int4_group";

/// A `Linear`, `Conv2d` or `Embedding` of the model, as found by the visitors.
struct Layer {
    name: String,
    kind: &'static str,
    /// The weight tensor (shared handle).
    weight: Tensor,
    /// The matrix the layer's projection has: `(out, in·k·k)`.
    rows: usize,
    cols: usize,
    projection: Option<Arc<dyn Projection>>,
    transform: Option<Arc<dyn ForwardTransform>>,
}

impl Layer {
    fn new(
        name: &str,
        kind: &'static str,
        weight: &Tensor,
        projection: Option<&Arc<dyn Projection>>,
        transform: Option<&Arc<dyn ForwardTransform>>,
    ) -> Layer {
        let shape = weight.shape();
        Layer {
            name: name.to_string(),
            kind,
            weight: weight.clone(),
            rows: shape.first().copied().unwrap_or(0),
            cols: shape.iter().skip(1).product(),
            projection: projection.cloned(),
            transform: transform.cloned(),
        }
    }

    fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }

    fn int8(&self) -> Option<&Int8Linear> {
        self.projection.as_deref()?.as_any()?.downcast_ref::<Int8Linear>()
    }

    fn int4(&self) -> Option<&Int4Linear> {
        self.projection.as_deref()?.as_any()?.downcast_ref::<Int4Linear>()
    }
}

/// Every `Linear`, then every `Conv2d`, then every `Embedding` below `model` (read only, though
/// the visitors take `&mut`).
fn find_layers(model: &mut dyn Module) -> Result<Vec<Layer>> {
    let mut out = Vec::new();
    map_linears(model, |name, l| {
        out.push(Layer::new(name, "Linear", &l.weight, l.installed_projection(), l.transform()));
        Ok(())
    })?;
    map_conv2ds(model, |name, c| {
        out.push(Layer::new(name, "Conv2d", &c.weight, c.installed_projection(), c.transform()));
        Ok(())
    })?;
    map_embeddings(model, |name, e| {
        out.push(Layer::new(name, "Embedding", &e.weight, e.installed_projection(), None));
        Ok(())
    })?;
    Ok(out)
}

fn activations_string(a: Activations) -> String {
    match a {
        Activations::Dynamic => "dynamic".into(),
        Activations::Static(p) => format!("static:0x{:08x}:{}", p.scale().to_bits(), p.zero_point()),
    }
}

/// How a stored activations entry reads, before its values are checked.
enum StoredActivations {
    Dynamic,
    Static { scale: f32, zero_point: i32 },
}

/// Static activation parameters must be a u8 affine map with a usable scale.
fn check_activations(layer: &str, a: StoredActivations) -> std::result::Result<Activations, String> {
    let (scale, zero_point) = match a {
        StoredActivations::Dynamic => return Ok(Activations::Dynamic),
        StoredActivations::Static { scale, zero_point } => (scale, zero_point),
    };
    if !(0..=255).contains(&zero_point) {
        return Err(format!(
            "metadata {layer}.activations: static zero point {zero_point} is outside the u8 range [0, 255]"
        ));
    }
    QParams::new(scale, zero_point).map(Activations::Static).map_err(|_| {
        format!("metadata {layer}.activations: static scale {scale} is not a positive normal f32 (finite, > 0)")
    })
}

/// The model as safetensors bytes in the format of the module docs.
///
/// # Errors
/// A layer carrying a forward transform (a pruning mask not made permanent, a low-rank
/// factorization in training, QAT's fake quantization): it computes a transform of its stored
/// weight, which is what would be saved, and a model loading the file would compute something
/// else — finish the transform first, as for [`crate::quantize_layers`]. An int8 or int4 layer whose
/// weight no longer equals its projection (written after quantization: a
/// training step or a loaded checkpoint — quantize again, or clear the projection), a stored
/// weight that [`load`] would refuse (see the module docs), two parameters with one name, a
/// parameter named like the scale or zero point of a quantized layer, or a layer still holding an
/// [`Unloaded`] placeholder (a skeleton not loaded).
pub fn to_safetensors(model: &mut dyn Module) -> Result<Vec<u8>> {
    let err = |reason: String| QuantError::Checkpoint { path: WEIGHTS_PART.into(), reason };
    let layers = find_layers(model)?;
    let params = model.named_parameters();
    let mut int8: HashMap<String, (&Layer, &Int8Linear)> = HashMap::new();
    let mut metadata = HashMap::from([(FORMAT_KEY.to_string(), FORMAT.to_string())]);
    if let Some((layer, t)) = layers.iter().find_map(|l| Some((l, l.transform.as_ref()?))) {
        return Err(err(format!("{} {}", layer.kind, carries_transform(&layer.name, t.as_ref(), "saving"))));
    }
    // A skeleton's placeholder has no values to save (reading it would panic).
    if let Some(layer) =
        layers.iter().find(|l| l.projection.as_deref().and_then(|p| p.as_any()).is_some_and(|a| a.is::<Unloaded>()))
    {
        return Err(err(format!(
            "{} {}: its weights were never loaded (an Unloaded placeholder): nothing to save",
            layer.kind, layer.name
        )));
    }
    let mut int4: HashMap<String, (&Layer, &Int4Linear)> = HashMap::new();
    let fresh = |layer: &Layer, q: &dyn Projection| -> Result<()> {
        let dense = q.to_dense();
        let weight = layer.weight.data();
        let (weight, dense) = (weight.as_standard_layout(), dense.as_standard_layout());
        let (weight, dense) = (weight.as_slice().expect("standard layout"), dense.as_slice().expect("standard layout"));
        if weight.len() != dense.len() || weight.iter().zip(dense).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(err(format!(
                "{} {}: its weight no longer equals its '{}' projection (written after quantization: a training \
                 step or a loaded checkpoint); quantize it again or clear the projection",
                layer.kind,
                layer.name,
                q.format()
            )));
        }
        Ok(())
    };
    for layer in &layers {
        if let Some(q) = layer.int4() {
            fresh(layer, q)?;
            metadata.insert(format!("{}.{INT4_GROUP}", layer.name), q.group().to_string());
            int4.insert(layer.weight_name(), (layer, q));
            continue;
        }
        let Some(q) = layer.int8() else { continue };
        fresh(layer, q)?;
        let w = q.weight();
        metadata.insert(format!("{}.scheme", layer.name), w.scheme().name().into());
        metadata.insert(format!("{}.granularity", layer.name), w.granularity().name());
        metadata.insert(format!("{}.activations", layer.name), activations_string(q.activations()));
        int8.insert(layer.weight_name(), (layer, q));
    }
    // (name, dtype, shape, little-endian bytes)
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in &params {
        if let Some((layer, q)) = int4.get(name) {
            let p = q.packed();
            raw.push((name.clone(), Dtype::U8, vec![layer.rows, p.blocks() * BLOCK / 2], p.nibbles()));
            let scales = p.row_scales().iter().flat_map(|s| s.to_bits().to_le_bytes()).collect();
            raw.push((format!("{}.{SCALE}", layer.name), Dtype::F16, vec![layer.rows, p.groups()], scales));
            continue;
        }
        match int8.get(name) {
            Some((layer, q)) => {
                let w = q.weight();
                raw.push((name.clone(), Dtype::I8, t.shape(), w.codes().iter().map(|&c| c as u8).collect()));
                let scales: Vec<f32> = w.params().iter().map(|p| p.scale()).collect();
                raw.push((
                    format!("{}.{SCALE}", layer.name),
                    Dtype::F32,
                    scale_shape(layer, w.granularity()),
                    le_bytes(&scales),
                ));
                if w.scheme() == Scheme::Affine {
                    // In [−128, 127]: a `QuantizedMatrix` invariant.
                    let zps = w.params().iter().map(|p| p.zero_point() as i8 as u8).collect();
                    raw.push((
                        format!("{}.{ZERO_POINT}", layer.name),
                        Dtype::I8,
                        scale_shape(layer, w.granularity()),
                        zps,
                    ));
                }
            }
            None => {
                let data = t.data();
                let data = data.as_standard_layout();
                raw.push((name.clone(), Dtype::F32, t.shape(), le_bytes(data.as_slice().expect("standard layout"))))
            }
        }
    }
    let mut seen = HashSet::new();
    if let Some((dup, ..)) = raw.iter().find(|(n, ..)| !seen.insert(n.as_str())) {
        return Err(err(format!(
            "two tensors would be named {dup} (a repeated parameter name, or a parameter named like an int8 layer's \
             scale or zero point)"
        )));
    }
    if let Some(missing) = int8.keys().chain(int4.keys()).find(|n| !params.iter().any(|(p, _)| p == *n)) {
        return Err(err(format!("the quantized layer weight {missing} is not among the model's parameters")));
    }
    let views = raw
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| err(e.to_string()))?;
    sort_metadata(bytes, &metadata).map_err(err)
}

/// The little-endian bytes of `values`, by a plain slice loop: ndarray's `IxDyn` iterator under a
/// `flat_map` drew valgrind reports of branches on uninitialised values here.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * values.len());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// safetensors writes `__metadata__` (a `HashMap`) in the map's random order, so the same model
/// would give different bytes on each save — a different content-addressed part each time, and
/// files that cannot be compared. This rewrites that object with its keys sorted: the same
/// entries, so the same length, and nothing else in the header moves.
fn sort_metadata(mut bytes: Vec<u8>, metadata: &HashMap<String, String>) -> std::result::Result<Vec<u8>, String> {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let sorted: BTreeMap<&String, &String> = metadata.iter().collect();
    let sorted = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    let (start, end) = (8 + PREFIX.len(), 8 + PREFIX.len() + sorted.len());
    let same = bytes.get(8..start) == Some(PREFIX)
        && bytes.get(start..end).and_then(|s| serde_json::from_slice::<HashMap<String, String>>(s).ok()).as_ref()
            == Some(metadata);
    if !same {
        return Err(
            "the safetensors header does not start with the metadata written (a changed safetensors crate?)".into()
        );
    }
    bytes[start..end].copy_from_slice(&sorted);
    Ok(bytes)
}

/// Saves the model as a checkpoint unit in `dir` holding [`WEIGHTS_PART`] (see the module docs);
/// a previous checkpoint there is replaced only once the new one is complete.
///
/// # Errors
/// As [`to_safetensors`], or an I/O failure (the previous checkpoint, if any, is then intact).
pub fn save(model: &mut dyn Module, dir: &Path) -> Result<()> {
    save_with(model, dir, &[])
}

/// [`save`] with more parts in the same unit (a config, a tokenizer: `(file name, bytes)`),
/// published together with the weights; read them back with `tt_tensor::serialize::load_unit`.
///
/// # Errors
/// As [`save`], and a part name that is not a plain file name or repeats one (including
/// [`WEIGHTS_PART`]).
pub fn save_with(model: &mut dyn Module, dir: &Path, extra_parts: &[(&str, &[u8])]) -> Result<()> {
    let weights = to_safetensors(model)?;
    let mut parts: Vec<(&str, &[u8])> = vec![(WEIGHTS_PART, &weights)];
    parts.extend_from_slice(extra_parts);
    Ok(save_unit(dir, &parts)?)
}

/// Loads the checkpoint unit in `dir` into `model` (built with the same architecture): f32
/// parameters are set, and every layer stored as `I8` gets an [`Int8Linear`] over the stored codes
/// and scales, every layer stored as `U8` an [`Int4Linear`] over its nibbles and f16 scales
/// (packed straight from the file's bytes), installed with `set_projection`. Layers stored as
/// `F32` end up dense: a projection installed in them before is removed (it would be stale).
/// Returns the quantized layers, in the model's order.
///
/// `model` may be a skeleton holding no weights — layers built with `from_projection` over
/// [`tt_tensor::projection::Unloaded`] placeholders (`tt_transformer::Gpt::new_with`): a layer
/// whose weight is released stays released, its loaded format the only copy (a layer stored as
/// `F32` gets a `DenseF32` of the stored values as its format), so no f32 copy of a quantized
/// weight is ever built. The file is not read into memory: its checksum is verified streaming
/// (`tt_tensor::serialize::open_unit_part`), then each tensor is read on its own, so loading holds
/// at most the finished formats plus one tensor's bytes beyond what the model keeps.
///
/// # Errors
/// A missing or corrupt unit, a checksum mismatch (`open_unit_part`), or any problem
/// [`from_safetensors`] reports; the model is then unchanged. Only a read failing after
/// everything was validated (the file changed by another program while loading) can leave
/// the model partly loaded; that error says so.
pub fn load(model: &mut dyn Module, dir: &Path) -> Result<Vec<QuantizedLayer>> {
    let part = open_unit_part(dir, WEIGHTS_PART)?;
    let label = part.path().display().to_string();
    read_into(model, &part, &label)
}

/// [`load`] from safetensors bytes in memory.
///
/// # Errors
/// Bytes that are not a complete safetensors file; missing metadata or an unknown format; a
/// metadata key that names no `Linear`/`Conv2d`/`Embedding`, or an int8 layer without its scheme,
/// granularity or activations, or with a value that does not parse; a missing or unexpected
/// tensor; a tensor of the wrong dtype or shape (for the model's layer, or for the number of
/// scales its granularity needs); a scale that is not a positive normal f32, a non-finite f32
/// value, a symmetric code of −128, a static activation zero point outside `[0, 255]`, a
/// dequantized weight that overflows f32, or a layer `Int8Linear` refuses; for int4 layers (format
/// 2 only), a missing, unparsable or unsupported `int4_group`, int8 fields beside it, codes or
/// scales whose shape or byte count does not match the layer and group (a truncated tensor, a
/// wrong group size), a scale that is not a finite positive f16 (NaN, ±∞, ±0, negative), or a
/// padding nibble that is not code 0. Each error names the tensor or key; the model is then
/// unchanged.
pub fn from_safetensors(model: &mut dyn Module, bytes: &[u8]) -> Result<Vec<QuantizedLayer>> {
    read_into(model, &bytes, WEIGHTS_PART)
}

/// Where a checkpoint's bytes come from: the whole file in memory ([`from_safetensors`]) or a
/// verified unit part read one tensor at a time ([`load`]). One loader reads both.
trait Source {
    /// The file's size in bytes.
    fn size(&self) -> u64;
    /// `len` bytes from `offset`; an error (a reason) for a range past the end.
    fn bytes_at(&self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn bytes_at(&self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(len)?))
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("{len} bytes at offset {offset} go past the end of the {} bytes", self.len()))
    }
}

impl Source for UnitPart {
    fn size(&self) -> u64 {
        self.len()
    }
    fn bytes_at(&self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String> {
        self.read_at(offset, len).map(Cow::Owned).map_err(|e| e.to_string())
    }
}

/// The largest header read: safetensors' own limit (its `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The header's length prefix: a little-endian u64.
const LEN_BYTES: usize = 8;

/// One tensor of the file, from the header: what it is and where its bytes are.
#[derive(Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// From the start of the file.
    offset: u64,
    len: usize,
}

/// A file's header, checked as `SafeTensors::read_metadata` checks it: the length prefix, the
/// JSON, every tensor's byte range (contiguous from the data's start, each the size its dtype and
/// shape say) ending exactly at the end of the file. Reads only the header.
struct Header {
    metadata: Option<HashMap<String, String>>,
    tensors: BTreeMap<String, Entry>,
}

fn read_header(src: &dyn Source, err: &dyn Fn(String) -> QuantError) -> Result<Header> {
    let incomplete = |why: String| err(format!("not a complete safetensors file: {why}"));
    let size = src.size();
    let prefix = src
        .bytes_at(0, LEN_BYTES)
        .map_err(|_| incomplete(format!("{size} bytes cannot hold the 8-byte header length")))?;
    // `bytes_at` returned exactly LEN_BYTES bytes (or the error above): the conversion cannot fail.
    let n = u64::from_le_bytes(prefix[..LEN_BYTES].try_into().expect("read 8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(incomplete(format!("a header of {n} bytes is over the {MAX_HEADER_BYTES} allowed")));
    }
    let json = usize::try_from(n)
        .map_err(|e| e.to_string())
        .and_then(|len| src.bytes_at(LEN_BYTES as u64, len))
        .map_err(|_| incomplete(format!("a header of {n} bytes does not fit in the {size}-byte file")))?;
    let meta: Metadata = serde_json::from_slice(&json).map_err(|e| incomplete(format!("invalid header: {e}")))?;
    let data_start = LEN_BYTES as u64 + n;
    // Metadata's own validation made the ranges contiguous from 0: the data must end the file.
    let end = data_start.checked_add(meta.data_len() as u64);
    if end != Some(size) {
        return Err(incomplete(format!(
            "its tensors end at byte {}, the file has {size} bytes",
            end.map_or("(overflow)".to_string(), |e| e.to_string())
        )));
    }
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (start, stop) = info.data_offsets;
            let entry = Entry {
                dtype: info.dtype,
                shape: info.shape.clone(),
                offset: data_start + start as u64,
                len: stop - start,
            };
            (name, entry)
        })
        .collect();
    Ok(Header { metadata: meta.metadata().clone(), tensors })
}

/// What loading will do, fully validated. The quantized formats are built (they are the memory
/// the loaded model keeps); f32 parameters are checked but re-read when applied, so validation
/// never holds a second copy of the model's f32 values.
struct Plan {
    /// f32 parameters to set, with where their values are.
    f32s: Vec<(Tensor, String, Entry)>,
    int8: HashMap<String, Arc<Int8Linear>>,
    int4: HashMap<String, Arc<Int4Linear>>,
    /// Layers whose weight is released and whose file weight is `F32`: the values as their format.
    dense: HashMap<String, Arc<DenseF32>>,
}

fn read_into(model: &mut dyn Module, src: &dyn Source, label: &str) -> Result<Vec<QuantizedLayer>> {
    let plan = validate(model, src, label)?;
    apply(model, plan, src, label)
}

/// The stored descriptions of one int8 layer, from the metadata.
#[derive(Default)]
struct LayerMeta<'a> {
    fields: BTreeMap<&'a str, &'a str>,
}

fn parse_scheme(s: &str) -> Option<Scheme> {
    [Scheme::Symmetric, Scheme::Affine].into_iter().find(|x| x.name() == s)
}

/// `per-tensor`, `per-channel` or `per-group-<G>` (G a plain positive decimal, no sign or
/// leading zero, at most [`MAX_GROUP`]).
fn parse_granularity(s: &str) -> Option<Granularity> {
    if let Some(g) = s.strip_prefix("per-group-") {
        let plain = !g.is_empty() && g.len() <= 7 && g.bytes().all(|b| b.is_ascii_digit()) && !g.starts_with('0');
        return plain.then(|| g.parse::<usize>().ok()).flatten().filter(|&g| g <= MAX_GROUP).map(Granularity::PerGroup);
    }
    [Granularity::PerTensor, Granularity::PerChannel].into_iter().find(|x| x.name() == s)
}

/// The largest int8 group a checkpoint may name (a row of 2²⁰ inputs is far past any model here).
const MAX_GROUP: usize = 1 << 20;

/// The shape of an int8 layer's scales (and zero points): `[1]` per tensor, `[out]` per channel,
/// `[out, groups]` per group (a ragged last group has its own).
fn scale_shape(layer: &Layer, g: Granularity) -> Vec<usize> {
    match g {
        Granularity::PerTensor => vec![1],
        Granularity::PerChannel => vec![layer.rows],
        Granularity::PerGroup(n) => vec![layer.rows, layer.cols.div_ceil(n).max(1)],
    }
}

fn parse_activations(s: &str) -> Option<StoredActivations> {
    if s == "dynamic" {
        return Some(StoredActivations::Dynamic);
    }
    let (bits, zp) = s.strip_prefix("static:0x")?.split_once(':')?;
    if bits.len() != 8 || !bits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let scale = f32::from_bits(u32::from_str_radix(bits, 16).ok()?);
    let zero_point =
        if zp.bytes().all(|b| b.is_ascii_digit() || b == b'-') { zp.parse::<i32>().ok()? } else { return None };
    Some(StoredActivations::Static { scale, zero_point })
}

/// Little-endian f32s (`bytes` holds whole values: its length was checked against the shape).
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The f32 tensor `name` at `e`, read a chunk at a time into its final buffer (so a load never
/// holds a tensor's bytes beside its values), every value finite: the error names the first that
/// is not, or the failed read.
fn read_f32s(src: &dyn Source, name: &str, e: &Entry) -> std::result::Result<Vec<f32>, String> {
    const CHUNK: usize = 1 << 16;
    let mut out = Vec::new();
    out.try_reserve_exact(e.len / 4).map_err(|_| format!("tensor {name}: {} bytes do not fit in memory", e.len))?;
    let mut done = 0;
    while done < e.len {
        let n = CHUNK.min(e.len - done);
        let bytes = src.bytes_at(e.offset + done as u64, n).map_err(|r| format!("tensor {name}: {r}"))?;
        out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        done += n;
    }
    match out.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("tensor {name} holds a non-finite value ({}) at flat index {i}", out[i])),
        None => Ok(out),
    }
}

fn validate(model: &mut dyn Module, src: &dyn Source, label: &str) -> Result<Plan> {
    let err = |reason: String| QuantError::Checkpoint { path: label.to_string(), reason };
    let header = read_header(src, &err)?;
    let tensors = &header.tensors;
    // One tensor's bytes, read when its turn comes (and dropped after).
    let read = |name: &str, e: &Entry| src.bytes_at(e.offset, e.len).map_err(|r| err(format!("tensor {name}: {r}")));
    let layers = find_layers(model)?;
    let params = model.named_parameters();

    // 1. Metadata: the format, then one entry per (layer, field), every key known.
    let meta = header
        .metadata
        .as_ref()
        .ok_or_else(|| err(format!("no __metadata__ (a tt-quant checkpoint names its format under {FORMAT_KEY:?})")))?;
    let int4_allowed = match meta.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => true,
        Some(f) if f == FORMAT_1 => false,
        Some(f) => return Err(err(format!("metadata {FORMAT_KEY}: {f:?} is not {FORMAT:?} (or {FORMAT_1:?})"))),
        None => return Err(err(format!("metadata has no {FORMAT_KEY:?} key (not a tt-quant checkpoint)"))),
    };
    let by_name: HashMap<&str, &Layer> = layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut layer_meta: BTreeMap<&str, LayerMeta<'_>> = BTreeMap::new();
    let mut entries: Vec<(&String, &String)> = meta.iter().filter(|(k, _)| *k != FORMAT_KEY).collect();
    entries.sort();
    for (key, value) in entries {
        let known = key.rsplit_once('.').filter(|(layer, field)| {
            (META_FIELDS.contains(field) || (int4_allowed && *field == INT4_GROUP)) && by_name.contains_key(layer)
        });
        let Some((layer, field)) = known else {
            let int4 = if int4_allowed { ", or .int4_group" } else { "" };
            return Err(err(format!(
                "metadata key {key:?} is unknown (expected <layer>.scheme, .granularity or .activations{int4} for a \
                 Linear, Conv2d or Embedding of the model)"
            )));
        };
        layer_meta.entry(layer).or_default().fields.insert(field, value.as_str());
    }

    // 2. Header only (nothing read or allocated yet): every tensor's role, dtype and shape.
    let param_names: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if param_names.len() != params.len() {
        return Err(err("the model lists two parameters under one name".into()));
    }
    let tensor = |name: &str| tensors.get(name);
    let check = |name: &str, view: &Entry, dtype: Dtype, shape: &[usize]| -> Result<()> {
        if view.dtype != dtype {
            return Err(err(format!("tensor {name} has dtype {}, expected {dtype}", view.dtype)));
        }
        if view.shape != shape {
            return Err(err(format!("tensor {name} has shape {:?}, expected {shape:?}", view.shape)));
        }
        let want = shape.iter().product::<usize>() * (dtype.bitsize() / 8);
        if view.len != want {
            return Err(err(format!("tensor {name} holds {} bytes, expected {want}", view.len)));
        }
        Ok(())
    };
    struct Int8Spec<'v> {
        layer: &'v Layer,
        codes: &'v Entry,
        scales: &'v Entry,
        zero_points: Option<&'v Entry>,
        scheme: Scheme,
        granularity: Granularity,
        activations: Activations,
    }
    struct Int4Spec<'v> {
        layer: &'v Layer,
        codes: &'v Entry,
        scales: &'v Entry,
        group: usize,
    }
    let mut used: HashSet<String> = HashSet::new();
    let mut specs: Vec<Int8Spec<'_>> = Vec::new();
    let mut specs4: Vec<Int4Spec<'_>> = Vec::new();
    for layer in &layers {
        let wname = layer.weight_name();
        let Some(view) = tensor(&wname) else { continue };
        let m = layer_meta.get(layer.name.as_str());
        // What the metadata says the layer is: the first field it gives, and the dtype that goes
        // with it.
        let described = m.and_then(|m| m.fields.keys().next().copied()).map(|field| match field {
            INT4_GROUP => (field, "an int4", Dtype::U8),
            _ => (field, "an int8", Dtype::I8),
        });
        match described {
            Some((field, what, dtype)) if view.dtype != dtype => {
                return Err(err(format!(
                    "metadata {}.{field} describes {what} layer, but tensor {wname} has dtype {} ({what} weight is \
                     {dtype})",
                    layer.name, view.dtype
                )));
            }
            None if view.dtype == Dtype::U8 && int4_allowed => {
                return Err(err(format!("tensor {wname} is U8 (int4) but metadata has no {}.{INT4_GROUP}", layer.name)))
            }
            None if view.dtype == Dtype::I8 => {}
            None => continue, // an f32 weight (or not): checked with the other parameters below
            Some(_) => {}
        }
        if !param_names.contains_key(wname.as_str()) {
            return Err(err(format!("tensor {wname} is not a parameter of the model")));
        }
        if view.dtype == Dtype::U8 {
            let m = m.map(|m| &m.fields);
            if let Some(f) = m.and_then(|m| m.keys().find(|f| **f != INT4_GROUP)) {
                return Err(err(format!(
                    "metadata {}.{f} is an int8 field, but {wname} is an int4 layer (U8, {}.{INT4_GROUP})",
                    layer.name, layer.name
                )));
            }
            let g = m.and_then(|m| m.get(INT4_GROUP).copied()).unwrap_or("");
            let group = g
                .parse::<usize>()
                .ok()
                .filter(|n| g.bytes().all(|b| b.is_ascii_digit()) && crate::int4::GROUPS.contains(n))
                .ok_or_else(|| {
                    err(format!(
                        "metadata {}.{INT4_GROUP}: {g:?} is not a supported int4 group size ({:?})",
                        layer.name,
                        crate::int4::GROUPS
                    ))
                })?;
            let groups = layer.cols.div_ceil(group);
            // Shapes the model fixes: a wrong group or a truncated tensor is caught here, before
            // anything is read.
            check(&wname, view, Dtype::U8, &[layer.rows, groups * group / 2])?;
            let sname = format!("{}.{SCALE}", layer.name);
            let scales =
                tensor(&sname).ok_or_else(|| err(format!("tensor {sname} is missing (the scales of int4 {wname})")))?;
            check(&sname, scales, Dtype::F16, &[layer.rows, groups])?;
            used.extend([wname, sname]);
            specs4.push(Int4Spec { layer, codes: view, scales, group });
            continue;
        }
        check(&wname, view, Dtype::I8, &layer.weight.shape())?;
        let field = |f: &str| -> Result<&str> {
            m.and_then(|m| m.fields.get(f).copied())
                .ok_or_else(|| err(format!("tensor {wname} is I8 but metadata has no {}.{f}", layer.name)))
        };
        let bad = |f: &str, v: &str, want: &str| err(format!("metadata {}.{f}: {v:?} is not {want}", layer.name));
        let s = field("scheme")?;
        let scheme = parse_scheme(s).ok_or_else(|| bad("scheme", s, "symmetric or affine"))?;
        let g = field("granularity")?;
        let granularity = parse_granularity(g)
            .ok_or_else(|| bad("granularity", g, "per-tensor, per-channel or per-group-<G> (1 ≤ G ≤ 1048576)"))?;
        if matches!(granularity, Granularity::PerGroup(_)) && scheme == Scheme::Affine {
            return Err(bad("granularity", g, "a granularity of affine weights (per-group weights are symmetric)"));
        }
        let a = field("activations")?;
        let activations = parse_activations(a)
            .ok_or_else(|| bad("activations", a, "dynamic or static:0x<8 hex digits of the f32 scale>:<zero point>"))?;
        let activations = check_activations(&layer.name, activations).map_err(err)?;
        let n = scale_shape(layer, granularity);
        let sname = format!("{}.{SCALE}", layer.name);
        let scales =
            tensor(&sname).ok_or_else(|| err(format!("tensor {sname} is missing (the scales of I8 {wname})")))?;
        check(&sname, scales, Dtype::F32, &n)?;
        let zname = format!("{}.{ZERO_POINT}", layer.name);
        let zero_points = match (scheme, tensor(&zname)) {
            (Scheme::Affine, Some(z)) => {
                check(&zname, z, Dtype::I8, &n)?;
                Some(z)
            }
            (Scheme::Affine, None) => {
                return Err(err(format!("tensor {zname} is missing (affine {wname} needs its zero points)")))
            }
            (Scheme::Symmetric, Some(_)) => {
                return Err(err(format!("tensor {zname} is unexpected: {wname} is symmetric (zero points all 0)")))
            }
            (Scheme::Symmetric, None) => None,
        };
        used.extend([wname, sname]);
        if zero_points.is_some() {
            used.insert(zname);
        }
        specs.push(Int8Spec { layer, codes: view, scales, zero_points, scheme, granularity, activations });
    }
    let specified = |l: &str| specs.iter().any(|s| s.layer.name == l) || specs4.iter().any(|s| s.layer.name == l);
    if let Some((layer, m)) = layer_meta.iter().find(|(l, _)| !specified(l)) {
        let field = m.fields.keys().next().copied().unwrap_or("scheme");
        let (what, dtype) = if field == INT4_GROUP { ("an int4", "U8") } else { ("an int8", "I8") };
        return Err(err(format!(
            "metadata {layer}.{field} describes {what} layer, but tensor {layer}.weight is not stored as {dtype}"
        )));
    }
    let mut f32_entries = Vec::new();
    for (name, t) in &params {
        if used.contains(name) {
            continue;
        }
        let view = tensor(name).ok_or_else(|| err(format!("tensor {name} is missing (a parameter of the model)")))?;
        check(name, view, Dtype::F32, &t.shape())?;
        used.insert(name.clone());
        f32_entries.push((name, t, view));
    }
    if let Some(extra) = tensors.keys().find(|n| !used.contains(*n)) {
        return Err(err(format!(
            "tensor {extra} is unexpected (neither a parameter of the model nor the scale or zero point of a quantized \
             layer)"
        )));
    }

    // 3. Values, one tensor at a time: sizes are now the model's own. An f32 parameter is only
    // checked here (the model already holds its memory; `apply` reads it again), except the weight
    // of a layer whose weight is released (a skeleton's): its values become its format, memory
    // the loaded model keeps.
    let released: HashMap<String, &Layer> =
        layers.iter().filter(|l| l.weight.is_released()).map(|l| (l.weight_name(), l)).collect();
    let mut f32s = Vec::with_capacity(f32_entries.len());
    let mut dense = HashMap::new();
    for (name, t, entry) in f32_entries {
        // Checked here, read again by `apply`: only one tensor's values are held at a time.
        let values = read_f32s(src, name, entry).map_err(err)?;
        match released.get(name.as_str()) {
            Some(layer) => {
                let w = Array2::from_shape_vec((layer.rows, layer.cols), values)
                    .map_err(|e| err(format!("tensor {name}: {e}")))?;
                dense.insert(layer.name.clone(), Arc::new(DenseF32::from_array(w)));
            }
            None => f32s.push(((*t).clone(), name.clone(), entry.clone())),
        }
    }
    // Largest first: a layer's transient (its bytes as read beside its packed format) then
    // comes on top of the fewest layers already built, so the load's peak stays near its end
    // state rather than the end state plus the largest layer (the token table, built last in
    // layer order).
    specs.sort_by_key(|s| std::cmp::Reverse(s.codes.len));
    specs4.sort_by_key(|s| std::cmp::Reverse(s.codes.len));
    let mut int8 = HashMap::new();
    for s in specs {
        let name = &s.layer.name;
        let scales = f32_values(&read(&format!("{name}.{SCALE}"), s.scales)?);
        let zps: Vec<i32> = match s.zero_points {
            Some(z) => read(&format!("{name}.{ZERO_POINT}"), z)?.iter().map(|&b| b as i8 as i32).collect(),
            None => vec![0; scales.len()],
        };
        let params = scales
            .iter()
            .zip(&zps)
            .enumerate()
            .map(|(i, (&scale, &zero_point))| {
                QParams::new(scale, zero_point).map_err(|_| {
                    err(format!(
                        "tensor {name}.{SCALE}: scale {scale} at index {i} is not a positive normal f32 (finite, > 0)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Converted in place when the bytes were read for this (a `Vec<u8>` becomes the `Vec<i8>`):
        // the largest transient of a load is then one tensor's bytes.
        let codes = read(&s.layer.weight_name(), s.codes)?.into_owned().into_iter().map(|b| b as i8).collect();
        let q = QuantizedMatrix::build(s.layer.rows, s.layer.cols, codes, params, s.scheme, s.granularity).map_err(
            |(part, reason)| {
                let tensor = match part {
                    Part::Shape | Part::Codes => "weight",
                    Part::Params => SCALE,
                    Part::ZeroPoints => ZERO_POINT,
                };
                err(format!("tensor {name}.{tensor}: {reason}"))
            },
        )?;
        let layer = Int8Linear::from_quantized(q, s.activations)
            .map_err(|e| err(format!("{} {name}: the int8 layer cannot be built: {e}", s.layer.kind)))?;
        int8.insert(name.clone(), Arc::new(layer));
    }
    let mut int4 = HashMap::new();
    for s in specs4 {
        let name = &s.layer.name;
        let scales: Vec<f16> = read(&format!("{name}.{SCALE}"), s.scales)?
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        if let Some(i) = scales.iter().position(|v| !(v.is_finite() && v.to_f32() > 0.0)) {
            return Err(err(format!(
                "tensor {name}.{SCALE}: scale {} at flat index {i} is not a finite positive f16",
                scales[i]
            )));
        }
        let nibbles = read(&s.layer.weight_name(), s.codes)?;
        let packed = PackedI4::from_nibbles(&nibbles, &scales, s.layer.rows, s.layer.cols, s.group)
            .map_err(|e| err(format!("tensor {name}.weight: {e}")))?;
        int4.insert(name.clone(), Arc::new(Int4Linear::from_packed(packed)));
    }
    Ok(Plan { f32s, int8, int4, dense })
}

/// Applies a validated plan. Installing a format cannot fail (each has its layer's shape, which
/// validation checked), and the f32 values were checked in validation: what is left to fail is
/// reading them again, which only a file changed by another program since it was verified can
/// make fail — then the model is partly loaded, and the error says so.
fn apply(model: &mut dyn Module, plan: Plan, src: &dyn Source, label: &str) -> Result<Vec<QuantizedLayer>> {
    let Plan { f32s, mut int8, mut int4, mut dense } = plan;
    let changed = |reason: String| QuantError::Checkpoint {
        path: label.to_string(),
        reason: format!("{reason}: the file changed while loading (the model is partly loaded)"),
    };
    for (t, name, entry) in f32s {
        let values = read_f32s(src, &name, &entry).map_err(changed)?;
        let arr =
            ArrayD::from_shape_vec(IxDyn(&entry.shape), values).map_err(|e| changed(format!("tensor {name}: {e}")))?;
        t.set_data(arr)?;
    }
    let mut done = Vec::new();
    // The layer's new format, if it gets one; quantized formats are reported.
    let mut install = |name: &str| -> Option<Arc<dyn Projection>> {
        let (q, weight_bytes): (Arc<dyn Projection>, usize) = match (int8.remove(name), int4.remove(name)) {
            (Some(q), _) => (q.clone(), q.weight_bytes()),
            (None, Some(q)) => (q.clone(), q.weight_bytes()),
            (None, None) => return dense.remove(name).map(|d| d as Arc<dyn Projection>),
        };
        done.push(QuantizedLayer {
            name: name.to_string(),
            format: q.format(),
            shape: q.shape(),
            weight_bytes,
            storage_bytes: q.storage_bytes(),
        });
        Some(q)
    };
    // A layer without a new format is dense (its weight was set above): a format installed before
    // would be stale.
    map_linears(model, |name, l| match install(name) {
        Some(q) => l.set_projection(q),
        None => {
            l.clear_projection();
            Ok(())
        }
    })?;
    map_conv2ds(model, |name, c| match install(name) {
        Some(q) => c.set_projection(q),
        None => {
            c.clear_projection();
            Ok(())
        }
    })?;
    map_embeddings(model, |name, e| match install(name) {
        Some(q) => e.set_projection(q),
        None => {
            e.clear_projection();
            Ok(())
        }
    })?;
    Ok(done)
}
