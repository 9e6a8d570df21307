//! Module 10 — tokenization: exact round trips, explicit unknown handling, trainable BPE.

use tt_transformer::corpus;
use tt_transformer::tokenizer::{BpeTokenizer, CharTokenizer, Tokenize, Tokenizer};

#[test]
fn char_tokenizer_round_trips_the_corpus() {
    let c = corpus::generate(0);
    let text = c.all_text();
    let tok = CharTokenizer::from_corpus(&text);
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(ids.iter().all(|&i| i != CharTokenizer::UNK));
}

#[test]
fn char_tokenizer_handles_unknown_input_explicitly() {
    let tok = CharTokenizer::from_corpus("abc ");
    assert_eq!(tok.vocab_size(), 5, "4 characters + <unk>");
    let err = tok.encode("abz").unwrap_err().to_string();
    assert!(err.contains("'z'") && err.contains("position 2"), "{err}");
    let lossy = tok.encode_lossy("abz");
    assert_eq!(lossy[2], CharTokenizer::UNK);
    assert_eq!(tok.decode(&lossy).unwrap(), "ab\u{FFFD}");
    assert!(tok.decode(&[99]).is_err());
}

#[test]
fn char_tokenizer_round_trips_a_corpus_holding_the_replacement_character() {
    // U+FFFD is how `<unk>` is stored; a corpus that contains it (lossy-decoded text often does)
    // must still encode, and decode back to itself.
    let text = "caf\u{FFFD} au lait \u{FFFD}";
    let tok = CharTokenizer::from_corpus(text);
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[3], CharTokenizer::UNK);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let back = Tokenizer::from_json(&serde_json::to_vec(&Tokenizer::Char(tok)).unwrap()).unwrap();
    assert_eq!(back.encode(text).unwrap(), ids);
}

#[test]
fn bpe_round_trips_any_utf8_and_compresses() {
    let c = corpus::generate(0);
    let text = c.train_text(1, 0);
    let bpe = BpeTokenizer::train(&text, 200);
    assert_eq!(bpe.num_merges(), 200);
    assert_eq!(bpe.vocab_size(), 256 + 200);
    let ids = bpe.encode(&text).unwrap();
    assert_eq!(bpe.decode(&ids).unwrap(), text);
    assert!(
        ids.len() * 2 < text.len(),
        "200 merges should halve the corpus: {} ids for {} bytes",
        ids.len(),
        text.len()
    );
    for s in ["", "héllo wörld 🚀\n", "Q: what is 7 plus 8?\nA: 15\n", "   leading spaces", "\u{0}\u{7f}"] {
        assert_eq!(bpe.decode(&bpe.encode(s).unwrap()).unwrap(), s);
    }
    assert!(bpe.decode(&[10_000]).is_err());
}

#[test]
fn bpe_training_is_deterministic_and_serializes() {
    let text = "the cat sat on the mat. the cat ate the rat. ".repeat(20);
    let a = BpeTokenizer::train(&text, 30);
    let b = BpeTokenizer::train(&text, 30);
    assert_eq!(a, b);
    // The most frequent pair in this text is merged first and helps encode a new sentence.
    let sample = "the rat sat on the cat.";
    assert!(a.encode(sample).unwrap().len() < sample.len());
    let json = serde_json::to_string(&Tokenizer::Bpe(a.clone())).unwrap();
    let back: Tokenizer = serde_json::from_str::<Tokenizer>(&json).unwrap().rebuild().unwrap();
    assert_eq!(back.encode(sample).unwrap(), a.encode(sample).unwrap());
    // Too little text to find repeated pairs: training stops early instead of inventing merges.
    assert_eq!(BpeTokenizer::train("ab", 10).num_merges(), 0);
}

#[test]
fn char_tokenizer_serializes() {
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("hello world"));
    let json = serde_json::to_string(&tok).unwrap();
    let back = serde_json::from_str::<Tokenizer>(&json).unwrap().rebuild().unwrap();
    assert_eq!(back.encode("low").unwrap(), tok.encode("low").unwrap());
    assert!(back.encode("xyz").is_err());
}
