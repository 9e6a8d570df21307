//! The CLI's contract: bad input gives one `tito: error:` line and a non-zero exit, never a panic.

use std::process::Command;

fn tito(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tito")).args(args).output().expect("tito runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_module_is_a_one_line_error() {
    let (code, _, err) = tito(&["test", "42"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown module '42'"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn unknown_milestone_is_a_one_line_error() {
    let (code, _, err) = tito(&["milestone", "warp_drive"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown milestone 'warp_drive'"), "{err}");
}

#[test]
fn milestone_list_names_the_milestones() {
    let (code, out, _) = tito(&["milestone", "--list"]);
    assert_eq!(code, 0);
    assert!(out.contains("mlp_digits") && out.contains("cnn_digits"), "{out}");
}

#[test]
fn status_lists_all_nineteen_modules() {
    let (code, out, _) = tito(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("01 tensor") && out.contains("19 benchmarking"), "{out}");
    // Every milestone names the cached models it uses, torchperf's own among them.
    assert!(out.contains("torchperf/models/gpt-control"), "{out}");
    assert!(out.lines().filter(|l| l.contains(" module ")).all(|l| l.contains("models: ")), "{out}");
}

#[test]
fn a_flag_the_milestone_does_not_use_is_rejected_before_training() {
    let dir = std::env::temp_dir().join(format!("tt-cli-flags-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["milestone", "mlp_digits", "--corpus", "whatever.txt"])
        .env("TT_CACHE_DIR", &dir)
        .output()
        .expect("tito runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("does not use --corpus") && !err.contains("panicked"), "{err}");
    assert!(!dir.exists(), "nothing was trained or cached");
}

#[test]
fn a_corpus_given_as_a_pipe_is_read_once_and_trains() {
    let dir = std::env::temp_dir().join(format!("tt-cli-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("corpus.fifo");
    if !Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        return; // no FIFOs on this system: nothing to test
    }
    // What `--corpus <(cat poem.txt)` hands the CLI: a pipe that can be read exactly once.
    let text = "a pipe of words, read once and never again; ".repeat(60);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, text))
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["milestone", "transformer", "--quick", "--json", "--corpus"])
        .arg(&fifo)
        .env("TT_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tito runs");
    // A second open of the pipe would wait for a writer forever: bound the wait, then fail.
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > 300 {
            child.kill().unwrap();
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo); // release a blocked reader
            panic!("tito did not finish: it waits on the pipe a second time");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writer.join().unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert!(v["val_perplexity"].as_f64().unwrap() > 1.0, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_qa_needs_a_trained_model_then_reports_its_run() {
    let dir = std::env::temp_dir().join(format!("tt-cli-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap();
    let (code, _, err) = tito(&["serve-qa", "--cache-dir", dir_s, "--quick"]);
    assert_ne!(code, 0);
    assert!(err.contains("no trained GPT") && !err.contains("panicked"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["milestone", "transformer", "--quick"])
        .env("TT_CACHE_DIR", &dir)
        .output()
        .expect("tito runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, out, err) = tito(&["serve-qa", "--cache-dir", dir_s, "--quick"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    for k in ["queries", "p50_ms", "p90_ms", "p99_ms", "model_bytes"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    assert!(v["valid"].is_boolean() && v["level"].is_string() && v["config"].is_string(), "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The text of a page outside its report regions (the markers included).
fn prose(page: &str) -> String {
    let spans = milestones::report::regions::spans("page", page).expect("balanced markers");
    let (mut out, mut at) = (String::new(), 0);
    for s in spans {
        out.push_str(&page[at..s.start]);
        at = s.end;
    }
    out + &page[at..]
}

#[test]
fn report_rewrites_only_the_regions_of_its_pages_and_saves_their_data() {
    let dir = std::env::temp_dir().join(format!("tt-cli-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let pages =
        [("kv_cache", "14-kv-caching.md"), ("profile", "15-profiling.md"), ("acceleration", "16-acceleration.md")];
    let mut before = Vec::new();
    for (_, page) in pages {
        let text = std::fs::read_to_string(milestones::report::workspace_docs().join(page)).unwrap();
        std::fs::write(docs.join(page), &text).unwrap();
        before.push(text);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["report", "--quick", "--only", "kv_cache", "--only", "profile", "--only", "acceleration", "--docs"])
        .arg(&docs)
        .env("TT_CACHE_DIR", dir.join("cache"))
        .output()
        .expect("tito runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut after = Vec::new();
    for ((milestone, page), before) in pages.iter().zip(&before) {
        let text = std::fs::read_to_string(docs.join(page)).unwrap();
        assert_eq!(prose(&text), prose(before), "{page}: text outside the regions changed");
        assert!(text.contains("_Measured by `cargo tito report` on ") && text.contains("quick settings"), "{text}");
        assert!(!text.contains("not yet generated"), "{page}: a region was not rendered");
        let data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(docs.join(format!("data/{milestone}.json"))).unwrap())
                .unwrap();
        assert!(data["stamp"]["cores"].as_u64().is_some_and(|c| c >= 1), "{data}");
        assert_eq!(data["summary"]["milestone"], *milestone, "{data}");
        after.push(text);
    }
    assert!(after[0].contains("| tokens | uncached tok/s | cached tok/s |"), "{}", after[0]);
    assert!(docs.join("figures/16-gemm-ladder.svg").is_file(), "the ladder chart was copied");
    // Re-rendering from the saved data gives the same pages: nothing is measured again.
    let (code, _, err) = tito(&["report", "--from-data", "--docs", docs.to_str().unwrap(), "--only", "kv_cache"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(docs.join(pages[0].1)).unwrap(), after[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_refuses_quick_figures_for_the_workspace_docs_and_missing_pages() {
    let (code, _, err) = tito(&["report", "--quick", "--only", "kv_cache"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("tito: error:") && err.contains("--quick figures never go into"), "{err}");
    let empty = std::env::temp_dir().join(format!("tt-cli-report-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = tito(&["report", "--quick", "--only", "profile", "--docs", empty.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("15-profiling.md") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
}

/// The memory milestone's quick run: one separate process per format (the quantized ones saved
/// by one process and loaded by another), every row with the keys issue 20 names, and the page's
/// regions rendered from it.
#[test]
fn memory_quick_run_reports_every_format_in_its_own_process() {
    let dir = std::env::temp_dir().join(format!("tt-cli-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["milestone", "memory", "--quick", "--json"])
        .env("TT_CACHE_DIR", &dir)
        .output()
        .expect("tito runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v["rows"].as_array().expect("rows");
    let formats: Vec<(&str, &str)> =
        rows.iter().filter_map(|r| Some((r["weights"].as_str()?, r["kv"].as_str()?))).collect();
    assert_eq!(
        formats,
        [("fp32", "f32"), ("int8", "f32"), ("int4", "f32"), ("pruned50", "f32"), ("int8", "int8"), ("int4", "int8")]
    );
    for r in rows {
        assert_eq!(r["shape"], "course", "{r}");
        for k in ["weight_bytes", "kv_bytes", "peak_rss_bytes", "tok_s", "roofline_tok_s"] {
            assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {r}");
        }
        let loaded = r["weights"] == "int8" || r["weights"] == "int4";
        assert_eq!(r["loaded_from_checkpoint"], loaded, "{r}");
    }
    // Quantized weights are smaller than fp32's in the process that holds them.
    let bytes = |w: &str, k: &str| {
        let r = rows.iter().find(|r| r["weights"] == w && r["kv"] == k).unwrap();
        (r["weight_bytes"].as_f64().unwrap(), r["kv_bytes"].as_f64().unwrap())
    };
    assert!(bytes("int4", "f32").0 < bytes("int8", "f32").0 && bytes("int8", "f32").0 < bytes("fp32", "f32").0);
    // An int8 KV cache holds a quarter of the f32 one's bytes, plus a scale per row.
    assert!(bytes("int8", "int8").1 < 0.3 * bytes("int8", "f32").1);
    let regions = milestones::report::memory::render(&v).expect("the page renders");
    assert_eq!(regions.iter().map(|r| r.name).collect::<Vec<_>>(), ["rows", "goals"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
