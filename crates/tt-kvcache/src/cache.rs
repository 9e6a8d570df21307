//! The key/value cache.
//!
//! Layout: one contiguous `f32` buffer each for K and V, indexed `[layer][batch][head][slot][dim]`.
//! For one (layer, sequence, head) the cached keys are a contiguous `[slots, head_dim]` block, so
//! attention's `q·Kᵀ` and `A·V` loops read memory in order.
//!
//! Protocol per generation step (the course's `update`/`advance`): every layer [`KvCache::append`]s
//! the new position(s); [`KvCache::keys`]/[`KvCache::values`] of that layer then include them; when
//! all layers have appended, [`KvCache::advance`] commits the step.

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

/// Cache dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub batch: usize,
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

/// A preallocated KV cache for all layers of a batch of equal-length sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    shape: CacheShape,
    policy: OverflowPolicy,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Valid slots per layer, including positions appended this step.
    filled: Vec<usize>,
    /// Committed slots (equal for all layers after `advance`).
    len: usize,
    /// Positions ever committed (the absolute position of the next token).
    seen: usize,
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
        let capacity = match policy {
            OverflowPolicy::Error => max_seq_len,
            OverflowPolicy::SlidingWindow(w) => w,
        };
        if layers == 0 || batch == 0 || heads == 0 || capacity == 0 || head_dim == 0 {
            return Err(CacheError::Invalid(format!(
                "all dimensions must be positive (layers {layers}, batch {batch}, heads {heads}, capacity {capacity}, head_dim {head_dim})"
            )));
        }
        if let OverflowPolicy::SlidingWindow(w) = policy {
            if w > max_seq_len {
                return Err(CacheError::Invalid(format!("window {w} exceeds max_seq_len {max_seq_len}")));
            }
        }
        let n = [layers, batch, heads, capacity, head_dim]
            .iter()
            .try_fold(1usize, |acc, &x| acc.checked_mul(x))
            .filter(|&n| n <= Self::MAX_ELEMENTS)
            .ok_or_else(|| {
                CacheError::Invalid(format!(
                    "layers {layers} × batch {batch} × heads {heads} × capacity {capacity} × head_dim {head_dim} exceeds {} floats per buffer",
                    Self::MAX_ELEMENTS
                ))
            })?;
        Ok(KvCache {
            shape: CacheShape { layers, batch, heads, capacity, head_dim },
            policy,
            k: vec![0.0; n],
            v: vec![0.0; n],
            filled: vec![0; layers],
            len: 0,
            seen: 0,
        })
    }

    pub fn shape(&self) -> CacheShape {
        self.shape
    }
    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }
    /// Committed positions held (≤ capacity).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.shape.capacity
    }
    /// Absolute position of the next token (positions committed so far, evicted ones included).
    pub fn position(&self) -> usize {
        self.seen
    }
    /// Bytes held by K and V: `2·L·B·H·S·D·4`.
    pub fn memory_bytes(&self) -> usize {
        let s = self.shape;
        2 * s.layers * s.batch * s.heads * s.capacity * s.head_dim * std::mem::size_of::<f32>()
    }

    fn block(&self, layer: usize, b: usize, h: usize) -> usize {
        let s = self.shape;
        ((layer * s.batch + b) * s.heads + h) * s.capacity * s.head_dim
    }

    /// Whether `n` more positions fit without eviction.
    pub fn fits(&self, n: usize) -> bool {
        self.len + n <= self.shape.capacity
    }

    /// Appends `n` positions for `layer`. `k` and `v` are laid out `[batch, heads, n, head_dim]`.
    /// Under `SlidingWindow`, the oldest positions are evicted to make room (requires `n` = 1
    /// once the window is full, so no query loses a key inside its window).
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize) -> Result<(), CacheError> {
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::BadLayer { layer, layers: s.layers });
        }
        let expect = s.batch * s.heads * n * s.head_dim;
        if k.len() != expect || v.len() != expect {
            return Err(CacheError::Invalid(format!(
                "append of {n} positions needs {expect} values, got k {} v {}",
                k.len(),
                v.len()
            )));
        }
        if self.filled[layer] != self.len {
            return Err(CacheError::Invalid(format!("layer {layer} already appended this step; call advance first")));
        }
        let mut start = self.len;
        if self.len + n > s.capacity {
            match self.policy {
                OverflowPolicy::Error => {
                    return Err(CacheError::Overflow { position: self.seen + n - 1, capacity: s.capacity });
                }
                OverflowPolicy::SlidingWindow(_) => {
                    if n > 1 && self.len > 0 || n > s.capacity {
                        return Err(CacheError::Invalid(format!(
                            "sliding window: append {n} positions one at a time once the window ({}) would overflow",
                            s.capacity
                        )));
                    }
                    let evict = self.len + n - s.capacity;
                    for b in 0..s.batch {
                        for h in 0..s.heads {
                            let base = self.block(layer, b, h);
                            let d = s.head_dim;
                            self.k.copy_within(base + evict * d..base + self.len * d, base);
                            self.v.copy_within(base + evict * d..base + self.len * d, base);
                        }
                    }
                    start = self.len - evict;
                }
            }
        }
        let d = s.head_dim;
        for b in 0..s.batch {
            for h in 0..s.heads {
                let src = ((b * s.heads + h) * n) * d;
                let dst = self.block(layer, b, h) + start * d;
                self.k[dst..dst + n * d].copy_from_slice(&k[src..src + n * d]);
                self.v[dst..dst + n * d].copy_from_slice(&v[src..src + n * d]);
            }
        }
        self.filled[layer] = start + n;
        Ok(())
    }

    fn check_index(&self, layer: usize, b: usize, h: usize) -> Result<usize, CacheError> {
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::BadLayer { layer, layers: s.layers });
        }
        if b >= s.batch || h >= s.heads {
            return Err(CacheError::Invalid(format!(
                "sequence {b} / head {h} out of range ({} sequences, {} heads)",
                s.batch, s.heads
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
        let s = self.shape;
        let (head_stride, slots) = (s.capacity * s.head_dim, self.filled[layer]);
        let end = base + (s.heads - 1) * head_stride + slots * s.head_dim;
        Ok(HeadRows { keys: &self.k[base..end], values: &self.v[base..end], head_stride, slots })
    }

    /// Keys of `layer`, sequence `b`, head `h`: `[slots, head_dim]`, oldest first, including
    /// positions appended this step.
    ///
    /// # Errors
    /// An index out of range.
    pub fn keys(&self, layer: usize, b: usize, h: usize) -> Result<&[f32], CacheError> {
        let base = self.check_index(layer, b, h)?;
        Ok(&self.k[base..base + self.filled[layer] * self.shape.head_dim])
    }

    /// Values, laid out like [`KvCache::keys`].
    ///
    /// # Errors
    /// An index out of range.
    pub fn values(&self, layer: usize, b: usize, h: usize) -> Result<&[f32], CacheError> {
        let base = self.check_index(layer, b, h)?;
        Ok(&self.v[base..base + self.filled[layer] * self.shape.head_dim])
    }

    /// Commits `n` positions once every layer has appended them.
    pub fn advance(&mut self, n: usize) -> Result<(), CacheError> {
        let expected = (self.len + n).min(self.shape.capacity);
        if n == 0 || self.filled.iter().any(|&f| f != expected) {
            return Err(CacheError::Invalid(format!(
                "advance({n}) needs every layer to hold {expected} positions, they hold {:?}",
                self.filled
            )));
        }
        self.len = expected;
        self.seen += n;
        Ok(())
    }

    /// Drops committed positions past `len` (e.g. rejected speculative tokens). Not possible once
    /// a sliding window has evicted positions, since those cannot be restored.
    pub fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
        if len > self.len {
            return Err(CacheError::Invalid(format!("truncate to {len} but only {} positions are held", self.len)));
        }
        if self.seen != self.len {
            return Err(CacheError::Invalid("truncate after a sliding window evicted positions".into()));
        }
        self.len = len;
        self.seen = len;
        self.filled.iter_mut().for_each(|f| *f = len);
        Ok(())
    }

    /// Empties the cache for a new generation, keeping its memory.
    pub fn reset(&mut self) {
        self.len = 0;
        self.seen = 0;
        self.filled.iter_mut().for_each(|f| *f = 0);
    }
}
