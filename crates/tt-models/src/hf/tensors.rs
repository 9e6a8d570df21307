//! The weights of a Hugging Face Llama: `model.safetensors`, or the shards a
//! `model.safetensors.index.json` names, read into [`LlamaWeights`].
//!
//! Every shard's header is read and checked first — the safetensors crate checks that its tensors
//! tile the data exactly, this loader that the data ends where the file does, that every tensor
//! the config implies is present once with an F32, BF16 or F16 dtype and the config's shape, and
//! that nothing else is there — and only then are values read. They are streamed from each shard
//! in small chunks straight into their f32 vectors, so no shard is ever held in memory whole (a
//! bf16 checkpoint takes twice its size as f32).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::weights::{LayerWeights, LlamaParams, LlamaWeights, Matrix};

pub(crate) const SINGLE: &str = "model.safetensors";
pub(crate) const INDEX: &str = "model.safetensors.index.json";

/// The safetensors crate's own bound on a header.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// An index lists one line per tensor: a few hundred kilobytes for the largest Llama.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Bytes moved per read while streaming a tensor.
const CHUNK_BYTES: usize = 1 << 20;

/// A layer's tensors after `model.layers.{l}.`, in [`LlamaWeights`]' order: attention norm, wq,
/// wk, wv, wo, MLP norm, w1 (gate), w2 (down), w3 (up).
const LAYER_TENSORS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.down_proj.weight",
    "mlp.up_proj.weight",
];
const EMBED: &str = "model.embed_tokens.weight";
const NORM: &str = "model.norm.weight";
const LM_HEAD: &str = "lm_head.weight";

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// One shard, open, its header read: the file stays open from header to values so what was
/// checked is what is read.
struct Shard {
    path: PathBuf,
    file: File,
    /// Where the data starts: 8 + the header's length.
    data_at: u64,
}

/// Where a tensor lives: its shard and its header entry.
struct Located {
    shard: usize,
    info: TensorInfo,
}

/// Reads the weights in `dir` for a model of `params` (see the [module docs](self)).
pub(crate) fn read(dir: &Path, params: LlamaParams) -> Result<LlamaWeights> {
    let expected = expected_shapes(&params);
    let (mut shards, weight_map) = open_shards(dir)?;
    let mut found: HashMap<String, Located> = HashMap::new();
    for s in 0..shards.len() {
        let metadata = read_header(&mut shards[s])?;
        let shard = &shards[s];
        let fail = |reason: String| ModelError::format(&shard.path, reason);
        let mut entries: Vec<(String, &TensorInfo)> = metadata.tensors().into_iter().collect();
        // By name, so which of several faults is reported does not depend on hashing.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, info) in entries {
            if let Some(map) = &weight_map {
                let file = shard_name(&shard.path);
                match map.get(&name) {
                    Some(named) if *named == file => {}
                    Some(named) => return Err(fail(format!("holds tensor {name}, which {INDEX} puts in {named}"))),
                    None => return Err(fail(format!("holds tensor {name}, which {INDEX} does not list"))),
                }
            }
            found.insert(name, Located { shard: s, info: info.clone() });
        }
    }
    if let Some(map) = &weight_map {
        if let Some((name, file)) = map.iter().find(|(name, _)| !found.contains_key(*name)) {
            return Err(ModelError::format(
                dir.join(INDEX),
                format!("lists tensor {name} in {file}, which does not hold it"),
            ));
        }
    }
    check_names(&found, &expected, &params, &shards)?;
    let mut values = HashMap::new();
    let mut wanted: Vec<(&String, &Located)> = found.iter().filter(|(name, _)| expected.contains_key(*name)).collect();
    // File order: one forward pass through each shard.
    wanted.sort_by_key(|(_, at)| (at.shard, at.info.data_offsets.0));
    for (name, at) in wanted {
        values.insert(name.clone(), read_tensor(&mut shards[at.shard], name, &at.info)?);
    }
    assemble(params, values).map_err(|e| ModelError::format(dir, e))
}

/// Every tensor the model needs, by Hugging Face name, with its shape.
fn expected_shapes(p: &LlamaParams) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = BTreeMap::new();
    shapes.insert(EMBED.to_string(), vec![p.vocab_size, p.dim]);
    let [q, kv, _, o, up, down, _] = p.layer_shapes();
    let layer = [vec![p.dim], vec![q.0, q.1], vec![kv.0, kv.1], vec![kv.0, kv.1], vec![o.0, o.1], vec![p.dim]];
    let mlp = [vec![up.0, up.1], vec![down.0, down.1], vec![up.0, up.1]];
    for l in 0..p.n_layers {
        for (name, shape) in LAYER_TENSORS.iter().zip(layer.iter().chain(&mlp)) {
            shapes.insert(format!("model.layers.{l}.{name}"), shape.clone());
        }
    }
    shapes.insert(NORM.to_string(), vec![p.dim]);
    if !p.tied {
        shapes.insert(LM_HEAD.to_string(), vec![p.vocab_size, p.dim]);
    }
    shapes
}

/// Tensors a checkpoint may hold that the model does not read: a tied head saved anyway, and the
/// rotary frequencies older `transformers` saved as a buffer (the model computes its own from
/// `rope_theta`; scaled variants are refused by the config).
fn ignored(name: &str, p: &LlamaParams) -> bool {
    if name == LM_HEAD {
        return p.tied;
    }
    name.strip_prefix("model.layers.")
        .and_then(|rest| rest.strip_suffix(".self_attn.rotary_emb.inv_freq"))
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l < p.n_layers)
}

/// Every expected tensor present with a readable dtype and its shape, nothing unexpected present.
fn check_names(
    found: &HashMap<String, Located>,
    expected: &BTreeMap<String, Vec<usize>>,
    p: &LlamaParams,
    shards: &[Shard],
) -> Result<()> {
    let mut extra: Vec<(&String, &Located)> =
        found.iter().filter(|(name, _)| !expected.contains_key(*name) && !ignored(name, p)).collect();
    extra.sort_by_key(|(name, _)| *name);
    if let Some((name, at)) = extra.first() {
        return Err(ModelError::format(
            &shards[at.shard].path,
            format!("unexpected tensor {name}: not part of a LlamaForCausalLM of this config"),
        ));
    }
    for (name, shape) in expected {
        let Some(at) = found.get(name) else {
            let path = if shards.len() == 1 { shards[0].path.clone() } else { shards[0].path.with_file_name(INDEX) };
            return Err(ModelError::format(path, format!("tensor {name} is missing")));
        };
        let fail = |reason: String| ModelError::format(&shards[at.shard].path, format!("tensor {name}: {reason}"));
        if !matches!(at.info.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(fail(format!("dtype {:?}; only F32, BF16 and F16 are supported", at.info.dtype)));
        }
        if at.info.shape != *shape {
            return Err(fail(format!("shape {:?}, but the config implies {shape:?}", at.info.shape)));
        }
    }
    Ok(())
}

/// The shard files, opened, and the index's weight map when sharded.
#[allow(clippy::type_complexity)]
fn open_shards(dir: &Path) -> Result<(Vec<Shard>, Option<BTreeMap<String, String>>)> {
    let single = dir.join(SINGLE);
    if single.exists() {
        return Ok((vec![open_shard(single)?], None));
    }
    let index_path = dir.join(INDEX);
    if !index_path.exists() {
        return Err(ModelError::format(dir, format!("neither {SINGLE} nor {INDEX} is there")));
    }
    let index: Index = super::read_json(&index_path, MAX_INDEX_BYTES)?;
    let fail = |reason: String| ModelError::format(&index_path, reason);
    let mut files: Vec<&String> = index.weight_map.values().collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(fail("weight_map is empty".into()));
    }
    let mut shards = Vec::with_capacity(files.len());
    for file in files {
        // A shard is a file beside the index, never a path out of the directory.
        let plain = Path::new(file).file_name().is_some_and(|f| f == file.as_str());
        if !plain || file.contains('\\') {
            return Err(fail(format!("weight_map names shard {file:?}, which is not a plain file name")));
        }
        shards.push(open_shard(dir.join(file))?);
    }
    Ok((shards, Some(index.weight_map)))
}

fn open_shard(path: PathBuf) -> Result<Shard> {
    let file = super::open_regular(&path)?;
    Ok(Shard { path, file, data_at: 0 })
}

/// The file name a shard was opened as (the index's spelling).
fn shard_name(path: &Path) -> String {
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The shard's header, checked against the file's length; sets `data_at`.
fn read_header(shard: &mut Shard) -> Result<Metadata> {
    let path = &shard.path;
    let fail = |reason: String| ModelError::format(path, reason);
    let io = |source| ModelError::Io { path: path.clone(), source };
    let len = shard.file.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    if len < 8 {
        return Err(fail(format!("file is {len} bytes, shorter than a safetensors header")));
    }
    shard.file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > len - 8 {
        return Err(fail(format!("header length {n} exceeds the file ({len} bytes) or {MAX_HEADER_BYTES} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    shard.file.read_exact(&mut header).map_err(io)?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| fail(format!("invalid safetensors header: {e}")))?;
    let expected = (metadata.data_len() as u64).checked_add(8 + n);
    if expected != Some(len) {
        return Err(fail(format!("file is {len} bytes but its header implies {}", 8 + n + metadata.data_len() as u64)));
    }
    shard.data_at = 8 + n;
    Ok(metadata)
}

/// One tensor's values as f32, every one finite. Its dtype and shape were checked, and the
/// header's offsets against the file, before this allocates.
fn read_tensor(shard: &mut Shard, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
    let path = &shard.path;
    let io = |source| ModelError::Io { path: path.clone(), source };
    let (begin, end) = info.data_offsets;
    let width = info.dtype.bitsize() / 8;
    let numel = (end - begin) / width;
    shard.file.seek(SeekFrom::Start(shard.data_at + begin as u64)).map_err(io)?;
    let mut values = Vec::with_capacity(numel);
    let mut chunk = vec![0u8; CHUNK_BYTES.min(end - begin)];
    let mut left = end - begin;
    while left > 0 {
        let bytes = &mut chunk[..left.min(CHUNK_BYTES)];
        shard.file.read_exact(bytes).map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => ModelError::format(
                path,
                format!("tensor {name}: the file ended early (did it change while being read?)"),
            ),
            _ => io(source),
        })?;
        match info.dtype {
            Dtype::F32 => values.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Dtype::BF16 => {
                values.extend(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            }
            // F16: `check_names` admitted only these three.
            _ => values.extend(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
        }
        left -= bytes.len();
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::format(path, format!("tensor {name}: value {i} is {}", values[i])));
    }
    Ok(values)
}

/// The tensors, by Hugging Face name, as a [`LlamaWeights`]; they were checked against
/// [`expected_shapes`], so this only moves them.
fn assemble(params: LlamaParams, mut values: HashMap<String, Vec<f32>>) -> std::result::Result<LlamaWeights, String> {
    let mut take = |name: &str| values.remove(name).ok_or_else(|| format!("tensor {name} was not read"));
    let matrix = |values: Vec<f32>, (rows, cols): (usize, usize)| Matrix::F32 { rows, cols, values };
    let p = &params;
    let [q, kv, _, o, up, down, _] = p.layer_shapes();
    let tok_emb = matrix(take(EMBED)?, (p.vocab_size, p.dim));
    let mut layers = Vec::with_capacity(p.n_layers);
    for l in 0..p.n_layers {
        let mut t = LAYER_TENSORS.map(|name| format!("model.layers.{l}.{name}")).into_iter();
        let mut next = || take(&t.next().unwrap_or_default());
        layers.push(LayerWeights {
            attn_norm: next()?,
            wq: matrix(next()?, q),
            wk: matrix(next()?, kv),
            wv: matrix(next()?, kv),
            wo: matrix(next()?, o),
            ffn_norm: next()?,
            w1: matrix(next()?, up),
            w2: matrix(next()?, down),
            w3: matrix(next()?, up),
        });
    }
    let final_norm = take(NORM)?;
    let lm_head = if p.tied { None } else { Some(matrix(take(LM_HEAD)?, (p.vocab_size, p.dim))) };
    let weights = LlamaWeights { params, tok_emb, layers, final_norm, lm_head };
    weights.check_shapes()?;
    Ok(weights)
}
