//! llama2.c's `tokenizer.bin`, read and used exactly as its `run.c` does: the same ids from
//! [`Llama2cTokenizer::encode`] (dummy-prefix space, UTF-8 codepoints, byte fallback, greedy
//! best-score merges) and the same bytes from [`Llama2cTokenizer::decode`].
//!
//! The file is little-endian: `max_token_length` (i32), then for each of `vocab_size` tokens its
//! score (f32), its length in bytes (i32) and its bytes. The vocabulary size is not in the file:
//! it comes from the checkpoint's config, as in `run.c`.
//!
//! `run.c` treats pieces and text as C strings, so this reader refuses what would make that
//! differ from plain byte strings, or leave an id undefined: a NUL byte inside a piece, and two
//! tokens with the same piece (`run.c` looks pieces up with `qsort` + `bsearch`, which pick an
//! unspecified one of equal keys). llama2.c's own exports have neither.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// `run.c`'s beginning-of-sequence id.
const BOS: usize = 1;
/// `run.c`'s end-of-sequence id.
const EOS: usize = 2;
/// Byte fallback emits `byte + 3`: ids 0..3 are `<unk>`, BOS and EOS.
const BYTE_OFFSET: usize = 3;
/// Far above any real vocabulary (Llama 2: 32 000, Llama 3: 128 256), small enough that a wrong
/// config cannot ask for a huge table.
const MAX_VOCAB_SIZE: usize = 1 << 22;
/// Far above any real piece (Llama 2's longest is 27 bytes); a header claiming more is corrupt.
const MAX_TOKEN_LENGTH: usize = 1 << 16;
/// `run.c` starts each merge search at this score and merges only strictly better pairs, so a
/// piece scored at or below it is never produced by a merge.
const NO_MERGE_SCORE: f32 = -1e10;
/// Bytes of a token's fixed fields: score (f32) and length (i32).
const TOKEN_HEADER: usize = 8;

/// Every byte as a one-byte slice, for decoding `<0xHH>` pieces without allocating.
const BYTE_PIECES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as u8;
        i += 1;
    }
    table
};

/// A llama2.c tokenizer: pieces and scores by id, and the exact-bytes lookup `run.c` does.
#[derive(Debug, Clone)]
pub struct Llama2cTokenizer {
    /// The file it came from, for errors.
    label: PathBuf,
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    ids: HashMap<Vec<u8>, usize>,
}

impl Llama2cTokenizer {
    /// Reads `path` as a `tokenizer.bin` of `vocab_size` tokens (the checkpoint's vocabulary size).
    ///
    /// The header is checked against the file's length before the file is read: a file longer
    /// than `vocab_size` tokens of `max_token_length` bytes can be is refused unread, so a wrong
    /// path cannot make this read a huge file.
    ///
    /// # Errors
    /// [`ModelError::Io`] if the file cannot be read; [`ModelError::Format`] for everything
    /// [`Llama2cTokenizer::from_bytes`] refuses.
    pub fn load(path: &Path, vocab_size: usize) -> Result<Self> {
        use std::io::Read;
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut header = Vec::with_capacity(4);
        (&mut file).take(4).read_to_end(&mut header).map_err(io)?;
        let max_token_length = check_layout(&header, file_len, vocab_size, path)?;
        // Both factors are capped (2^22 tokens, 2^16 bytes), so this cannot overflow.
        let longest = 4 + vocab_size as u64 * (TOKEN_HEADER + max_token_length) as u64;
        if file_len > longest {
            return Err(ModelError::format(
                path,
                format!(
                    "{file_len} bytes is more than {vocab_size} tokens of at most {max_token_length} bytes can \
                     take ({longest}): trailing bytes, or the tokenizer of another model"
                ),
            ));
        }
        let mut bytes = header;
        file.read_to_end(&mut bytes).map_err(io)?;
        Self::from_bytes(&bytes, vocab_size, path)
    }

    /// Parses the bytes of a `tokenizer.bin` of `vocab_size` tokens; `label` names them in errors.
    ///
    /// Trailing bytes after the last token are refused although `run.c` ignores them: they mean
    /// the file holds more tokens than the model's vocabulary, i.e. the tokenizer of another model.
    ///
    /// # Errors
    /// [`ModelError::Format`] naming the field (and token index) when `vocab_size` is under 3 or
    /// over 2^22; `max_token_length` is not in 1..=65536; the file is truncated or has trailing
    /// bytes; a token's length is negative, over `max_token_length` or runs past the end; a score
    /// is NaN; a piece contains a NUL byte or repeats an earlier piece.
    pub fn from_bytes(bytes: &[u8], vocab_size: usize, label: &Path) -> Result<Self> {
        let fail = |reason: String| ModelError::format(label, reason);
        let header = &bytes[..bytes.len().min(4)];
        let max_token_length = check_layout(header, bytes.len() as u64, vocab_size, label)?;
        // check_layout proved the file holds at least TOKEN_HEADER bytes per token.
        let mut pieces = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        let mut ids = HashMap::with_capacity(vocab_size);
        let mut offset = 4;
        for i in 0..vocab_size {
            let fields = bytes.get(offset..offset + TOKEN_HEADER).ok_or_else(|| {
                fail(format!(
                    "token {i}: score and length need bytes {offset}..{}, the file ends at {}",
                    offset + TOKEN_HEADER,
                    bytes.len()
                ))
            })?;
            let score = f32::from_le_bytes([fields[0], fields[1], fields[2], fields[3]]);
            let len = i32::from_le_bytes([fields[4], fields[5], fields[6], fields[7]]);
            if score.is_nan() {
                return Err(fail(format!("token {i}: score is NaN")));
            }
            let len = usize::try_from(len).map_err(|_| fail(format!("token {i}: length {len} is negative")))?;
            if len > max_token_length {
                return Err(fail(format!("token {i}: length {len} exceeds max_token_length {max_token_length}")));
            }
            offset += TOKEN_HEADER;
            let piece = bytes.get(offset..offset + len).ok_or_else(|| {
                fail(format!(
                    "token {i}: piece of {len} bytes at offset {offset} runs past the end of the file ({} bytes)",
                    bytes.len()
                ))
            })?;
            offset += len;
            if piece.contains(&0) {
                return Err(fail(format!("token {i}: piece {} contains a NUL byte", show(piece))));
            }
            if let Some(first) = ids.insert(piece.to_vec(), i) {
                return Err(fail(format!("token {i}: piece {} repeats token {first}", show(piece))));
            }
            pieces.push(piece.to_vec());
            scores.push(score);
        }
        if offset != bytes.len() {
            return Err(fail(format!(
                "{} trailing bytes after token {} (offset {offset}): the file holds more than vocab_size {vocab_size} \
                 tokens (the tokenizer of another model?)",
                bytes.len() - offset,
                vocab_size - 1
            )));
        }
        Ok(Llama2cTokenizer { label: label.to_path_buf(), pieces, scores, ids })
    }

    /// The number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The beginning-of-sequence id (1).
    pub fn bos(&self) -> usize {
        BOS
    }

    /// The end-of-sequence id (2).
    pub fn eos(&self) -> usize {
        EOS
    }

    /// The bytes of token `id` as stored in the file, or `None` past the vocabulary.
    pub fn piece(&self, id: usize) -> Option<&[u8]> {
        self.pieces.get(id).map(Vec::as_slice)
    }

    /// `text`'s ids exactly as `run.c`'s `encode` gives them: optional BOS, a `" "` token before
    /// any non-empty text, each UTF-8 character's piece (or its bytes as ids `byte + 3` when the
    /// vocabulary lacks it), then, while any adjacent pair concatenates to a piece, the
    /// best-scoring such pair (the leftmost of equals) is merged; optional EOS last.
    ///
    /// `run.c` reads text as a C string, so text from a NUL character on is ignored here too.
    ///
    /// # Errors
    /// [`ModelError::Format`] if the text is not empty and the vocabulary has no `" "` piece, or a
    /// fallback byte's id `byte + 3` is past the vocabulary (`run.c` would index out of bounds).
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<usize>> {
        let text = text.split('\0').next().unwrap_or_default();
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            let space = self.ids.get(&b" "[..]).ok_or_else(|| {
                ModelError::format(&self.label, "encode: no \" \" piece for the dummy prefix run.c puts before text")
            })?;
            tokens.push(*space);
        }
        let mut utf8 = [0u8; 4];
        for ch in text.chars() {
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            if let Some(&id) = self.ids.get(bytes) {
                tokens.push(id);
                continue;
            }
            for &byte in bytes {
                let id = usize::from(byte) + BYTE_OFFSET;
                if id >= self.vocab_size() {
                    return Err(ModelError::format(
                        &self.label,
                        format!(
                            "encode: byte fallback for {ch:?} needs id {id}, past vocab_size {}",
                            self.vocab_size()
                        ),
                    ));
                }
                tokens.push(id);
            }
        }
        self.merge(&mut tokens);
        if eos {
            tokens.push(EOS);
        }
        Ok(tokens)
    }

    /// Merges `tokens` as `run.c` does: repeatedly the adjacent pair whose concatenation is the
    /// best-scoring piece (strictly above [`NO_MERGE_SCORE`], the leftmost of equals). BOS takes
    /// part, as in `run.c`.
    ///
    /// A pair's merge depends only on its two tokens, so each pair is looked up once and only the
    /// two pairs beside a merge are looked up again, where `run.c` looks up every pair on every
    /// pass; the choices are the same.
    fn merge(&self, tokens: &mut Vec<usize>) {
        let mut scratch = Vec::new();
        let mut merges: Vec<Option<usize>> =
            tokens.windows(2).map(|pair| self.merged(pair[0], pair[1], &mut scratch)).collect();
        loop {
            let mut best_score = NO_MERGE_SCORE;
            let mut best = None;
            for (i, id) in merges.iter().enumerate() {
                if let Some(id) = *id {
                    if self.scores[id] > best_score {
                        best_score = self.scores[id];
                        best = Some((i, id));
                    }
                }
            }
            let Some((i, id)) = best else { return };
            tokens[i] = id;
            tokens.remove(i + 1);
            merges.remove(i);
            if i > 0 {
                merges[i - 1] = self.merged(tokens[i - 1], id, &mut scratch);
            }
            if i + 1 < tokens.len() {
                merges[i] = self.merged(id, tokens[i + 1], &mut scratch);
            }
        }
    }

    /// The id of the piece `left`'s and `right`'s pieces concatenate to, if there is one.
    fn merged(&self, left: usize, right: usize, scratch: &mut Vec<u8>) -> Option<usize> {
        scratch.clear();
        scratch.extend_from_slice(&self.pieces[left]);
        scratch.extend_from_slice(&self.pieces[right]);
        self.ids.get(&scratch[..]).copied()
    }

    /// The bytes `run.c`'s `decode` gives for `token` following `prev`: after BOS a leading space
    /// is dropped, and a piece that C's `sscanf(piece, "<0x%02hhX>", ..)` reads as a byte (e.g.
    /// `<0x0A>`) is that one raw byte. `run.c` returns a C string, so `<0x00>` gives no bytes.
    ///
    /// # Errors
    /// [`ModelError::Format`] if `token` is past the vocabulary.
    pub fn decode(&self, prev: usize, token: usize) -> Result<&[u8]> {
        let mut piece = self.piece(token).ok_or_else(|| {
            ModelError::format(&self.label, format!("decode: token {token} is past vocab_size {}", self.vocab_size()))
        })?;
        if prev == BOS && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        Ok(match scan_byte(piece) {
            Some(0) => &[],
            Some(byte) => &BYTE_PIECES[usize::from(byte)..=usize::from(byte)],
            None => piece,
        })
    }

    /// The text of `ids`: each id decoded after the one before it, BOS and EOS contributing
    /// nothing (they are markers: `run.c` never prints the BOS that starts a prompt, and stops at
    /// the next one), the bytes read as UTF-8 with invalid sequences replaced by U+FFFD.
    ///
    /// So `decode_all(&encode(text, true, _)?)` is `text` back for text without a NUL.
    ///
    /// # Errors
    /// [`ModelError::Format`] if an id is past the vocabulary.
    pub fn decode_all(&self, ids: &[usize]) -> Result<String> {
        let mut bytes = Vec::new();
        // Any id but BOS: the first token follows nothing, so keeps its leading space.
        let mut prev = usize::MAX;
        for &id in ids {
            let piece = self.decode(prev, id)?;
            if id != BOS && id != EOS {
                bytes.extend_from_slice(piece);
            }
            prev = id;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// What `run.c`'s `safe_printf` prints of a decoded piece: nothing for a single byte that is
/// neither printable ASCII nor whitespace in the C locale (control codes, and lone bytes of
/// UTF-8 characters the vocabulary lacked), otherwise the whole piece.
pub fn safe_piece(piece: &[u8]) -> &[u8] {
    match piece {
        [byte] if !(byte.is_ascii_graphic() || *byte == b' ' || is_c_space(*byte)) => &[],
        _ => piece,
    }
}

/// Writes `pieces` (bytes and score, by id) as a `tokenizer.bin` with header `max_token_length`,
/// atomically. The bytes are first parsed back, so only a file [`Llama2cTokenizer::load`] accepts
/// is ever written.
///
/// # Errors
/// [`ModelError::Format`] if `max_token_length` or a piece length does not fit an i32, if the
/// result would not load (see [`Llama2cTokenizer::from_bytes`]), or if writing fails.
pub fn write(path: &Path, pieces: &[(Vec<u8>, f32)], max_token_length: usize) -> Result<()> {
    let as_i32 = |n: usize, what: &str| {
        i32::try_from(n).map_err(|_| ModelError::format(path, format!("{what} {n} does not fit the file's i32")))
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&as_i32(max_token_length, "max_token_length")?.to_le_bytes());
    for (i, (piece, score)) in pieces.iter().enumerate() {
        bytes.extend_from_slice(&score.to_le_bytes());
        bytes.extend_from_slice(&as_i32(piece.len(), &format!("token {i}: length"))?.to_le_bytes());
        bytes.extend_from_slice(piece);
    }
    Llama2cTokenizer::from_bytes(&bytes, pieces.len(), path)?;
    tt_tensor::serialize::atomic_write(path, &bytes)
        .map_err(|e| ModelError::format(path, format!("cannot write the tokenizer: {e}")))
}

/// The layout of llama2.c's exported Llama 2 tokenizer, for tests and fixtures: `<unk>`,
/// `"\n<s>\n"`, `"\n</s>\n"` at ids 0..3, the 256 byte pieces `<0x00>`..`<0xFF>` at ids 3..259
/// (all scored 0, as sentencepiece scores them), then `merges` in order from id 259.
pub fn synthetic_pieces(merges: &[(&str, f32)]) -> Vec<(Vec<u8>, f32)> {
    let specials = ["<unk>", "\n<s>\n", "\n</s>\n"].map(|s| (s.as_bytes().to_vec(), 0.0));
    let bytes = (0..=255u8).map(|b| (format!("<0x{b:02X}>").into_bytes(), 0.0));
    let merges = merges.iter().map(|&(s, score)| (s.as_bytes().to_vec(), score));
    specials.into_iter().chain(bytes).chain(merges).collect()
}

/// Checks `vocab_size`, the header (`max_token_length`, returned) and that a file of `file_len`
/// bytes has room for the fixed fields of `vocab_size` tokens, so tables of `vocab_size` entries
/// are no larger than the file.
fn check_layout(header: &[u8], file_len: u64, vocab_size: usize, label: &Path) -> Result<usize> {
    let fail = |reason: String| ModelError::format(label, reason);
    if !(BOS.max(EOS) < vocab_size && vocab_size <= MAX_VOCAB_SIZE) {
        return Err(fail(format!(
            "vocab_size {vocab_size} is not in 3..={MAX_VOCAB_SIZE} (ids 0..3 are <unk>, BOS and EOS)"
        )));
    }
    let header: [u8; 4] = header
        .try_into()
        .map_err(|_| fail(format!("max_token_length: the file has {file_len} bytes, the header needs 4")))?;
    let max_token_length = i32::from_le_bytes(header);
    let max_token_length = usize::try_from(max_token_length)
        .ok()
        .filter(|n| (1..=MAX_TOKEN_LENGTH).contains(n))
        .ok_or_else(|| fail(format!("max_token_length {max_token_length} is not in 1..={MAX_TOKEN_LENGTH}")))?;
    // vocab_size <= 2^22, so this cannot overflow.
    let shortest = 4 + vocab_size as u64 * TOKEN_HEADER as u64;
    if file_len < shortest {
        return Err(fail(format!(
            "truncated: {file_len} bytes cannot hold {vocab_size} tokens (at least {shortest} bytes)"
        )));
    }
    Ok(max_token_length)
}

/// The byte C's `sscanf(piece, "<0x%02hhX>", &b)` stores, if it converts one: after the literal
/// `<0x`, C-locale whitespace is skipped, then at most 2 characters are read as an optional sign,
/// an optional `0x` prefix and hex digits; the trailing `>` is never checked (the conversion
/// count is what `run.c` tests). A `-` negates modulo 256, as the cast to unsigned char does.
fn scan_byte(piece: &[u8]) -> Option<u8> {
    let rest = piece.strip_prefix(b"<0x")?;
    let mut rest = &rest[rest.iter().take_while(|&&c| is_c_space(c)).count()..];
    let mut width = 2;
    let mut negative = false;
    if let Some(&sign @ (b'+' | b'-')) = rest.first() {
        negative = sign == b'-';
        rest = &rest[1..];
        width -= 1;
    }
    let mut digits = 0;
    let mut value: u8 = 0;
    if width > 0 && rest.first() == Some(&b'0') {
        // glibc reads a leading 0 and, if the width allows, the x of a 0x prefix after it.
        digits += 1;
        rest = &rest[1..];
        width -= 1;
        if width > 0 && matches!(rest.first(), Some(b'x' | b'X')) {
            rest = &rest[1..];
            width -= 1;
        }
    }
    while width > 0 {
        let Some(digit) = rest.first().and_then(|&c| char::from(c).to_digit(16)) else { break };
        // At most two hex digits, so the value stays below 256.
        value = value * 16 + digit as u8;
        digits += 1;
        rest = &rest[1..];
        width -= 1;
    }
    (digits > 0).then(|| if negative { value.wrapping_neg() } else { value })
}

/// C's `isspace` in the C locale.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A piece for an error message: its bytes, escaped.
fn show(piece: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(piece))
}
