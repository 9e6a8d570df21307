//! The key/value cache.
//!
//! Layout: one contiguous buffer each for K and V, indexed `[layer][batch][head][slot][dim]`.
//! For one (layer, sequence, head) the cached keys are a contiguous `[slots, head_dim]` block, so
//! attention's `q·Kᵀ` and `A·V` loops read memory in order. Layers may have different head
//! counts (a GPT whose heads were pruned, module 18): layer `l`'s block is
//! `batch × heads[l] × capacity × head_dim`, the layers' blocks one after another, so a pruned
//! layer holds (and attention reads) only the heads it has. The head width is the same in every
//! layer.
//!
//! Storage ([`KvStorage`]): `f32`, or `int8` — each cached row (one head at one position, `head_dim`
//! values) as symmetric int8 codes with one f32 scale, `d = max|x|/127`, `q = round_half_even(x/d)`,
//! as llama.cpp's `q8_0` cache type stores blocks of 32. That is `head_dim + 4` bytes per row
//! instead of `4·head_dim` (3.6× smaller at head_dim 32), with a rounding error of at most `d/2`
//! per value. Attention then reads codes and scales ([`KvCache::keys_q8`]) and dequantizes on the
//! fly (`RowKernels::decode_attention_q8`).
//!
//! Protocol per generation step (the course's `update`/`advance`): every layer [`KvCache::append`]s
//! the new position(s); [`KvCache::keys`]/[`KvCache::values`] of that layer then include them; when
//! all layers have appended, [`KvCache::advance`] commits the step.
//!
//! Every sequence (batch row, or *slot*) keeps its own length and position, so rows need not move
//! in lockstep: [`KvCache::append_row`] / [`KvCache::advance_row`] / [`KvCache::reset_row`] grow
//! and empty one row while the others hold their own sequences — what continuous batching needs (a
//! request joins an empty slot at position 0 while its neighbours are mid-answer). The
//! whole-batch calls are those applied to every row.

use thiserror::Error;

/// What happens when a sequence grows past the cache's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Appending past capacity is an error naming the position and the capacity.
    Error,
    /// Keep only the last `W` positions (W = capacity): each query attends to itself and the
    /// `W − 1` positions before it. This equals full causal attention with a banded mask
    /// (`i − W < j ≤ i`); it differs from the unbounded model once a sequence exceeds W.
    SlidingWindow(usize),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("KV cache overflow: position {position} does not fit capacity {capacity}")]
    Overflow { position: usize, capacity: usize },
    #[error("KV cache: layer {layer} out of range ({layers} layers)")]
    BadLayer { layer: usize, layers: usize },
    #[error("KV cache: {0}")]
    Invalid(String),
}

/// How cached keys and values are stored (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvStorage {
    /// 4 bytes per value, exact.
    F32,
    /// Symmetric int8 codes with one f32 scale per (head, position) row.
    Int8,
}

impl KvStorage {
    pub fn name(self) -> &'static str {
        match self {
            KvStorage::F32 => "f32",
            KvStorage::Int8 => "int8",
        }
    }
}

/// The int8 rows of one (layer, sequence, head): `codes` is `[slots, head_dim]`, `scales[j]` the
/// scale of row `j` (value = `scales[j]·codes[j·head_dim + i]`).
#[derive(Debug, Clone, Copy)]
pub struct Q8Rows<'a> {
    pub codes: &'a [i8],
    pub scales: &'a [f32],
}

/// Quantizes one row symmetrically to int8 (`d = max|x|/127`, round half to even); returns `d`.
/// An all-zero row gets `d = 0` and codes 0 (it dequantizes to zeros exactly). Non-finite values
/// make `d` non-finite, so attention over that row is NaN, as it would be in f32.
pub fn quantize_row_q8(x: &[f32], codes: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let amax = if x.iter().all(|v| v.is_finite()) { amax } else { f32::NAN };
    let d = amax / 127.0;
    if d > 0.0 && !d.is_normal() {
        // A subnormal scale's reciprocal overflows f32: quantize in f64 (rows this small are
        // rare; the bound d/2 still holds).
        let inv = 1.0 / d as f64;
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (v as f64 * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        return d;
    }
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    // Adding and subtracting 1.5·2²³ rounds |t| ≤ 127 to an integer, ties to even (the default
    // rounding mode) — `round_ties_even` without a library call, so the loop vectorizes.
    const MAGIC: f32 = 12_582_912.0;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (((v * inv).clamp(-127.0, 127.0) + MAGIC) - MAGIC) as i8;
    }
    d
}

/// Cache dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub batch: usize,
    /// Heads of the widest layer (every layer's, unless heads were pruned; see
    /// [`KvCache::layer_heads`]).
    pub heads: usize,
    /// Maximum positions held (the model's context for `Error`, W for `SlidingWindow(W)`).
    pub capacity: usize,
    pub head_dim: usize,
}

/// Every head's cached rows of one (layer, sequence): slices starting at head 0's block; head
/// `h`'s `[slots, head_dim]` keys (and values) start at `h · head_stride`.
#[derive(Debug, Clone, Copy)]
pub struct HeadRows<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub head_stride: usize,
    pub slots: usize,
}

/// A preallocated KV cache for all layers of a batch of sequences, each at its own length.
#[derive(Debug, Clone)]
pub struct KvCache {
    shape: CacheShape,
    policy: OverflowPolicy,
    storage: KvStorage,
    /// Head count of each layer, and where each layer's block starts in the buffers (elements).
    layer_heads: Vec<usize>,
    layer_start: Vec<usize>,
    /// f32 storage (empty for int8).
    k: Vec<f32>,
    v: Vec<f32>,
    /// int8 storage (empty for f32): codes laid out like `k`/`v`, one scale per row.
    k8: Vec<i8>,
    v8: Vec<i8>,
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    /// Valid slots per (layer, row), `[layer * batch + row]`, including positions appended this
    /// step.
    filled: Vec<usize>,
    /// Committed slots per row (equal for all layers after `advance_row`).
    len: Vec<usize>,
    /// Positions ever committed per row (the absolute position of its next token).
    seen: Vec<usize>,
}

impl KvCache {
    /// Largest K (and V) buffer accepted, in floats: 2³² (16 GiB each).
    pub const MAX_ELEMENTS: usize = 1 << 32;

    /// Allocates the whole cache up front: `2·L·B·H·S·D` floats.
    ///
    /// # Errors
    /// A zero dimension, a window larger than `max_seq_len`, or a size over
    /// [`KvCache::MAX_ELEMENTS`] (checked before allocating).
    pub fn new(
        layers: usize,
        batch: usize,
        heads: usize,
        max_seq_len: usize,
        head_dim: usize,
        policy: OverflowPolicy,
    ) -> Result<KvCache, CacheError> {
        Self::with_storage(layers, batch, heads, max_seq_len, head_dim, policy, KvStorage::F32)
    }

    /// [`KvCache::new`] with the given storage.
    ///
    /// # Errors
    /// As [`KvCache::new`].
    pub fn with_storage(
        layers: usize,
        batch: usize,
        heads: usize,
        max_seq_len: usize,
        head_dim: usize,
        policy: OverflowPolicy,
        storage: KvStorage,
    ) -> Result<KvCache, CacheError> {
        let capacity = match policy {
            OverflowPolicy::Error => max_seq_len,
            OverflowPolicy::SlidingWindow(w) => w,
        };
        // Checked before the per-layer list is built, so a huge `layers` is an error, not an
        // allocation.
        [layers, batch, heads, capacity, head_dim]
            .iter()
            .try_fold(1usize, |acc, &x| acc.checked_mul(x))
            .filter(|&n| n <= Self::MAX_ELEMENTS)
            .ok_or_else(|| {
                CacheError::Invalid(format!(
                    "layers {layers} × batch {batch} × heads {heads} × capacity {capacity} × head_dim {head_dim} exceeds {} floats per buffer",
                    Self::MAX_ELEMENTS
                ))
            })?;
        if layers == 0 {
            return Err(CacheError::Invalid(format!(
                "all dimensions must be positive (layers {layers}, batch {batch}, heads {heads}, capacity {capacity}, head_dim {head_dim})"
            )));
        }
        Self::with_layer_heads(&vec![heads; layers], batch, max_seq_len, head_dim, policy, storage)
    }

    /// A cache whose layer `l` holds `layer_heads[l]` heads (all of width `head_dim`): what a GPT
    /// with pruned heads needs. [`KvCache::with_storage`] is the case of equal counts.
    ///
    /// # Errors
    /// No layers, a zero dimension or head count, a window larger than `max_seq_len`, or a size
    /// over [`KvCache::MAX_ELEMENTS`] (checked before allocating).
    pub fn with_layer_heads(
        layer_heads: &[usize],
        batch: usize,
        max_seq_len: usize,
        head_dim: usize,
        policy: OverflowPolicy,
        storage: KvStorage,
    ) -> Result<KvCache, CacheError> {
        let capacity = match policy {
            OverflowPolicy::Error => max_seq_len,
            OverflowPolicy::SlidingWindow(w) => w,
        };
        let layers = layer_heads.len();
        let heads = layer_heads.iter().copied().max().unwrap_or(0);
        if layers == 0 || batch == 0 || layer_heads.contains(&0) || capacity == 0 || head_dim == 0 {
            return Err(CacheError::Invalid(format!(
                "all dimensions must be positive (layers {layers}, batch {batch}, heads {layer_heads:?}, capacity {capacity}, head_dim {head_dim})"
            )));
        }
        if let OverflowPolicy::SlidingWindow(w) = policy {
            if w > max_seq_len {
                return Err(CacheError::Invalid(format!("window {w} exceeds max_seq_len {max_seq_len}")));
            }
        }
        let too_big = || {
            CacheError::Invalid(format!(
                "layers with {layer_heads:?} heads × batch {batch} × capacity {capacity} × head_dim {head_dim} exceed {} floats per buffer",
                Self::MAX_ELEMENTS
            ))
        };
        let mut layer_start = Vec::with_capacity(layers);
        let mut n = 0usize;
        for &h in layer_heads {
            layer_start.push(n);
            let block = [batch, h, capacity, head_dim].iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
            n = block.and_then(|b| n.checked_add(b)).filter(|&n| n <= Self::MAX_ELEMENTS).ok_or_else(too_big)?;
        }
        let (f, q, rows) = match storage {
            KvStorage::F32 => (n, 0, 0),
            KvStorage::Int8 => (0, n, n / head_dim),
        };
        Ok(KvCache {
            shape: CacheShape { layers, batch, heads, capacity, head_dim },
            policy,
            storage,
            layer_heads: layer_heads.to_vec(),
            layer_start,
            k: vec![0.0; f],
            v: vec![0.0; f],
            k8: vec![0; q],
            v8: vec![0; q],
            k_scale: vec![0.0; rows],
            v_scale: vec![0.0; rows],
            filled: vec![0; layers * batch],
            len: vec![0; batch],
            seen: vec![0; batch],
        })
    }

    pub fn shape(&self) -> CacheShape {
        self.shape
    }
    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }
    /// Committed positions held by row 0 (≤ capacity): every row's, when the batch moves in
    /// lockstep ([`KvCache::row_len`] for one row).
    pub fn len(&self) -> usize {
        self.len[0]
    }
    /// Whether no row holds a position.
    pub fn is_empty(&self) -> bool {
        self.len.iter().all(|&l| l == 0)
    }
    /// Committed positions held by row `b` (≤ capacity).
    ///
    /// # Panics
    /// `b` ≥ the batch.
    pub fn row_len(&self, b: usize) -> usize {
        self.len[b]
    }
    /// Absolute position of row `b`'s next token.
    ///
    /// # Panics
    /// `b` ≥ the batch.
    pub fn row_position(&self, b: usize) -> usize {
        self.seen[b]
    }
    pub fn capacity(&self) -> usize {
        self.shape.capacity
    }
    /// Absolute position of row 0's next token (positions committed so far, evicted ones
    /// included): every row's, when the batch moves in lockstep.
    pub fn position(&self) -> usize {
        self.seen[0]
    }
    /// How keys and values are stored.
    pub fn storage(&self) -> KvStorage {
        self.storage
    }

    /// Head count of each layer (equal unless heads were pruned).
    pub fn layer_heads(&self) -> &[usize] {
        &self.layer_heads
    }

    /// Bytes held by K and V: `2·L·B·H·S·D·4` in f32, `2·L·B·H·S·(D + 4)` in int8 — with
    /// `L·H` the sum of the layers' head counts.
    pub fn memory_bytes(&self) -> usize {
        let s = self.shape;
        2 * self.layer_heads.iter().sum::<usize>() * s.batch * s.capacity * self.row_bytes()
    }

    /// Bytes of one cached row (one head at one position) of K or of V.
    pub fn row_bytes(&self) -> usize {
        match self.storage {
            KvStorage::F32 => 4 * self.shape.head_dim,
            KvStorage::Int8 => self.shape.head_dim + 4,
        }
    }

    fn block(&self, layer: usize, b: usize, h: usize) -> usize {
        let s = self.shape;
        self.layer_start[layer] + (b * self.layer_heads[layer] + h) * s.capacity * s.head_dim
    }

    /// Whether `n` more positions fit in every row without eviction.
    pub fn fits(&self, n: usize) -> bool {
        (0..self.shape.batch).all(|b| self.fits_row(b, n))
    }

    /// Whether `n` more positions fit in row `b` without eviction.
    ///
    /// # Panics
    /// `b` ≥ the batch.
    pub fn fits_row(&self, b: usize, n: usize) -> bool {
        self.len[b] + n <= self.shape.capacity
    }

    /// Appends `n` positions to every row for `layer`. `k` and `v` are laid out
    /// `[batch, heads, n, head_dim]` with that layer's head count. As [`KvCache::append_row`] for
    /// each row; checked for every row before any is written.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize) -> Result<(), CacheError> {
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::BadLayer { layer, layers: s.layers });
        }
        let per_row = self.layer_heads[layer] * n * s.head_dim;
        let expect = s.batch * per_row;
        if k.len() != expect || v.len() != expect {
            return Err(CacheError::Invalid(format!(
                "append of {n} positions needs {expect} values, got k {} v {}",
                k.len(),
                v.len()
            )));
        }
        for b in 0..s.batch {
            self.check_append(layer, b, n)?;
        }
        for b in 0..s.batch {
            let r = b * per_row..(b + 1) * per_row;
            self.append_row(layer, b, &k[r.clone()], &v[r], n)?;
        }
        Ok(())
    }

    /// Whether row `b` of `layer` can take `n` positions now (see [`KvCache::append_row`]).
    fn check_append(&self, layer: usize, b: usize, n: usize) -> Result<(), CacheError> {
        let s = self.shape;
        if self.filled[layer * s.batch + b] != self.len[b] {
            return Err(CacheError::Invalid(format!(
                "layer {layer} row {b} already appended this step; call advance first"
            )));
        }
        if self.len[b] + n > s.capacity {
            match self.policy {
                OverflowPolicy::Error => {
                    return Err(CacheError::Overflow { position: self.seen[b] + n - 1, capacity: s.capacity });
                }
                OverflowPolicy::SlidingWindow(_) => {
                    if n > 1 && self.len[b] > 0 || n > s.capacity {
                        return Err(CacheError::Invalid(format!(
                            "sliding window: append {n} positions one at a time once the window ({}) would overflow",
                            s.capacity
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends `n` positions to row `b` for `layer`. `k` and `v` are laid out
    /// `[heads, n, head_dim]` with that layer's head count.
    /// Under `SlidingWindow`, the row's oldest positions are evicted to make room (requires `n` =
    /// 1 once the window is full, so no query loses a key inside its window).
    ///
    /// # Errors
    /// A layer or row out of range, slices of the wrong length, a layer that already appended to
    /// this row this step, or an overflow (see [`OverflowPolicy`]).
    pub fn append_row(&mut self, layer: usize, b: usize, k: &[f32], v: &[f32], n: usize) -> Result<(), CacheError> {
        let s = self.shape;
        self.check_index(layer, b, 0)?;
        let heads = self.layer_heads[layer];
        let expect = heads * n * s.head_dim;
        if k.len() != expect || v.len() != expect {
            return Err(CacheError::Invalid(format!(
                "append of {n} positions to one row needs {expect} values, got k {} v {}",
                k.len(),
                v.len()
            )));
        }
        self.check_append(layer, b, n)?;
        let len = self.len[b];
        let d = s.head_dim;
        // Past capacity only under a sliding window (`check_append` refuses the rest): evict the
        // row's oldest positions to make room.
        let evict = (len + n).saturating_sub(s.capacity);
        if evict > 0 {
            for h in 0..heads {
                let base = self.block(layer, b, h);
                let rows = base / d + evict..base / d + len;
                match self.storage {
                    KvStorage::F32 => {
                        self.k.copy_within(rows.start * d..rows.end * d, base);
                        self.v.copy_within(rows.start * d..rows.end * d, base);
                    }
                    KvStorage::Int8 => {
                        self.k8.copy_within(rows.start * d..rows.end * d, base);
                        self.v8.copy_within(rows.start * d..rows.end * d, base);
                        self.k_scale.copy_within(rows.clone(), base / d);
                        self.v_scale.copy_within(rows, base / d);
                    }
                }
            }
        }
        let start = len - evict;
        for h in 0..heads {
            let src = (h * n) * d;
            let dst = self.block(layer, b, h) + start * d;
            match self.storage {
                KvStorage::F32 => {
                    self.k[dst..dst + n * d].copy_from_slice(&k[src..src + n * d]);
                    self.v[dst..dst + n * d].copy_from_slice(&v[src..src + n * d]);
                }
                KvStorage::Int8 => {
                    for t in 0..n {
                        let (x, y, row) = (src + t * d, dst + t * d, dst / d + t);
                        self.k_scale[row] = quantize_row_q8(&k[x..x + d], &mut self.k8[y..y + d]);
                        self.v_scale[row] = quantize_row_q8(&v[x..x + d], &mut self.v8[y..y + d]);
                    }
                }
            }
        }
        self.filled[layer * s.batch + b] = start + n;
        Ok(())
    }

    fn check_index(&self, layer: usize, b: usize, h: usize) -> Result<usize, CacheError> {
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::BadLayer { layer, layers: s.layers });
        }
        let heads = self.layer_heads[layer];
        if b >= s.batch || h >= heads {
            return Err(CacheError::Invalid(format!(
                "sequence {b} / head {h} out of range ({} sequences, {heads} heads in layer {layer})",
                s.batch
            )));
        }
        Ok(self.block(layer, b, h))
    }

    /// Keys and values of every head of `layer`, sequence `b`, for kernels that take all heads
    /// at once (see [`HeadRows`]).
    ///
    /// # Errors
    /// An index out of range.
    pub fn heads(&self, layer: usize, b: usize) -> Result<HeadRows<'_>, CacheError> {
        let base = self.check_index(layer, b, 0)?;
        self.check_storage(KvStorage::F32)?;
        let s = self.shape;
        let (head_stride, slots) = (s.capacity * s.head_dim, self.filled[layer * s.batch + b]);
        let end = base + (self.layer_heads[layer] - 1) * head_stride + slots * s.head_dim;
        Ok(HeadRows { keys: &self.k[base..end], values: &self.v[base..end], head_stride, slots })
    }

    /// Keys of `layer`, sequence `b`, head `h`: `[slots, head_dim]`, oldest first, including
    /// positions appended this step.
    ///
    /// # Errors
    /// An index out of range.
    pub fn keys(&self, layer: usize, b: usize, h: usize) -> Result<&[f32], CacheError> {
        let base = self.check_index(layer, b, h)?;
        self.check_storage(KvStorage::F32)?;
        Ok(&self.k[base..base + self.filled[layer * self.shape.batch + b] * self.shape.head_dim])
    }

    /// Values, laid out like [`KvCache::keys`].
    ///
    /// # Errors
    /// An index out of range.
    pub fn values(&self, layer: usize, b: usize, h: usize) -> Result<&[f32], CacheError> {
        let base = self.check_index(layer, b, h)?;
        self.check_storage(KvStorage::F32)?;
        Ok(&self.v[base..base + self.filled[layer * self.shape.batch + b] * self.shape.head_dim])
    }

    fn check_storage(&self, want: KvStorage) -> Result<(), CacheError> {
        if self.storage != want {
            return Err(CacheError::Invalid(format!(
                "the cache stores {}, not {} (use {})",
                self.storage.name(),
                want.name(),
                if self.storage == KvStorage::Int8 { "keys_q8 / values_q8" } else { "keys / values" }
            )));
        }
        Ok(())
    }

    /// The int8 keys of `layer`, sequence `b`, head `h` (an int8 cache), like [`KvCache::keys`].
    ///
    /// # Errors
    /// An index out of range, or an f32 cache.
    pub fn keys_q8(&self, layer: usize, b: usize, h: usize) -> Result<Q8Rows<'_>, CacheError> {
        let base = self.check_index(layer, b, h)?;
        self.check_storage(KvStorage::Int8)?;
        let (d, rows) = (self.shape.head_dim, self.filled[layer * self.shape.batch + b]);
        Ok(Q8Rows { codes: &self.k8[base..base + rows * d], scales: &self.k_scale[base / d..base / d + rows] })
    }

    /// The int8 values, like [`KvCache::keys_q8`].
    ///
    /// # Errors
    /// As [`KvCache::keys_q8`].
    pub fn values_q8(&self, layer: usize, b: usize, h: usize) -> Result<Q8Rows<'_>, CacheError> {
        let base = self.check_index(layer, b, h)?;
        self.check_storage(KvStorage::Int8)?;
        let (d, rows) = (self.shape.head_dim, self.filled[layer * self.shape.batch + b]);
        Ok(Q8Rows { codes: &self.v8[base..base + rows * d], scales: &self.v_scale[base / d..base / d + rows] })
    }

    /// Commits `n` positions of every row once every layer has appended them.
    ///
    /// # Errors
    /// As [`KvCache::advance_row`], for any row (checked for all before any is committed).
    pub fn advance(&mut self, n: usize) -> Result<(), CacheError> {
        for b in 0..self.shape.batch {
            self.check_advance(b, n)?;
        }
        for b in 0..self.shape.batch {
            self.advance_row(b, n)?;
        }
        Ok(())
    }

    fn check_advance(&self, b: usize, n: usize) -> Result<(), CacheError> {
        let s = self.shape;
        if b >= s.batch {
            return Err(CacheError::Invalid(format!("row {b} out of range ({} rows)", s.batch)));
        }
        let expected = (self.len[b] + n).min(s.capacity);
        let filled = (0..s.layers).map(|l| self.filled[l * s.batch + b]);
        if n == 0 || filled.clone().any(|f| f != expected) {
            return Err(CacheError::Invalid(format!(
                "advance({n}) of row {b} needs every layer to hold {expected} positions, they hold {:?}",
                filled.collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    /// Commits `n` positions of row `b` once every layer has appended them to it.
    ///
    /// # Errors
    /// `n` = 0, a row out of range, or a layer that has not appended `n` positions to the row.
    pub fn advance_row(&mut self, b: usize, n: usize) -> Result<(), CacheError> {
        self.check_advance(b, n)?;
        self.len[b] = (self.len[b] + n).min(self.shape.capacity);
        self.seen[b] += n;
        Ok(())
    }

    /// Drops every row's committed positions past `len` (e.g. rejected speculative tokens). Not
    /// possible once a sliding window has evicted positions, since those cannot be restored.
    ///
    /// # Errors
    /// A row holding fewer than `len` positions, or one whose window evicted positions.
    pub fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
        if let Some(b) = (0..self.shape.batch).find(|&b| len > self.len[b]) {
            return Err(CacheError::Invalid(format!(
                "truncate to {len} but row {b} holds only {} positions",
                self.len[b]
            )));
        }
        if self.seen != self.len {
            return Err(CacheError::Invalid("truncate after a sliding window evicted positions".into()));
        }
        self.len.iter_mut().for_each(|l| *l = len);
        self.seen.iter_mut().for_each(|l| *l = len);
        self.filled.iter_mut().for_each(|f| *f = len);
        Ok(())
    }

    /// Empties the cache for a new generation, keeping its memory.
    pub fn reset(&mut self) {
        self.len.iter_mut().for_each(|l| *l = 0);
        self.seen.iter_mut().for_each(|l| *l = 0);
        self.filled.iter_mut().for_each(|f| *f = 0);
    }

    /// Empties row `b` for a new sequence (a slot freed and reused), keeping the other rows and
    /// the memory. Positions a layer appended to the row but did not commit are dropped too.
    ///
    /// # Panics
    /// `b` ≥ the batch.
    pub fn reset_row(&mut self, b: usize) {
        let batch = self.shape.batch;
        self.len[b] = 0;
        self.seen[b] = 0;
        for l in 0..self.shape.layers {
            self.filled[l * batch + b] = 0;
        }
    }
}
