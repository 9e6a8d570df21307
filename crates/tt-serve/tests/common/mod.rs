//! A small llama2.c model (random weights, byte-fallback tokenizer) the tests write, and a server
//! over it on a loopback port.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tt_kvcache::KvStorage;
use tt_models::open::{open, CodecKind, TextCodec};
use tt_serve::api::Limits;
use tt_serve::server::{ServeConfig, ServeModel, Server};
use tt_tensor::kernels::RowKernels;

/// The codec of the opened model, with hooks the tests pull: a panic while tokenizing or while
/// detokenizing, a delay per token (a slow generation), and a count of tokens detokenized.
pub struct Hooked {
    pub inner: Box<dyn TextCodec>,
    pub panic_in_piece: AtomicBool,
    pub delay: Duration,
    pub pieces: AtomicUsize,
}

impl TextCodec for Hooked {
    fn encode_prompt(&self, text: &str) -> tt_models::Result<Vec<usize>> {
        assert!(!text.contains("PANIC_IN_HANDLER"), "a test's panic while tokenizing");
        self.inner.encode_prompt(text)
    }
    fn piece(&self, prev: usize, id: usize) -> tt_models::Result<Vec<u8>> {
        assert!(!self.panic_in_piece.load(Ordering::SeqCst), "a test's panic while detokenizing");
        self.pieces.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.inner.piece(prev, id)
    }
    fn stop_tokens(&self) -> Vec<usize> {
        self.inner.stop_tokens()
    }
    fn to_part(&self) -> tt_models::Result<(&'static str, Vec<u8>, CodecKind)> {
        self.inner.to_part()
    }
    fn bos(&self) -> Option<usize> {
        self.inner.bos()
    }
}

pub struct Running {
    pub url: String,
    pub codec: Arc<Hooked>,
    pub server: Arc<Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Signals shutdown and waits for the server to drain and return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
    /// Signals shutdown, without waiting.
    pub fn signal_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

/// A server over the test model on `127.0.0.1:0`.
pub async fn start(config: ServeConfig, delay: Duration, seq_len: usize) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = tt_models::testing::write_tiny_llama2c(dir.path(), seq_len).unwrap();
    let opened = open(&path, None).unwrap();
    let codec = Arc::new(Hooked {
        inner: opened.codec,
        panic_in_piece: AtomicBool::new(false),
        delay,
        pieces: AtomicUsize::new(0),
    });
    let m = ServeModel {
        name: "tiny".into(),
        model: opened.model,
        codec: Arc::clone(&codec) as Arc<dyn TextCodec>,
        kernels: RowKernels::reference(),
        kv: KvStorage::F32,
    };
    let server = Arc::new(Server::start(m, config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = Arc::clone(&server);
    let task = tokio::spawn(async move {
        s.serve(listener, async {
            let _ = rx.await;
        })
        .await
    });
    Running { url, codec, server, stop: Some(tx), task: Some(task), _dir: dir }
}

pub fn config(max_batch: usize, max_queue: usize) -> ServeConfig {
    ServeConfig { max_batch, limits: Limits { max_queue, ..Limits::default() }, team: None }
}

/// The text of a whole answer's first choice.
pub fn text(v: &serde_json::Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Posts a completion; (status, body as JSON).
pub async fn post(client: &reqwest::Client, url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client.post(format!("{url}/v1/completions")).body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// Posts a streamed completion and reads it to the end: the `data:` payloads in order.
pub async fn post_stream(client: &reqwest::Client, url: &str, mut body: serde_json::Value) -> (u16, Vec<String>) {
    body["stream"] = true.into();
    let mut r = client.post(format!("{url}/v1/completions")).body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    let mut raw = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        raw.extend_from_slice(&c);
    }
    let raw = String::from_utf8(raw).unwrap();
    let events = raw
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e).to_string())
        .collect();
    (status, events)
}
