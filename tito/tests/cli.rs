//! The CLI's contract: bad input gives one `tito: error:` line and a non-zero exit, never a panic.

use std::process::Command;

fn tito(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tito")).args(args).output().expect("tito runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_module_is_a_one_line_error() {
    let (code, _, err) = tito(&["test", "42"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown module '42'"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn unknown_milestone_is_a_one_line_error() {
    let (code, _, err) = tito(&["milestone", "warp_drive"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown milestone 'warp_drive'"), "{err}");
}

#[test]
fn milestone_list_names_the_milestones() {
    let (code, out, _) = tito(&["milestone", "--list"]);
    assert_eq!(code, 0);
    assert!(out.contains("mlp_digits") && out.contains("cnn_digits"), "{out}");
}

#[test]
fn status_lists_all_nineteen_modules() {
    let (code, out, _) = tito(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("01 tensor") && out.contains("19 benchmarking"), "{out}");
}

#[test]
fn a_flag_the_milestone_does_not_use_is_rejected_before_training() {
    let dir = std::env::temp_dir().join(format!("tt-cli-flags-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tito"))
        .args(["milestone", "mlp_digits", "--corpus", "whatever.txt"])
        .env("TT_CACHE_DIR", &dir)
        .output()
        .expect("tito runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("does not use --corpus") && !err.contains("panicked"), "{err}");
    assert!(!dir.exists(), "nothing was trained or cached");
}
