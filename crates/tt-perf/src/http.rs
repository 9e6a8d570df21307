//! LoadGen over the network: a [`SystemUnderTest`] that is an HTTP client of any
//! OpenAI-compatible completions endpoint, as MLPerf's LoadGen drives a remote system (its
//! llama2-70b reference posts to `/v1/completions` with `stream: true` the same way).
//!
//! Each sample becomes one `POST {url}/v1/completions` with `stream: true`, sent from a tokio
//! runtime the system owns, so `issue_query` returns at once and Server latency counts from the
//! scheduled arrival. The first Server-Sent Event carrying text is the first token (time to first
//! token); `data: [DONE]` completes the sample with the concatenated text and the number of
//! chunks that carried text as its token count.
//!
//! Every sample is answered exactly once. A request that fails — the connection refused, a
//! non-2xx status (429 when the server is overloaded), a stream that closes early or is not SSE
//! JSON, a request past its timeout — is answered with empty data and counted in [`Failures`];
//! [`judge`] makes a run with any failure INVALID, naming them, since its latencies include
//! answers that are not answers.
//!
//! What it deliberately does not do: speak TLS or HTTP/2 (plain HTTP/1.1: a benchmark client on
//! the server's network), retry (a retried request would hide the overload being measured),
//! honour proxy environment variables (the endpoint is measured, not a proxy), or check the
//! text (accuracy runs keep it in the log for the task's own metric).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::loadgen::{QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, RunLog, SystemUnderTest};
use crate::results::Judged;
use crate::{PerfError, Result};

/// The most bytes one response body may take before it is abandoned as malformed: far above any
/// completion `max_tokens` allows, and a bound on what a misbehaving server can make us hold.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// How to reach the endpoint and what every request asks for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`; requests go to `{url}/v1/completions`.
    pub url: String,
    pub model: String,
    pub max_tokens: u32,
    /// 0 is greedy decoding. An `f64`, so the JSON says `0.7`, not an `f32`'s `0.699999988…`.
    pub temperature: f64,
    /// Sent when set, so sampled answers repeat.
    pub seed: Option<u64>,
    /// Stop sequences; none sent when empty.
    pub stop: Vec<String>,
    /// The longest one request may take, from sending it to `[DONE]`.
    pub timeout: Duration,
    /// Requests in flight at once (the connection pool's size); more wait their turn, and that
    /// wait counts in their latency, as a client's queue would.
    pub max_connections: usize,
}

impl HttpConfig {
    /// Greedy, 64 tokens, no stop sequence, a 60 s timeout and 256 connections, for the model
    /// named `model` at `url`.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> HttpConfig {
        HttpConfig {
            url: url.into(),
            model: model.into(),
            max_tokens: 64,
            temperature: 0.0,
            seed: None,
            stop: Vec::new(),
            timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// Requests that did not end in `data: [DONE]`, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// Non-2xx statuses by code (429: overloaded).
    pub by_status: BTreeMap<u16, u64>,
    /// The request could not be sent: connection refused or reset before a status.
    pub connect: u64,
    /// Past [`HttpConfig::timeout`].
    pub timeout: u64,
    /// The stream ended, or the connection broke, before `data: [DONE]`.
    pub closed: u64,
    /// Not a Server-Sent Events stream of completion chunks: an event that is not JSON, an
    /// error object, a body over [`MAX_BODY_BYTES`]. Also a sample outside the prompt library
    /// the system was made with (a run given another library; nothing is sent).
    pub malformed: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.connect + self.timeout + self.closed + self.malformed
    }

    fn record(&mut self, f: Failure) {
        match f {
            Failure::Status(code) => *self.by_status.entry(code).or_default() += 1,
            Failure::Connect => self.connect += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Closed => self.closed += 1,
            Failure::Malformed => self.malformed += 1,
        }
    }
}

impl std::fmt::Display for Failures {
    /// `none`, or e.g. `3 (HTTP 429: 2, timeout: 1)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.total() == 0 {
            return write!(f, "none");
        }
        let mut parts: Vec<String> = self.by_status.iter().map(|(c, n)| format!("HTTP {c}: {n}")).collect();
        for (what, n) in [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("closed", self.closed),
            ("malformed", self.malformed),
        ] {
            if n > 0 {
                parts.push(format!("{what}: {n}"));
            }
        }
        write!(f, "{} ({})", self.total(), parts.join(", "))
    }
}

/// Why one request failed.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Status(u16),
    Connect,
    Timeout,
    Closed,
    Malformed,
}

/// [`crate::results::judge`], and a run with any failed request is INVALID, the failures named
/// among its failed rules: a 429 answered in a millisecond would otherwise lower the latencies
/// and raise the rate.
///
/// # Errors
/// As [`crate::results::judge`].
pub fn judge(log: RunLog, failures: &Failures) -> Result<Judged> {
    let mut j = crate::results::judge(log)?;
    if failures.total() > 0 {
        j.failed_rules.push(format!(
            "failed requests: {failures} of {} samples were answered with no text",
            j.log.sample_latencies_ns.len()
        ));
        j.valid = false;
    }
    Ok(j)
}

/// `{base}/{path}`, for a base URL that is `http://`.
///
/// # Errors
/// [`PerfError::InvalidSetting`] (`url`): not a URL, or not `http://` (no TLS here).
fn route(base: &str, path: &str) -> Result<reqwest::Url> {
    let bad = |reason: String| Err(PerfError::InvalidSetting { field: "url", reason });
    match reqwest::Url::parse(&format!("{}/{path}", base.trim_end_matches('/'))) {
        Ok(u) if u.scheme() == "http" => Ok(u),
        Ok(u) => bad(format!("{base}: only http:// is supported, not {}://", u.scheme())),
        Err(e) => bad(format!("{base:?} is not a URL: {e}")),
    }
}

/// The models an OpenAI-compatible server lists at `GET {url}/v1/models` (each `data[].id`):
/// whether the server is there, and what to name in requests.
///
/// # Errors
/// [`PerfError::InvalidSetting`] (`url`) as [`HttpSut::new`]; [`PerfError::Sut`] when the
/// server cannot be reached within `timeout`, answers a non-2xx status, or not with a model list.
pub fn list_models(url: &str, timeout: Duration) -> Result<Vec<String>> {
    let endpoint = route(url, "v1/models")?;
    let sut = |e: String| PerfError::Sut(format!("GET {endpoint}: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PerfError::Sut(format!("starting the HTTP client's runtime: {e}")))?;
    let body = runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().timeout(timeout).build().map_err(|e| sut(e.to_string()))?;
        let mut response =
            client.get(endpoint.clone()).send().await.map_err(|e| sut(format!("cannot reach the server: {e}")))?;
        if !response.status().is_success() {
            return Err(sut(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(b) = response.chunk().await.map_err(|e| sut(e.to_string()))? {
            body.extend_from_slice(&b);
            if body.len() > MAX_BODY_BYTES {
                return Err(sut(format!("the answer is over {MAX_BODY_BYTES} bytes")));
            }
        }
        Ok(body)
    })?;
    let list: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| sut(format!("the answer is not JSON: {e}")))?;
    let ids = list["data"].as_array().ok_or_else(|| sut("the answer has no \"data\" list of models".into()))?;
    Ok(ids.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect())
}

/// A query sample library of text prompts, all held in memory; [`HttpSut::new`] shares them.
#[derive(Debug, Clone)]
pub struct PromptLibrary {
    prompts: Arc<[String]>,
}

impl PromptLibrary {
    /// # Errors
    /// [`PerfError::Settings`] for an empty list.
    pub fn new(prompts: Vec<String>) -> Result<PromptLibrary> {
        if prompts.is_empty() {
            return Err(PerfError::Settings("a prompt library needs at least one prompt".into()));
        }
        Ok(PromptLibrary { prompts: prompts.into() })
    }

    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    fn check(&self, indices: &[usize]) -> Result<()> {
        match indices.iter().find(|&&i| i >= self.prompts.len()) {
            Some(i) => Err(PerfError::Settings(format!("prompt {i} requested of {}", self.prompts.len()))),
            None => Ok(()),
        }
    }
}

impl QuerySampleLibrary for PromptLibrary {
    fn name(&self) -> String {
        format!("{} prompts", self.prompts.len())
    }
    fn total_sample_count(&self) -> usize {
        self.prompts.len()
    }
    fn performance_sample_count(&self) -> usize {
        self.prompts.len()
    }
    fn load_samples(&mut self, indices: &[usize]) -> Result<()> {
        self.check(indices)
    }
    fn unload_samples(&mut self, indices: &[usize]) -> Result<()> {
        self.check(indices)
    }
}

/// What every request task shares.
struct Inner {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    config: HttpConfig,
    prompts: Arc<[String]>,
    permits: Semaphore,
    failures: Mutex<Failures>,
}

/// The HTTP system under test. Dropping it cancels requests still in flight (LoadGen has
/// returned by then: every sample answered, or the run failed).
pub struct HttpSut {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Runtime,
}

impl HttpSut {
    /// A client of the endpoint at `config.url` for the prompts of `library`. Nothing is sent
    /// until the first query.
    ///
    /// # Errors
    /// [`PerfError::InvalidSetting`] naming the field: a URL that does not parse or is not
    /// `http://` (no TLS here), no connections or more than a semaphore holds, a zero timeout or
    /// `max_tokens`, a temperature that is negative or not finite; [`PerfError::Sut`] if the
    /// runtime or client cannot start.
    pub fn new(config: HttpConfig, library: &PromptLibrary) -> Result<HttpSut> {
        let bad = |field, reason: String| Err(PerfError::InvalidSetting { field, reason });
        let endpoint = route(&config.url, "v1/completions")?;
        if config.max_connections == 0 || config.max_connections > Semaphore::MAX_PERMITS {
            return bad(
                "max_connections",
                format!("{} is outside 1..={}", config.max_connections, Semaphore::MAX_PERMITS),
            );
        }
        if config.timeout.is_zero() {
            return bad("timeout", "must be above zero".into());
        }
        if config.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if !(config.temperature.is_finite() && config.temperature >= 0.0) {
            return bad("temperature", format!("{} must be a finite number ≥ 0", config.temperature));
        }
        // The client's work is waiting on sockets and splitting small events: two threads keep
        // up with many streams and leave the other cores to a server on the same machine.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tt-perf-http")
            .enable_all()
            .build()
            .map_err(|e| PerfError::Sut(format!("starting the HTTP client's runtime: {e}")))?;
        let client = {
            let _in_runtime = runtime.enter();
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(config.max_connections)
                .connect_timeout(config.timeout)
                .build()
                .map_err(|e| PerfError::Sut(format!("building the HTTP client: {e}")))?
        };
        let inner = Inner {
            client,
            endpoint,
            permits: Semaphore::new(config.max_connections),
            config,
            prompts: library.prompts.clone(),
            failures: Mutex::new(Failures::default()),
        };
        Ok(HttpSut { inner: Arc::new(inner), runtime })
    }

    /// The failures since the system was made or last [taken](HttpSut::take_failures). Every
    /// failure of a sample is counted before the sample is answered, so after a run returns its
    /// failures are all here.
    pub fn failures(&self) -> Failures {
        self.inner.failures.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The failures so far, and a fresh count from here (one count per run).
    pub fn take_failures(&self) -> Failures {
        std::mem::take(&mut *self.inner.failures.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl SystemUnderTest for HttpSut {
    fn name(&self) -> String {
        format!("{} at {}", self.inner.config.model, self.inner.endpoint)
    }

    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        for &s in samples {
            self.runtime.spawn(answer(self.inner.clone(), s, responder.clone()));
        }
    }
}

/// Sends one sample and answers it, whatever happens.
async fn answer(inner: Arc<Inner>, sample: QuerySample, responder: Responder) {
    // The semaphore is never closed, so this holds a permit until the exchange ends.
    let _permit = inner.permits.acquire().await;
    let outcome = match tokio::time::timeout(inner.config.timeout, exchange(&inner, sample, &responder)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    };
    let (data, tokens) = match outcome {
        Ok((text, chunks)) => (text.into_bytes(), Some(chunks)),
        Err(f) => {
            inner.failures.lock().unwrap_or_else(|e| e.into_inner()).record(f);
            (Vec::new(), None)
        }
    };
    responder.complete(&[QuerySampleResponse { id: sample.id, data, tokens }]);
}

/// One streamed completion: its text and the number of chunks that carried text.
async fn exchange(
    inner: &Inner,
    sample: QuerySample,
    responder: &Responder,
) -> std::result::Result<(String, u32), Failure> {
    let c = &inner.config;
    // LoadGen hands out indices of the library this system was made with.
    let prompt = inner.prompts.get(sample.index).ok_or(Failure::Malformed)?;
    let mut body = serde_json::json!({
        "model": c.model,
        "prompt": prompt,
        "max_tokens": c.max_tokens,
        "temperature": c.temperature,
        "stream": true,
    });
    if let Some(seed) = c.seed {
        body["seed"] = seed.into();
    }
    if !c.stop.is_empty() {
        body["stop"] = c.stop.clone().into();
    }
    let request = inner
        .client
        .post(inner.endpoint.clone())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_string());
    let mut response =
        request.send().await.map_err(|e| if e.is_timeout() { Failure::Timeout } else { Failure::Connect })?;
    if !response.status().is_success() {
        return Err(Failure::Status(response.status().as_u16()));
    }
    let mut events = SseEvents::default();
    let (mut text, mut chunks, mut read) = (String::new(), 0u32, 0usize);
    loop {
        let bytes = match response.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Failure::Closed),
            Err(e) if e.is_timeout() => return Err(Failure::Timeout),
            Err(_) => return Err(Failure::Closed),
        };
        read += bytes.len();
        if read > MAX_BODY_BYTES {
            return Err(Failure::Malformed);
        }
        for data in events.push(&bytes)? {
            match chunk_text(&data)? {
                Chunk::Done => return Ok((text, chunks)),
                Chunk::Text(t) if !t.is_empty() => {
                    if chunks == 0 {
                        responder.first_token(sample.id);
                    }
                    chunks = chunks.saturating_add(1);
                    text.push_str(&t);
                }
                Chunk::Text(_) => {}
            }
        }
    }
}

/// A Server-Sent Events parser over a byte stream split anywhere: it yields each event's data
/// (its `data:` lines joined by `\n`) when the blank line ending the event arrives.
#[derive(Debug, Default)]
struct SseEvents {
    pending: Vec<u8>,
    data: Option<String>,
}

impl SseEvents {
    fn push(&mut self, bytes: &[u8]) -> std::result::Result<Vec<String>, Failure> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(n) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + n];
            start += n + 1;
            let line = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)).map_err(|_| Failure::Malformed)?;
            if line.is_empty() {
                out.extend(self.data.take());
            } else if let Some(v) = line.strip_prefix("data:") {
                let v = v.strip_prefix(' ').unwrap_or(v);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(v);
                    }
                    None => self.data = Some(v.to_string()),
                }
            }
            // Comments (`:`) and the other fields (event, id, retry) carry no completion text.
        }
        self.pending.drain(..start);
        Ok(out)
    }
}

enum Chunk {
    Text(String),
    Done,
}

/// An event's data: `[DONE]`, or a completion chunk whose `choices[0].text` is its new text (a
/// chunk without it, such as a final one with only `usage`, adds nothing).
fn chunk_text(data: &str) -> std::result::Result<Chunk, Failure> {
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let v: serde_json::Value = serde_json::from_str(data).map_err(|_| Failure::Malformed)?;
    if v.get("error").is_some() {
        return Err(Failure::Malformed);
    }
    match v.pointer("/choices/0/text") {
        None => Ok(Chunk::Text(String::new())),
        Some(serde_json::Value::String(t)) => Ok(Chunk::Text(t.clone())),
        Some(_) => Err(Failure::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_join_their_data_lines() {
        let stream =
            b": hi\r\ndata: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\ndata: x\ndata: y\nid: 3\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut p = SseEvents::default();
            let mut got = p.push(&stream[..cut]).unwrap();
            got.extend(p.push(&stream[cut..]).unwrap());
            assert_eq!(got, ["{\"choices\":[{\"text\":\"a\"}]}", "x\ny", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn chunks_give_text_done_or_malformed() {
        assert!(matches!(chunk_text("[DONE]"), Ok(Chunk::Done)));
        assert!(matches!(chunk_text(r#"{"choices":[{"text":"b"}]}"#), Ok(Chunk::Text(t)) if t == "b"));
        assert!(matches!(chunk_text(r#"{"choices":[],"usage":{}}"#), Ok(Chunk::Text(t)) if t.is_empty()));
        assert!(matches!(chunk_text("not json"), Err(Failure::Malformed)));
        assert!(matches!(chunk_text(r#"{"error":{"message":"x"}}"#), Err(Failure::Malformed)));
        assert!(matches!(chunk_text(r#"{"choices":[{"text":3}]}"#), Err(Failure::Malformed)));
    }

    #[test]
    fn bad_configs_are_errors_naming_the_field() {
        let lib = PromptLibrary::new(vec!["p".into()]).unwrap();
        let field = |c: HttpConfig| match HttpSut::new(c, &lib) {
            Err(PerfError::InvalidSetting { field, .. }) => field,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        };
        let ok = HttpConfig::new("http://127.0.0.1:9", "m");
        assert_eq!(field(HttpConfig { url: "not a url".into(), ..ok.clone() }), "url");
        assert_eq!(field(HttpConfig { url: "https://127.0.0.1".into(), ..ok.clone() }), "url");
        assert_eq!(field(HttpConfig { max_connections: 0, ..ok.clone() }), "max_connections");
        assert_eq!(field(HttpConfig { timeout: Duration::ZERO, ..ok.clone() }), "timeout");
        assert_eq!(field(HttpConfig { max_tokens: 0, ..ok.clone() }), "max_tokens");
        assert_eq!(field(HttpConfig { max_connections: usize::MAX, ..ok.clone() }), "max_connections");
        assert_eq!(field(HttpConfig { temperature: f64::NAN, ..ok.clone() }), "temperature");
        assert!(HttpSut::new(ok, &lib).is_ok());
        assert!(PromptLibrary::new(Vec::new()).is_err());
    }

    #[test]
    fn failures_sum_and_print_by_cause() {
        let mut f = Failures::default();
        assert_eq!(f.to_string(), "none");
        for x in [Failure::Status(429), Failure::Status(429), Failure::Timeout, Failure::Closed] {
            f.record(x);
        }
        assert_eq!(f.total(), 4);
        assert_eq!(f.to_string(), "4 (HTTP 429: 2, timeout: 1, closed: 1)");
    }
}
