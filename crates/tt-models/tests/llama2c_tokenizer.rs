//! llama2.c's `tokenizer.bin`: hostile files, round trips, and token-for-token equality with
//! llama2.c's `run.c`.
//!
//! # The run.c fixture
//!
//! `fixtures/llama2c_tokenizer.bin` is [`fixture_pieces`] written by our writer (the test
//! `fixture_file_is_what_the_writer_writes` checks it is byte for byte; with
//! `LLAMA2C_TOKENIZER_REGEN=1` that test rewrites it instead). `fixtures/llama2c_tokenizer_run_c.json`
//! holds what `run.c` itself computes over that file. It was made so (nothing of it is committed):
//!
//! 1. `git clone https://github.com/karpathy/llama2.c` at commit
//!    `350e04fe35433e6d2941dce5a1f53308f87058eb`, into /tmp.
//! 2. A harness `harness.c` beside `run.c`: `#define TESTING`, `#include "run.c"` (which leaves
//!    out `run.c`'s `main`), and a `main(argc, argv)` that calls
//!    `build_tokenizer(&t, argv[1], atoi(argv[2]))`, then reads stdin lines `bos eos HEX`
//!    (`HEX`: the text's UTF-8 bytes in hex, `-` for the empty text), decodes the hex into a
//!    NUL-terminated buffer, calls `encode(&t, buf, bos, eos, tokens, &n)` (tokens sized
//!    the text's length + 3) and prints the `n` ids on one line; after the last line it prints, for `prev`
//!    in 0 and 1 and every token id, `prev id HEX` with `HEX` the bytes of
//!    `decode(&t, prev, id)` up to its NUL.
//! 3. `gcc -O2 -o harness harness.c -lm` (gcc 12.2, glibc 2.36: decode relies on its `sscanf`), then
//!    `./harness llama2c_tokenizer.bin <vocab_size>` with one input line per `encode` case of the
//!    JSON (its `text`, `bos` and `eos`), the vocab size being the number of entries of
//!    [`fixture_pieces`].
//! 4. A short Python script put each case's printed ids into its `ids`, each decode line into
//!    `decode` as `{prev, token, bytes}`, and the commit and vocab size beside them.

use std::path::Path;

use tt_models::llama2c::tokenizer::{safe_piece, synthetic_pieces, write, Llama2cTokenizer};
use tt_models::ModelError;

const FIXTURE_BIN: &str = "tests/fixtures/llama2c_tokenizer.bin";
const FIXTURE_RUN_C: &str = "tests/fixtures/llama2c_tokenizer_run_c.json";

/// The vocabulary of the run.c fixture: Llama 2's layout (specials, byte pieces) plus pieces
/// that exercise each rule of `run.c`'s encode and decode.
fn fixture_pieces() -> Vec<(Vec<u8>, f32)> {
    let mut merges: Vec<(&str, f32)> = vec![
        // The dummy prefix, and Llama 2's double space with its score.
        (" ", -5.0),
        ("  ", -1e9),
    ];
    // Single characters in the vocabulary; anything else falls back to bytes.
    for c in ["a", "b", "c", "d", "e", "h", "l", "o", "r", "s", "t", "w", "z", "q", "é", "日", "本"] {
        merges.push((c, -3.0));
    }
    merges.extend([
        // Competing merges inside "hello": scores decide, not order.
        ("he", -1.0),
        ("el", -1.0),
        ("ll", -2.0),
        ("llo", -1.5),
        ("hello", -0.5),
        (" hello", -0.25),
        (" w", -4.0),
        ("or", -2.5),
        ("ld", -2.5),
        ("wor", -3.5),
        ("world", -0.75),
        (" world", -0.6),
        // A tie: the leftmost pair wins.
        ("ab", -2.0),
        ("bc", -2.0),
        // Repeated letters.
        ("aa", -1.1),
        ("aaaa", -1.2),
        // At run.c's starting score, and below it: never merged.
        ("zz", -1e10),
        ("qq", f32::NEG_INFINITY),
        // Positive scores merge first.
        ("st", 2.0),
        ("日本", -1.0),
        ("café", -0.1),
        ("ca", -2.0),
        ("caf", -2.0),
        // The text of two fallback byte pieces: run.c merges by piece text, so this merges.
        ("<0xF0><0x9F>", -1.0),
        // BOS takes part in run.c's merges.
        ("\n<s>\n ", -9.0),
        // Pieces C's sscanf("<0x%02hhX>") reads (or not) as a byte in decode.
        ("<0x4>", -20.0),
        ("<0x41", -20.0),
        ("<0x 41>", -20.0),
        ("<0x\t7f>", -20.0),
        ("<0x+4>", -20.0),
        ("<0x-1>", -20.0),
        ("<0x-F>", -20.0),
        ("<0x0x41>", -20.0),
        ("<0x-0x>", -20.0),
        ("<0x+>", -20.0),
        ("<0xG1>", -20.0),
        ("<0x>", -20.0),
        ("<0X41>", -20.0),
        ("<0x123>", -20.0),
        ("<0xff>", -20.0),
        (" <0x41>", -20.0),
        (" <0x0A>", -20.0),
    ]);
    synthetic_pieces(&merges)
}

fn max_len(pieces: &[(Vec<u8>, f32)]) -> usize {
    pieces.iter().map(|(p, _)| p.len()).max().unwrap_or(1)
}

/// A tokenizer built from `pieces` through the file writer and loader.
fn tokenizer_of(pieces: &[(Vec<u8>, f32)]) -> Llama2cTokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.bin");
    write(&path, pieces, max_len(pieces)).unwrap();
    Llama2cTokenizer::load(&path, pieces.len()).unwrap()
}

fn fixture() -> Llama2cTokenizer {
    let pieces = fixture_pieces();
    Llama2cTokenizer::load(Path::new(FIXTURE_BIN), pieces.len()).unwrap()
}

/// A plain vocabulary (no quirks) for round trips.
fn plain() -> Llama2cTokenizer {
    let merges = [
        (" ", -5.0),
        ("h", -3.0),
        ("e", -3.0),
        ("l", -3.0),
        ("o", -3.0),
        ("he", -1.0),
        ("ll", -2.0),
        ("hell", -1.5),
        ("hello", -0.5),
        (" hello", -0.25),
    ];
    tokenizer_of(&synthetic_pieces(&merges))
}

fn id_of(tok: &Llama2cTokenizer, piece: &str) -> usize {
    (0..tok.vocab_size()).find(|&id| tok.piece(id) == Some(piece.as_bytes())).unwrap()
}

#[test]
fn fixture_file_is_what_the_writer_writes() {
    let pieces = fixture_pieces();
    if std::env::var_os("LLAMA2C_TOKENIZER_REGEN").is_some() {
        write(Path::new(FIXTURE_BIN), &pieces, max_len(&pieces)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.bin");
    write(&path, &pieces, max_len(&pieces)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(FIXTURE_BIN).unwrap());
}

#[derive(serde::Deserialize)]
struct RunC {
    encode: Vec<EncodeCase>,
    decode: Vec<DecodeCase>,
}

#[derive(serde::Deserialize)]
struct EncodeCase {
    text: String,
    bos: bool,
    eos: bool,
    ids: Vec<usize>,
}

#[derive(serde::Deserialize)]
struct DecodeCase {
    prev: usize,
    token: usize,
    bytes: Vec<u8>,
}

fn run_c() -> RunC {
    serde_json::from_slice(&std::fs::read(FIXTURE_RUN_C).unwrap()).unwrap()
}

#[test]
fn encode_matches_run_c_token_for_token() {
    let tok = fixture();
    let cases = run_c().encode;
    assert!(cases.len() >= 20);
    for case in cases {
        let ids = tok.encode(&case.text, case.bos, case.eos).unwrap();
        assert_eq!(ids, case.ids, "text {:?} bos {} eos {}", case.text, case.bos, case.eos);
    }
}

#[test]
fn decode_matches_run_c_for_every_token() {
    let tok = fixture();
    let cases = run_c().decode;
    assert_eq!(cases.len(), 2 * tok.vocab_size());
    for case in cases {
        let bytes = tok.decode(case.prev, case.token).unwrap();
        assert_eq!(bytes, case.bytes, "prev {} token {} piece {:?}", case.prev, case.token, tok.piece(case.token));
    }
}

#[test]
fn merges_take_the_best_score_then_the_leftmost() {
    let tok = fixture();
    let ids = |text| tok.encode(text, false, false).unwrap();
    let piece_ids = |pieces: &[&str]| pieces.iter().map(|p| id_of(&tok, p)).collect::<Vec<_>>();
    assert_eq!(ids("hello world"), piece_ids(&[" hello", " world"]));
    // "ab" and "bc" tie: the leftmost pair merges, leaving "c".
    assert_eq!(ids("abc"), piece_ids(&[" ", "ab", "c"]));
    // "aa" (-1.1) beats "aaaa" (-1.2) until no "aa" pairs are left, then "aaaa" merges pairs.
    assert_eq!(ids("aaaaa"), piece_ids(&[" ", "aaaa", "a"]));
    // Scores at or below -1e10 never merge.
    assert_eq!(ids("zz"), piece_ids(&[" ", "z", "z"]));
    assert_eq!(ids("qq"), piece_ids(&[" ", "q", "q"]));
}

#[test]
fn characters_outside_the_vocab_fall_back_to_bytes() {
    let tok = fixture();
    let space = id_of(&tok, " ");
    // 'x' is not a piece: its byte 0x78 becomes id 0x78 + 3.
    assert_eq!(tok.encode("x", false, false).unwrap(), [space, 0x78 + 3]);
    // U+00DF is two bytes, U+1F600 four; the first two of those are merged by piece text.
    let ids = tok.encode("ß😀", false, false).unwrap();
    assert_eq!(ids, [space, 0xC3 + 3, 0x9F + 3, id_of(&tok, "<0xF0><0x9F>"), 0x98 + 3, 0x80 + 3]);
    // And, as in run.c, that merged piece decodes as the one byte sscanf reads from its start.
    assert_eq!(tok.decode(0, ids[3]).unwrap(), [0xF0]);
    // Characters in the vocabulary are one piece each.
    assert_eq!(tok.encode("日本", false, false).unwrap(), [space, id_of(&tok, "日本")]);
}

#[test]
fn bos_eos_and_the_dummy_prefix() {
    let tok = plain();
    assert_eq!((tok.bos(), tok.eos()), (1, 2));
    assert_eq!(tok.encode("", false, false).unwrap(), Vec::<usize>::new());
    assert_eq!(tok.encode("", true, true).unwrap(), [1, 2]);
    let hello = id_of(&tok, " hello");
    assert_eq!(tok.encode("hello", true, true).unwrap(), [1, hello, 2]);
    assert_eq!(tok.encode("hello", false, false).unwrap(), [hello]);
    // run.c reads a C string: the text ends at a NUL.
    assert_eq!(tok.encode("hello\0hello", true, false).unwrap(), [1, hello]);
}

#[test]
fn round_trips() {
    let tok = plain();
    for text in ["hello", "hello hello", "Hello, wörld! 日本語 😀\n\ttabs", "  spaces  ", "x"] {
        let ids = tok.encode(text, true, false).unwrap();
        assert_eq!(tok.decode_all(&ids).unwrap(), text, "{ids:?}");
        let ids = tok.encode(text, true, true).unwrap();
        assert_eq!(tok.decode_all(&ids).unwrap(), text);
    }
}

#[test]
fn decode_strips_the_space_only_after_bos() {
    let tok = plain();
    let hello = id_of(&tok, " hello");
    assert_eq!(tok.decode(1, hello).unwrap(), b"hello");
    assert_eq!(tok.decode(0, hello).unwrap(), b" hello");
    assert_eq!(tok.decode(hello, hello).unwrap(), b" hello");
    // Without BOS the dummy prefix stays.
    assert_eq!(tok.decode_all(&tok.encode("hello", false, false).unwrap()).unwrap(), " hello");
    // Byte pieces decode to the byte.
    assert_eq!(tok.decode(0, 0x0A + 3).unwrap(), b"\n");
    assert!(tok.decode(0, tok.vocab_size()).is_err());
}

#[test]
fn safe_piece_drops_lone_unprintable_bytes_as_run_c_does() {
    assert_eq!(safe_piece(b"\n"), b"\n");
    assert_eq!(safe_piece(b"A"), b"A");
    assert_eq!(safe_piece(&[0x07]), b"");
    assert_eq!(safe_piece(&[0xE6]), b"");
    assert_eq!(safe_piece(b""), b"");
    assert_eq!(safe_piece("é".as_bytes()), "é".as_bytes());
}

#[test]
fn encode_errors_instead_of_indexing_out_of_bounds() {
    // No " " piece: run.c would push id -1.
    let no_space = tokenizer_of(&synthetic_pieces(&[("a", -1.0)]));
    let err = no_space.encode("a", false, false).unwrap_err().to_string();
    assert!(err.contains("dummy prefix"), "{err}");
    // Too few tokens for byte fallback.
    let pieces: Vec<(Vec<u8>, f32)> =
        ["<unk>", "<s>", "</s>", " ", "a"].iter().map(|p| (p.as_bytes().to_vec(), 0.0)).collect();
    let small = tokenizer_of(&pieces);
    assert_eq!(small.encode("a", true, false).unwrap(), [1, 3, 4]);
    let err = small.encode("b", false, false).unwrap_err().to_string();
    assert!(err.contains("byte fallback") && err.contains("101"), "{err}");
}

/// A tokenizer file by hand: header then (score, len, bytes) per token.
fn file_bytes(max_token_length: i32, tokens: &[(f32, i32, &[u8])]) -> Vec<u8> {
    let mut bytes = max_token_length.to_le_bytes().to_vec();
    for (score, len, piece) in tokens {
        bytes.extend_from_slice(&score.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(piece);
    }
    bytes
}

fn good_tokens() -> Vec<(f32, i32, &'static [u8])> {
    vec![(0.0, 5, b"<unk>"), (0.0, 3, b"<s>"), (0.0, 4, b"</s>"), (-1.0, 1, b" "), (-2.0, 2, b"ab")]
}

fn refused(bytes: &[u8], vocab_size: usize) -> String {
    let label = Path::new("hostile.bin");
    let err = Llama2cTokenizer::from_bytes(bytes, vocab_size, label).unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.starts_with("hostile.bin: "), "{err}");
    err
}

#[test]
fn a_good_hand_made_file_loads() {
    let tok = Llama2cTokenizer::from_bytes(&file_bytes(5, &good_tokens()), 5, Path::new("good.bin")).unwrap();
    assert_eq!(tok.vocab_size(), 5);
    assert_eq!(tok.piece(4), Some(&b"ab"[..]));
    assert_eq!(tok.piece(5), None);
}

#[test]
fn hostile_files_are_refused_with_the_field_named() {
    let good = file_bytes(5, &good_tokens());
    let check = |bytes: &[u8], vocab_size: usize, wanted: &[&str]| {
        let err = refused(bytes, vocab_size);
        for w in wanted {
            assert!(err.contains(w), "{err:?} lacks {w:?}");
        }
    };
    check(&good, 0, &["vocab_size 0"]);
    check(&good, 2, &["vocab_size 2"]);
    check(&good, usize::MAX, &["vocab_size"]);
    check(&good, (1 << 22) + 1, &["vocab_size"]);
    check(&[], 5, &["max_token_length", "needs 4"]);
    check(&good[..3], 5, &["max_token_length"]);
    check(&file_bytes(-1, &good_tokens()), 5, &["max_token_length -1"]);
    check(&file_bytes(0, &good_tokens()), 5, &["max_token_length 0"]);
    check(&file_bytes(i32::MAX, &good_tokens()), 5, &["max_token_length 2147483647"]);
    // Too short for the fixed fields alone: refused before any table is allocated.
    check(&good[..30], 5, &["truncated"]);
    check(&good, 1 << 22, &["truncated"]);
    // Cut inside the last piece.
    check(&good[..good.len() - 1], 5, &["token 4", "past the end"]);
    // Cut inside a later token's fixed fields (lengths of earlier pieces run long).
    let long = file_bytes(40, &[(0.0, 40, &[b'x'; 40]), (0.0, 1, b"a"), (0.0, 1, b"b")]);
    check(&long[..long.len() - 8], 3, &["token 2", "score and length"]);
    let mut tokens = good_tokens();
    tokens[2] = (0.0, -3, b"");
    check(&file_bytes(5, &tokens), 5, &["token 2", "length -3", "negative"]);
    let mut tokens = good_tokens();
    tokens[0] = (0.0, 6, b"<unk>!");
    check(&file_bytes(5, &tokens), 5, &["token 0", "length 6", "max_token_length 5"]);
    let mut tokens = good_tokens();
    tokens[3] = (f32::NAN, 1, b" ");
    check(&file_bytes(5, &tokens), 5, &["token 3", "NaN"]);
    let mut tokens = good_tokens();
    tokens[4] = (0.0, 2, b"a\0");
    check(&file_bytes(5, &tokens), 5, &["token 4", "NUL"]);
    let mut tokens = good_tokens();
    tokens[4] = (0.0, 1, b" ");
    check(&file_bytes(5, &tokens), 5, &["token 4", "repeats token 3"]);
    // One more token than the model's vocabulary: trailing bytes.
    check(&good, 4, &["trailing bytes", "token 3"]);
    let mut trailing = good.clone();
    trailing.push(0);
    check(&trailing, 5, &["1 trailing bytes", "token 4"]);
}

#[test]
fn load_checks_the_header_against_the_file_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bin");
    std::fs::write(&path, file_bytes(5, &good_tokens())).unwrap();
    assert_eq!(Llama2cTokenizer::load(&path, 5).unwrap().vocab_size(), 5);
    let err = Llama2cTokenizer::load(&path, 1000).unwrap_err().to_string();
    assert!(err.contains("t.bin") && err.contains("truncated"), "{err}");
    // Far more bytes than 5 tokens of at most 5 bytes: refused before the file is read.
    let mut huge = file_bytes(5, &good_tokens());
    huge.resize(huge.len() + 1000, 0);
    std::fs::write(&path, huge).unwrap();
    let err = Llama2cTokenizer::load(&path, 5).unwrap_err().to_string();
    assert!(err.contains("more than 5 tokens of at most 5 bytes"), "{err}");
    let err = Llama2cTokenizer::load(&dir.path().join("missing.bin"), 5).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
}

#[test]
fn the_writer_refuses_what_the_loader_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    let mut pieces = synthetic_pieces(&[(" ", 0.0)]);
    let err = write(&path, &pieces, 3).unwrap_err().to_string();
    assert!(err.contains("max_token_length 3"), "{err}");
    pieces.push((b" ".to_vec(), 0.0));
    assert!(write(&path, &pieces, max_len(&pieces)).unwrap_err().to_string().contains("repeats"));
    assert!(!path.exists());
}
