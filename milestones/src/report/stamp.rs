//! The machine stamp of a report: which CPU, how many cores, which caches, which day, which build
//! and settings measured a page. Taken when the milestone runs and saved beside its summary, so a
//! page re-rendered later (`--from-data`) still names the machine that measured it.

use serde_json::{json, Value};
use tt_accel::caches::CacheSizes;

use super::{get, iec, num};
use crate::Result;

/// This machine, now: the stamp of a measurement about to be made (`quick`: small settings).
pub fn this_machine(quick: bool) -> Value {
    let caches = CacheSizes::detect();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    json!({
        "date_utc": format!("{y:04}-{m:02}-{d:02}"),
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "l1d_bytes": caches.l1d,
        "l2_bytes": caches.l2,
        "l3_bytes": caches.l3,
        "caches_detected": caches.detected,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "settings": if quick { "quick" } else { "full" },
    })
}

/// The `model name` of the first processor in `/proc/cpuinfo`, or a sentence saying it is unknown.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "CPU model unknown (no model name in /proc/cpuinfo)".into())
}

/// (year, month, day) of the proleptic Gregorian calendar for `days` since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The stamp region's sentence.
///
/// # Errors
/// A key missing from the stamp (a data file written by another version).
pub fn markdown(stamp: &Value) -> Result<String> {
    let text = |k: &str| -> Result<String> { Ok(get(stamp, k)?.as_str().unwrap_or_default().to_string()) };
    let caches = if get(stamp, "/caches_detected")?.as_bool() == Some(true) {
        format!(
            "L1d {} / L2 {} per core, L3 {}",
            iec(num(stamp, "/l1d_bytes")?),
            iec(num(stamp, "/l2_bytes")?),
            iec(num(stamp, "/l3_bytes")?)
        )
    } else {
        "cache sizes not readable (the kernels assumed tt-accel's fallback sizes)".to_string()
    };
    Ok(format!(
        "_Measured by `cargo tito report` on {} (UTC): {}, {} cores, {caches}; {} build, {} settings._",
        text("/date_utc")?,
        text("/cpu")?,
        num(stamp, "/cores")?,
        text("/build")?,
        text("/settings")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_of_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_793), (2026, 12, 6));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn the_stamp_names_cpu_cores_caches_date_and_settings() {
        let s = json!({"date_utc": "2026-12-06", "cpu": "Some CPU", "cores": 2, "l1d_bytes": 32768,
            "l2_bytes": 1048576, "l3_bytes": 33554432, "caches_detected": true, "build": "release",
            "settings": "full"});
        assert_eq!(
            markdown(&s).unwrap(),
            "_Measured by `cargo tito report` on 2026-12-06 (UTC): Some CPU, 2 cores, L1d 32 KiB / L2 1 MiB \
             per core, L3 32 MiB; release build, full settings._"
        );
        let here = this_machine(true);
        assert!(markdown(&here).unwrap().contains("quick settings"), "{here}");
    }
}
