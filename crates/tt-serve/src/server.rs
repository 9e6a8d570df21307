//! The HTTP server: a few axum handlers over shared state, and one engine thread that owns the
//! decoder and runs the [`Batcher`].
//!
//! A completion request is parsed and checked ([`crate::api`]), tokenized, and sent to the engine
//! thread as one [`Job`] per prompt, each with a channel back; the handler answers from that
//! channel, whole or as Server-Sent Events. The engine thread admits queued jobs into free slots
//! before every step. A handler that goes away (the client disconnected) drops its channel; the
//! job's sink then stops its generation at the next token (or it is dropped unrun from the
//! queue).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower_http::catch_panic::CatchPanicLayer;
use tt_kvcache::{CachedGpt, KvStorage, OverflowPolicy};
use tt_models::open::TextCodec;
use tt_tensor::kernels::RowKernels;
use tt_transformer::generate::Sampling;
use tt_transformer::Gpt;

use crate::api::{self, ApiError, CompletionRequest, FinishReason, Limits};
use crate::batcher::{panic_message, Batcher, Finish, Job, Refused, Sink};
use crate::metrics::Metrics;
use crate::ServeError;

/// What the server runs.
pub struct ServeModel {
    /// The name clients ask for (`model`) and `/v1/models` lists.
    pub name: String,
    pub model: Gpt,
    pub codec: Arc<dyn TextCodec>,
    /// The decoder's row kernels (e.g. tt-accel's fused set).
    pub kernels: RowKernels,
    pub kv: KvStorage,
}

/// How the server schedules.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Requests decoded side by side (the decoder's slots).
    pub max_batch: usize,
    pub limits: Limits,
    /// The compute threads the engine's steps split over (installed on the engine thread, which
    /// is the team's member 0: see `tt_accel::team::install`); `None`: the engine thread alone.
    /// The HTTP threads only parse, queue and write.
    pub team: Option<Arc<tt_accel::team::Team>>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig { max_batch: 16, limits: Limits::default(), team: None }
    }
}

/// What the engine sends back to a request's handler.
#[derive(Debug)]
enum Out {
    /// New text of one token (possibly empty: part of a character, or held back while it may
    /// begin a stop string).
    Text(String),
    Done {
        finish: FinishReason,
        completion_tokens: usize,
    },
    Failed(String),
}

struct Shared {
    name: String,
    codec: Arc<dyn TextCodec>,
    context: usize,
    limits: Limits,
    jobs: Mutex<Option<mpsc::Sender<Job<ServerSink>>>>,
    /// Jobs sent and not yet admitted into a slot.
    queued: AtomicUsize,
    running: AtomicUsize,
    draining: AtomicBool,
    /// Cleared when the engine thread ends (its loop returned, or a panic escaped it): the
    /// server can no longer answer, and `/ready` says so.
    engine_alive: AtomicBool,
    next_id: AtomicU64,
    metrics: Metrics,
}

/// A running server's state and its engine thread. Dropping it stops the engine once its
/// requests have ended.
pub struct Server {
    shared: Arc<Shared>,
    engine: Option<JoinHandle<()>>,
}

impl Server {
    /// Builds the decoder (`max_batch` slots over the model's whole context) and starts the
    /// engine thread.
    ///
    /// # Errors
    /// A zero batch or queue, or a decoder that cannot be built for the model.
    pub fn start(m: ServeModel, config: ServeConfig) -> Result<Server, ServeError> {
        if config.max_batch == 0 || config.limits.max_queue == 0 {
            return Err(ServeError::Config("--max-batch and --max-queue must be at least 1".into()));
        }
        let context = m.model.config.max_seq_len;
        let mut engine = CachedGpt::new(&m.model, config.max_batch, OverflowPolicy::Error)?;
        engine.set_row_kernels(m.kernels);
        engine.set_kv_storage(m.kv)?;
        let limits = Limits {
            max_prompt_tokens: config.limits.max_prompt_tokens.min(context.saturating_sub(1)),
            max_tokens: config.limits.max_tokens.min(context.saturating_sub(1)),
            ..config.limits
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            name: m.name,
            codec: m.codec,
            context,
            limits,
            jobs: Mutex::new(Some(tx)),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            engine_alive: AtomicBool::new(true),
            next_id: AtomicU64::new(0),
            metrics: Metrics::get(),
        });
        let s = Arc::clone(&shared);
        let batcher = Batcher::new(engine);
        let team = config.team.clone();
        let engine = std::thread::Builder::new()
            .name("tt-serve-engine".into())
            .spawn(move || {
                // Set on the way out, also when unwinding.
                struct Alive<'a>(&'a AtomicBool);
                impl Drop for Alive<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let _alive = Alive(&s.engine_alive);
                tt_accel::team::install(team, || engine_loop(batcher, rx, &s))
            })
            .map_err(|e| ServeError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Server { shared, engine: Some(engine) })
    }

    /// The limits in force (the configured ones, capped by the model's context).
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The routes, over this server's state.
    pub fn router(&self) -> Router {
        let s = Arc::clone(&self.shared);
        Router::new()
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route").with_code("not_found") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method")
            })
            .layer(middleware::from_fn_with_state(Arc::clone(&s), count_status))
            // A handler's panic answers 500 (as an OpenAI error) and the server keeps serving.
            .layer(CatchPanicLayer::custom(|p: Box<dyn std::any::Any + Send>| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {}", panic_message(&*p)))
                    .into_response()
            }))
            .with_state(s)
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: new requests get 503, the
    /// requests in flight finish, and it returns.
    ///
    /// # Errors
    /// The listener's I/O errors.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let s = Arc::clone(&self.shared);
        // Each token is a small write: without TCP_NODELAY, Nagle's algorithm holds it until the
        // client's delayed ACK (~40 ms on Linux), which would be most of a short answer's latency.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                s.draining.store(true, Ordering::SeqCst);
            })
            .await
    }

    /// Whether it is refusing new requests (shutting down).
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the channel ends the engine loop once it has nothing left to run.
        self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.engine.take() {
            let _ = h.join();
        }
    }
}

/// The engine thread: admit waiting jobs into free slots, step, repeat; sleep on the channel
/// when nothing runs; return once the channel is closed and nothing runs.
fn engine_loop(mut batcher: Batcher<ServerSink>, rx: mpsc::Receiver<Job<ServerSink>>, s: &Shared) {
    let mut waiting: VecDeque<Job<ServerSink>> = VecDeque::new();
    loop {
        waiting.extend(rx.try_iter());
        while batcher.running() < batcher.slots() {
            let Some(job) = waiting.pop_front() else { break };
            s.queued.fetch_sub(1, Ordering::SeqCst);
            if job.sink.gone() {
                // Its client left while it waited: nothing to run, nobody to answer.
                continue;
            }
            match batcher.admit(job) {
                Ok(()) => {}
                Err(Refused::Full(job)) => {
                    s.queued.fetch_add(1, Ordering::SeqCst);
                    waiting.push_front(job);
                    break;
                }
                Err(Refused::Invalid(why, mut job)) => job.sink.finish(Finish::Error(why), &[]),
            }
        }
        s.running.store(batcher.running(), Ordering::SeqCst);
        s.metrics.set_batch(batcher.running(), s.queued.load(Ordering::SeqCst));
        if batcher.running() == 0 {
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
            continue;
        }
        batcher.step();
    }
}

/// A job's sink on the engine thread: turns tokens into text (whole UTF-8 characters, stop
/// strings cut off and held back while they may be starting), sends it to the handler, and
/// records the timing metrics.
struct ServerSink {
    codec: Arc<dyn TextCodec>,
    tx: UnboundedSender<Out>,
    stop_tokens: Vec<usize>,
    stop: Vec<String>,
    prev: usize,
    /// Bytes of a character not yet complete.
    pending: Vec<u8>,
    text: String,
    /// Bytes of `text` sent.
    sent: usize,
    /// A stop string matched: the rest is not sent.
    stopped: bool,
    arrived: Instant,
    last: Option<Instant>,
    metrics: Metrics,
}

impl ServerSink {
    fn gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// Moves the complete characters of `pending` into `text` (invalid bytes as U+FFFD).
    fn take_chars(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(t) => {
                    self.text.push_str(t);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    // Valid by `valid_up_to`.
                    self.text.push_str(std::str::from_utf8(&self.pending[..ok]).expect("valid prefix"));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push('\u{FFFD}');
                            self.pending.drain(..ok + bad);
                        }
                        None if flush => {
                            self.text.push('\u{FFFD}');
                            self.pending.clear();
                            return;
                        }
                        None => {
                            self.pending.drain(..ok);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The text safe to send now: up to a stop string (then `stopped`), else all but a tail
    /// that may begin one.
    fn sendable(&mut self) -> usize {
        if let Some(cut) = self.stop.iter().filter_map(|s| self.text[self.sent..].find(s.as_str())).min() {
            self.stopped = true;
            return self.sent + cut;
        }
        let mut hold = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        (self.text.len() - hold).max(self.sent)
    }
}

impl Sink for ServerSink {
    fn token(&mut self, token: usize) -> bool {
        let now = Instant::now();
        match self.last {
            None => self.metrics.first_token(now - self.arrived),
            Some(t) => self.metrics.next_token(now - t),
        }
        self.last = Some(now);
        if !self.stop_tokens.contains(&token) {
            match self.codec.piece(self.prev, token) {
                Ok(bytes) => self.pending.extend_from_slice(&bytes),
                Err(e) => {
                    let _ = self.tx.send(Out::Failed(format!("detokenizing failed: {e}")));
                    return false;
                }
            }
            self.prev = token;
            self.take_chars(false);
        }
        let end = self.sendable();
        let chunk = self.text[self.sent..end].to_string();
        self.sent = end;
        self.tx.send(Out::Text(chunk)).is_ok() && !self.stopped
    }

    fn finish(&mut self, end: Finish, tokens: &[usize]) {
        self.metrics.tokens(tokens.len());
        let finish = match end {
            Finish::Error(why) => {
                let _ = self.tx.send(Out::Failed(why));
                return;
            }
            Finish::Length => FinishReason::Length,
            Finish::StopToken | Finish::Sink => FinishReason::Stop,
        };
        if !self.stopped {
            self.take_chars(true);
            let end = self.sendable();
            if end > self.sent {
                let _ = self.tx.send(Out::Text(self.text[self.sent..end].to_string()));
                self.sent = end;
            }
        }
        let finish = if self.stopped { FinishReason::Stop } else { finish };
        let _ = self.tx.send(Out::Done { finish, completion_tokens: tokens.len() });
    }
}

/// Counts every answer by status.
async fn count_status(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    s.metrics.request(r.status().as_u16());
    r
}

async fn models(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "tinytorch-rs"}]}),
    )
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let queued = s.queued.load(Ordering::SeqCst);
    let state = json!({"queued": queued, "running": s.running.load(Ordering::SeqCst), "max_queue": s.limits.max_queue});
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining", "detail": state}))).into_response();
    }
    if !s.engine_alive.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "engine stopped", "detail": state})))
            .into_response();
    }
    if queued >= s.limits.max_queue {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "queue full", "detail": state})))
            .into_response();
    }
    Json(json!({"status": "ready", "detail": state})).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let text = s.metrics.render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// One prompt's job, on its way to the engine.
struct Sent {
    prompt_tokens: usize,
    rx: UnboundedReceiver<Out>,
}

async fn completions(State(s): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    if s.draining.load(Ordering::SeqCst) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").retry_after(1));
    }
    let limit = s.limits.max_body_bytes;
    let body = to_bytes(req.into_body(), limit).await.map_err(|_| api::too_large(limit))?;
    let r = api::parse_request(&body, &s.limits)?;
    if let Some(m) = r.model.as_deref().filter(|m| *m != s.name) {
        return Err(ApiError::invalid(
            "model",
            format!("the model `{m}` does not exist; this server serves `{}`", s.name),
        )
        .with_code("model_not_found")
        .with_status(StatusCode::NOT_FOUND));
    }
    let sent = submit(&s, &r, arrived)?;
    let id = format!("cmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if r.stream {
        return Ok(stream(s, id, created, sent));
    }
    let mut choices = Vec::with_capacity(sent.len());
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (i, mut one) in sent.into_iter().enumerate() {
        let mut text = String::new();
        prompt_tokens += one.prompt_tokens;
        loop {
            match one.rx.recv().await {
                Some(Out::Text(t)) => text.push_str(&t),
                Some(Out::Done { finish, completion_tokens: n }) => {
                    completion_tokens += n;
                    choices.push(api::choice(i, &text, Some(finish)));
                    break;
                }
                Some(Out::Failed(why)) => return Err(internal(&why)),
                None => return Err(internal("the engine stopped")),
            }
        }
    }
    let u = api::usage(prompt_tokens, completion_tokens);
    Ok(Json(api::completion(&id, created, &s.name, choices, Some(u))).into_response())
}

fn internal(why: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("generation failed: {why}"))
}

/// Tokenizes and checks every prompt, then queues one job each — all or none: past the queue's
/// bound, 429.
fn submit(s: &Shared, r: &CompletionRequest, arrived: Instant) -> Result<Vec<Sent>, ApiError> {
    let mut prompts = Vec::with_capacity(r.prompts.len());
    for p in &r.prompts {
        let ids = s
            .codec
            .encode_prompt(p)
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))?;
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        if ids.len() > s.limits.max_prompt_tokens {
            return Err(ApiError::invalid(
                "prompt",
                format!("the prompt is {} tokens; this server's limit is {}", ids.len(), s.limits.max_prompt_tokens),
            ));
        }
        if ids.len() + r.max_tokens > s.context {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "the prompt ({} tokens) plus max_tokens ({}) exceeds the model's context of {} tokens",
                    ids.len(),
                    r.max_tokens,
                    s.context
                ),
            ));
        }
        prompts.push(ids);
    }
    let n = prompts.len();
    let max = s.limits.max_queue;
    if s.queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q + n <= max).then_some(q + n)).is_err() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the server is at capacity ({max} requests waiting); retry later"),
        )
        .retry_after(1));
    }
    let sampling = if r.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample { temperature: r.temperature, top_k: None, top_p: r.top_p }
    };
    let jobs = s.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let mut sent = Vec::with_capacity(n);
    for (k, prompt) in prompts.into_iter().enumerate() {
        let (tx, rx) = unbounded_channel();
        let sink = ServerSink {
            codec: Arc::clone(&s.codec),
            tx,
            stop_tokens: s.codec.stop_tokens(),
            stop: r.stop.clone(),
            prev: *prompt.last().expect("checked non-empty"),
            pending: Vec::new(),
            text: String::new(),
            sent: 0,
            stopped: false,
            arrived,
            last: None,
            metrics: s.metrics.clone(),
        };
        s.metrics.prompt_tokens(prompt.len());
        let job = Job {
            prompt,
            max_new_tokens: r.max_tokens,
            sampling,
            seed: r.seed,
            stop_tokens: sink.stop_tokens.clone(),
            sink,
        };
        let prompt_tokens = job.prompt.len();
        let ok = jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !ok {
            s.queued.fetch_sub(n - k, Ordering::SeqCst);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").retry_after(1));
        }
        sent.push(Sent { prompt_tokens, rx });
    }
    Ok(sent)
}

/// The answer as Server-Sent Events: a chunk per token per prompt, each prompt's last chunk with
/// its `finish_reason` and `usage`, then `data: [DONE]`. A failure mid-stream is sent as an
/// `error` object (the status line is long gone) before `[DONE]`.
fn stream(s: Arc<Shared>, id: String, created: u64, sent: Vec<Sent>) -> Response {
    let (tx, rx) = unbounded_channel::<Result<SseEvent, Infallible>>();
    tokio::spawn(async move {
        // Prompts one after another: their jobs run side by side; the stream sends in order.
        for (i, mut one) in sent.into_iter().enumerate() {
            loop {
                let ev = match one.rx.recv().await {
                    Some(Out::Text(t)) => api::completion(&id, created, &s.name, vec![api::choice(i, &t, None)], None),
                    Some(Out::Done { finish, completion_tokens }) => {
                        let u = api::usage(one.prompt_tokens, completion_tokens);
                        let v = api::completion(&id, created, &s.name, vec![api::choice(i, "", Some(finish))], Some(u));
                        if tx.send(Ok(SseEvent::default().data(v.to_string()))).is_err() {
                            return;
                        }
                        break;
                    }
                    Some(Out::Failed(why)) => internal(&why).body(),
                    None => internal("the engine stopped").body(),
                };
                let failed = ev.get("error").is_some();
                // The client left: dropping `one.rx` stops its generation at the next token.
                if tx.send(Ok(SseEvent::default().data(ev.to_string()))).is_err() {
                    return;
                }
                if failed {
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
    });
    Sse::new(UnboundedReceiverStream::new(rx)).into_response()
}
