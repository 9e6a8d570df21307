//! `cargo xtask ci`: runs the same checks as `.ci/run` (fmt, clippy, tests), stopping at the first
//! failure. `cargo xtask bench`: runs the criterion benches.

use std::process::{Command, ExitCode};

fn run(args: &[&str]) -> bool {
    eprintln!("xtask: cargo {}", args.join(" "));
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let steps: &[&[&str]] = match task.as_str() {
        "ci" => &[
            &["fmt", "--all", "--check"],
            &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            &["test", "--workspace"],
        ],
        "bench" => &[&["bench", "-p", "tt-benches"]],
        _ => {
            eprintln!("xtask: error: unknown task '{task}' (known: ci, bench)");
            return ExitCode::from(2);
        }
    };
    for step in steps {
        if !run(step) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
