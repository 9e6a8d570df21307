//! Exact-match answer accuracy on question/answer pairs.

use serde::Serialize;

use crate::corpus::QaPair;
use crate::error::Result;
use crate::generate::{generate, GenerateConfig};
use crate::model::Gpt;
use crate::tokenizer::{Tokenize, Tokenizer};

/// One answered question.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub category: String,
    pub question: String,
    pub expected: String,
    pub generated: String,
    pub correct: bool,
}

/// Greedy-decodes an answer to `prompt` up to the end of the line.
pub fn answer(model: &Gpt, tokenizer: &Tokenizer, prompt: &str, max_new_tokens: usize) -> Result<String> {
    let ids = tokenizer.encode_ids(prompt)?;
    let newline = tokenizer.encode_ids("\n")?;
    let cfg = GenerateConfig::greedy(max_new_tokens).with_stop(&newline);
    let out = generate(model, &ids, &cfg)?;
    let text = tokenizer.decode_ids(&out)?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// Fraction of pairs whose greedy answer equals the reference exactly (after trimming spaces),
/// with every answer for inspection. Questions are answered on `threads` scoped threads; each
/// answer is computed independently, so the result does not depend on the thread count.
pub fn exact_match(
    model: &Gpt,
    tokenizer: &Tokenizer,
    pairs: &[QaPair],
    max_new_tokens: usize,
    threads: usize,
) -> Result<(f32, Vec<Answer>)> {
    let one = |p: &QaPair| -> Result<Answer> {
        let generated = answer(model, tokenizer, &p.prompt(), max_new_tokens)?;
        Ok(Answer {
            category: p.category.clone(),
            question: p.question.clone(),
            expected: p.answer.clone(),
            correct: generated == p.answer,
            generated,
        })
    };
    let chunk = pairs.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Vec<Answer>>> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs.chunks(chunk).map(|c| s.spawn(move || c.iter().map(one).collect())).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(crate::TransformerError::Config("evaluation thread panicked".into())))
            })
            .collect()
    });
    let mut answers = Vec::with_capacity(pairs.len());
    for p in parts {
        answers.extend(p?);
    }
    let correct = answers.iter().filter(|a| a.correct).count();
    Ok((correct as f32 / pairs.len().max(1) as f32, answers))
}
