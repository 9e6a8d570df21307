//! `tt_models::open`: units it saves open back with their codec.

/// A course model saved as a unit opens with its tokenizer, and a lone question line gets the
/// `\nA:` answer cue the course corpus trains on (so `tito generate --prompt "Q: …"` answers).
#[test]
fn a_course_unit_round_trips_and_a_question_gets_its_answer_cue() {
    use tt_transformer::{CharTokenizer, Gpt, Tokenize, Tokenizer};
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::Char(CharTokenizer::from_corpus("Q: what is 3 plus 4?\nA: 7\n"));
    let mut model = Gpt::new(tt_transformer::testing::tiny_config(tok.vocab_size(), 1)).unwrap();
    let codec = tt_models::open::course_codec(tok.clone());
    let unit = dir.path().join("unit");
    tt_models::open::save(&mut model, codec.as_ref(), "f32", &unit).unwrap();
    let opened = tt_models::open::open(&unit, None).unwrap();
    assert_eq!(opened.model.config, model.config);
    let cued = tok.encode_ids("Q: what is 3 plus 4?\nA:").unwrap();
    assert_eq!(opened.codec.encode_prompt("Q: what is 3 plus 4?").unwrap(), cued);
    // Text that is not a lone question is taken as it is.
    assert_eq!(opened.codec.encode_prompt("what is").unwrap(), tok.encode_ids("what is").unwrap());
    assert_eq!(opened.codec.stop_tokens(), tok.encode_ids("\n").unwrap());
}
