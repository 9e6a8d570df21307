//! `tito serve`: any model `tito generate` opens, in any weight format, behind tt-serve's
//! OpenAI-compatible server. SIGTERM or Ctrl-C drains (requests in flight finish, new ones get
//! 503) and exits 0.

use std::io::Write;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tt_kvcache::KvStorage;
use tt_serve::api::Limits;
use tt_serve::server::{ServeConfig, ServeModel, Server};

use crate::models::{convert, name as name_of, open, ModelArgs, Weights};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kv {
    F32,
    Int8,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "stored")]
    pub weights: Weights,
    /// The KV cache's storage.
    #[arg(long, value_enum, default_value = "f32")]
    pub kv: Kv,
    /// The name clients send as `model` (default: the model file's or directory's name;
    /// `tinytorch-gpt` for the course GPT).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on the first line).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded side by side (continuous batching's slots).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests waiting for a slot; past it, 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Largest `max_tokens` a request may ask for (capped by the context).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Longest prompt, in tokens (capped by the context).
    #[arg(long, default_value_t = 4096)]
    pub max_prompt_tokens: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Threads serving HTTP (the decoder runs on its own thread).
    #[arg(long, default_value_t = 1)]
    pub http_threads: usize,
}

pub fn serve(a: &ServeArgs) -> Result<(), String> {
    if a.http_threads == 0 {
        return Err("--http-threads must be at least 1".into());
    }
    let name = a.name.clone().unwrap_or_else(|| match &a.model.model {
        Some(p) => p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned()),
        None => "tinytorch-gpt".into(),
    });
    // The engine thread runs the decoder over the process's team; the HTTP threads only do I/O.
    let team = crate::models::threads(&a.model)?;
    let opened = open(&a.model)?;
    let mut model = opened.model;
    convert(&mut model, a.weights)?;
    let kv = match a.kv {
        Kv::F32 => KvStorage::F32,
        Kv::Int8 => KvStorage::Int8,
    };
    let m = ServeModel {
        name: name.clone(),
        model,
        codec: Arc::from(opened.codec),
        kernels: tt_accel::team::install(team.clone(), crate::models::row_kernels),
        kv,
    };
    let limits = Limits {
        max_body_bytes: a.max_body_bytes,
        max_prompt_tokens: a.max_prompt_tokens,
        max_tokens: a.max_tokens,
        max_queue: a.max_queue,
        ..Limits::default()
    };
    let threads = team.as_ref().map_or(1, |t| t.size());
    let server = Server::start(m, ServeConfig { max_batch: a.max_batch, limits, team }).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.http_threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", a.host, a.port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "tito serve: listening on http://{addr} (model {name}, {} from {}, {} weights, max batch {}, max queue {}, {threads} compute thread{})",
            opened.format,
            a.model.model.as_ref().map_or("the course".into(), |p| p.display().to_string()),
            name_of(a.weights),
            a.max_batch,
            a.max_queue,
            if threads == 1 { "" } else { "s" }
        );
        let _ = out.flush();
        drop(out);
        server.serve(listener, shutdown_signal()).await.map_err(|e| format!("serving failed: {e}"))
    })?;
    eprintln!("tito serve: drained, exiting");
    Ok(())
}

/// SIGTERM (what an orchestrator sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler can be installed: Ctrl-C still drains.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("tito serve: shutting down: refusing new requests, finishing those in flight");
}
