//! Tokenization (module 10): a character tokenizer and a trainable byte-level BPE tokenizer.
//!
//! Both round-trip exactly: `decode(encode(s)) == s` for every string they accept. The character
//! tokenizer only knows the characters of the corpus it was built from: [`CharTokenizer::encode`]
//! returns an error naming the first unknown character, and [`CharTokenizer::encode_lossy`] maps
//! unknown characters to the `<unk>` id instead (which decodes to U+FFFD). The BPE tokenizer works
//! on UTF-8 bytes, so it accepts any string.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TransformerError};

/// Token id type.
pub type TokenId = u32;

/// Common interface of the tokenizers.
pub trait Tokenize {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>>;
    fn decode(&self, ids: &[TokenId]) -> Result<String>;
    fn vocab_size(&self) -> usize;

    /// [`Tokenize::encode`] as the `usize` ids the model takes.
    fn encode_ids(&self, text: &str) -> Result<Vec<usize>> {
        Ok(self.encode(text)?.into_iter().map(|t| t as usize).collect())
    }

    /// [`Tokenize::decode`] of model ids; an id past `u32` is reported like any unknown id.
    fn decode_ids(&self, ids: &[usize]) -> Result<String> {
        let ids: Vec<TokenId> = ids.iter().map(|&t| TokenId::try_from(t).unwrap_or(TokenId::MAX)).collect();
        self.decode(&ids)
    }
}

/// One id per character seen in the training text, plus `<unk>` (id 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CharTokenizer {
    /// `chars[id]`; id 0 is `<unk>` and stored as U+FFFD.
    chars: Vec<char>,
    #[serde(skip)]
    index: HashMap<char, TokenId>,
}

impl CharTokenizer {
    pub const UNK: TokenId = 0;

    /// Builds the vocabulary from the distinct characters of `corpus`, in sorted order.
    pub fn from_corpus(corpus: &str) -> CharTokenizer {
        let mut chars: Vec<char> = corpus.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        chars.retain(|&c| c != char::REPLACEMENT_CHARACTER);
        chars.insert(0, char::REPLACEMENT_CHARACTER);
        Self::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> CharTokenizer {
        // `<unk>` is stored as U+FFFD, so a U+FFFD in the text encodes to it and decodes back to
        // itself: the round trip holds for a corpus that contains the replacement character.
        let index = chars.iter().enumerate().map(|(i, &c)| (c, i as TokenId)).collect();
        CharTokenizer { chars, index }
    }

    /// Checks a deserialized vocabulary and rebuilds its lookup table.
    ///
    /// # Errors
    /// An empty vocabulary, id 0 that is not `<unk>` (U+FFFD), or a character listed twice (two
    /// ids for one character would decode and encode differently).
    pub fn rebuild(self) -> Result<CharTokenizer> {
        let bad = |m: String| Err(TransformerError::Tokenizer(m));
        if self.chars.first() != Some(&char::REPLACEMENT_CHARACTER) {
            return bad("id 0 must be <unk> (U+FFFD)".into());
        }
        if self.chars.len() > 1 << 22 {
            return bad(format!("{} characters exceed the cap of {}", self.chars.len(), 1 << 22));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.chars.len());
        for (id, &c) in self.chars.iter().enumerate() {
            if !seen.insert(c) {
                return bad(format!("character {c:?} (id {id}) appears twice in the vocabulary"));
            }
        }
        let t = Self::from_chars(self.chars);
        Ok(t)
    }

    /// Id of a known character.
    pub fn id_of(&self, c: char) -> Option<TokenId> {
        self.index.get(&c).copied()
    }

    /// Encodes, mapping unknown characters to [`CharTokenizer::UNK`].
    pub fn encode_lossy(&self, text: &str) -> Vec<TokenId> {
        text.chars().map(|c| self.id_of(c).unwrap_or(Self::UNK)).collect()
    }
}

impl Tokenize for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.id_of(c).ok_or_else(|| {
                    TransformerError::Tokenizer(format!("character {c:?} at position {pos} is not in the vocabulary"))
                })
            })
            .collect()
    }
    fn decode(&self, ids: &[TokenId]) -> Result<String> {
        ids.iter()
            .map(|&id| {
                self.chars.get(id as usize).copied().ok_or_else(|| {
                    TransformerError::Tokenizer(format!("id {id} is outside the vocabulary of {}", self.chars.len()))
                })
            })
            .collect()
    }
    fn vocab_size(&self) -> usize {
        self.chars.len()
    }
}

/// Byte-level byte-pair encoding: ids 0..256 are raw bytes; each merge adds one id for a pair of
/// existing ids. Training merges the most frequent adjacent pair (ties: the smallest pair) within
/// whitespace-delimited chunks, so merges never span a space-to-word boundary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BpeTokenizer {
    /// Merge list in rank order: `merges[r] = (left, right)` creates id `256 + r`.
    merges: Vec<(TokenId, TokenId)>,
    #[serde(skip)]
    ranks: HashMap<(TokenId, TokenId), usize>,
    #[serde(skip)]
    vocab: Vec<Vec<u8>>,
}

/// Splits text into chunks: each starts at a word and keeps a leading space with the word.
fn chunks(text: &str) -> Vec<&[u8]> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..b.len() {
        if b[i] == b' ' || b[i] == b'\n' || b[i - 1] == b'\n' {
            out.push(&b[start..i]);
            start = i;
        }
    }
    if start < b.len() {
        out.push(&b[start..]);
    }
    out
}

impl BpeTokenizer {
    /// Learns up to `num_merges` merges from `corpus` (fewer if no pair occurs twice).
    pub fn train(corpus: &str, num_merges: usize) -> BpeTokenizer {
        // Distinct chunks with counts: merging works on the unique chunks, weighted.
        let mut counts: HashMap<&[u8], usize> = HashMap::new();
        for c in chunks(corpus) {
            *counts.entry(c).or_default() += 1;
        }
        let mut words: Vec<(Vec<TokenId>, usize)> =
            counts.into_iter().map(|(w, n)| (w.iter().map(|&b| b as TokenId).collect(), n)).collect();
        words.sort();
        let mut merges = Vec::new();
        for r in 0..num_merges {
            let mut pair_counts: HashMap<(TokenId, TokenId), usize> = HashMap::new();
            for (w, n) in &words {
                for p in w.windows(2) {
                    *pair_counts.entry((p[0], p[1])).or_default() += n;
                }
            }
            let best =
                pair_counts.into_iter().filter(|&(_, n)| n >= 2).max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some((pair, _)) = best else { break };
            let new_id = 256 + r as TokenId;
            for (w, _) in &mut words {
                merge_in_place(w, pair, new_id);
            }
            merges.push(pair);
        }
        Self::from_merges(merges)
    }

    fn from_merges(merges: Vec<(TokenId, TokenId)>) -> BpeTokenizer {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(a, b) in &merges {
            let mut v = vocab[a as usize].clone();
            v.extend_from_slice(&vocab[b as usize]);
            vocab.push(v);
        }
        let ranks = merges.iter().enumerate().map(|(r, &p)| (p, r)).collect();
        BpeTokenizer { merges, ranks, vocab }
    }

    /// Longest piece one id may decode to, and the most merges, accepted from a file: a hostile
    /// merge list can double a piece's length with every merge.
    pub const MAX_PIECE_BYTES: usize = 1 << 16;
    pub const MAX_MERGES: usize = 1 << 20;

    /// Checks a deserialized merge list and rebuilds the lookup tables.
    ///
    /// # Errors
    /// A merge naming an id that does not exist yet (merge `r` may use ids below `256 + r`), a
    /// repeated merge, too many merges, or a piece longer than [`BpeTokenizer::MAX_PIECE_BYTES`].
    pub fn rebuild(self) -> Result<BpeTokenizer> {
        let bad = |m: String| Err(TransformerError::Tokenizer(m));
        if self.merges.len() > Self::MAX_MERGES {
            return bad(format!("{} merges exceed the cap of {}", self.merges.len(), Self::MAX_MERGES));
        }
        let mut len: Vec<usize> = vec![1; 256];
        let mut seen = std::collections::HashSet::new();
        for (r, &(a, b)) in self.merges.iter().enumerate() {
            let next = 256 + r;
            if a as usize >= next || b as usize >= next {
                return bad(format!("merge {r} ({a}, {b}) names an id that does not exist yet (ids below {next})"));
            }
            if !seen.insert((a, b)) {
                return bad(format!("merge {r} ({a}, {b}) repeats an earlier merge"));
            }
            let l = len[a as usize] + len[b as usize];
            if l > Self::MAX_PIECE_BYTES {
                return bad(format!("merge {r} makes a piece of {l} bytes, over the cap of {}", Self::MAX_PIECE_BYTES));
            }
            len.push(l);
        }
        Ok(Self::from_merges(self.merges))
    }

    pub fn num_merges(&self) -> usize {
        self.merges.len()
    }

    fn encode_chunk(&self, chunk: &[u8], out: &mut Vec<TokenId>) {
        let mut ids: Vec<TokenId> = chunk.iter().map(|&b| b as TokenId).collect();
        // Apply the lowest-rank merge present until none applies (the order training used).
        loop {
            let best = ids
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0], p[1])).map(|&r| (r, (p[0], p[1]))))
                .min_by_key(|&(r, _)| r);
            let Some((r, pair)) = best else { break };
            merge_in_place(&mut ids, pair, 256 + r as TokenId);
        }
        out.extend_from_slice(&ids);
    }
}

fn merge_in_place(w: &mut Vec<TokenId>, pair: (TokenId, TokenId), new_id: TokenId) {
    let mut out = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
            out.push(new_id);
            i += 2;
        } else {
            out.push(w[i]);
            i += 1;
        }
    }
    *w = out;
}

impl Tokenize for BpeTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let mut out = Vec::with_capacity(text.len());
        for c in chunks(text) {
            self.encode_chunk(c, &mut out);
        }
        Ok(out)
    }
    fn decode(&self, ids: &[TokenId]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = self.vocab.get(id as usize).ok_or_else(|| {
                TransformerError::Tokenizer(format!("id {id} is outside the vocabulary of {}", self.vocab.len()))
            })?;
            bytes.extend_from_slice(piece);
        }
        String::from_utf8(bytes).map_err(|e| TransformerError::Tokenizer(format!("ids decode to invalid UTF-8: {e}")))
    }
    fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
}

/// Either tokenizer, as saved with a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    Char(CharTokenizer),
    Bpe(BpeTokenizer),
}

impl Tokenizer {
    /// Checks a deserialized tokenizer and restores its lookup tables (see each kind's `rebuild`).
    ///
    /// # Errors
    /// An inconsistent vocabulary or merge list.
    pub fn rebuild(self) -> Result<Tokenizer> {
        Ok(match self {
            Tokenizer::Char(t) => Tokenizer::Char(t.rebuild()?),
            Tokenizer::Bpe(t) => Tokenizer::Bpe(t.rebuild()?),
        })
    }

    /// Parses and checks a saved `tokenizer.json`.
    ///
    /// # Errors
    /// Malformed JSON or an inconsistent vocabulary ([`Tokenizer::rebuild`]).
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer> {
        let t: Tokenizer = serde_json::from_slice(bytes)
            .map_err(|e| TransformerError::Tokenizer(format!("corrupt tokenizer: {e}")))?;
        t.rebuild()
    }
}

impl Tokenize for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Bpe(t) => t.encode(text),
        }
    }
    fn decode(&self, ids: &[TokenId]) -> Result<String> {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Bpe(t) => t.decode(ids),
        }
    }
    fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Bpe(t) => t.vocab_size(),
        }
    }
}
