//! `tito`: the course CLI. Thin by design: module tests run through cargo, milestones live in
//! the `milestones` library. Bad input prints one `tito: error: ...` line and exits non-zero.

mod loadgen;
mod models;
mod modules;
mod report;
mod serve;

/// Counts heap use so `tito milestone profile` can report a measured peak.
#[global_allocator]
static ALLOC: tt_profile::alloc::CountingAllocator = tt_profile::alloc::CountingAllocator;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, Subcommand};

use modules::{Counts, CourseModule};

#[derive(Parser)]
#[command(name = "tito", about = "tinytorch-rs course CLI: module tests, milestones, status")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Continue a prompt with any model (`--model`: a checkpoint unit, a llama2.c .bin, a Hugging
    /// Face directory; default the course GPT), streaming the text; rates go to stderr.
    Generate(models::GenerateArgs),
    /// Save a model in int8 or int4 as a checkpoint unit.
    Quantize(models::QuantizeArgs),
    /// Prune a model (MLP units, heads, or smallest weights) and save it as a checkpoint unit.
    Prune(models::PruneArgs),
    /// Prefill and decode rates and peak memory of a model, as JSON.
    Bench(models::BenchArgs),
    /// Parameters, FLOPs per token, memory and one decode step's per-op profile of a model.
    Profile(models::ProfileArgs),
    /// Run an MLPerf scenario against an OpenAI-compatible server over HTTP (LoadGen over the
    /// network) and write mlperf_log_summary.txt.
    Loadgen(loadgen::LoadgenArgs),
    /// Serve a model over HTTP: OpenAI-compatible `/v1/completions` (streaming too), with
    /// continuous batching, `/health`, `/ready`, `/metrics`. SIGTERM drains and exits 0.
    Serve(serve::ServeArgs),
    /// Run the tests of course modules (e.g. `tito test 05 09`, `tito test all`).
    Test {
        /// Module numbers (01-19) or `all`.
        #[arg(required = true)]
        modules: Vec<String>,
    },
    /// Run a milestone (e.g. `tito milestone mlp_digits --json`).
    Milestone {
        /// Milestone name; omit with --list.
        name: Option<String>,
        /// List the milestones.
        #[arg(long)]
        list: bool,
        /// Print a machine-readable JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Retrain models even if a cached one exists.
        #[arg(long)]
        retrain: bool,
        /// Small settings (fewer epochs) for smoke runs.
        #[arg(long)]
        quick: bool,
        /// Train the language model on this UTF-8 text file instead of the built-in corpus.
        #[arg(long, value_name = "FILE")]
        corpus: Option<std::path::PathBuf>,
        /// Benchmarks (torchperf): MLPerf's official minimum durations (600 s a run) instead of scaled ones.
        #[arg(long)]
        full: bool,
        /// The course language model's family: the GPT, or a Llama of the same parameter budget
        /// (transformer, kv_cache, quantization, compression).
        #[arg(long, value_enum, default_value = "gpt")]
        arch: ArchArg,
    },
    /// The serving process torchperf measures (peak memory, forced kernel levels); prints JSON.
    #[command(hide = true)]
    ServeQa {
        #[arg(long)]
        cache_dir: std::path::PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        full: bool,
    },
    /// Regenerate the measured regions of docs/14–19 (tables, charts, machine stamp) from the
    /// milestones, run here and now.
    Report {
        /// Small settings, for trying the pages out; only with --docs naming another directory.
        #[arg(long)]
        quick: bool,
        /// Only this page's milestone (repeatable), e.g. `--only kv_cache`.
        #[arg(long, value_name = "MILESTONE")]
        only: Vec<String>,
        /// The docs directory to write (default: the workspace's docs/).
        #[arg(long, value_name = "DIR")]
        docs: Option<PathBuf>,
        /// Re-render from `DIR/data/MILESTONE.json` without measuring (keeps the saved stamp).
        #[arg(long, conflicts_with = "quick")]
        from_data: bool,
    },
    /// One row of the memory milestone: build a model in a weight format, decode, print JSON.
    #[command(hide = true)]
    MemoryChild {
        /// The model's `GptConfig` as JSON.
        #[arg(long)]
        config: String,
        #[arg(long)]
        weights: String,
        #[arg(long)]
        tokens: usize,
        /// The KV cache's storage: f32 or int8.
        #[arg(long, default_value = "f32")]
        kv: String,
        /// Build the model and save it as a quantized checkpoint unit here (no decoding).
        #[arg(long, conflicts_with = "load")]
        save: Option<PathBuf>,
        /// Load the model from a checkpoint unit `--save` wrote.
        #[arg(long)]
        load: Option<PathBuf>,
    },
    /// Show which modules and milestones exist and which models are cached.
    Status,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tito lives in the workspace").to_path_buf()
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ArchArg {
    Gpt,
    Llama,
}

fn verb(name: &str, r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{name}: {e}")),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tito: error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // Milestones time their work: counting every allocation (shared atomics) would slow what they
    // time. Memory figures open their own counting windows (`alloc::measure_peak`).
    tt_profile::alloc::set_counting(false);
    let cli = Cli::parse();
    match cli.command {
        Cmd::Test { modules } => match modules::resolve(&modules) {
            Ok(ms) => run_tests(&ms),
            Err(e) => fail(e),
        },
        Cmd::ServeQa { cache_dir, quick, full } => {
            let opts =
                milestones::Options { quiet: true, progress: false, quick, full, cache_dir, ..Default::default() };
            match milestones::torchperf::serve_main(&opts) {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("serve-qa: {e}")),
            }
        }
        Cmd::Milestone { name, list, json, retrain, quick, corpus, full, arch } => {
            if list {
                for m in milestones::all() {
                    println!("{:<14} (module {})  {}", m.name, m.module, m.description);
                }
                return ExitCode::SUCCESS;
            }
            let Some(name) = name else {
                return fail("give a milestone name, or --list");
            };
            let milestone = match milestones::find(&name) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            if full && name != "torchperf" {
                return fail(format!("--full applies to the torchperf milestone, not {name}"));
            }
            // Read once, here (it may be a pipe), and only for a milestone that uses it.
            let corpus = match corpus {
                Some(_) if !milestone.uses.corpus => return fail(milestones::unused_flag(&name, "--corpus")),
                Some(path) => match milestones::transformer::UserCorpus::read(&path) {
                    Ok(c) => Some(c),
                    Err(e) => return fail(format!("milestone {name}: {e}")),
                },
                None => None,
            };
            let serve_exe = std::env::current_exe().ok();
            let arch = match arch {
                ArchArg::Gpt => milestones::Arch::Gpt,
                ArchArg::Llama => milestones::Arch::Llama,
            };
            let opts =
                milestones::Options { json, retrain, quick, corpus, full, serve_exe, arch, ..Default::default() };
            match milestones::run(&name, &opts) {
                Ok(summary) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&summary).expect("JSON values serialize"));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("milestone {name}: {e}")),
            }
        }
        Cmd::Report { quick, only, docs, from_data } => {
            let docs = docs.unwrap_or_else(milestones::report::workspace_docs);
            match report::run(&docs, &only, quick, from_data) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Cmd::MemoryChild { config, weights, tokens, kv, save, load } => {
            let mode = match (save, load) {
                (Some(dir), _) => milestones::memory::ChildMode::Save(dir),
                (_, Some(dir)) => milestones::memory::ChildMode::Load(dir),
                _ => milestones::memory::ChildMode::Build,
            };
            let config = match serde_json::from_str(&config) {
                Ok(c) => c,
                Err(e) => return fail(format!("memory-child: --config is not a GptConfig: {e}")),
            };
            match milestones::memory::child_main(config, &weights, &kv, tokens, mode) {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("memory-child: {e}")),
            }
        }
        Cmd::Status => status(),
        Cmd::Generate(a) => verb("generate", models::with_threads(&a.model, || models::generate(&a))),
        Cmd::Quantize(a) => verb("quantize", models::with_threads(&a.model, || models::quantize(&a))),
        Cmd::Prune(a) => verb("prune", models::with_threads(&a.model, || models::prune(&a))),
        Cmd::Bench(a) => verb("bench", models::with_threads(&a.model, || models::bench(&a))),
        Cmd::Profile(a) => verb("profile", models::with_threads(&a.model, || models::profile(&a))),
        Cmd::Loadgen(a) => verb("loadgen", loadgen::run(&a)),
        Cmd::Serve(a) => verb("serve", serve::serve(&a)),
    }
}

/// Runs each selected module's test target (one cargo invocation each) and prints a table of the
/// counts libtest reported.
fn run_tests(selected: &[CourseModule]) -> ExitCode {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut rows: Vec<(CourseModule, Result<Counts, String>, f64)> = Vec::new();
    for m in selected {
        if !m.exists(&root) {
            let file = m.test_file(&root);
            let rel = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
            rows.push((*m, Err(format!("not implemented yet ({rel} not found)")), 0.0));
            continue;
        }
        let mut args: Vec<String> = vec!["test".into(), "--color".into(), "never".into()];
        let targets = m.targets();
        let mut packages: Vec<&str> = targets.iter().map(|t| t.0).collect();
        packages.sort_unstable();
        packages.dedup();
        for p in packages {
            args.extend(["-p".into(), p.into()]);
        }
        for (_, t) in &targets {
            args.extend(["--test".into(), t.clone()]);
        }
        eprintln!("tito: cargo {}", args.join(" "));
        let start = Instant::now();
        let out = match Command::new(&cargo).current_dir(&root).args(&args).output() {
            Ok(o) => o,
            Err(e) => return fail(format!("could not run cargo: {e}")),
        };
        let secs = start.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // Show what broke: the failing tests' output, or the build error.
            print!("{stdout}");
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let r = match modules::sum_results(&stdout) {
            Some(c) => Ok(c),
            None if out.status.success() => Err("no test result reported".into()),
            None => Err("build failed (see above)".into()),
        };
        rows.push((*m, r, secs));
    }
    println!();
    println!("{:<4} {:<14} {:>7} {:>7} {:>8} {:>8}  status", "mod", "name", "passed", "failed", "ignored", "seconds");
    let mut ok = true;
    let (mut tp, mut tf) = (0, 0);
    for (m, r, secs) in &rows {
        match r {
            Ok(c) => {
                tp += c.passed;
                tf += c.failed;
                let pass = c.failed == 0 && c.passed > 0;
                ok &= pass;
                let st = if pass { "PASS" } else { "FAIL" };
                println!(
                    "{:<4} {:<14} {:>7} {:>7} {:>8} {:>8.1}  {st}",
                    m.number, m.name, c.passed, c.failed, c.ignored, secs
                );
            }
            Err(e) => {
                ok = false;
                println!("{:<4} {:<14} {:>7} {:>7} {:>8} {:>8}  {e}", m.number, m.name, "-", "-", "-", "-");
            }
        }
    }
    println!("\ntotal: {tp} passed, {tf} failed");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn status() -> ExitCode {
    let root = workspace_root();
    println!("course modules:");
    for m in modules::MODULES {
        let state = if m.exists(&root) { "present" } else { "not implemented yet" };
        println!("  {} {:<14} {:<15} {state}", m.number, m.name, m.package);
    }
    let cache = milestones::default_cache_dir();
    println!("\nmilestones (cache: {}):", cache.display());
    for ms in milestones::all() {
        let models: Vec<String> = ms
            .models
            .iter()
            .map(|key| {
                format!("{key} ({})", if milestones::is_cached(&cache, key) { "cached" } else { "not cached yet" })
            })
            .collect();
        println!("  {:<14} module {}  models: {}", ms.name, ms.module, models.join(", "));
    }
    ExitCode::SUCCESS
}
