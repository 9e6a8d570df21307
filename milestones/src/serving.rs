//! Milestone `serving` (issue 22): the course GPT deployed as a network service and measured the
//! way MLPerf measures a networked system.
//!
//! The trained GPT, in the submission's format (int8 weights, int8 KV cache, fused kernels), is
//! saved as a checkpoint unit and served by `tito serve` child processes; LoadGen drives them over
//! loopback HTTP (tt-perf's [`HttpSut`], streaming: the first SSE chunk is the first token) with
//! the held-out questions. Side by side, in one run:
//!
//! 1. **Continuous batching**: answers per second with 16 clients streaming at once vs one
//!    request at a time, on the same server (closed loop: each client sends its next question
//!    when its answer ends).
//! 2. **Server scenario over HTTP vs in process**: the peak valid Server rate (p99 answer latency
//!    ≤ 100 ms) of the server over HTTP, and of the same model, decoder and scheduler answering
//!    in this process (torchperf's question answerer); p99 time to first token at 80% of the HTTP
//!    peak.
//! 3. **Overload**: the Server scenario at twice the HTTP peak: every request must get its answer
//!    or a 429 — no refused, reset, malformed or timed-out connection.
//! 4. **Scale-out**: two replicas, each pinned to one core (`taskset`), behind nginx running
//!    `deploy/nginx.conf`, vs one replica directly: their peak valid Server rates.
//!
//! The load generator shares the machine with what it measures (2 cores here): every figure
//! includes that contention, and says which CPU it ran on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tt_perf::http::{self, Failures, HttpConfig, HttpSut, PromptLibrary};
use tt_perf::loadgen::{self, Mode, Scenario, SystemUnderTest, TestSettings};
use tt_perf::results::Judged;

use crate::torchperf::qa::{self, QaLibrary, QaSut, Variant};
use crate::{transformer, MilestoneError, Options, Result};

pub const NAME: &str = "serving";

/// The name the replicas serve the model under.
const MODEL: &str = "tinytorch-gpt";
/// Decoder slots per replica.
const MAX_BATCH: usize = 16;
const MAX_QUEUE: usize = 256;
/// The Server scenario's bound: p99 of the whole answer (the course's "respond in < 100 ms").
const BOUND: Duration = Duration::from_millis(100);

fn err(m: impl Into<String>) -> MilestoneError {
    MilestoneError::Other(m.into())
}

fn perf(e: tt_perf::PerfError) -> MilestoneError {
    err(e.to_string())
}

/// A child process (a replica or nginx), stopped with SIGTERM (a replica drains and exits 0) and
/// killed if it is still there after a grace period.
struct Proc {
    child: Child,
    url: String,
    what: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tito serve` on a free loopback port, on the given cores (`taskset -c`), or any.
fn replica(exe: &Path, unit: &Path, cores: Option<&str>, log: &Path) -> Result<Proc> {
    replica_with(
        exe,
        &[OsArg::from("--model"), unit.into()],
        &["--weights", "stored", "--kv", "int8", "--name", MODEL],
        cores,
        log,
    )
}

/// The course GPT in the submission's format (int8 weights), saved as a unit under `dir`, and
/// the held-out questions as prompts.
fn course_unit(opts: &Options, dir: &Path) -> Result<(PathBuf, PromptLibrary)> {
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let (model, tokenizer, _, _) = transformer::load_or_train(&quiet)?;
    let mut prepared = qa::prepare(model, &Variant::OPTIMIZED)?.model;
    let unit = dir.join("model-int8");
    let codec = tt_models::open::course_codec(tokenizer);
    tt_models::open::save(&mut prepared, codec.as_ref(), "int8", &unit).map_err(|e| err(e.to_string()))?;
    let eval = transformer::qa_eval(opts)?;
    let lib = PromptLibrary::new(eval.test.iter().map(|p| p.prompt()).collect()).map_err(perf)?;
    Ok((unit, lib))
}

/// The server's peak valid Server rate (p99 answer ≤ 100 ms, over loopback HTTP) with
/// `tito serve --threads t`, for each `t` — the server line of milestone `acceleration`'s
/// scaling curve. The load generator runs in this process, on the same cores.
pub fn peak_by_threads(opts: &Options, threads: &[usize]) -> Result<Vec<(usize, f64)>> {
    let exe = opts.serve_exe.clone().ok_or_else(|| err("the server's scaling needs the tito executable"))?;
    let dir = opts.cache_dir.join(NAME).join(opts.cache_key("scaling"));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let (unit, mut lib) = course_unit(opts, &dir)?;
    let mut out = Vec::new();
    for &t in threads {
        let args = [OsArg::from("--model"), unit.clone().into()];
        let flags = ["--weights", "stored", "--kv", "int8", "--name", MODEL, "--threads", &t.to_string()];
        let r = replica_with(&exe, &args, &flags, None, &dir.join(format!("replica-{t}.log")))?;
        let sut = HttpSut::new(client(&r.url, MAX_QUEUE), &lib).map_err(perf)?;
        let (alone, _) = closed_loop(client(&r.url, 1), &mut lib, if opts.quick { 16 } else { 64 }, 50.0)?;
        let (p, _) = peak(&sut, &mut lib, opts, (alone * 2.0).max(1.0), BOUND)?;
        out.push((t, p));
    }
    Ok(out)
}

type OsArg = std::ffi::OsString;

/// `tito serve` with the model arguments `model` and the serving flags `flags`.
fn replica_with(exe: &Path, model: &[OsArg], flags: &[&str], cores: Option<&str>, log: &Path) -> Result<Proc> {
    let mut cmd = match cores {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    let stderr = std::fs::File::create(log).map_err(|e| err(format!("{}: {e}", log.display())))?;
    cmd.arg("serve")
        .args(model)
        .args(flags)
        .args(["--port", "0"])
        .args(["--max-batch", &MAX_BATCH.to_string(), "--max-queue", &MAX_QUEUE.to_string()])
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    let out = child.stdout.take().ok_or_else(|| err("replica: no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let what = format!("tito serve{}", cores.map_or(String::new(), |c| format!(" (cores {c})")));
    let mut p = Proc { child, url: String::new(), what };
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| err(format!("{} did not start in 120 s (log: {})", p.what, log.display())))?;
    p.url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| err(format!("{} printed no address: {line:?} (log: {})", p.what, log.display())))?
        .to_string();
    Ok(p)
}

/// Where nginx is, or how to get it.
fn nginx_binary() -> std::result::Result<PathBuf, String> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err("nginx is not installed (Debian/Ubuntu: `apt-get install nginx-light`; Fedora: `dnf install nginx`; macOS: `brew install nginx`)".into())
}

/// A free loopback port (bound and released: another process could take it in between, which
/// nginx would then report).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| err(e.to_string()))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

/// `deploy/nginx.conf` with its `listen` line on `port` and its upstream's servers `replicas`.
pub fn nginx_conf(template: &str, port: u16, replicas: &[&str]) -> Result<String> {
    let mut out = String::new();
    let (mut listen, mut servers) = (0, 0);
    for line in template.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if t.starts_with("listen ") {
            listen += 1;
            out.push_str(&format!("{indent}listen 127.0.0.1:{port};\n"));
        } else if t.starts_with("server 127.0.0.1:") {
            servers += 1;
            if servers == 1 {
                // The first server line's options (max_fails, …) for every replica.
                let opts: Vec<&str> = t.trim_end().trim_end_matches(';').split_whitespace().skip(2).collect();
                for r in replicas {
                    let addr = r.trim_start_matches("http://");
                    out.push_str(&format!("{indent}server {addr} {};\n", opts.join(" ")));
                }
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if listen != 1 || servers == 0 {
        return Err(err(
            "deploy/nginx.conf: expected one `listen` line and `server 127.0.0.1:…` lines in the upstream",
        ));
    }
    Ok(out)
}

fn start_nginx(dir: &Path, replicas: &[&str]) -> Result<Proc> {
    let bin = nginx_binary().map_err(err)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let template_path = root.join("deploy/nginx.conf");
    let template =
        std::fs::read_to_string(&template_path).map_err(|e| err(format!("{}: {e}", template_path.display())))?;
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).map_err(|e| err(e.to_string()))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&template, port, replicas)?).map_err(|e| err(e.to_string()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().map_err(|e| err(format!("cannot start nginx: {e}")))?;
    let p = Proc { child, url: format!("http://127.0.0.1:{port}"), what: "nginx".into() };
    // Ready when it proxies /health to a replica.
    for _ in 0..100 {
        if http::list_models(&p.url, Duration::from_secs(2)).is_ok() {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
    Err(err(format!("nginx did not come up on {}: {}", p.url, log.trim())))
}

/// What every request asks for: the greedy answer, up to the question answerer's length, ending
/// at the line's end.
fn client(url: &str, connections: usize) -> HttpConfig {
    client_of(url, MODEL, connections)
}

fn client_of(url: &str, model: &str, connections: usize) -> HttpConfig {
    HttpConfig {
        max_tokens: qa::MAX_NEW_TOKENS as u32,
        temperature: 0.0,
        stop: vec!["\n".into()],
        timeout: Duration::from_secs(60),
        max_connections: connections,
        ..HttpConfig::new(url, model)
    }
}

fn server_settings(opts: &Options, qps: f64, bound: Duration) -> TestSettings {
    // 662 queries: the fewest for which early stopping can claim the p99 (MLPerf's Server count).
    let (secs, n) = if opts.quick { (0.5, 662) } else { (3.0, 662) };
    TestSettings {
        target_latency: bound,
        server_target_qps: qps,
        peak_search_steps: if opts.quick { 1 } else { 3 },
        completion_timeout: Duration::from_secs(120),
        ..TestSettings::scaled(Scenario::Server, Duration::from_secs_f64(secs), n)
    }
}

/// The peak valid Server rate of `sut`, starting the search at `start` queries per second.
fn peak(
    sut: &dyn SystemUnderTest,
    lib: &mut dyn loadgen::QuerySampleLibrary,
    opts: &Options,
    start: f64,
    bound: Duration,
) -> Result<(f64, Option<Judged>)> {
    let mut s = server_settings(opts, start, bound);
    s.mode = Mode::FindPeakPerformance;
    let (steps, best) = loadgen::find_peak(sut, lib, &s).map_err(perf)?;
    let tried: Vec<String> =
        steps.iter().map(|st| format!("{:.1}{}", st.target_qps, if st.valid { "✓" } else { "✗" })).collect();
    opts.say(format!("    {}: peak search {}", sut.name(), tried.join(" ")));
    Ok((best.as_ref().map_or(0.0, |b| b.log.settings.server_target_qps), best))
}

/// One Server run at `qps` over HTTP, judged with its failures (any makes it INVALID).
fn http_run(sut: &HttpSut, lib: &mut PromptLibrary, opts: &Options, qps: f64) -> Result<(Judged, Failures)> {
    let _ = sut.take_failures();
    let log = loadgen::start_test(sut, lib, &server_settings(opts, qps, BOUND)).map_err(perf)?;
    let f = sut.take_failures();
    Ok((http::judge(log, &f).map_err(perf)?, f))
}

/// Answers per second of a closed loop of `config.max_connections` clients streaming at once.
fn closed_loop(config: HttpConfig, lib: &mut PromptLibrary, n: u64, expect: f64) -> Result<(f64, Failures)> {
    let sut = HttpSut::new(config, lib).map_err(perf)?;
    let s = TestSettings { offline_expected_qps: expect, ..TestSettings::scaled(Scenario::Offline, Duration::ZERO, n) };
    let log = loadgen::start_test(&sut, lib, &s).map_err(perf)?;
    let f = sut.take_failures();
    let j = http::judge(log, &f).map_err(perf)?;
    Ok((j.value, f))
}

/// Tokens each answer of the larger model runs to (no stop string; its random weights rarely
/// produce a stop token, so answers are this long).
const STORIES_TOKENS: u32 = 64;

/// The larger model's `--model`/`--tokenizer` arguments and served name: llama2.c's stories15M
/// shape (random weights; `--quick`: a tiny shape) with a synthetic tokenizer of its vocabulary
/// (byte pieces, then made-up merges).
fn stories_files(dir: &Path, opts: &Options) -> Result<(Vec<OsArg>, String)> {
    let Some((shape, params)) = crate::llama::shapes(opts.quick).into_iter().next() else {
        return Err(err("no model shape"));
    };
    let (model, _) = crate::llama::files(opts, shape, &params)?;
    let tokenizer = dir.join(format!("{shape}-tokenizer-v2.bin"));
    if !tokenizer.is_file() {
        // " " first: the encoder puts it before the text (run.c's dummy prefix).
        let names: Vec<String> = std::iter::once(" ".to_string())
            .chain((1..params.vocab_size.saturating_sub(259)).map(|i| format!("t{i}")))
            .collect();
        let merges: Vec<(&str, f32)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), -(i as f32))).collect();
        let pieces = tt_models::llama2c::tokenizer::synthetic_pieces(&merges);
        tt_models::llama2c::tokenizer::write(&tokenizer, &pieces, 16).map_err(|e| err(e.to_string()))?;
    }
    Ok((vec![OsArg::from("--model"), model.into(), "--tokenizer".into(), tokenizer.into()], format!("{shape}-shape")))
}

/// Continuous batching where it matters most: a model whose one-row decode streams its weights
/// from memory (the stories15M shape, served in f32).
fn stories_batching(exe: &Path, dir: &Path, lib: &mut PromptLibrary, opts: &Options) -> Result<Value> {
    let (args, name) = stories_files(dir, opts)?;
    let r = replica_with(exe, &args, &["--weights", "f32", "--name", &name], None, &dir.join("replica-stories.log"))?;
    let cfg = |n| HttpConfig { max_tokens: STORIES_TOKENS, stop: Vec::new(), ..client_of(&r.url, &name, n) };
    // This decode reads its weights from DRAM, whose bandwidth drifts by ±20% over minutes on
    // this VM: one client and sixteen are measured in adjacent pairs, and the pair with the
    // median ratio is reported.
    let (rounds, n) = if opts.quick { (1, 16) } else { (3, 96) };
    let mut pairs = Vec::new();
    let (mut f1, mut f16) = (Failures::default(), Failures::default());
    for _ in 0..rounds {
        let (alone, a) = closed_loop(cfg(1), lib, n, 5.0)?;
        if a.total() > 0 {
            return Err(err(format!(
                "{name}: requests failed ({a}); see {}",
                dir.join("replica-stories.log").display()
            )));
        }
        let (batched, b) = closed_loop(cfg(16), lib, 2 * n, 8.0 * alone)?;
        pairs.push((batched / alone, alone, batched));
        (f1, f16) = (a, b);
    }
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (_, alone, batched) = pairs[pairs.len() / 2];
    let ratios: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    opts.say(format!(
        "  {name} (f32, {STORIES_TOKENS}-token answers): 1 client {alone:.2} answers/s, 16 clients {batched:.2} answers/s ({:.2}x; pairs {ratios:.2?}); failed requests: {f1}, {f16}",
        batched / alone
    ));
    Ok(json!({"model": name, "weights": "f32", "tokens_per_answer": STORIES_TOKENS,
        "one_client_answers_per_s": alone, "sixteen_clients_answers_per_s": batched, "ratio": batched / alone,
        "pair_ratios": ratios, "failures": {"one": f1, "sixteen": f16}}))
}

/// Answer length and Server bound of the larger model's scale-out runs.
const SCALE_TOKENS: u32 = 16;
const SCALE_BOUND: Duration = Duration::from_secs(1);

/// Two replicas of a model (`args`, `flags`), pinned to cores 0 and 1, behind nginx, against one
/// of them directly: the peak valid Server rate of each (`bound`), searched from `start`.
fn scale_out(
    exe: &Path,
    dir: &Path,
    label: &str,
    args: &[OsArg],
    flags: &[&str],
    config: &dyn Fn(&str) -> HttpConfig,
    lib: &mut PromptLibrary,
    opts: &Options,
    start: f64,
    bound: Duration,
) -> Result<Value> {
    if let Err(why) = nginx_binary() {
        opts.say(format!("  scale-out ({label}): skipped: {why}"));
        return Ok(json!({"skipped": why}));
    }
    let r0 = replica_with(exe, args, flags, Some("0"), &dir.join(format!("replica-{label}-core0.log")))?;
    let r1 = replica_with(exe, args, flags, Some("1"), &dir.join(format!("replica-{label}-core1.log")))?;
    let direct = HttpSut::new(config(&r0.url), lib).map_err(perf)?;
    let (one_peak, _) = peak(&direct, lib, opts, start.max(1.0), bound)?;
    let one_failures = direct.take_failures();
    drop(direct);
    let lb = start_nginx(dir, &[&r0.url, &r1.url])?;
    let via = HttpSut::new(config(&lb.url), lib).map_err(perf)?;
    let (two_peak, _) = peak(&via, lib, opts, one_peak.max(1.0), bound)?;
    let two_failures = via.take_failures();
    drop(via);
    let ratio = two_peak / one_peak.max(f64::MIN_POSITIVE);
    opts.say(format!(
        "  scale-out ({label}, p99 answer <= {} ms): one replica (core 0) {one_peak:.1} qps; two replicas (cores 0, 1) behind nginx {two_peak:.1} qps ({ratio:.2}x)",
        bound.as_millis()
    ));
    Ok(json!({"one_replica_qps": one_peak, "two_replicas_nginx_qps": two_peak, "ratio": ratio,
        "bound_ms": bound.as_millis() as u64, "failures_during_search": {"one": one_failures, "two": two_failures}}))
}

fn p99_ms(s: Option<&tt_perf::stats::Summary>) -> Option<f64> {
    s.and_then(|s| s.at(0.99)).map(|ns| ns / 1e6)
}

pub fn run(opts: &Options) -> Result<Value> {
    let exe = opts
        .serve_exe
        .clone()
        .ok_or_else(|| err("serving needs the tito executable (run it through `cargo tito milestone serving`)"))?;
    let dir = opts.cache_dir.join(NAME).join(opts.cache_key("results"));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let machine = crate::report::stamp::this_machine(opts.quick);
    opts.say(format!(
        "serving: the course GPT behind `tito serve` (int8 weights and KV cache), LoadGen over loopback HTTP\n  machine: {} ({} cores)",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"]
    ));

    // The model in the submission's format, saved as the unit every replica serves.
    let (unit, mut lib) = course_unit(opts, &dir)?;
    let quiet = Options { quiet: true, corpus: None, ..opts.clone() };
    let (model, tokenizer, _, _) = transformer::load_or_train(&quiet)?;
    let v = Variant::OPTIMIZED;
    let prepared = qa::prepare(model, &v)?.model;
    let eval = transformer::qa_eval(opts)?;
    let mut qa_lib = QaLibrary::new(&tokenizer, &eval.test)?;

    // 1–3: one replica on any core.
    let one = replica(&exe, &unit, None, &dir.join("replica.log"))?;
    opts.say(format!("  replica at {}", one.url));
    let n = if opts.quick { 64 } else { 400 };
    let (alone, f1) = closed_loop(client(&one.url, 1), &mut lib, n, 50.0)?;
    let (batched, f16) = closed_loop(client(&one.url, 16), &mut lib, n, 8.0 * alone)?;
    opts.say(format!(
        "  closed loop: 1 client {alone:.1} answers/s, 16 clients {batched:.1} answers/s ({:.2}x); failed requests: {f1}, {f16}",
        batched / alone
    ));
    let stories = stories_batching(&exe, &dir, &mut lib, opts)?;
    let http_sut = HttpSut::new(client(&one.url, MAX_QUEUE), &lib).map_err(perf)?;
    let (http_peak, _) = peak(&http_sut, &mut lib, opts, (alone * 2.0).max(1.0), BOUND)?;
    let peak_failures = http_sut.take_failures();
    let in_process = {
        let sut = QaSut::new(
            "gpt-qa-in-process",
            Arc::new(prepared),
            v,
            &tokenizer,
            Arc::clone(&qa_lib.prompts),
            1,
            MAX_BATCH,
        )?;
        let (p, _) = peak(&sut, &mut qa_lib, opts, (alone * 2.0).max(1.0), BOUND)?;
        if !sut.errors().is_empty() {
            return Err(err(format!("the in-process system failed: {:?}", sut.errors())));
        }
        p
    };
    opts.say(format!(
        "  Server peak valid rate (p99 answer <= {} ms): HTTP {http_peak:.1} qps, in process {in_process:.1} qps ({:.0}%)",
        BOUND.as_millis(),
        100.0 * http_peak / in_process.max(f64::MIN_POSITIVE)
    ));
    let (at80, f80) = http_run(&http_sut, &mut lib, opts, 0.8 * http_peak.max(1.0))?;
    let ttft80 = p99_ms(at80.first_token_latency.as_ref());
    opts.say(format!(
        "  at 80% of the HTTP peak ({:.1} qps): p99 first token {:.1} ms, p99 answer {:.1} ms, {}, failed requests: {f80}",
        0.8 * http_peak,
        ttft80.unwrap_or(f64::NAN),
        at80.sample_latency.at(0.99).unwrap_or(f64::NAN) / 1e6,
        if at80.valid { "VALID" } else { "INVALID" }
    ));
    // Overload: enough connections that the server's own bound (queue + slots) is what limits
    // how many requests it holds, not the client's pool.
    let flood = HttpSut::new(client(&one.url, 2 * MAX_QUEUE + MAX_BATCH), &lib).map_err(perf)?;
    let (at200, f200) = http_run(&flood, &mut lib, opts, 2.0 * http_peak.max(1.0))?;
    drop(flood);
    let refused = f200.by_status.get(&429).copied().unwrap_or(0);
    let broken = f200.total() - refused;
    opts.say(format!(
        "  at 2x the HTTP peak ({:.1} qps): {} requests, {} answered, {refused} refused with 429, {broken} failed otherwise ({f200})",
        2.0 * http_peak,
        at200.log.sample_latencies_ns.len(),
        at200.log.sample_latencies_ns.len() as u64 - f200.total()
    ));
    drop(http_sut);
    drop(one);

    // 4: two replicas, one core each, behind nginx, vs one of them directly — for the course GPT,
    // and for the larger model with short answers (its replicas' work per request is far larger
    // than the load generator's and nginx's, which share the replicas' two cores here).
    let course_flags = ["--weights", "stored", "--kv", "int8", "--name", MODEL];
    let course_args = [OsArg::from("--model"), unit.clone().into()];
    let scale = scale_out(
        &exe,
        &dir,
        "course",
        &course_args,
        &course_flags,
        &|url| client(url, MAX_QUEUE),
        &mut lib,
        opts,
        http_peak / 2.0,
        BOUND,
    )?;
    let (stories_args, stories_name) = stories_files(&dir, opts)?;
    let stories_flags = ["--weights", "f32", "--name", &stories_name];
    let short = |url: &str| HttpConfig {
        max_tokens: SCALE_TOKENS,
        stop: Vec::new(),
        ..client_of(url, &stories_name, MAX_QUEUE)
    };
    let start = stories["sixteen_clients_answers_per_s"].as_f64().unwrap_or(1.0) * f64::from(STORIES_TOKENS)
        / f64::from(SCALE_TOKENS)
        / 2.0;
    let stories_scale =
        scale_out(&exe, &dir, "stories", &stories_args, &stories_flags, &short, &mut lib, opts, start, SCALE_BOUND)?;

    let goals = json!([
        {"goal": "course GPT: 16 streaming clients vs one at a time", "target": ">= 4x", "measured": batched / alone, "met": batched / alone >= 4.0},
        {"goal": format!("{}: 16 streaming clients vs one at a time", stories["model"].as_str().unwrap_or("")), "target": ">= 4x", "measured": stories["ratio"], "met": stories["ratio"].as_f64().is_some_and(|r| r >= 4.0)},
        {"goal": "p99 time to first token at 80% of the peak valid Server rate", "target": "< 100 ms", "measured_ms": ttft80, "met": ttft80.is_some_and(|t| t < 100.0)},
        {"goal": "Server peak valid rate: loopback HTTP vs in process", "target": ">= 85%", "measured": http_peak / in_process.max(f64::MIN_POSITIVE), "met": http_peak >= 0.85 * in_process},
        {"goal": "course GPT: 2 replicas behind nginx vs 1 replica", "target": ">= 1.8x", "measured": scale.get("ratio"), "met": scale.get("ratio").and_then(Value::as_f64).is_some_and(|r| r >= 1.8)},
        {"goal": format!("{stories_name}: 2 replicas behind nginx vs 1 replica"), "target": ">= 1.8x", "measured": stories_scale.get("ratio"), "met": stories_scale.get("ratio").and_then(Value::as_f64).is_some_and(|r| r >= 1.8)},
        {"goal": "at 2x the peak rate: every request answered or 429", "target": "0 failed", "measured": broken, "met": broken == 0},
    ]);
    opts.say("\n  goal                                                          target     measured   met");
    for g in goals.as_array().into_iter().flatten() {
        let m = g.get("measured").or_else(|| g.get("measured_ms")).and_then(Value::as_f64);
        opts.say(format!(
            "  {:<62} {:<10} {:<10} {}",
            g["goal"].as_str().unwrap_or(""),
            g["target"].as_str().unwrap_or(""),
            m.map_or("n/a".into(), |m| format!("{m:.2}")),
            if g["met"].as_bool() == Some(true) { "yes" } else { "NO" }
        ));
    }
    Ok(json!({
        "machine": machine,
        "settings": {"max_batch": MAX_BATCH, "max_queue": MAX_QUEUE, "bound_ms": BOUND.as_millis() as u64,
            "server": server_settings(opts, 1.0, BOUND), "weights": "int8", "kv": "int8", "questions": lib.prompts().len()},
        "closed_loop": {"one_client_answers_per_s": alone, "sixteen_clients_answers_per_s": batched, "ratio": batched / alone,
            "failures": {"one": f1, "sixteen": f16}},
        "batching_larger_model": stories,
        "server_peak_qps": {"http": http_peak, "in_process": in_process, "ratio": http_peak / in_process.max(f64::MIN_POSITIVE),
            "failures_during_search": peak_failures},
        "at_80_percent": {"qps": 0.8 * http_peak, "valid": at80.valid, "ttft_p99_ms": ttft80,
            "answer_p99_ms": at80.sample_latency.at(0.99).map(|x| x / 1e6), "failures": f80},
        "at_2x": {"qps": 2.0 * http_peak, "requests": at200.log.sample_latencies_ns.len(), "refused_429": refused,
            "failed_otherwise": broken, "failures": f200},
        "scale_out": scale,
        "scale_out_larger_model": stories_scale,
        "goals": goals,
    }))
}

#[cfg(test)]
mod tests {
    /// The milestone runs the committed deploy/nginx.conf: only its address lines change.
    #[test]
    fn the_deploy_config_is_rewritten_to_loopback_ports() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let template = std::fs::read_to_string(root.join("deploy/nginx.conf")).unwrap();
        let conf = super::nginx_conf(&template, 9000, &["http://127.0.0.1:9001", "http://127.0.0.1:9002"]).unwrap();
        assert!(conf.contains("listen 127.0.0.1:9000;"));
        assert!(conf.contains("server 127.0.0.1:9001 max_fails=3 fail_timeout=5s;"));
        assert!(conf.contains("server 127.0.0.1:9002 max_fails=3 fail_timeout=5s;"));
        assert!(!conf.contains("8080") && !conf.contains("8081") && !conf.contains("8082"));
        assert!(conf.contains("least_conn;") && conf.contains("proxy_buffering off;"));
        let other: Vec<&str> = conf.lines().filter(|l| !l.contains("127.0.0.1")).collect();
        let kept: Vec<&str> = template.lines().filter(|l| !l.contains("127.0.0.1")).collect();
        assert_eq!(other, kept);
        assert!(super::nginx_conf("events {}", 1, &["a"]).is_err());
    }
}
