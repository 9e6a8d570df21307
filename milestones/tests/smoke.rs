//! Milestones in quick mode: they run end to end, report measured numbers and save a checkpoint
//! that loads back. (Full-size runs and their accuracy targets are the milestones themselves.)

use milestones::transformer::UserCorpus;
use milestones::{classifier, cnn_digits, Options};

fn opts(dir: &std::path::Path) -> Options {
    Options {
        json: true,
        retrain: false,
        quick: true,
        cache_dir: dir.to_path_buf(),
        progress: false,
        corpus: None,
        quiet: true,
        full: false,
        serve_exe: None,
        arch: milestones::Arch::Gpt,
    }
}

/// The region names `docs/<page>` marks with `<!-- report:NAME -->`, in page order, less `stamp`
/// (the report driver writes that one itself).
fn page_regions(milestone: &str) -> Vec<String> {
    let page = milestones::report::PAGES.iter().find(|p| p.milestone == milestone).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(page.doc);
    let text = std::fs::read_to_string(&path).unwrap();
    let names: Vec<String> = text
        .split("<!-- report:")
        .skip(1)
        .filter_map(|rest| rest.split_once(" -->").map(|(name, _)| name.to_string()))
        .filter(|name| name != "stamp")
        .collect();
    for n in &names {
        assert_eq!(text.matches(&format!("<!-- /report:{n} -->")).count(), 1, "{n} is closed once in {}", page.doc);
    }
    names
}

/// The page's renderer turns a quick summary into exactly the regions its docs page marks, each
/// with some markdown, so a renamed key or region fails here rather than in `cargo tito report`.
fn renders_every_region(milestone: &str, summary: &serde_json::Value) {
    let page = milestones::report::PAGES.iter().find(|p| p.milestone == milestone).unwrap();
    let regions = (page.render)(summary).unwrap_or_else(|e| panic!("{milestone}: {e}"));
    let names: Vec<String> = regions.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, page_regions(milestone), "{milestone}: rendered regions against {}", page.doc);
    for r in &regions {
        assert!(!r.markdown.trim().is_empty(), "{milestone}: region {} is empty", r.name);
    }
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
    let (model, info) = cnn_digits::load_or_train(&opts(&dir)).unwrap();
    assert_eq!(info.test_accuracy as f64, v["test_accuracy"].as_f64().unwrap() as f32 as f64);
    let (_, test) = tt_tensor::data::digits::standard_split().unwrap();
    let acc = classifier::accuracy(&model, &test.with_sample_shape(vec![1, 8, 8]).unwrap()).unwrap();
    assert_eq!(acc, info.test_accuracy, "reloaded weights give the saved accuracy");
    assert!(milestones::run("nope", &opts(&dir)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn transformer_and_kv_cache_quick_runs_report_measured_fields() {
    let dir = std::env::temp_dir().join(format!("tt-ms-gpt-{}", std::process::id()));
    let v = milestones::run("transformer", &opts(&dir)).unwrap();
    for key in ["val_perplexity", "test_exact_match", "train_seconds", "params"] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    let em = v["test_exact_match"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&em));
    assert!(v["val_perplexity"].as_f64().unwrap() > 1.0);
    // The KV-cache milestone reuses that checkpoint and checks cached == uncached == reference.
    let kv = milestones::run("kv_cache", &opts(&dir)).unwrap();
    assert_eq!(kv["outputs_identical"], true, "{kv}");
    let rows = kv["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for key in ["tokens", "uncached_tok_s", "cached_tok_s", "speedup"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn transformer_trains_on_a_user_corpus_file() {
    let dir = std::env::temp_dir().join(format!("tt-ms-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("poem.txt");
    // U+FFFD, as lossy-decoded text holds it: the character tokenizer's `<unk>` encodes it.
    std::fs::write(&file, "the quick brown fox jumps over the lazy dog \u{FFFD}. ".repeat(80)).unwrap();
    let o = Options { corpus: Some(UserCorpus::read(&file).unwrap()), ..opts(&dir) };
    let v = milestones::run("transformer", &o).unwrap();
    assert!(v["val_perplexity"].as_f64().unwrap() > 1.0);
    assert!(v["test_exact_match"].is_null(), "no Q/A test set for a plain text file");
    let ck = milestones::transformer::checkpoint_dir(&o);
    assert!(tt_tensor::serialize::unit_exists(&ck), "{}", ck.display());
    // The same name with other contents is another model.
    let other = dir.join("sub");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("poem.txt"), "a different poem, of other words entirely. ".repeat(80)).unwrap();
    let o2 = Options { corpus: Some(UserCorpus::read(&other.join("poem.txt")).unwrap()), ..opts(&dir) };
    assert_ne!(milestones::transformer::checkpoint_dir(&o2), ck);
    // A pipe (`--corpus <(cat poem.txt)`) is read once, so it gives the same model key.
    let fifo = dir.join("poem.fifo");
    if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        let (src, dst) = (file.clone(), fifo.clone());
        let writer = std::thread::spawn(move || std::fs::write(dst, std::fs::read(src).unwrap()).unwrap());
        let piped = Options { corpus: Some(UserCorpus::read(&fifo).unwrap()), ..opts(&dir) };
        writer.join().unwrap();
        assert_eq!(milestones::transformer::checkpoint_dir(&piped), ck);
    }
    // Too short or unreadable files are errors that name the file.
    std::fs::write(&file, "short").unwrap();
    let e = UserCorpus::read(&file).unwrap_err().to_string();
    assert!(e.contains("poem.txt") && e.contains("2000"), "{e}");
    assert!(UserCorpus::read(&dir.join("nope.txt")).unwrap_err().to_string().contains("nope.txt"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_quick_run_reports_the_required_fields() {
    let dir = std::env::temp_dir().join(format!("tt-ms-prof-{}", std::process::id()));
    let v = milestones::run("profile", &opts(&dir)).unwrap();
    for model in ["gpt", "cnn"] {
        let m = &v[model];
        assert!(m["params"].as_u64().unwrap() > 0, "{model}");
        assert!(m["flops_per_forward"].as_u64().unwrap() > 0, "{model}");
        for k in ["median", "p90", "p99"] {
            assert!(m["latency_ms"][k].as_f64().unwrap() > 0.0, "{model} {k}");
        }
        // The test binary does not install the counting allocator: reported as absent, not zero.
        assert!(m["peak_heap_bytes"].is_null());
        let trace: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m["trace"].as_str().unwrap()).unwrap()).unwrap();
        assert!(!trace["traceEvents"].as_array().unwrap().is_empty());
    }
    assert!(v["machine"]["peak_gflops_1core"].as_f64().unwrap() > 0.0);
    assert!(v["machine"]["stream_triad_gbs"].as_f64().unwrap() > 0.0);
    assert!(dir.join("profile").join("report.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn options_are_checked_before_any_training() {
    let dir = std::env::temp_dir().join(format!("tt-ms-opts-{}", std::process::id()));
    // A flag the milestone does not use.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x.txt"), "x".repeat(2000)).unwrap();
    let o = Options { corpus: Some(UserCorpus::read(&dir.join("x.txt")).unwrap()), ..opts(&dir) };
    let e = milestones::run("mlp_digits", &o).unwrap_err().to_string();
    assert!(e.contains("does not use --corpus"), "{e}");
    let e = milestones::run("cnn_digits", &Options { retrain: true, ..opts(&dir) }).unwrap_err().to_string();
    assert!(e.contains("--retrain"), "{e}");
    // A cache directory that is a file: named, before training.
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let start = std::time::Instant::now();
    let e = milestones::run("mlp_digits", &Options { cache_dir: file.clone(), ..opts(&dir) }).unwrap_err().to_string();
    assert!(e.contains(&file.display().to_string()) && e.contains("cache directory"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 1.0, "failed before training");
    // An endless corpus is cut off at the cap instead of filling memory.
    if std::path::Path::new("/dev/zero").exists() {
        let e = UserCorpus::read(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("limit"), "{e}");
    }
    // A model's checkpoint path occupied by a file: named, before training.
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("mlp_digits-quick"), "x").unwrap();
    let start = std::time::Instant::now();
    let e = milestones::run("mlp_digits", &Options { cache_dir: cache.clone(), ..opts(&dir) }).unwrap_err().to_string();
    assert!(e.contains("mlp_digits-quick") && e.contains("not a directory"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 1.0, "failed before training");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_quick_run_never_replaces_the_full_model() {
    let dir = std::env::temp_dir().join(format!("tt-ms-quickkey-{}", std::process::id()));
    let quick = opts(&dir);
    let full = Options { quick: false, ..opts(&dir) };
    assert_ne!(classifier::checkpoint_dir(&quick, "cnn_digits"), classifier::checkpoint_dir(&full, "cnn_digits"));
    assert_ne!(milestones::transformer::checkpoint_dir(&quick), milestones::transformer::checkpoint_dir(&full));
}

#[test]
fn the_default_cache_does_not_depend_on_the_current_directory() {
    if std::env::var_os("TT_CACHE_DIR").is_none() {
        let d = milestones::default_cache_dir();
        assert!(d.is_absolute() && d.ends_with(".tt-cache"), "{}", d.display());
        assert!(d.parent().unwrap().join("Cargo.toml").is_file(), "at the workspace root: {}", d.display());
    }
}

#[test]
fn acceleration_quick_run_reports_measured_fields() {
    let dir = std::env::temp_dir().join(format!("tt-ms-accel-{}", std::process::id()));
    let v = milestones::run("acceleration", &opts(&dir)).unwrap();
    for k in ["peak_gflops_1core", "l2_read_gbs", "l3_read_gbs", "dram_read_gbs"] {
        assert!(v["machine"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    for row in v["gemv"].as_array().unwrap() {
        assert!(row["packed_gflops"].as_f64().unwrap() > 0.0 && row["speedup"].as_f64().unwrap() > 0.0);
    }
    let d = &v["decode"];
    assert_eq!(d["identical_tokens"], true, "{d}");
    assert!(d["accelerated_tok_s"].as_f64().unwrap() > 0.0 && d["roofline_tok_s"].as_f64().unwrap() > 0.0);
    assert!(d["max_abs_logit_diff"].as_f64().unwrap() <= 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compression_quick_run_reports_structured_rows_for_every_model() {
    let dir = std::env::temp_dir().join(format!("tt-ms-compress-{}", std::process::id()));
    let v = milestones::run("compression", &opts(&dir)).unwrap();
    let rows = v["structured"].as_array().unwrap();
    for (model, unit) in
        [("mlp", "hidden units"), ("cnn", "channels"), ("gpt", "control"), ("gpt", "mlp units"), ("gpt", "heads")]
    {
        let of: Vec<_> = rows.iter().filter(|r| r["model"] == model && r["unit"] == unit).collect();
        assert!(!of.is_empty(), "{model} {unit}: {rows:?}");
        for r in of {
            for k in ["ratio", "params", "bytes", "quality", "latency_speedup"] {
                assert!(r[k].as_f64().is_some(), "{model} {unit} {k}: {r}");
            }
            assert_eq!(r["bytes"].as_u64().unwrap(), 4 * r["params"].as_u64().unwrap());
            assert!(r["latency_speedup"].as_f64().unwrap() > 0.0);
        }
    }
    // Half the heads removed: every block keeps 2 of 4, and the KV cache is half the control's.
    let heads = rows.iter().find(|r| r["unit"] == "heads" && r["ratio"] == 0.5).unwrap();
    let control = rows.iter().find(|r| r["unit"] == "control").unwrap();
    assert!(heads["heads_per_block"].as_array().unwrap().iter().all(|h| h == 2), "{heads}");
    assert_eq!(2 * heads["kv_cache_bytes"].as_u64().unwrap(), control["kv_cache_bytes"].as_u64().unwrap());
    renders_every_region("compression", &v);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantization_quick_run_reports_every_scheme_with_measured_fields() {
    let dir = std::env::temp_dir().join(format!("tt-ms-quant-{}", std::process::id()));
    let v = milestones::run("quantization", &opts(&dir)).unwrap();
    assert_eq!(v["milestone"], "quantization");
    let rows = v["models"].as_array().unwrap();
    for model in ["mlp", "cnn", "gpt"] {
        let schemes: Vec<&str> =
            rows.iter().filter(|r| r["model"] == model).filter_map(|r| r["scheme"].as_str()).collect();
        assert!(schemes.contains(&"fp32") && schemes.contains(&"dynamic_per_channel"), "{model}: {schemes:?}");
    }
    for r in rows {
        for k in ["quality", "weight_bytes", "model_bytes"] {
            assert!(r[k].as_f64().is_some_and(|x| x >= 0.0), "{k}: {r}");
        }
        // int8 weights really are smaller than the fp32 row of the same model.
        if r["scheme"] != "fp32" {
            let fp32 = rows.iter().find(|f| f["model"] == r["model"] && f["scheme"] == "fp32").unwrap();
            assert!(r["weight_bytes"].as_u64() < fp32["weight_bytes"].as_u64(), "{r}");
        }
    }
    for k in ["f32_gflops", "int8_gops", "speedup"] {
        assert!(v["gemm"][k].as_f64().is_some_and(|x| x > 0.0), "gemm {k}: {}", v["gemm"]);
    }
    for k in ["fp32_tok_s", "int8_tok_s", "int8_kv_tok_s", "speedup", "int8_kv_speedup"] {
        assert!(v["decode"][k].as_f64().is_some_and(|x| x > 0.0), "decode {k}: {}", v["decode"]);
    }
    assert_eq!(v["decode"]["int8_scheme"], "dynamic_per_channel");
    // The fully integer MLP: measured accuracy, and its codes against the float formula's (the
    // layer's documented bound: never more than one code off).
    let int = &v["integer_mlp"];
    let fp32 = rows.iter().find(|r| r["model"] == "mlp" && r["scheme"] == "fp32").unwrap();
    assert!(int["quality"].as_f64().unwrap() > fp32["quality"].as_f64().unwrap() - 0.05, "{int}");
    assert!(int["max_code_difference"].as_u64().unwrap() <= 1, "{int}");
    assert!(int["codes_equal_float_reference"].as_f64().unwrap() > 0.9, "{int}");
    renders_every_region("quantization", &v);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torchperf_quick_run_reports_scenarios_suite_ablation_and_targets() {
    let dir = std::env::temp_dir().join(format!("tt-ms-perf-{}", std::process::id()));
    let v = milestones::run("torchperf", &opts(&dir)).unwrap();
    assert_eq!(v["milestone"], "torchperf");
    let scenarios = v["scenarios"].as_array().unwrap();
    for sc in ["SingleStream", "MultiStream", "Server", "Offline"] {
        assert!(scenarios.iter().any(|s| s["scenario"] == sc), "{sc} missing");
    }
    for s in scenarios {
        assert!(s["result"] == "VALID" || s["result"] == "INVALID", "{s}");
        assert!(std::path::Path::new(s["summary_path"].as_str().unwrap()).is_file(), "{s}");
    }
    assert!(!v["tiny_suite"].as_array().unwrap().is_empty());
    let rows = v["ablation"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 32, "the full 2^5 design");
    for r in rows {
        for k in ["tpot_ms", "ttft_ms", "p50_ms", "p90_ms", "p99_ms", "quality", "model_bytes"] {
            assert!(r[k].as_f64().is_some(), "{k}: {r}");
        }
        // Per output token, median of at least three rounds, with its range.
        assert!(r["rounds"].as_u64().unwrap() >= 3, "{r}");
        let (lo, hi) = (r["tpot_range_ms"][0].as_f64().unwrap(), r["tpot_range_ms"][1].as_f64().unwrap());
        assert!(lo <= r["tpot_ms"].as_f64().unwrap() && r["tpot_ms"].as_f64().unwrap() <= hi, "{r}");
    }
    for w in v["ablation"]["walk"].as_array().unwrap() {
        assert!(w["tpot_ms"].as_f64().is_some() && w["speedup_over_baseline"].as_f64().is_some(), "{w}");
    }
    for t in v["production"].as_array().unwrap() {
        // Measured (a verdict), or not measured and saying why (no serving process here).
        let judged = t["met"].is_boolean() && t["measured"].is_number();
        assert!(t["requirement"].is_string() && (judged || (t["met"].is_null() && t["why"].is_string())), "{t}");
    }
    assert!(v["gpt_sut_errors"].as_array().unwrap().is_empty(), "{}", v["gpt_sut_errors"]);
    renders_every_region("torchperf", &v);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn llama_quick_decodes_llama2c_files_in_every_engine_and_renders_its_page() {
    let dir = std::env::temp_dir().join(format!("tt-ms-llama-{}", std::process::id()));
    let v = milestones::llama::run(&opts(&dir)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let engines: Vec<&str> = rows.iter().filter_map(|r| r["engine"].as_str()).collect();
    assert!(
        engines.contains(&"f32") && engines.contains(&"int8 (Q8_0 file)") && engines.contains(&"int4"),
        "{engines:?}"
    );
    for r in rows {
        for k in ["decode_tok_s", "prefill_tok_s", "roofline_tok_s"] {
            assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {r}");
        }
    }
    renders_every_region("llama", &v);
    std::fs::remove_dir_all(&dir).unwrap();
}
