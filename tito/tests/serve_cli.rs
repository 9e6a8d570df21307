//! `tito serve` as a user runs it, on a llama2.c model the test writes: its completions, whole
//! and streamed, equal `tito generate`'s text for the same seed; SIGTERM drains a request in
//! flight and exits 0. Loopback only; every child is killed if it outlives its deadline.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn write_model(dir: &Path) -> String {
    tt_models::testing::write_tiny_llama2c(dir, 256).unwrap().display().to_string()
}

/// Kills the child on drop (a failed assertion must not leave a server running).
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tito serve` on a free port; returns it and its base URL (from its first line).
fn serve(model: &str, extra: &[&str]) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args([&["serve", "--model", model, "--port", "0"][..], extra].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url =
        line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}"));
    (Guard(child), url.to_string())
}

fn generate(model: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args([&["generate", "--model", model, "--prompt", "hello", "--max-tokens", "40"][..], extra].concat())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn complete(c: &reqwest::Client, url: &str, body: &Value) -> String {
    let r = c.post(format!("{url}/v1/completions")).body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// The streamed text and whether the stream ended with `[DONE]`.
async fn stream(c: &reqwest::Client, url: &str, body: &Value, mut after_first: impl FnMut()) -> (String, bool) {
    let mut body = body.clone();
    body["stream"] = true.into();
    let mut r = c.post(format!("{url}/v1/completions")).body(body.to_string()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (mut raw, mut first) = (String::new(), true);
    while let Some(chunk) = r.chunk().await.unwrap() {
        raw.push_str(std::str::from_utf8(&chunk).unwrap());
        if first {
            first = false;
            after_first();
        }
    }
    let mut text = String::new();
    let mut done = false;
    for e in raw.split("\n\n").filter(|e| !e.is_empty()) {
        let data = e.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
    }
    (text, done)
}

#[test]
fn served_completions_equal_tito_generate_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let (_server, url) = serve(&model, &["--max-batch", "4"]);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let rt = rt();
    for (flags, body) in [
        (vec![], json!({"prompt": "hello", "max_tokens": 40, "temperature": 0})),
        (
            vec!["--temperature", "0.9", "--top-p", "0.9", "--seed", "3"],
            json!({"prompt": "hello", "max_tokens": 40, "temperature": 0.9, "top_p": 0.9, "seed": 3}),
        ),
    ] {
        let want = generate(&model, &flags);
        // `tito generate` ends its output with a newline when the text does not.
        let want = want.strip_suffix('\n').unwrap_or(&want);
        let whole = rt.block_on(complete(&c, &url, &body));
        let (streamed, done) = rt.block_on(stream(&c, &url, &body, || {}));
        assert!(done);
        assert_eq!(whole, want, "{flags:?}");
        assert_eq!(streamed, want, "{flags:?}");
    }
}

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let (mut server, url) = serve(&model, &[]);
    let pid = server.0.id().to_string();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let body = json!({"prompt": "hello", "max_tokens": 240, "temperature": 0});
    let rt = rt();
    let alone = rt.block_on(complete(&c, &url, &body));
    // SIGTERM once the first token has arrived: the rest of the answer still comes.
    let (streamed, done) = rt.block_on(stream(&c, &url, &body, || {
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }));
    assert!(done, "the stream in flight ends with [DONE]");
    assert_eq!(streamed, alone);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "tito serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Gone: new connections are refused.
    assert!(rt.block_on(async { c.get(format!("{url}/health")).send().await }).is_err());
}
