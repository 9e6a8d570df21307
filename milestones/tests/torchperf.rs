//! The torchperf systems under test answer exactly what the reference scorers do: the GPT
//! question answerer (batched, cached or not) against `tt_transformer::eval::answer`, the
//! tensor systems against `classifier::accuracy`; and ROC AUC on known scores.

use std::sync::Arc;
use std::time::Duration;

use milestones::torchperf::qa::{QaLibrary, QaSut, Variant};
use milestones::torchperf::tensor_sut::{self, Output, Samples, TensorSut};
use tt_perf::loadgen::{self, Mode, Scenario, TestSettings};
use tt_tensor::data::{digits, Dataset};
use tt_transformer::corpus::QaPair;
use tt_transformer::tokenizer::CharTokenizer;
use tt_transformer::{Gpt, Tokenizer};

fn accuracy_settings() -> TestSettings {
    let mut s = TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1);
    s.mode = Mode::AccuracyOnly;
    s
}

fn pairs() -> Vec<QaPair> {
    let q = |question: &str, answer: &str| QaPair {
        category: "t".into(),
        question: question.into(),
        answer: answer.into(),
    };
    // Prompts of several lengths: with the KV cache they share the decoder by continuous batching.
    vec![q("ab", "x"), q("cd", "y"), q("abc", "z"), q("ba", "x"), q("dcba", "y"), q("ca", "z"), q("b", "x")]
}

#[test]
fn qa_system_answers_as_the_reference_scorer() {
    let text: String = pairs().iter().map(|p| p.to_text()).collect();
    let tokenizer = Tokenizer::Char(CharTokenizer::from_corpus(&text));
    let cfg = tt_transformer::testing::tiny_config(tt_transformer::Tokenize::vocab_size(&tokenizer), 5);

    let model = Arc::new(Gpt::new(cfg.clone()).unwrap());
    let pairs = pairs();
    // The reference: greedy answers by full recomputation with the tensor model, at most the
    // context the system can use.
    let reference: Vec<String> = pairs
        .iter()
        .map(|p| {
            let n = tokenizer.encode_ids(&p.prompt()).unwrap().len();
            let max_new = milestones::torchperf::qa::MAX_NEW_TOKENS.min(cfg.max_seq_len - n);
            tt_transformer::eval::answer(&model, &tokenizer, &p.prompt(), max_new).unwrap()
        })
        .collect();
    for kv_cache in [true, false] {
        let v = Variant { kv_cache, ..Variant::BASELINE };
        let mut lib = QaLibrary::new(&tokenizer, &pairs).unwrap();
        let sut = QaSut::new("test", Arc::clone(&model), v, &tokenizer, Arc::clone(&lib.prompts), 2, 4).unwrap();
        let log = loadgen::start_test(&sut, &mut lib, &accuracy_settings()).unwrap();
        assert!(sut.errors().is_empty(), "{:?}", sut.errors());
        let got: Vec<String> = log.accuracy.iter().map(|(_, d)| String::from_utf8(d.clone()).unwrap()).collect();
        assert_eq!(got, reference, "kv_cache {kv_cache}");
        let expected =
            reference.iter().zip(&pairs).filter(|(r, p)| **r == p.answer).count() as f64 / pairs.len() as f64;
        assert_eq!(lib.exact_match(&log.accuracy), expected);
    }
}

use tt_transformer::Tokenize;

#[test]
fn tensor_system_accuracy_equals_the_classifier_scorer() {
    let (_, test) = digits::standard_split().unwrap();
    let model = milestones::mlp_digits::build(3);
    let reference = milestones::classifier::accuracy(&model, &test).unwrap() as f64;
    let per = 64;
    let mut features = vec![0.0; test.len() * per];
    for i in 0..test.len() {
        test.get_into(i, &mut features[i * per..(i + 1) * per]);
    }
    let samples = Arc::new(Samples { features, shape: vec![64], per });
    let sut = TensorSut::new("mlp", Arc::new(model), samples, Output::Class, 2, 32).unwrap();
    let mut lib = tensor_sut::Library { name: "digits".into(), n: test.len() };
    let log = loadgen::start_test(&sut, &mut lib, &accuracy_settings()).unwrap();
    assert_eq!(log.accuracy.len(), test.len());
    let got = tensor_sut::class_accuracy(&log.accuracy, test.labels());
    assert!((got - reference).abs() < 1e-9, "{got} vs {reference}");
}

#[test]
fn roc_auc_on_known_scores() {
    // Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 pairs ordered right.
    assert_eq!(tensor_sut::roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
    assert_eq!(tensor_sut::roc_auc(&[1.0, 2.0, 3.0, 4.0], &[false, false, true, true]), 1.0);
    // All tied: chance.
    assert_eq!(tensor_sut::roc_auc(&[1.0; 4], &[true, false, true, false]), 0.5);
}
