//! Milestones in quick mode: they run end to end, report measured numbers and save a checkpoint
//! that loads back. (Full-size runs and their accuracy targets are the milestones themselves.)

use milestones::{classifier, cnn_digits, Options};

fn opts(dir: &std::path::Path) -> Options {
    Options { json: true, retrain: true, quick: true, cache_dir: dir.to_path_buf(), progress: false, corpus: None }
}

#[test]
fn mlp_digits_quick_run_reports_measured_accuracy() {
    let dir = std::env::temp_dir().join(format!("tt-ms-mlp-{}", std::process::id()));
    let v = milestones::run("mlp_digits", &opts(&dir)).unwrap();
    let acc = v["test_accuracy"].as_f64().unwrap();
    // Two epochs on real digits is far above chance (0.1) but is a measurement, not a constant.
    assert!(acc > 0.5 && acc <= 1.0, "{acc}");
    assert!(v["train_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["epochs"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cnn_checkpoint_is_reused() {
    let dir = std::env::temp_dir().join(format!("tt-ms-cnn-{}", std::process::id()));
    let v = milestones::run("cnn_digits", &opts(&dir)).unwrap();
    let (model, info) = cnn_digits::load_or_train(&Options { retrain: false, ..opts(&dir) }).unwrap();
    assert_eq!(info.test_accuracy as f64, v["test_accuracy"].as_f64().unwrap() as f32 as f64);
    let (_, test) = tt_tensor::data::digits::standard_split().unwrap();
    let acc = classifier::accuracy(&model, &test.with_sample_shape(vec![1, 8, 8]).unwrap()).unwrap();
    assert_eq!(acc, info.test_accuracy, "reloaded weights give the saved accuracy");
    assert!(milestones::run("nope", &opts(&dir)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
