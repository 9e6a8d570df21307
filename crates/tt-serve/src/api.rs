//! The OpenAI completions protocol: the request as parsed and checked against the server's
//! limits, the answer and stream chunks, and errors as OpenAI-style bodies with their status.
//!
//! Requests are read field by field from a JSON value (not derived) so that each wrong type
//! names its field, and limits are checked before anything is tokenized or queued.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// What a request may ask for; beyond it, 400 or 413 naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, bytes (413 past it).
    pub max_body_bytes: usize,
    /// Longest prompt, tokens.
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Most prompts in one request (`prompt` as a list).
    pub max_prompts: usize,
    /// Requests waiting for a slot; past it, 429 with `Retry-After`.
    pub max_queue: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_body_bytes: 1 << 20, max_prompt_tokens: 4096, max_tokens: 4096, max_prompts: 16, max_queue: 256 }
    }
}

/// `max_tokens` when a request does not say (OpenAI's default for completions).
pub const DEFAULT_MAX_TOKENS: usize = 16;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// A completions request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompts: Vec<String>,
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// An error answer: status and OpenAI-style body (`{"error": {message, type, param, code}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), param: None, code: None, retry_after: None }
    }
    /// 400 about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param), ..ApiError::new(StatusCode::BAD_REQUEST, message) }
    }
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Parses and checks a request body. Token counts (the prompt's) are checked later, once
/// tokenized.
///
/// # Errors
/// 413 for a body over the limit; 400 for a body that is not UTF-8 JSON, not an object, a field
/// of the wrong type or out of range, or `max_tokens` over the limit.
pub fn parse_request(body: &[u8], limits: &Limits) -> Result<CompletionRequest, ApiError> {
    if body.len() > limits.max_body_bytes {
        return Err(too_large(limits.max_body_bytes));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(o) = value else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the request body must be a JSON object"));
    };
    let model = opt(&o, "model", |v| v.as_str().map(str::to_string), "a string")?;
    let prompts = match o.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let p: Option<Vec<String>> = a.iter().map(|v| v.as_str().map(str::to_string)).collect();
            p.ok_or_else(|| ApiError::invalid("prompt", "`prompt` must be a string or a list of strings"))?
        }
        Some(_) => return Err(ApiError::invalid("prompt", "`prompt` must be a string or a list of strings")),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is an empty list"));
    }
    if prompts.len() > limits.max_prompts {
        return Err(ApiError::invalid(
            "prompt",
            format!("{} prompts in one request; this server's limit is {}", prompts.len(), limits.max_prompts),
        ));
    }
    let max_tokens =
        opt(&o, "max_tokens", Value::as_u64, "a non-negative integer")?.unwrap_or(DEFAULT_MAX_TOKENS as u64);
    if max_tokens == 0 || max_tokens > limits.max_tokens as u64 {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("`max_tokens` is {max_tokens}; it must be in 1..={} (this server's limit)", limits.max_tokens),
        ));
    }
    let temperature = opt(&o, "temperature", Value::as_f64, "a number")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("`temperature` is {temperature}; it must be in [0, 2]")));
    }
    let top_p = opt(&o, "top_p", Value::as_f64, "a number")?;
    if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::invalid("top_p", format!("`top_p` is {p}; it must be in (0, 1]")));
    }
    let seed = opt(&o, "seed", Value::as_u64, "a non-negative integer")?.unwrap_or(0);
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let s: Option<Vec<String>> = a.iter().map(|v| v.as_str().map(str::to_string)).collect();
            s.ok_or_else(|| ApiError::invalid("stop", "`stop` must be a string or a list of strings"))?
        }
        Some(_) => return Err(ApiError::invalid("stop", "`stop` must be a string or a list of strings")),
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", format!("`stop` takes at most {MAX_STOP} non-empty strings")));
    }
    let stream = opt(&o, "stream", Value::as_bool, "a boolean")?.unwrap_or(false);
    if let Some(n) = opt(&o, "n", Value::as_u64, "a positive integer")?.filter(|&n| n != 1) {
        return Err(ApiError::invalid("n", format!("`n` is {n}; this server returns one completion per prompt")));
    }
    for (name, harmless) in
        [("echo", json!(false)), ("logprobs", Value::Null), ("best_of", json!(1)), ("suffix", Value::Null)]
    {
        if o.get(name).is_some_and(|v| !v.is_null() && *v != harmless) {
            return Err(ApiError::invalid(name, format!("`{name}` is not supported by this server")));
        }
    }
    // Temperature 0 is greedy; a tiny positive one is sampling (the sampler keeps it finite).
    Ok(CompletionRequest {
        model,
        prompts,
        max_tokens: max_tokens as usize,
        temperature: temperature as f32,
        top_p: top_p.map(|p| p as f32),
        seed,
        stop,
        stream,
    })
}

/// A field that may be absent or null, else must convert.
fn opt<T>(
    o: &Map<String, Value>,
    name: &'static str,
    get: impl Fn(&Value) -> Option<T>,
    what: &str,
) -> Result<Option<T>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be {what}, not {v}"))),
    }
}

/// 413 naming the limit.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body exceeds this server's limit of {limit} bytes"),
    )
}

/// The `finish_reason` of an ended choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One choice of an answer or chunk.
pub fn choice(index: usize, text: &str, finish: Option<FinishReason>) -> Value {
    json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish.map(FinishReason::name)})
}

/// The `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// A whole answer, or one stream chunk (`choices` with the new text; `usage` on the last).
pub fn completion(id: &str, created: u64, model: &str, choices: Vec<Value>, usage: Option<Value>) -> Value {
    let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}
