//! Milestone `torchperf` (module 19): the course's models benchmarked by MLPerf's rules.
//!
//! 1. The four scenarios (and an accuracy run) on two systems under test: the GPT question
//!    answerer (int8 weights, int8 KV cache, accelerated kernels, 2 workers, continuous batching)
//!    and the digits CNN (int8, 2 workers, batches of up to 64); Server by FindPeakPerformance.
//! 2. A TinyMLPerf-style suite: image classification, anomaly detection, tabular
//!    classification, question answering — quality on held-out data against 99% of FP32, and
//!    SingleStream latency as MLPerf Tiny reports it (median throughput over 5 windows).
//! 3. An ablation of the GPT over KV cache × kernels × weights × pruning × threads (all 32
//!    combinations), with main effects, interactions, the Pareto front and the course's walk.
//! 4. The course's four production targets, each measured.
//!
//! Durations are scaled down from MLPerf's (600 s) and printed with every result; `--full` uses
//! the official minimums. Energy is not measured here, so it is not reported.

pub mod qa;
mod queue;
pub mod tasks;
pub mod tensor_sut;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tt_perf::ablation::{self, Factor, Measurement};
use tt_perf::loadgen::{self, Mode, QuerySampleLibrary, Scenario, SystemUnderTest, TestSettings};
use tt_perf::results::{self, Judged};
use tt_quant::{quantize_dynamic, WeightConfig};
use tt_tensor::Module;
use tt_transformer::{checkpoint, Gpt};

use crate::{transformer, MilestoneError, Options, Result};
use qa::{QaLibrary, QaSut, Variant};
use tensor_sut::{Output, Samples, TensorSut};

pub const NAME: &str = "torchperf";
/// Rounds every ablation configuration is timed in (each round in its own shuffled order).
pub const ABLATION_ROUNDS: usize = 3;
/// Seeds the rounds' orders.
pub const ABLATION_SEED: u64 = 0;

/// An accuracy run's responses, `(sample index, data)`.
type Responses = [(usize, Vec<u8>)];
/// A task metric over responses.
type Scorer<'a> = dyn Fn(&Responses) -> f64 + 'a;

fn perf_err(e: tt_perf::PerfError) -> MilestoneError {
    MilestoneError::Other(e.to_string())
}

/// The settings of a scenario at this run's scale.
fn settings(sc: Scenario, opts: &Options) -> TestSettings {
    if opts.full {
        return TestSettings::official(sc);
    }
    let (secs, n) = match (sc, opts.quick) {
        (Scenario::SingleStream, false) => (1.0, 1024),
        (Scenario::SingleStream, true) => (0.2, 64),
        (Scenario::MultiStream, false) => (1.0, 662),
        (Scenario::MultiStream, true) => (0.2, 16),
        (Scenario::Server, false) => (2.0, 662),
        (Scenario::Server, true) => (0.3, 459),
        (Scenario::Offline, false) => (1.0, 1),
        (Scenario::Offline, true) => (0.2, 1),
    };
    TestSettings::scaled(sc, Duration::from_secs_f64(secs), n)
}

fn judge_run(sut: &dyn SystemUnderTest, lib: &mut dyn QuerySampleLibrary, s: &TestSettings) -> Result<Judged> {
    results::judge(loadgen::start_test(sut, lib, s).map_err(perf_err)?).map_err(perf_err)
}

fn scenario_row(j: &Judged, mode: Mode, path: &Path) -> Value {
    json!({
        "sut": j.log.sut_name, "scenario": j.log.settings.scenario.name(), "mode": mode.name(),
        "result": if j.valid { "VALID" } else { "INVALID" }, "metric": j.metric, "value": j.value,
        "queries": j.log.queries_issued, "samples": j.log.sample_latencies_ns.len(),
        "early_stopping_ok": j.early_stopping.met, "failed_rules": j.failed_rules,
        "p50_ms": j.sample_latency.median / 1e6, "p99_ms": j.sample_latency.at(0.99).unwrap_or(f64::NAN) / 1e6,
        "ttft_p50_ms": j.first_token_latency.as_ref().map(|s| s.median / 1e6),
        "tpot_p50_ms": j.time_per_output_token.as_ref().map(|s| s.median / 1e6),
        "min_duration_s": j.log.settings.min_duration.as_secs_f64(), "min_query_count": j.log.settings.min_query_count,
        "target_latency_ms": j.log.settings.target_latency.as_secs_f64() * 1e3,
        "summary_path": path.display().to_string(),
    })
}

fn say_row(opts: &Options, r: &Value) {
    opts.say(format!(
        "  {:<22} {:<13} {:<20} {:<7} {}: {:.3}  ({} queries{})",
        r["sut"].as_str().unwrap_or(""),
        r["scenario"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["result"].as_str().unwrap_or(""),
        r["metric"].as_str().unwrap_or(""),
        r["value"].as_f64().unwrap_or(f64::NAN),
        r["queries"],
        r["failed_rules"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map_or(String::new(), |a| format!("; failed: {}", a.len()))
    ));
}

/// The four scenarios and an accuracy run on one system. `quality` scores an accuracy log.
fn scenarios(
    opts: &Options,
    sut: &dyn SystemUnderTest,
    lib: &mut dyn QuerySampleLibrary,
    dir: &Path,
    bound: Duration,
    start_qps: f64,
    quality: &Scorer<'_>,
    metric: &str,
) -> Result<(Vec<Value>, Option<Judged>, Judged)> {
    let mut rows = Vec::new();
    let write = |j: &Judged, name: &str| j.write_logs(&dir.join(name)).map_err(perf_err);
    let ss = judge_run(sut, lib, &settings(Scenario::SingleStream, opts))?;
    rows.push(scenario_row(&ss, Mode::PerformanceOnly, &write(&ss, "SingleStream")?));
    let ms = judge_run(sut, lib, &settings(Scenario::MultiStream, opts))?;
    rows.push(scenario_row(&ms, Mode::PerformanceOnly, &write(&ms, "MultiStream")?));
    let mut server = settings(Scenario::Server, opts);
    server.target_latency = bound;
    server.server_target_qps = start_qps;
    server.mode = Mode::FindPeakPerformance;
    server.peak_search_steps = if opts.quick { 1 } else { 3 };
    let (steps, best) = loadgen::find_peak(sut, lib, &server).map_err(perf_err)?;
    let peak_row = match &best {
        Some(b) => b.clone(),
        // Nothing valid: report the lowest rate tried, judged as it was.
        None => {
            let low = steps.iter().map(|s| s.target_qps).fold(f64::INFINITY, f64::min);
            judge_run(
                sut,
                lib,
                &TestSettings { server_target_qps: low, mode: Mode::PerformanceOnly, ..server.clone() },
            )?
        }
    };
    let mut r = scenario_row(&peak_row, Mode::FindPeakPerformance, &write(&peak_row, "Server")?);
    r["target_qps"] = json!(peak_row.log.settings.server_target_qps);
    r["peak_search"] = json!(steps);
    rows.push(r);
    // Offline: expect what the single stream measured, times the workers, times two for batching.
    let mut off = settings(Scenario::Offline, opts);
    off.offline_expected_qps = (2.0 * 2.0 * 1e9 / ss.sample_latency.mean).max(1.0);
    let offline = judge_run(sut, lib, &off)?;
    rows.push(scenario_row(&offline, Mode::PerformanceOnly, &write(&offline, "Offline")?));
    let mut acc = settings(Scenario::Offline, opts);
    acc.mode = Mode::AccuracyOnly;
    let log = loadgen::start_test(sut, lib, &acc).map_err(perf_err)?;
    let q = quality(&log.accuracy);
    let aj = results::judge(log).map_err(perf_err)?;
    let mut r = scenario_row(&aj, Mode::AccuracyOnly, &write(&aj, "Accuracy")?);
    r["metric"] = json!(metric);
    r["value"] = json!(q);
    rows.push(r);
    for r in &rows {
        say_row(opts, r);
    }
    Ok((rows, best, ss))
}

/// Checkpoints of the fine-tuned unpruned control and the 50%-MLP-pruned GPT (each fine-tuned
/// 200 steps, as in the compression milestone), made once and cached under the cache directory.
fn ablation_models(opts: &Options) -> Result<(PathBuf, PathBuf)> {
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let dir = opts.cache_dir.join(NAME).join(opts.cache_key("models"));
    let paths = [dir.join("gpt-control"), dir.join("gpt-pruned50")];
    let [control, pruned] = paths.clone();
    if !opts.retrain && paths.iter().all(|p| checkpoint::exists(p)) {
        return Ok((control, pruned));
    }
    let transformer::QaEval { tokenizer, val_ids, data, .. } = transformer::qa_eval(opts)?;
    let ft = crate::compression::gpt_finetune_config(opts);
    for (i, ratio) in [0.0, 0.5].into_iter().enumerate() {
        opts.say(format!(
            "fine-tuning the GPT with {:.0}% of its MLP units removed ({} steps)",
            ratio * 100.0,
            ft.steps
        ));
        let (mut m, _, _, _) = transformer::load_or_train(&quiet)?;
        if ratio > 0.0 {
            tt_compress::structured::prune_gpt_mlp(&mut m, ratio).map_err(|e| MilestoneError::Other(e.to_string()))?;
        }
        tt_transformer::train::train(&m, &data, &val_ids, &ft, false, |_| {})?;
        checkpoint::save(&paths[i], &m, &tokenizer, json!({"mlp_pruned": ratio, "finetune_steps": ft.steps}))?;
    }
    Ok((control, pruned))
}

/// SingleStream latency as MLPerf Tiny reports it: the median of 5 windows' throughput, as a
/// latency (1 / throughput).
fn tiny_latency_ms(sut: &dyn SystemUnderTest, lib: &mut dyn QuerySampleLibrary, opts: &Options) -> Result<f64> {
    let window = Duration::from_secs_f64(if opts.quick { 0.05 } else { 0.25 });
    let mut tput = Vec::new();
    for w in 0..5u64 {
        let mut s = TestSettings::scaled(Scenario::SingleStream, window, 1);
        s.sample_index_seed += w;
        let log = loadgen::start_test(sut, lib, &s).map_err(perf_err)?;
        tput.push(log.sample_latencies_ns.len() as f64 / (log.final_completion_ns as f64 / 1e9));
    }
    tput.sort_by(f64::total_cmp);
    Ok(1e3 / tput[2])
}

fn accuracy_of(sut: &dyn SystemUnderTest, lib: &mut dyn QuerySampleLibrary) -> Result<Vec<(usize, Vec<u8>)>> {
    let mut s = TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1);
    s.mode = Mode::AccuracyOnly;
    Ok(loadgen::start_test(sut, lib, &s).map_err(perf_err)?.accuracy)
}

struct TensorTask {
    task: &'static str,
    metric: &'static str,
    model: tt_tensor::nn::Sequential,
    samples: Arc<Samples>,
    output: Output,
    score: Box<Scorer<'static>>,
}

fn tensor_suite_row(opts: &Options, t: TensorTask) -> Result<Value> {
    let n = t.samples.len();
    let mut lib = tensor_sut::Library { name: format!("{}-{n}", t.task), n };
    let fp32: Arc<tt_tensor::nn::Sequential> = Arc::new(t.model);
    let sut = TensorSut::new(&format!("{}-fp32", t.task), fp32.clone(), Arc::clone(&t.samples), t.output, 1, 1)?;
    let fp32_quality = (t.score)(&accuracy_of(&sut, &mut lib)?);
    if let Some(e) = sut.errors().first() {
        return Err(MilestoneError::Other(format!("{}: the fp32 model failed on a batch: {e}", t.task)));
    }
    drop(sut);
    // The submission: the same model with int8 weights (dynamic activations, per channel).
    let mut m = Arc::try_unwrap(fp32).map_err(|_| MilestoneError::Other("model still shared".into()))?;
    let layers = quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL)?;
    let int8: Arc<dyn Module + Send + Sync> = Arc::new(m);
    let sut = TensorSut::new(&format!("{}-int8", t.task), int8, Arc::clone(&t.samples), t.output, 1, 1)?;
    let quality = (t.score)(&accuracy_of(&sut, &mut lib)?);
    let latency = tiny_latency_ms(&sut, &mut lib, opts)?;
    if let Some(e) = sut.errors().first() {
        return Err(MilestoneError::Other(format!("{}: the int8 model failed on a batch: {e}", t.task)));
    }
    let target = 0.99 * fp32_quality;
    let row = json!({
        "task": t.task, "metric": t.metric, "fp32_quality": fp32_quality, "quality": quality, "target": target,
        "passed": quality >= target, "median_latency_ms": latency, "samples": n, "variant": "int8 weights (dynamic, per channel)",
        "int8_layers": layers.len(),
    });
    opts.say(format!(
        "  {:<24} {:<10} fp32 {:.4}  int8 {:.4}  target {:.4}  {}  latency {:.4} ms",
        t.task,
        t.metric,
        fp32_quality,
        quality,
        target,
        if quality >= target { "passed" } else { "FAILED" },
        latency
    ));
    Ok(row)
}

/// The serving process's check, run in a child process (`tito serve-qa`) so that its peak
/// resident memory is its own and its kernel level can be forced with `TT_ACCEL_LEVEL`.
fn serve_child(opts: &Options, level: Option<&str>) -> Result<Option<Value>> {
    let Some(exe) = &opts.serve_exe else { return Ok(None) };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve-qa").arg("--cache-dir").arg(&opts.cache_dir);
    if opts.quick {
        cmd.arg("--quick");
    }
    if opts.full {
        cmd.arg("--full");
    }
    match level {
        Some(l) => cmd.env("TT_ACCEL_LEVEL", l),
        None => cmd.env_remove("TT_ACCEL_LEVEL"),
    };
    // Its SingleStream run takes seconds (600 s with --full): allow that and a margin.
    let limit = Duration::from_secs(if opts.full { 900 } else { 300 });
    crate::child::run_json(cmd, limit, "serving process").map(Some)
}

/// The body of `tito serve-qa`: load the trained GPT, install the submission variant with one
/// thread, serve a SingleStream run, and report its latency, the kernel level and the peak RSS.
///
/// # Errors
/// Loading or benchmark errors.
pub fn serve_main(opts: &Options) -> Result<Value> {
    let dir = transformer::checkpoint_dir(&Options { corpus: None, ..opts.clone() });
    if !checkpoint::exists(&dir) {
        return Err(MilestoneError::Other(format!("no trained GPT at {} (run the milestone first)", dir.display())));
    }
    let (model, tokenizer, _) = checkpoint::load(&dir)?;
    let (_, _, qa) = transformer::load_text(&Options { quiet: true, corpus: None, ..opts.clone() })?;
    let qa = qa.ok_or_else(|| MilestoneError::Other("the built-in corpus has questions".into()))?;
    let mut lib = QaLibrary::new(&tokenizer, &qa.test)?;
    let v = Variant::OPTIMIZED;
    let p = qa::prepare(model, &v)?;
    let sut = QaSut::new("gpt-qa-serving", Arc::new(p.model), v, &tokenizer, Arc::clone(&lib.prompts), 1, 1)?;
    let j = judge_run(&sut, &mut lib, &settings(Scenario::SingleStream, opts))?;
    Ok(json!({
        "level": tt_accel::level().name(), "int_level": tt_quant::IntLevel::current().name(),
        "threads": 1, "queries": j.log.queries_issued, "valid": j.valid,
        "p50_ms": j.sample_latency.median / 1e6, "p90_ms": j.target_percentile_ns as f64 / 1e6,
        "p99_ms": j.sample_latency.at(0.99).unwrap_or(f64::NAN) / 1e6,
        "peak_rss_bytes": crate::child::proc_status_bytes("VmHWM"), "model_bytes": p.model_bytes, "config": v.name(),
    }))
}

pub fn run(opts: &Options) -> Result<Value> {
    let results_dir = opts.cache_dir.join(NAME).join(opts.cache_key("results"));
    std::fs::create_dir_all(&results_dir)
        .map_err(|e| MilestoneError::Other(format!("{}: {e}", results_dir.display())))?;
    let scale = if opts.full {
        "MLPerf's official minimums (600 s per run)".to_string()
    } else {
        let s = |sc| settings(sc, opts);
        format!(
            "scaled down: SingleStream {:.1} s / {} queries, MultiStream {:.1} s / {}, Server {:.1} s / {} per rate, Offline {:.1} s (MLPerf: 600 s)",
            s(Scenario::SingleStream).min_duration.as_secs_f64(),
            s(Scenario::SingleStream).min_query_count,
            s(Scenario::MultiStream).min_duration.as_secs_f64(),
            s(Scenario::MultiStream).min_query_count,
            s(Scenario::Server).min_duration.as_secs_f64(),
            s(Scenario::Server).min_query_count,
            s(Scenario::Offline).min_duration.as_secs_f64()
        )
    };
    opts.say(format!("torchperf: {scale}"));

    // The models. Each variant starts from a fresh copy read from the checkpoint.
    let (_, tokenizer, _, _) = transformer::load_or_train(&Options { corpus: None, ..opts.clone() })?;
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let fresh_gpt = || -> Result<Gpt> { Ok(transformer::load_or_train(&quiet)?.0) };
    let fresh_cnn = || -> Result<tt_tensor::nn::Sequential> { Ok(crate::cnn_digits::load_or_train(&quiet)?.0) };
    let qa_eval = transformer::qa_eval(opts)?;
    let mut qa_lib = QaLibrary::new(&tokenizer, &qa_eval.test)?;
    let (digits, digit_labels) = tasks::digits_test()?;
    let digits = Arc::new(digits);

    // A question answerer of the trained GPT in variant `v`.
    let prompts = Arc::clone(&qa_lib.prompts);
    let qa_sut = |name: &str, v: Variant, workers: usize, max_batch: usize| -> Result<QaSut> {
        let p = qa::prepare(fresh_gpt()?, &v)?;
        QaSut::new(name, Arc::new(p.model), v, &tokenizer, Arc::clone(&prompts), workers, max_batch)
    };

    // 1. Scenarios.
    opts.say("\nscenarios (summary logs under the results directory):");
    let gpt_sut = qa_sut("gpt-qa-int8", Variant::OPTIMIZED, 2, 8)?;
    let lib_ref = &qa_lib;
    let (mut scenario_rows, gpt_peak, gpt_ss) = scenarios(
        opts,
        &gpt_sut,
        &mut QaLibrary::new(&tokenizer, &qa_eval.test)?,
        &results_dir.join("gpt-qa-int8"),
        Duration::from_millis(100),
        if opts.quick { 500.0 } else { 200.0 },
        &|a| lib_ref.exact_match(a),
        "exact_match",
    )?;
    let gpt_errors = gpt_sut.errors();
    drop(gpt_sut);
    let mut cnn_int8 = fresh_cnn()?;
    quantize_dynamic(&mut cnn_int8, WeightConfig::PER_CHANNEL)?;
    let cnn_sut = TensorSut::new("digits-cnn-int8", Arc::new(cnn_int8), Arc::clone(&digits), Output::Class, 2, 64)?;
    let labels = digit_labels.clone();
    let (rows, _, _) = scenarios(
        opts,
        &cnn_sut,
        &mut tensor_sut::Library { name: format!("digits-test-{}", digits.len()), n: digits.len() },
        &results_dir.join("digits-cnn-int8"),
        Duration::from_millis(10),
        if opts.quick { 500.0 } else { 2000.0 },
        &|a| tensor_sut::class_accuracy(a, &labels),
        "accuracy",
    )?;
    drop(cnn_sut);
    scenario_rows.extend(rows);

    // 2. The suite.
    opts.say("\nTinyMLPerf-style suite (quality on held-out data; target 99% of FP32; latency = 1 / median throughput of 5 SingleStream windows):");
    let mut suite = Vec::new();
    let cnn_fp32 = fresh_cnn()?;
    let labels = digit_labels.clone();
    suite.push(tensor_suite_row(
        opts,
        TensorTask {
            task: "image_classification",
            metric: "accuracy",
            model: cnn_fp32,
            samples: Arc::clone(&digits),
            output: Output::Class,
            score: Box::new(move |a| tensor_sut::class_accuracy(a, &labels)),
        },
    )?);
    let (ae, ae_samples, positive) = tasks::anomaly(opts)?;
    suite.push(tensor_suite_row(
        opts,
        TensorTask {
            task: "anomaly_detection",
            metric: "roc_auc",
            model: ae,
            samples: Arc::new(ae_samples),
            output: Output::ReconstructionError,
            score: Box::new(move |a| tensor_sut::roc_auc(&tensor_sut::scores(a), &positive)),
        },
    )?);
    let (tab, tab_samples, tab_labels) = tasks::tabular(opts)?;
    suite.push(tensor_suite_row(
        opts,
        TensorTask {
            task: "tabular_classification",
            metric: "accuracy",
            model: tab,
            samples: Arc::new(tab_samples),
            output: Output::Class,
            score: Box::new(move |a| tensor_sut::class_accuracy(a, &tab_labels)),
        },
    )?);
    {
        let fp32_v = Variant { int8: false, int8_kv: false, ..Variant::OPTIMIZED };
        let sut = qa_sut("gpt-qa-fp32", fp32_v, 1, 1)?;
        let answers = accuracy_of(&sut, &mut qa_lib)?;
        let fp32_quality = qa_lib.exact_match(&answers);
        drop(sut);
        let sut = qa_sut("gpt-qa-int8", Variant::OPTIMIZED, 1, 1)?;
        let answers = accuracy_of(&sut, &mut qa_lib)?;
        let quality = qa_lib.exact_match(&answers);
        let latency = tiny_latency_ms(&sut, &mut qa_lib, opts)?;
        let target = 0.99 * fp32_quality;
        opts.say(format!(
            "  {:<24} {:<10} fp32 {fp32_quality:.4}  int8 {quality:.4}  target {target:.4}  {}  latency {latency:.4} ms",
            "question_answering",
            "exact_match",
            if quality >= target { "passed" } else { "FAILED" }
        ));
        suite.push(json!({
            "task": "question_answering", "metric": "exact_match", "fp32_quality": fp32_quality, "quality": quality,
            "target": target, "passed": quality >= target, "median_latency_ms": latency, "samples": qa_lib.prompts.len(),
            "variant": Variant::OPTIMIZED.name(),
        }));
    }
    opts.say("  energy: not measured on this machine (no power meter), so not reported");

    // 3. The ablation.
    let (control, pruned) = ablation_models(opts)?;
    let factors = vec![
        Factor::new("kv_cache", &["off", "on"]),
        Factor::new("kernels", &["reference", "accelerated"]),
        Factor::new("weights", &["fp32", "int8"]),
        Factor::new("pruning", &["0", "50%"]),
        Factor::new("threads", &["1", "2"]),
    ];
    let configs = ablation::full_factorial(&factors).map_err(perf_err)?;
    opts.say(format!(
        "\nablation: {} configurations of the GPT question answerer (pruning 0 = the unpruned model fine-tuned as many steps as the pruned one); quality = exact match over {} questions (AccuracyOnly); latency per output token (and to the first token, and per answer) from SingleStream runs in {ABLATION_ROUNDS} rounds, each in its own shuffled order (seed {ABLATION_SEED}): medians, with the per-token range",
        configs.len(),
        qa_lib.prompts.len()
    ));
    let ss_small = {
        let mut s = TestSettings::scaled(
            Scenario::SingleStream,
            Duration::from_secs_f64(if opts.quick { 0.05 } else { 0.3 }),
            if opts.quick { 16 } else { 64 },
        );
        s.completion_timeout = Duration::from_secs(600);
        s
    };
    // Quality is deterministic (greedy answers), so each configuration's accuracy run happens once.
    let mut quality_of: std::collections::HashMap<Vec<usize>, f64> = std::collections::HashMap::new();
    let study = ablation::run_rounds(&factors, &configs, ABLATION_ROUNDS, Some(ABLATION_SEED), |c| {
        let v = Variant {
            kv_cache: c[0] == 1,
            accelerated: c[1] == 1,
            int8: c[2] == 1,
            int8_kv: false,
            pruned: c[3] == 1,
            threads: 1 + c[4],
        };
        let copy = if v.pruned { checkpoint::load(&pruned) } else { checkpoint::load(&control) };
        let p = qa::prepare(copy.map_err(|e| tt_perf::PerfError::Sut(e.to_string()))?.0, &v)
            .map_err(|e| tt_perf::PerfError::Sut(e.to_string()))?;
        let sut = QaSut::new(&v.name(), Arc::new(p.model), v, &tokenizer, Arc::clone(&qa_lib.prompts), 1, 1)
            .map_err(|e| tt_perf::PerfError::Sut(e.to_string()))?;
        let quality = match quality_of.get(c) {
            Some(&q) => q,
            None => {
                let mut acc = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 1);
                acc.mode = Mode::AccuracyOnly;
                acc.completion_timeout = Duration::from_secs(600);
                let answers = loadgen::start_test(&sut, &mut qa_lib, &acc)?.accuracy;
                let q = qa_lib.exact_match(&answers);
                quality_of.insert(c.to_vec(), q);
                q
            }
        };
        let j = results::judge(loadgen::start_test(&sut, &mut qa_lib, &ss_small)?)?;
        let ms = |x: f64| x / 1e6;
        let m = Measurement {
            quality,
            p50_ms: ms(j.sample_latency.median),
            p90_ms: ms(j.sample_latency.at(0.9).unwrap_or(f64::NAN)),
            p99_ms: ms(j.sample_latency.at(0.99).unwrap_or(f64::NAN)),
            throughput: 1e9 / j.sample_latency.mean,
            model_bytes: p.model_bytes,
            ttft_ms: j.first_token_latency.as_ref().map(|t| ms(t.median)),
            tpot_ms: j.time_per_output_token.as_ref().map(|t| ms(t.median)),
        };
        opts.say(format!(
            "  {:<62} exact match {:.4}  per token {:7.4} ms  first token {:7.3} ms  per answer p50 {:7.3} ms  {:>9} B",
            v.name(),
            m.quality,
            m.latency_ms(),
            m.ttft_ms.unwrap_or(f64::NAN),
            m.p50_ms,
            m.model_bytes
        ));
        Ok(m)
    })
    .map_err(perf_err)?;
    let cfg = |kv, k, w, p, t| vec![kv, k, w, p, t];
    let walk = ablation::walk(
        &study,
        &[
            ("baseline", cfg(0, 0, 0, 0, 0)),
            ("+KV cache", cfg(1, 0, 0, 0, 0)),
            ("+kernels", cfg(1, 1, 0, 0, 0)),
            ("+int8", cfg(1, 1, 1, 0, 0)),
            ("+pruning", cfg(1, 1, 1, 1, 0)),
            ("+threads", cfg(1, 1, 1, 1, 1)),
        ],
    )
    .map_err(perf_err)?;
    opts.say("\nmain effects (matched pairs; latency per output token, × < 1 is faster; 'within noise': pairs whose ranges over the rounds overlap):");
    for e in &study.main_effects {
        opts.say(format!(
            "  {:<9} {} -> {:<12} quality {:+.4}  latency x{:.3}  bytes x{:.3}  ({} pairs, {} within noise)",
            e.factor, e.from, e.to, e.quality_delta, e.latency_ratio, e.bytes_ratio, e.pairs, e.pairs_within_noise
        ));
    }
    opts.say("largest interactions (latency; 1 = the two speedups multiply):");
    for i in study.interactions.iter().take(3) {
        opts.say(format!("  {} x {}: {:.3}", i.factors.0, i.factors.1, i.latency_interaction));
    }
    opts.say("walk (per output token):");
    for w in &walk {
        opts.say(format!(
            "  {:<10} exact match {:.4} ({:+.4})  {:7.4} ms/token ({:.4}–{:.4})  {:5.2}x the previous step, {:6.2}x the baseline  per answer p50 {:7.3} ms  {:>9} B",
            w.step, w.quality, w.quality_delta, w.latency_ms, w.latency_range_ms.0, w.latency_range_ms.1, w.speedup_over_previous, w.speedup_over_baseline, w.p50_ms, w.model_bytes
        ));
    }
    let ablation_md = results_dir.join("ablation.md");
    results::write_atomic(&ablation_md, ablation::markdown(&study).as_bytes()).map_err(perf_err)?;
    results::write_atomic(
        &results_dir.join("ablation.json"),
        serde_json::to_string_pretty(&json!({"study": study, "walk": walk})).expect("JSON values serialize").as_bytes(),
    )
    .map_err(perf_err)?;
    charts::pareto(&results_dir.join("pareto.svg"), &study)?;
    charts::waterfall(&results_dir.join("walk.svg"), &walk)?;

    // 4. Production targets.
    opts.say("\nproduction targets (the GPT question answerer):");
    let p99_ss = gpt_ss.sample_latency.at(0.99).unwrap_or(f64::NAN) / 1e6;
    let mut production = vec![json!({
        "target": "latency", "requirement": "p99 time to a full answer < 100 ms (SingleStream)",
        "measured": p99_ss, "unit": "ms", "config": Variant::OPTIMIZED.name() + " (2 workers)", "met": p99_ss < 100.0,
    })];
    let (peak_qps, peak_valid) =
        gpt_peak.as_ref().map_or((0.0, false), |b| (b.log.settings.server_target_qps, b.valid));
    production.push(json!({
        "target": "throughput", "requirement": "a Server run VALID at >= 12 queries/s (1M a day) with p99 <= 100 ms",
        "measured": peak_qps, "unit": "queries/s (highest VALID Server rate found)", "config": Variant::OPTIMIZED.name() + " (2 workers, continuous batching, 8 slots)",
        "met": peak_valid && peak_qps >= 12.0,
    }));
    match serve_child(opts, None)? {
        Some(v) => {
            let rss = v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN);
            production.push(json!({
                "target": "memory", "requirement": "peak resident memory of the serving process < 100 MB",
                "measured": rss / 1e6, "unit": "MB (VmHWM of a separate serving process)", "config": v["config"], "met": rss < 100e6,
                "serving": v,
            }));
        }
        None => production.push(json!({
            "target": "memory", "requirement": "peak resident memory of the serving process < 100 MB", "measured": Value::Null,
            "config": Value::Null, "met": Value::Null, "why": "not measured: needs a separate serving process (run through `tito milestone torchperf`)",
        })),
    }
    let mut small = Vec::new();
    for level in ["avx2", "scalar"] {
        if let Some(v) = serve_child(opts, Some(level))? {
            small.push(v);
        }
    }
    if small.is_empty() {
        production.push(json!({"target": "small_device", "requirement": "p99 < 100 ms with one thread and AVX2 or scalar kernels", "measured": Value::Null, "config": Value::Null, "met": Value::Null, "why": "not measured: needs a separate serving process (run through `tito milestone torchperf`)"}));
    } else {
        let best = small.iter().map(|v| v["p99_ms"].as_f64().unwrap_or(f64::NAN)).fold(f64::INFINITY, f64::min);
        let met_by: Vec<String> = small
            .iter()
            .filter(|v| v["p99_ms"].as_f64().is_some_and(|p| p < 100.0))
            .map(|v| v["level"].as_str().unwrap_or("").to_string())
            .collect();
        production.push(json!({
            "target": "small_device", "requirement": "p99 < 100 ms (SingleStream) with one thread and AVX2 or scalar kernels (no AVX-512)",
            "measured": best, "unit": "ms (best forced level)", "config": format!("{} at {}", Variant::OPTIMIZED.name(), met_by.join(", ")),
            "met": !met_by.is_empty(), "runs": small,
        }));
    }
    for p in &production {
        opts.say(format!(
            "  {:<13} {:<5} measured {} {}  ({})",
            p["target"].as_str().unwrap_or(""),
            match p["met"].as_bool() {
                Some(true) => "MET",
                Some(false) => "NOT",
                None => "n/a",
            },
            p["measured"],
            p["unit"].as_str().unwrap_or(""),
            p["requirement"].as_str().unwrap_or("")
        ));
    }
    let summary = json!({
        "milestone": NAME,
        "scale": scale,
        "scenarios": scenario_rows,
        "gpt_sut_errors": gpt_errors,
        "tiny_suite": suite,
        "ablation": {
            "factors": study.factors,
            "rows": study.rows.iter().map(|r| json!({
                "config": r.name, "quality": r.measured.quality,
                "tpot_ms": r.measured.tpot_ms, "tpot_range_ms": [r.latency_range_ms.0, r.latency_range_ms.1],
                "ttft_ms": r.measured.ttft_ms, "rounds": r.rounds,
                "p50_ms": r.measured.p50_ms, "p90_ms": r.measured.p90_ms,
                "p99_ms": r.measured.p99_ms, "throughput": r.measured.throughput, "model_bytes": r.measured.model_bytes, "pareto": r.pareto,
            })).collect::<Vec<_>>(),
            "main_effects": study.main_effects,
            "interactions": study.interactions,
            "walk": walk.iter().map(|w| json!({"step": w.step, "config": w.name, "quality": w.quality, "tpot_ms": w.latency_ms, "tpot_range_ms": [w.latency_range_ms.0, w.latency_range_ms.1], "ttft_ms": study.rows.iter().find(|r| r.name == w.name).and_then(|r| r.measured.ttft_ms), "p50_ms": w.p50_ms, "model_bytes": w.model_bytes, "speedup_over_previous": w.speedup_over_previous, "speedup_over_baseline": w.speedup_over_baseline})).collect::<Vec<_>>(),
            "rounds": ABLATION_ROUNDS, "seed": ABLATION_SEED, "latency_unit": study.latency_unit,
            "latency_settings": {"min_duration_s": ss_small.min_duration.as_secs_f64(), "min_query_count": ss_small.min_query_count},
        },
        "production": production,
        "results_dir": results_dir.display().to_string(),
    });
    results::write_atomic(
        &results_dir.join("torchperf.json"),
        serde_json::to_string_pretty(&summary).expect("JSON values serialize").as_bytes(),
    )
    .map_err(perf_err)?;
    opts.say(format!("\nresults: {}", results_dir.display()));
    Ok(summary)
}

mod charts {
    use std::path::Path;

    use plotters::prelude::*;
    use tt_perf::ablation::{Study, WalkStep};

    use crate::Result;

    use crate::chart::err;

    /// Quality against per-token latency (log), every configuration; the Pareto front filled.
    pub fn pareto(path: &Path, study: &Study) -> Result<()> {
        let root = crate::chart::canvas(path, (780, 480))?;
        let lat: Vec<f64> = study.rows.iter().map(|r| r.measured.latency_ms()).collect();
        let (lo, hi) = (lat.iter().copied().fold(f64::INFINITY, f64::min), lat.iter().copied().fold(0.0, f64::max));
        let qmin = study.rows.iter().map(|r| r.measured.quality).fold(1.0, f64::min);
        let qmax = study.rows.iter().map(|r| r.measured.quality).fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "ablation: exact match vs latency per output token (filled: Pareto front over quality, latency, bytes)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), (qmin - 0.02).max(0.0)..(qmax + 0.02).min(1.0))
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("median latency per output token (ms, log)")
            .y_desc("exact match")
            .draw()
            .map_err(|e| err(path, e))?;
        for (int8, color, label) in [(false, BLUE, "fp32 weights"), (true, RED, "int8 weights")] {
            let rows: Vec<_> = study.rows.iter().filter(|r| (r.config[2] == 1) == int8).collect();
            chart
                .draw_series(rows.iter().map(|r| {
                    let p = (r.measured.latency_ms(), r.measured.quality);
                    if r.pareto {
                        Circle::new(p, 5, color.filled())
                    } else {
                        Circle::new(p, 5, color.stroke_width(1))
                    }
                }))
                .map_err(|e| err(path, e))?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
        crate::chart::legend(path, &mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(|e| err(path, e))
    }

    /// The walk as a waterfall: each step's bar spans the previous step's per-token latency to its own.
    pub fn waterfall(path: &Path, walk: &[WalkStep]) -> Result<()> {
        let root = crate::chart::canvas(path, (780, 440))?;
        let top = walk.iter().map(|w| w.latency_ms).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption("the walk: median latency per output token after each step (ms)", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..walk.len() as f64, 0f64..top)
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("step (each bar: from the previous step's per-token latency to its own)")
            .y_desc("ms")
            .draw()
            .map_err(|e| err(path, e))?;
        let mut prev = walk.first().map_or(0.0, |w| w.latency_ms);
        for (i, w) in walk.iter().enumerate() {
            let (a, b) = if i == 0 { (0.0, w.latency_ms) } else { (w.latency_ms, prev) };
            let color = if i == 0 {
                BLUE
            } else if w.latency_ms <= prev {
                GREEN
            } else {
                RED
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(i as f64 + 0.15, a.min(b)), (i as f64 + 0.85, a.max(b))],
                    color.filled(),
                )))
                .map_err(|e| err(path, e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} {:.2}", w.step, w.latency_ms),
                    (i as f64 + 0.1, if i == 0 { w.latency_ms } else { prev.max(w.latency_ms) } + top * 0.03),
                    ("sans-serif", 12),
                )))
                .map_err(|e| err(path, e))?;
            prev = w.latency_ms;
        }
        root.present().map_err(|e| err(path, e))
    }
}
