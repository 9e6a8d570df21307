//! The fuzz orchestrator itself: a target that panics, aborts and answers wrongly is counted as
//! such (with the replay command), and the run fails — so "0 panics, 0 aborts" means something.

use std::process::Command;

#[test]
fn the_orchestrator_counts_panics_aborts_and_wrong_answers() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fuzz", "--iterations", "12", "--targets", "selftest", "--jobs", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let row = text.lines().find(|l| l.starts_with("selftest")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // target, iterations, ok, err, wrong, panics, aborts
    assert_eq!(cols[1..], ["12", "9", "0", "1", "1", "1"], "{text}");
    assert!(text.contains("iteration 5: abort") && text.contains("--iter 3"), "{text}");
}
