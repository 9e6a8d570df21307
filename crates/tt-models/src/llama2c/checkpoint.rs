//! llama2.c checkpoints, read into (and written from) [`LlamaWeights`].
//!
//! Two formats, told apart by their first four bytes:
//!
//! - **legacy** (`export.py`'s `legacy_export`, what `run.c` reads): seven little-endian `i32`s —
//!   `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`, a negative
//!   `vocab_size` meaning an untied output head — then f32 tensors: the token table, every
//!   layer's attention norm, then every layer's wq, wk, wv, wo, MLP norm, w1, w2, w3 (each kind
//!   for all layers before the next kind), the final norm, two obsolete RoPE tables of
//!   `seq_len · head_dim/2` values each (skipped: the model computes its own), and the output head
//!   when untied.
//! - **version 2** (`version2_export`, what `runq.c` reads): a 256-byte header — the `u32` magic
//!   `0x616b3432` ("ak42"), `i32` version 2, the seven ints, a shared-classifier byte, the `i32`
//!   group size, zeros — then the norms in f32 (all attention norms, all MLP norms, the final
//!   one), then Q8_0 matrices, each its int8 codes followed by its f32 scales (one per group of
//!   `group` values along a row): the token table, wq, wk, wv, wo, w1, w2, w3 (each for all
//!   layers), and the output head when not shared.
//!
//! Reading checks every header field (not version 2's zero padding, which `runq.c` ignores too),
//! computes the exact file length they imply with checked arithmetic and compares it with the
//! file's before allocating a tensor; the tensors are then streamed into their final vectors (no
//! second copy of the file) and checked for NaN and infinity. llama2.c models rotate interleaved RoPE pairs with θ = 10000 and ε = 1e-5.

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::weights::{LayerWeights, LlamaParams, LlamaWeights, Matrix, RopePairs, LAYER_MATRICES};

/// Version 2's magic, `"ak42"` read as a little-endian `u32` (the file's first bytes are `24ka`).
const MAGIC: u32 = 0x616b_3432;
const LEGACY_HEADER_BYTES: usize = 7 * 4;
const V2_HEADER_BYTES: usize = 256;
/// Offsets in version 2's header: magic, version, seven ints, then the flag byte and group size
/// packed right after it (no alignment padding: `export.py` packs them one `struct.pack` each).
const V2_SHARED_AT: usize = 4 + 4 + LEGACY_HEADER_BYTES;
const V2_GROUP_AT: usize = V2_SHARED_AT + 1;

/// Bounds far beyond any released Llama (70B: dim 8192, hidden 28672, 80 layers, vocab 128256) so
/// a hostile header is refused by its ints alone, before any length arithmetic.
const MAX_DIM: usize = 1 << 16;
const MAX_HIDDEN_DIM: usize = 1 << 18;
const MAX_LAYERS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 22;
const MAX_SEQ_LEN: usize = 1 << 20;

/// llama2.c's fixed hyper-parameters (`run.c` hard-codes them).
const NORM_EPS: f32 = 1e-5;
const ROPE_THETA: f32 = 10000.0;

/// Bytes moved per read while streaming a tensor.
const CHUNK_BYTES: usize = 1 << 16;

/// How the weights after the header are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Legacy,
    Q80 { group: usize },
}

#[derive(Debug)]
struct Header {
    params: LlamaParams,
    format: Format,
}

/// Reads a llama2.c checkpoint, legacy f32 or version 2 Q8_0 (see the [module docs](self)):
/// matrices come back as [`Matrix::F32`] from a legacy file and as [`Matrix::Q8`] from a
/// version 2 one, norms always f32.
///
/// # Errors
///
/// [`ModelError::Io`] when the file cannot be opened or read; [`ModelError::Format`], naming the
/// field or tensor, when the path is not a regular file, when the header is invalid (a size zero,
/// negative or beyond the bounds above, heads not dividing `dim`, key/value heads not dividing the
/// heads, an odd head size, a version other than 2, a group size not dividing `dim` and
/// `hidden_dim`), when the file's length is not exactly the one the header implies, or when a
/// weight or scale is NaN, infinite or (a scale) negative.
pub fn read(path: &Path) -> Result<LlamaWeights> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    // Checked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(ModelError::format(path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    parse(std::io::BufReader::new(file), len, path)
}

/// [`read`] on a checkpoint already in memory; `label` names it in errors.
///
/// # Errors
///
/// As [`read`].
pub fn read_bytes(bytes: &[u8], label: &str) -> Result<LlamaWeights> {
    parse(bytes, bytes.len() as u64, Path::new(label))
}

/// Writes `weights` as a legacy llama2.c checkpoint (`run.c` reads it), atomically. The obsolete
/// RoPE tables are written as zeros: `run.c` skips them, and zeros keep the file's bytes
/// independent of the platform's `cos`/`sin`.
///
/// # Errors
///
/// [`ModelError::Format`] when `weights` fail [`LlamaWeights::check_shapes`], a matrix is not
/// [`Matrix::F32`], or a size does not fit the header's `i32`; [`ModelError::Io`] when the file
/// cannot be written.
pub fn write_legacy(path: &Path, weights: &LlamaWeights) -> Result<()> {
    let fail = |reason: String| ModelError::format(path, format!("cannot write a legacy checkpoint: {reason}"));
    weights.check_shapes().map_err(fail)?;
    let p = &weights.params;
    let mut ints = header_ints(p).map_err(fail)?;
    // A negative vocab_size flags an untied head.
    if !p.tied {
        ints[5] = -ints[5];
    }
    let mut out = Vec::new();
    for v in ints {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let f32s = |out: &mut Vec<u8>, name: &str, m: &Matrix| match m {
        Matrix::F32 { values, .. } => {
            put_f32s(out, values);
            Ok(())
        }
        Matrix::Q8 { .. } => Err(fail(format!("{name} is Q8_0; the legacy format holds f32 only"))),
    };
    f32s(&mut out, "tok_embeddings", &weights.tok_emb)?;
    for layer in &weights.layers {
        put_f32s(&mut out, &layer.attn_norm);
    }
    for (k, name) in LAYER_MATRICES.iter().enumerate() {
        // The MLP norms sit between the attention matrices and the MLP's.
        if k == 4 {
            for layer in &weights.layers {
                put_f32s(&mut out, &layer.ffn_norm);
            }
        }
        for (l, layer) in weights.layers.iter().enumerate() {
            f32s(&mut out, &format!("layers.{l}.{name}"), layer.matrices()[k])?;
        }
    }
    put_f32s(&mut out, &weights.final_norm);
    out.resize(out.len() + 2 * p.seq_len * (p.head_dim() / 2) * 4, 0);
    if let Some(head) = &weights.lm_head {
        f32s(&mut out, "output", head)?;
    }
    write_atomically(path, &out)
}

/// Writes `weights` as a version 2 (Q8_0) llama2.c checkpoint (`runq.c` reads it), atomically.
/// Each [`Matrix::F32`] is quantized as `export.py` does: per group of `group` values along a
/// row, scale = max|w| / 127 and code = w / scale rounded half to even (an all-zero group gets
/// scale 0 and codes 0); a [`Matrix::Q8`] of the same group size is written as it is.
///
/// # Errors
///
/// [`ModelError::Format`] when `weights` fail [`LlamaWeights::check_shapes`], `group` is 0 or
/// does not divide `dim` and `hidden_dim` (`runq.c` quantizes activations in those groups), a
/// matrix is Q8_0 in another group size, a weight is NaN or infinite, or a size does not fit the
/// header's `i32`; [`ModelError::Io`] when the file cannot be written.
pub fn write_q80(path: &Path, weights: &LlamaWeights, group: usize) -> Result<()> {
    let fail = |reason: String| ModelError::format(path, format!("cannot write a Q8_0 checkpoint: {reason}"));
    weights.check_shapes().map_err(fail)?;
    let p = &weights.params;
    check_group(p, group).map_err(fail)?;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&2i32.to_le_bytes());
    for v in header_ints(p).map_err(fail)? {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(u8::from(p.tied));
    out.extend_from_slice(&header_int("group size", group).map_err(fail)?.to_le_bytes());
    out.resize(V2_HEADER_BYTES, 0);
    for layer in &weights.layers {
        put_f32s(&mut out, &layer.attn_norm);
    }
    for layer in &weights.layers {
        put_f32s(&mut out, &layer.ffn_norm);
    }
    put_f32s(&mut out, &weights.final_norm);
    put_q80(&mut out, &weights.tok_emb, group).map_err(|e| fail(format!("tok_embeddings: {e}")))?;
    for (k, name) in LAYER_MATRICES.iter().enumerate() {
        for (l, layer) in weights.layers.iter().enumerate() {
            put_q80(&mut out, layer.matrices()[k], group).map_err(|e| fail(format!("layers.{l}.{name}: {e}")))?;
        }
    }
    if let Some(head) = &weights.lm_head {
        put_q80(&mut out, head, group).map_err(|e| fail(format!("output: {e}")))?;
    }
    write_atomically(path, &out)
}

fn parse(mut src: impl Read, len: u64, path: &Path) -> Result<LlamaWeights> {
    let fail = |reason: String| ModelError::format(path, reason);
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    // The header is at most 256 bytes; what of them a legacy header does not use is weights,
    // read back through `chain` below.
    let mut head = vec![0u8; len.min(V2_HEADER_BYTES as u64) as usize];
    src.read_exact(&mut head).map_err(io)?;
    let (header, header_len) = parse_header(&head, len).map_err(fail)?;
    let expected = expected_len(&header, header_len)
        .ok_or_else(|| fail("the sizes in the header overflow a 64-bit length".into()))?;
    if len != expected {
        let what = if len < expected { "truncated" } else { "trailing bytes" };
        return Err(fail(format!("file is {len} bytes but its header implies {expected} ({what})")));
    }
    let mut tensors = Tensors { src: (&head[header_len..]).chain(src), path };
    match header.format {
        Format::Legacy => tensors.legacy(header.params),
        Format::Q80 { group } => tensors.q80(header.params, group),
    }
}

/// The header at the start of a file of `len` bytes, and its length in bytes.
fn parse_header(head: &[u8], len: u64) -> std::result::Result<(Header, usize), String> {
    let int = |at: usize| i32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let is_v2 = head.len() >= 4 && int(0) as u32 == MAGIC;
    let header_len = if is_v2 { V2_HEADER_BYTES } else { LEGACY_HEADER_BYTES };
    if head.len() < header_len {
        let format = if is_v2 { "version 2" } else { "legacy" };
        return Err(format!("file is {len} bytes, shorter than a {format} header ({header_len} bytes)"));
    }
    let ints_at = if is_v2 { 8 } else { 0 };
    if is_v2 && int(4) != 2 {
        return Err(format!("version {} after the magic \"ak42\": only version 2 (Q8_0) is supported", int(4)));
    }
    let field = |i: usize, name: &str, max: usize| -> std::result::Result<usize, String> {
        let v = int(ints_at + 4 * i);
        match usize::try_from(v) {
            Ok(u) if (1..=max).contains(&u) => Ok(u),
            _ => Err(format!("header field {name} is {v}, not in 1..={max}")),
        }
    };
    let raw_vocab = int(ints_at + 20);
    let tied = if is_v2 {
        match head[V2_SHARED_AT] {
            0 => false,
            1 => true,
            b => return Err(format!("header field shared_classifier is {b}, not 0 or 1")),
        }
    } else {
        // Legacy files flag an untied head by a negative vocab_size.
        raw_vocab > 0
    };
    let vocab_size = if is_v2 || raw_vocab > 0 {
        field(5, "vocab_size", MAX_VOCAB)?
    } else {
        match raw_vocab.checked_neg().and_then(|v| usize::try_from(v).ok()) {
            Some(u) if (1..=MAX_VOCAB).contains(&u) => u,
            _ => return Err(format!("header field vocab_size is {raw_vocab}, not ±1..={MAX_VOCAB}")),
        }
    };
    let dim = field(0, "dim", MAX_DIM)?;
    let params = LlamaParams {
        dim,
        hidden_dim: field(1, "hidden_dim", MAX_HIDDEN_DIM)?,
        n_layers: field(2, "n_layers", MAX_LAYERS)?,
        n_heads: field(3, "n_heads", dim)?,
        n_kv_heads: field(4, "n_kv_heads", dim)?,
        vocab_size,
        seq_len: field(6, "seq_len", MAX_SEQ_LEN)?,
        norm_eps: NORM_EPS,
        rope_theta: ROPE_THETA,
        rope_pairs: RopePairs::Interleaved,
        tied,
    };
    params.check().map_err(|e| format!("header: {e}"))?;
    let format = if is_v2 {
        let group = usize::try_from(int(V2_GROUP_AT)).unwrap_or(0);
        check_group(&params, group).map_err(|e| format!("header: {e}"))?;
        Format::Q80 { group }
    } else {
        Format::Legacy
    };
    Ok((Header { params, format }, header_len))
}

/// `runq.c` quantizes activations of width `dim` and `hidden_dim` in groups of `group`, and its
/// matrices' scales are per group along a row, so `group` must divide both (which are every
/// matrix's inner dimension).
fn check_group(p: &LlamaParams, group: usize) -> std::result::Result<(), String> {
    if group == 0 || !p.dim.is_multiple_of(group) || !p.hidden_dim.is_multiple_of(group) {
        return Err(format!("group size {group} does not divide dim {} and hidden_dim {}", p.dim, p.hidden_dim));
    }
    Ok(())
}

/// The exact file length `header` implies, `None` on overflow.
fn expected_len(header: &Header, header_len: usize) -> Option<u64> {
    let p = &header.params;
    let n = |v: usize| u64::try_from(v).ok();
    let (dim, vocab, layers) = (n(p.dim)?, n(p.vocab_size)?, n(p.n_layers)?);
    let heads = u64::from(!p.tied);
    // Bytes of one matrix of `numel` values.
    let matrix = |numel: u64| match header.format {
        Format::Legacy => numel.checked_mul(4),
        Format::Q80 { group } => numel.checked_add(numel.checked_div(n(group)?)?.checked_mul(4)?),
    };
    let mut total = n(header_len)?;
    // Norms: two per layer and the final one.
    total = total.checked_add(layers.checked_mul(2)?.checked_add(1)?.checked_mul(dim)?.checked_mul(4)?)?;
    total = total.checked_add(matrix(vocab.checked_mul(dim)?)?.checked_mul(1 + heads)?)?;
    for (rows, cols) in p.layer_shapes() {
        total = total.checked_add(matrix(n(rows)?.checked_mul(n(cols)?)?)?.checked_mul(layers)?)?;
    }
    if header.format == Format::Legacy {
        let rope_tables = n(p.seq_len)?.checked_mul(n(p.head_dim() / 2)?)?.checked_mul(2 * 4)?;
        total = total.checked_add(rope_tables)?;
    }
    Some(total)
}

/// The tensors after the header, streamed from `src` in file order.
struct Tensors<'a, R> {
    src: R,
    path: &'a Path,
}

impl<R: Read> Tensors<'_, R> {
    fn legacy(&mut self, params: LlamaParams) -> Result<LlamaWeights> {
        let p = &params;
        let tok_emb = self.matrix("tok_embeddings", p.vocab_size, p.dim, Format::Legacy)?;
        let attn_norms = self.norms("attention_norm", p)?;
        let mut ffn_norms = Vec::new();
        let mut matrices: [Vec<Matrix>; 7] = Default::default();
        for (k, kind) in matrices.iter_mut().enumerate() {
            // The MLP norms sit between the attention matrices and the MLP's.
            if k == 4 {
                ffn_norms = self.norms("ffn_norm", p)?;
            }
            *kind = self.all_layers(k, p, Format::Legacy)?;
        }
        let final_norm = self.f32s("norm", p.dim)?;
        self.skip("freq_cis (RoPE tables)", 2 * p.seq_len * (p.head_dim() / 2) * 4)?;
        let lm_head = if p.tied { None } else { Some(self.matrix("output", p.vocab_size, p.dim, Format::Legacy)?) };
        Ok(LlamaWeights { tok_emb, layers: assemble(attn_norms, ffn_norms, matrices), final_norm, lm_head, params })
    }

    fn q80(&mut self, params: LlamaParams, group: usize) -> Result<LlamaWeights> {
        let p = &params;
        let format = Format::Q80 { group };
        let attn_norms = self.norms("attention_norm", p)?;
        let ffn_norms = self.norms("ffn_norm", p)?;
        let final_norm = self.f32s("norm", p.dim)?;
        let tok_emb = self.matrix("tok_embeddings", p.vocab_size, p.dim, format)?;
        let mut matrices: [Vec<Matrix>; 7] = Default::default();
        for (k, kind) in matrices.iter_mut().enumerate() {
            *kind = self.all_layers(k, p, format)?;
        }
        let lm_head = if p.tied { None } else { Some(self.matrix("output", p.vocab_size, p.dim, format)?) };
        Ok(LlamaWeights { tok_emb, layers: assemble(attn_norms, ffn_norms, matrices), final_norm, lm_head, params })
    }

    /// Every layer's matrix number `k` of [`LAYER_MATRICES`].
    fn all_layers(&mut self, k: usize, p: &LlamaParams, format: Format) -> Result<Vec<Matrix>> {
        let (rows, cols) = p.layer_shapes()[k];
        (0..p.n_layers).map(|l| self.matrix(&format!("layers.{l}.{}", LAYER_MATRICES[k]), rows, cols, format)).collect()
    }

    /// One norm vector `[dim]` per layer, named `layers.{l}.{name}`.
    fn norms(&mut self, name: &str, p: &LlamaParams) -> Result<Vec<Vec<f32>>> {
        (0..p.n_layers).map(|l| self.f32s(&format!("layers.{l}.{name}"), p.dim)).collect()
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize, format: Format) -> Result<Matrix> {
        let Format::Q80 { group } = format else {
            return Ok(Matrix::F32 { rows, cols, values: self.f32s(name, rows * cols)? });
        };
        let mut codes = vec![0u8; rows * cols];
        self.bytes(name, &mut codes)?;
        let codes = codes.into_iter().map(|c| c as i8).collect();
        let scales = self.f32s(&format!("{name} scales"), rows * (cols / group))?;
        if let Some(i) = scales.iter().position(|&s| s < 0.0) {
            return Err(ModelError::format(self.path, format!("{name}: scale {i} is negative ({})", scales[i])));
        }
        Ok(Matrix::Q8 { rows, cols, group, codes, scales })
    }

    /// `n` little-endian f32s, every one finite.
    fn f32s(&mut self, name: &str, n: usize) -> Result<Vec<f32>> {
        let mut values = Vec::with_capacity(n);
        let mut chunk = vec![0u8; CHUNK_BYTES.min(n * 4)];
        let mut left = n * 4;
        while left > 0 {
            let bytes = &mut chunk[..left.min(CHUNK_BYTES)];
            self.bytes(name, bytes)?;
            values.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            left -= bytes.len();
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::format(self.path, format!("{name}: value {i} is {}", values[i])));
        }
        Ok(values)
    }

    fn skip(&mut self, name: &str, n: usize) -> Result<()> {
        let skipped = std::io::copy(&mut (&mut self.src).take(n as u64), &mut std::io::sink());
        match skipped {
            Ok(k) if k == n as u64 => Ok(()),
            Ok(_) => Err(self.shrunk(name)),
            Err(source) => Err(ModelError::Io { path: self.path.to_path_buf(), source }),
        }
    }

    fn bytes(&mut self, name: &str, buf: &mut [u8]) -> Result<()> {
        self.src.read_exact(buf).map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => self.shrunk(name),
            _ => ModelError::Io { path: self.path.to_path_buf(), source },
        })
    }

    /// The length was checked before reading, so running out means the file changed meanwhile.
    fn shrunk(&self, name: &str) -> ModelError {
        ModelError::format(self.path, format!("{name}: the file ended early (did it change while being read?)"))
    }
}

/// Per-kind lists (all layers' wq, all layers' wk, …) regrouped per layer.
fn assemble(attn_norms: Vec<Vec<f32>>, ffn_norms: Vec<Vec<f32>>, matrices: [Vec<Matrix>; 7]) -> Vec<LayerWeights> {
    let [wq, wk, wv, wo, w1, w2, w3] = matrices;
    attn_norms
        .into_iter()
        .zip(ffn_norms)
        .zip(wq)
        .zip(wk)
        .zip(wv)
        .zip(wo)
        .zip(w1)
        .zip(w2)
        .zip(w3)
        .map(|((((((((attn_norm, ffn_norm), wq), wk), wv), wo), w1), w2), w3)| LayerWeights {
            attn_norm,
            wq,
            wk,
            wv,
            wo,
            ffn_norm,
            w1,
            w2,
            w3,
        })
        .collect()
}

/// The seven header ints in file order, `vocab_size` positive.
fn header_ints(p: &LlamaParams) -> std::result::Result<[i32; 7], String> {
    Ok([
        header_int("dim", p.dim)?,
        header_int("hidden_dim", p.hidden_dim)?,
        header_int("n_layers", p.n_layers)?,
        header_int("n_heads", p.n_heads)?,
        header_int("n_kv_heads", p.n_kv_heads)?,
        header_int("vocab_size", p.vocab_size)?,
        header_int("seq_len", p.seq_len)?,
    ])
}

fn header_int(name: &str, v: usize) -> std::result::Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{name} {v} does not fit the header's i32"))
}

fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// `m`'s Q8_0 codes then scales, quantizing an f32 matrix in groups of `group` along each row.
fn put_q80(out: &mut Vec<u8>, m: &Matrix, group: usize) -> std::result::Result<(), String> {
    match m {
        Matrix::Q8 { group: g, codes, scales, .. } => {
            if *g != group {
                return Err(format!("Q8_0 in groups of {g}, not {group}"));
            }
            out.extend(codes.iter().map(|&c| c as u8));
            put_f32s(out, scales);
        }
        Matrix::F32 { values, .. } => {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!("value {i} is {}", values[i]));
            }
            let mut scales = Vec::with_capacity(values.len() / group);
            for chunk in values.chunks_exact(group) {
                let scale = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                // torch.round (export.py's) rounds half to even; |w / scale| ≤ 127 by construction.
                out.extend(
                    chunk.iter().map(|&v| if scale == 0.0 { 0 } else { (v / scale).round_ties_even() as i8 as u8 }),
                );
                scales.push(scale);
            }
            put_f32s(out, &scales);
        }
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    tt_tensor::serialize::atomic_write(path, bytes)
        .map_err(|e| ModelError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) })
}
