//! The measured regions of the serving milestone's docs page (docs/19-serving.md): `figures`
//! (every measurement of the run, with its settings) and `goals` (issue 22's targets judged on
//! them).

use serde_json::Value;

use super::{array, get, num, table, text, yes_no, Region};
use crate::Result;

/// The milestone draws no chart.
pub const FIGURES: &[(&str, &str)] = &[];

fn failures(v: &Value) -> String {
    let Some(o) = v.as_object() else { return "n/a".into() };
    let mut parts = Vec::new();
    if let Some(by) = o.get("by_status").and_then(Value::as_object) {
        parts.extend(by.iter().map(|(k, n)| format!("HTTP {k}: {n}")));
    }
    for k in ["connect", "timeout", "closed", "malformed"] {
        if let Some(n) = o.get(k).and_then(Value::as_u64).filter(|&n| n > 0) {
            parts.push(format!("{k}: {n}"));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(summary: &Value) -> Result<Vec<Region>> {
    let s = summary;
    let mut rows = vec![
        vec![
            "closed loop, 1 client streaming".into(),
            format!("{:.1} answers/s", num(s, "/closed_loop/one_client_answers_per_s")?),
            failures(get(s, "/closed_loop/failures/one")?),
        ],
        vec![
            "closed loop, 16 clients streaming at once".into(),
            format!("{:.1} answers/s", num(s, "/closed_loop/sixteen_clients_answers_per_s")?),
            failures(get(s, "/closed_loop/failures/sixteen")?),
        ],
        vec![
            format!(
                "{} (f32, {}-token answers), 1 client streaming",
                text(s, "/batching_larger_model/model")?,
                num(s, "/batching_larger_model/tokens_per_answer")?
            ),
            format!("{:.2} answers/s", num(s, "/batching_larger_model/one_client_answers_per_s")?),
            failures(get(s, "/batching_larger_model/failures/one")?),
        ],
        vec![
            format!("{}, 16 clients streaming at once", text(s, "/batching_larger_model/model")?),
            format!("{:.2} answers/s", num(s, "/batching_larger_model/sixteen_clients_answers_per_s")?),
            failures(get(s, "/batching_larger_model/failures/sixteen")?),
        ],
        vec![
            "Server peak valid rate, loopback HTTP".into(),
            format!("{:.1} queries/s", num(s, "/server_peak_qps/http")?),
            failures(get(s, "/server_peak_qps/failures_during_search")?),
        ],
        vec![
            "Server peak valid rate, in process (same model, decoder, scheduler)".into(),
            format!("{:.1} queries/s", num(s, "/server_peak_qps/in_process")?),
            "—".into(),
        ],
        vec![
            format!("Server at 80% of the HTTP peak ({:.1} q/s)", num(s, "/at_80_percent/qps")?),
            format!(
                "p99 first token {:.1} ms, p99 answer {:.1} ms",
                num(s, "/at_80_percent/ttft_p99_ms")?,
                num(s, "/at_80_percent/answer_p99_ms")?
            ),
            failures(get(s, "/at_80_percent/failures")?),
        ],
        vec![
            format!("Server at 2× the HTTP peak ({:.1} q/s)", num(s, "/at_2x/qps")?),
            format!(
                "{} requests: {} refused with 429, {} failed otherwise",
                num(s, "/at_2x/requests")?,
                num(s, "/at_2x/refused_429")?,
                num(s, "/at_2x/failed_otherwise")?
            ),
            failures(get(s, "/at_2x/failures")?),
        ],
    ];
    let larger = text(s, "/batching_larger_model/model")?;
    for (key, what) in
        [("/scale_out", "course GPT".to_string()), ("/scale_out_larger_model", format!("{larger}, 16-token answers"))]
    {
        let so = get(s, key)?;
        if let Some(why) = so.get("skipped").and_then(Value::as_str) {
            rows.push(vec![format!("{what}: scale-out behind nginx"), format!("not measured: {why}"), "—".into()]);
            continue;
        }
        let bound = num(so, "/bound_ms")?;
        rows.push(vec![
            format!("{what}: Server peak (p99 ≤ {bound} ms), one replica pinned to core 0, direct"),
            format!("{:.1} queries/s", num(so, "/one_replica_qps")?),
            failures(get(so, "/failures_during_search/one")?),
        ]);
        rows.push(vec![
            format!("{what}: Server peak (p99 ≤ {bound} ms), two replicas (cores 0 and 1) behind nginx"),
            format!("{:.1} queries/s", num(so, "/two_replicas_nginx_qps")?),
            failures(get(so, "/failures_during_search/two")?),
        ]);
    }
    let mut figures = format!(
        "The course GPT in int8 with an int8 KV cache, {} decoder slots and a queue of {} per replica; {} held-out questions, greedy answers ending at the line's end; Server runs of at least {:.1} s and {} queries, valid when the p99 answer latency is ≤ {} ms (and early stopping agrees). The load generator runs on the same machine as the replicas.\n\n",
        num(s, "/settings/max_batch")?,
        num(s, "/settings/max_queue")?,
        num(s, "/settings/questions")?,
        num(s, "/settings/server/min_duration/secs")?,
        num(s, "/settings/server/min_query_count")?,
        num(s, "/settings/bound_ms")?
    );
    figures.push_str(&table(&["measurement", "result", "failed requests"], &rows));
    let mut goals = Vec::new();
    for g in array(s, "/goals")? {
        let m = g.get("measured").or_else(|| g.get("measured_ms")).and_then(Value::as_f64);
        let unit = if g.get("measured_ms").is_some() { " ms" } else { "" };
        goals.push(vec![
            text(g, "/goal")?.to_string(),
            text(g, "/target")?.to_string(),
            m.map_or("not measured".into(), |m| format!("{m:.2}{unit}")),
            yes_no(g["met"].as_bool() == Some(true)).to_string(),
        ]);
    }
    Ok(vec![
        Region { name: "figures", markdown: figures },
        Region { name: "goals", markdown: table(&["goal (issue 22)", "target", "measured", "met"], &goals) },
    ])
}
