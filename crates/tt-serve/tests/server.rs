//! The server as a client sees it, over loopback HTTP with a real client: answers whole and
//! streamed, continuous batching's determinism, every bad request's status and body, overload,
//! panics, disconnects and draining. Each test is bounded in time and requests.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{config, post, post_stream, start, text};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Concatenated text and chunk count of a stream's events (before `[DONE]`), and its last chunk.
fn joined(events: &[String]) -> (String, usize, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "a stream ends with [DONE]: {events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    let last = chunks.last().unwrap().clone();
    (text, chunks.len(), last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_streamed_answers_agree() {
    let s = start(config(4, 16), Duration::ZERO, 64).await;
    let c = client();
    for body in [
        json!({"model": "tiny", "prompt": "hello", "max_tokens": 20, "temperature": 0}),
        json!({"prompt": "hell", "max_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 5}),
    ] {
        let (status, whole) = post(&c, &s.url, body.clone()).await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(whole["object"], "text_completion");
        let usage = &whole["usage"];
        let n = usage["completion_tokens"].as_u64().unwrap() as usize;
        assert!(n >= 1 && n <= body["max_tokens"].as_u64().unwrap() as usize);
        assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + n as u64);
        let finish = whole["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(finish == "length" || finish == "stop");
        let (status, events) = post_stream(&c, &s.url, body.clone()).await;
        assert_eq!(status, 200);
        let (streamed, chunks, last) = joined(&events);
        assert_eq!(streamed, text(&whole), "the same seed gives the same text whole and streamed");
        // One chunk per token, then the finishing chunk with usage.
        assert_eq!(chunks, n + 1);
        assert_eq!(last["choices"][0]["finish_reason"], finish);
        assert_eq!(last["usage"], *usage);
        // And again: deterministic.
        assert_eq!(text(&post(&c, &s.url, body).await.1), streamed);
    }
    // A list of prompts: one choice each, in order.
    let (status, v) = post(&c, &s.url, json!({"prompt": ["hello", "hell"], "max_tokens": 8, "temperature": 0})).await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    let alone = post(&c, &s.url, json!({"prompt": "hell", "max_tokens": 8, "temperature": 0})).await.1;
    assert_eq!(v["choices"][1]["text"], alone["choices"][0]["text"]);
    s.shutdown().await.unwrap();
}

/// A request's text with a fixed seed is the same whether it ran alone or among others joining
/// and leaving the batch at other steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_among_others_equals_it_alone() {
    let s = start(config(4, 64), Duration::ZERO, 64).await;
    let c = client();
    let bodies: Vec<Value> = (0..10)
        .map(|i| {
            let prompt = ["hello", "he", "hell", "o hello", "l"][i % 5];
            let t = if i % 2 == 0 { 0.0 } else { 0.8 };
            json!({"prompt": prompt, "max_tokens": 6 + 3 * i, "temperature": t, "seed": i})
        })
        .collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(text(&post(&c, &s.url, b.clone()).await.1));
    }
    let together = futures_join(&c, &s.url, &bodies).await;
    assert_eq!(together, alone);
    s.shutdown().await.unwrap();
}

async fn futures_join(c: &reqwest::Client, url: &str, bodies: &[Value]) -> Vec<String> {
    let tasks: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (c, url, b) = (c.clone(), url.to_string(), b.clone());
            tokio::spawn(async move { text(&post(&c, &url, b).await.1) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_an_openai_error() {
    let s = start(config(2, 8), Duration::ZERO, 64).await;
    let c = client();
    let limits = s.server.limits();
    let raw = |body: Vec<u8>| {
        let (c, url) = (c.clone(), s.url.clone());
        async move {
            let r = c.post(format!("{url}/v1/completions")).body(body).send().await.unwrap();
            (r.status().as_u16(), serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
        }
    };
    let long_prompt = "hello ".repeat(40);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"prompt\": \"hello\"".to_vec(), 400, "not valid JSON"),
        (b"{\"prompt\": \"he\xffllo\"}".to_vec(), 400, "UTF-8"),
        (b"[1, 2]".to_vec(), 400, "JSON object"),
        (json!({"max_tokens": 4}).to_string().into_bytes(), 400, "`prompt` is required"),
        (json!({"prompt": 5}).to_string().into_bytes(), 400, "`prompt` must be"),
        (json!({"prompt": "hi", "max_tokens": "ten"}).to_string().into_bytes(), 400, "`max_tokens` must be"),
        (json!({"prompt": "hi", "max_tokens": 100000}).to_string().into_bytes(), 400, "limit"),
        (json!({"prompt": "hi", "temperature": 7}).to_string().into_bytes(), 400, "`temperature`"),
        (json!({"prompt": "hi", "stream": "yes"}).to_string().into_bytes(), 400, "`stream` must be"),
        (json!({"prompt": "hi", "n": 3}).to_string().into_bytes(), 400, "`n`"),
        (json!({"prompt": long_prompt, "max_tokens": 4}).to_string().into_bytes(), 400, "limit"),
        (json!({"prompt": "hello", "max_tokens": 62}).to_string().into_bytes(), 400, "context"),
        (json!({"model": "gpt-9", "prompt": "hi"}).to_string().into_bytes(), 404, "does not exist"),
        (vec![b' '; limits.max_body_bytes + 1], 413, "limit"),
    ];
    for (body, status, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (got, v) = raw(body).await;
        assert_eq!(got, status, "{shown}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{shown}: no error message in {v}"));
        assert!(msg.contains(needle), "{shown}: {msg}");
        assert!(v["error"]["type"].is_string());
    }
    let r = c.get(format!("{}/v1/nothing", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = c.get(format!("{}/v1/completions", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    // Still serving.
    assert_eq!(post(&c, &s.url, json!({"prompt": "hi", "max_tokens": 2})).await.0, 200);
    s.shutdown().await.unwrap();
}

/// Past the bounded queue: 429 with Retry-After, never a crash; every request gets an answer
/// or a 429, and the server stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_and_the_server_stays_healthy() {
    // One slot, two waiting places; each request takes ~40 ms (2 ms a token).
    let s = start(config(1, 2), Duration::from_millis(2), 64).await;
    let c = client();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (c, url) = (c.clone(), s.url.clone());
            tokio::spawn(async move {
                let r = c
                    .post(format!("{url}/v1/completions"))
                    .body(json!({"prompt": "hello", "max_tokens": 20, "temperature": 0}).to_string())
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                busy += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(v["error"]["type"], "rate_limit_error");
            }
            other => panic!("status {other}: {v}"),
        }
    }
    assert_eq!(ok + busy, 12);
    assert!(busy > 0 && ok >= 3, "{ok} answered, {busy} refused");
    let health = c.get(format!("{}/health", s.url)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = c.get(format!("{}/ready", s.url)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(post(&c, &s.url, json!({"prompt": "hi", "max_tokens": 2})).await.0, 200);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_request_answers_500_and_the_server_keeps_serving() {
    let s = start(config(2, 8), Duration::ZERO, 64).await;
    let c = client();
    // In the handler (tokenizing).
    let (status, v) = post(&c, &s.url, json!({"prompt": "PANIC_IN_HANDLER", "max_tokens": 2})).await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    // In the engine (detokenizing a generated token): whole and streamed.
    s.codec.panic_in_piece.store(true, Ordering::SeqCst);
    let (status, v) = post(&c, &s.url, json!({"prompt": "hello", "max_tokens": 4})).await;
    assert_eq!(status, 500, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("panicked"), "{v}");
    let (status, events) = post_stream(&c, &s.url, json!({"prompt": "hello", "max_tokens": 4})).await;
    assert_eq!(status, 200);
    assert!(events.iter().any(|e| e.contains("\"error\"")), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    s.codec.panic_in_piece.store(false, Ordering::SeqCst);
    let (status, v) = post(&c, &s.url, json!({"prompt": "hello", "max_tokens": 4})).await;
    assert_eq!(status, 200, "{v}");
    s.shutdown().await.unwrap();
}

/// A client that disconnects mid-stream cancels its generation: tokens stop being made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    // 5 ms a token: 500 tokens would take 2.5 s.
    let s = start(config(2, 8), Duration::from_millis(5), 512).await;
    let c = client();
    let mut r = c
        .post(format!("{}/v1/completions", s.url))
        .body(json!({"prompt": "hello", "max_tokens": 500, "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = s.codec.pieces.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = s.codec.pieces.load(Ordering::SeqCst);
    assert!(made < 200 && later == made, "generation went on after the client left: {made} then {later} tokens");
    // Its slot is free again.
    assert_eq!(post(&c, &s.url, json!({"prompt": "hi", "max_tokens": 3})).await.0, 200);
    s.shutdown().await.unwrap();
}

/// On shutdown, requests in flight finish; new ones are refused; then serve returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let mut s = start(config(2, 8), Duration::from_millis(5), 128).await;
    let c = client();
    let (c2, url) = (c.clone(), s.url.clone());
    let long = tokio::spawn(async move {
        post_stream(&c2, &url, json!({"prompt": "hello", "max_tokens": 60, "temperature": 0})).await
    });
    // Let it start, then signal.
    while s.codec.pieces.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = s.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.server.is_draining());
    // A new request: refused (503), or no longer accepted at all.
    if let Ok(r) = c.post(format!("{}/v1/completions", s.url)).body(json!({"prompt": "hi"}).to_string()).send().await {
        assert_eq!(r.status().as_u16(), 503);
    }
    let (status, events) = long.await.unwrap();
    assert_eq!(status, 200);
    let (_, chunks, last) = joined(&events);
    assert_eq!(last["usage"]["completion_tokens"].as_u64().unwrap() as usize + 1, chunks);
    tokio::time::timeout(Duration::from_secs(10), done).await.expect("serve returns after draining").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_ready_and_metrics() {
    let s = start(config(2, 8), Duration::ZERO, 64).await;
    let c = client();
    assert_eq!(post(&c, &s.url, json!({"prompt": "hello", "max_tokens": 5})).await.0, 200);
    let models: Value =
        serde_json::from_slice(&c.get(format!("{}/v1/models", s.url)).send().await.unwrap().bytes().await.unwrap())
            .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    let ready: Value =
        serde_json::from_slice(&c.get(format!("{}/ready", s.url)).send().await.unwrap().bytes().await.unwrap())
            .unwrap();
    assert_eq!(ready["status"], "ready");
    let m = c.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    for needle in [
        "# TYPE tt_serve_requests_total counter",
        "tt_serve_requests_total{status=\"200\"}",
        "tt_serve_queue_depth",
        "tt_serve_running_batch_size",
        "# TYPE tt_serve_time_to_first_token_seconds histogram",
        "tt_serve_time_to_first_token_seconds_bucket{le=\"0.1\"}",
        "tt_serve_time_per_output_token_seconds_count",
        "tt_serve_generated_tokens_total",
    ] {
        assert!(m.contains(needle), "{needle} missing from:\n{m}");
    }
    s.shutdown().await.unwrap();
}
