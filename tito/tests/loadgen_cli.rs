//! `tito loadgen` as a user runs it, against a mock OpenAI-compatible server on loopback started
//! here: a SingleStream and a Server run write `mlperf_log_summary.txt`, the course's questions
//! are sent with a newline stop; bad flags and an unreachable URL are one-line errors.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_stream::wrappers::ReceiverStream;

type Requests = Arc<Mutex<Vec<serde_json::Value>>>;

/// Streams " yes" then "\n" as two chunks, 2 ms apart, then `[DONE]`.
async fn completions(State(seen): State<Requests>, Json(req): Json<serde_json::Value>) -> impl IntoResponse {
    seen.lock().unwrap().push(req);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        for text in [" yes", "\n"] {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let chunk = serde_json::json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]});
            let _ = tx.send(Ok(format!("data: {chunk}\n\n"))).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
    });
    ([("content-type", "text/event-stream")], Body::from_stream(ReceiverStream::new(rx)))
}

fn mock() -> (tokio::runtime::Runtime, SocketAddr, Requests) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Requests::default();
    let models = || async { Json(serde_json::json!({"object": "list", "data": [{"id": "course-gpt"}]})) };
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(seen.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, addr, seen)
}

/// Runs tito, killing it if it outlives `limit`: exit code, stdout, stderr.
fn tito(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tito runs");
    let t0 = Instant::now();
    while child.try_wait().expect("tito's status").is_none() {
        if t0.elapsed() > limit {
            child.kill().expect("kill tito");
            panic!("tito {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("tito's output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn loadgen_runs_scenarios_over_http_and_writes_the_summary() {
    let (_server, addr, seen) = mock();
    let url = format!("http://{addr}");
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(30);

    let single = dir.path().join("single");
    let args = ["--scenario", "SingleStream", "--duration-ms", "100", "--min-queries", "8"];
    let (code, out, err) =
        tito(&[&["loadgen", "--url", &url][..], &args, &["--out", single.to_str().unwrap()]].concat(), limit);
    assert_eq!(code, 0, "{err}");
    let summary = std::fs::read_to_string(single.join("mlperf_log_summary.txt")).unwrap();
    assert!(summary.contains("Result is"), "{summary}");
    assert!(summary.contains("Scenario : SingleStream"), "{summary}");
    assert!(summary.contains("First Token latency"), "time to first token is reported: {summary}");
    assert!(single.join("mlperf_log_detail.json").exists());
    assert!(out.contains("Result is") && out.contains("Failed requests : none"), "{out}");
    {
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 8);
        let r = &seen[0];
        assert_eq!(r["model"], "course-gpt", "the server's first listed model");
        assert_eq!(r["stream"], true);
        assert_eq!(r["stop"], serde_json::json!(["\n"]), "course answers end at the newline");
        let prompt = r["prompt"].as_str().unwrap();
        assert!(prompt.starts_with("Q: ") && prompt.ends_with("\nA:"), "a course question: {prompt:?}");
    }

    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "hello\n\nworld\n").unwrap();
    let server = dir.path().join("server");
    let (code, out, err) = tito(
        &[
            "loadgen",
            "--url",
            &url,
            "--scenario",
            "Server",
            "--target-qps",
            "100",
            "--duration-ms",
            "200",
            "--min-queries",
            "10",
            "--prompts",
            prompts.to_str().unwrap(),
            "--model",
            "named",
            "--out",
            server.to_str().unwrap(),
        ],
        limit,
    );
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(server.join("mlperf_log_summary.txt")).unwrap().contains("Result is"));
    assert!(out.contains("Scenario : Server"), "{out}");
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last["model"], "named");
    assert!(["hello", "world"].contains(&last["prompt"].as_str().unwrap()), "{last}");
    assert!(last.get("stop").is_none(), "no stop sequence with --prompts: {last}");
}

#[test]
fn bad_flags_and_unreachable_servers_are_one_line_errors() {
    let limit = Duration::from_secs(30);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--url", &format!("http://{free}"), "--scenario", "Offline"], "cannot reach the server"),
        (&["--url", "ftp://127.0.0.1:1", "--scenario", "Offline"], "only http://"),
        (&["--url", "http://127.0.0.1:1", "--scenario", "SingleStream", "--target-qps", "5"], "--target-qps applies"),
        (&["--url", "http://127.0.0.1:1", "--scenario", "Server", "--prompts", "/nonexistent/p.txt"], "--prompts"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = tito(&[&["loadgen"], args].concat(), limit);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.starts_with("tito: error: loadgen: ") && err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
