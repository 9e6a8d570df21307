//! LoadGen over the network against a mock OpenAI-compatible server on loopback: streamed
//! chunks become the first token and the answer's text; overload (429), a stream cut short, a
//! server too slow for the timeout and a port nobody listens on are each answered with no text
//! and counted by cause; no run waits longer than its timeouts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_stream::wrappers::ReceiverStream;
use tt_perf::http::{self, Failures, HttpConfig, HttpSut, PromptLibrary};
use tt_perf::loadgen::{start_test, Mode, RunLog, Scenario, TestSettings};

/// The chunks the mock streams for `prompt`; the answer is their concatenation.
fn pieces(prompt: &str) -> [String; 3] {
    ["Hel".into(), "lo ".into(), prompt.chars().rev().collect()]
}

fn event(text: &str, finish: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    });
    format!("data: {chunk}\n\n")
}

/// `busy` is answered 429; `cut` stops after one chunk by breaking the connection; `slow` waits
/// 3 s before its first chunk; any other prompt streams its pieces 4 ms apart, one event split
/// across two writes, then a final chunk with the finish reason and usage, then `[DONE]`.
async fn completions(Json(req): Json<serde_json::Value>) -> Response {
    let prompt = req["prompt"].as_str().unwrap_or_default().to_string();
    assert_eq!(req["stream"], true, "LoadGen streams");
    if prompt == "busy" {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "queue full").into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(8);
    tokio::spawn(async move {
        if prompt == "slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        for (k, p) in pieces(&prompt).iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(4)).await;
            let e = event(p, None);
            if k == 1 {
                let (a, b) = e.split_at(7);
                let _ = tx.send(Ok(a.to_string())).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = tx.send(Ok(b.to_string())).await;
            } else {
                let _ = tx.send(Ok(e)).await;
            }
            if prompt == "cut" {
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
        }
        let last = serde_json::json!({
            "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        });
        let _ = tx.send(Ok(format!("data: {last}\n\ndata: [DONE]\n\n"))).await;
    });
    ([("content-type", "text/event-stream")], Body::from_stream(ReceiverStream::new(rx))).into_response()
}

/// The mock on 127.0.0.1, port chosen by the system, served until the runtime drops.
fn mock() -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let models = || async { Json(serde_json::json!({"object": "list", "data": [{"id": "mock", "object": "model"}]})) };
    let app = Router::new().route("/v1/completions", post(completions)).route("/v1/models", get(models));
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, addr)
}

fn config(addr: SocketAddr) -> HttpConfig {
    HttpConfig { timeout: Duration::from_millis(500), ..HttpConfig::new(format!("http://{addr}"), "mock") }
}

/// Every sample has its first token strictly before its completion, and three tokens.
fn assert_streamed(log: &RunLog) {
    let n = log.sample_latencies_ns.len();
    assert!(n > 0);
    assert_eq!(log.first_token_ns.len(), n, "every sample reported its first token");
    for (ft, done) in log.first_token_ns.iter().zip(&log.sample_latencies_ns) {
        assert!(ft < done, "first token {ft} ns is before completion {done} ns");
    }
    assert_eq!(log.tokens, 3 * n as u64, "one token per chunk with text");
    assert_eq!(log.time_per_output_token_ns.len(), n);
}

#[test]
fn single_stream_and_server_runs_stream_every_sample() {
    let t0 = Instant::now();
    let (_server, addr) = mock();
    let prompts: Vec<String> = (0..16).map(|i| format!("question {i}")).collect();
    let mut lib = PromptLibrary::new(prompts.clone()).unwrap();
    assert_eq!(http::list_models(&format!("http://{addr}/"), Duration::from_secs(1)).unwrap(), ["mock"]);
    let sut = HttpSut::new(config(addr), &lib).unwrap();

    let single = TestSettings::scaled(Scenario::SingleStream, Duration::from_millis(150), 8);
    let log = start_test(&sut, &mut lib, &single).unwrap();
    assert!(log.queries_issued >= 8);
    assert_streamed(&log);
    assert_eq!(sut.take_failures(), Failures::default());

    let server = TestSettings {
        server_target_qps: 100.0,
        ..TestSettings::scaled(Scenario::Server, Duration::from_millis(300), 20)
    };
    let log = start_test(&sut, &mut lib, &server).unwrap();
    assert!(log.queries_issued >= 20);
    assert_streamed(&log);
    let judged = http::judge(log, &sut.failures()).unwrap();
    assert!(judged.failed_rules.iter().all(|r| !r.contains("failed requests")), "{:?}", judged.failed_rules);

    // The text is the chunks' concatenation, kept by an accuracy run for every prompt.
    let accuracy =
        TestSettings { mode: Mode::AccuracyOnly, ..TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1) };
    let log = start_test(&sut, &mut lib, &accuracy).unwrap();
    assert_eq!(log.accuracy.len(), prompts.len());
    for (i, data) in &log.accuracy {
        assert_eq!(String::from_utf8_lossy(data), pieces(&prompts[*i]).concat(), "prompt {i}");
    }
    assert_eq!(sut.failures().total(), 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}

#[test]
fn failed_requests_are_answered_empty_and_counted_by_cause() {
    let t0 = Instant::now();
    let (_server, addr) = mock();
    let prompts: Vec<String> = ["fine", "busy", "cut", "slow", "busy"].map(String::from).to_vec();
    let mut lib = PromptLibrary::new(prompts.clone()).unwrap();
    let sut = HttpSut::new(config(addr), &lib).unwrap();
    let accuracy =
        TestSettings { mode: Mode::AccuracyOnly, ..TestSettings::scaled(Scenario::Offline, Duration::ZERO, 1) };
    let log = start_test(&sut, &mut lib, &accuracy).unwrap();
    let text: BTreeMap<&str, String> =
        log.accuracy.iter().map(|(i, d)| (prompts[*i].as_str(), String::from_utf8_lossy(d).into_owned())).collect();
    assert_eq!(text["fine"], "Hello enif");
    for failed in ["busy", "cut", "slow"] {
        assert_eq!(text[failed], "", "{failed} has no answer");
    }
    let failures = sut.failures();
    assert_eq!(failures.by_status, BTreeMap::from([(429, 2)]));
    assert_eq!((failures.closed, failures.timeout, failures.connect, failures.malformed), (1, 1, 0, 0));
    let judged = http::judge(log, &failures).unwrap();
    assert!(!judged.valid);
    assert!(judged.summary_text().contains("failed requests: 4 (HTTP 429: 2, timeout: 1, closed: 1)"));

    // A port nobody listens on: every sample is answered, as a connection failure.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = http::list_models(&format!("http://{free}"), Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    let refused = HttpSut::new(config(free), &lib).unwrap();
    let single = TestSettings::scaled(Scenario::SingleStream, Duration::ZERO, 3);
    let log = start_test(&refused, &mut lib, &single).unwrap();
    assert_eq!(refused.failures().connect, log.queries_issued);
    assert!(log.first_token_ns.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}
