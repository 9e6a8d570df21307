//! `cargo xtask ci`: runs the same checks as `.ci/run` (fmt, clippy, tests), stopping at the first
//! failure. `cargo xtask bench`: runs the criterion benches. `cargo xtask fuzz [--iterations N]
//! [--seed S] [--mem-mb M] [--jobs J]`: mutation fuzzing of the checkpoint loader and tokenizers
//! (see `fuzz.rs`); `cargo xtask fuzz-one --target T --seed S --iter I` replays one iteration.

mod fuzz;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned().unwrap_or_default();
    match task.as_str() {
        "fuzz" => return fuzz::orchestrate(&args[1..]),
        "fuzz-worker" => return fuzz::worker(&args[1..]),
        "fuzz-one" => return fuzz::one(&args[1..]),
        "levels" => {
            // The SIMD levels this CPU runs, one `family level` line each, in the form the
            // kernels record under TT_ACCEL_LEVEL_LOG: what `.ci/levels` requires the suites to reach.
            for l in tt_accel::dispatch::Level::ALL.into_iter().filter(|&l| l <= tt_accel::dispatch::detected()) {
                println!("f32 {}", l.name());
            }
            let mut int: Vec<_> = tt_accel::dispatch::Level::ALL
                .into_iter()
                .filter(|&l| l <= tt_accel::dispatch::detected())
                .map(tt_quant::IntLevel::for_level)
                .collect();
            int.dedup();
            for l in &int {
                println!("int {}", l.name());
            }
            // The matrix engine, where usable (its self-check included): run under
            // TT_ACCEL_LEVEL=amx, the one setting that does not force it off.
            if tt_quant::kernels::amx_ok() {
                println!("int amx");
            }
            // int4's AVX2 kernel also needs F16C (its scales are f16): without it, that level
            // runs the scalar kernel, which is listed already.
            #[cfg(target_arch = "x86_64")]
            let f16c = std::arch::is_x86_feature_detected!("f16c");
            #[cfg(not(target_arch = "x86_64"))]
            let f16c = false;
            for l in int.into_iter().filter(|&l| l != tt_quant::IntLevel::Avx2 || f16c) {
                println!("int4 {}", l.name());
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let steps: &[&[&str]] = match task.as_str() {
        "ci" => &[
            &["fmt", "--all", "--check"],
            &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            &["test", "--workspace"],
        ],
        "bench" => &[&["bench", "-p", "tt-benches"]],
        _ => {
            eprintln!("xtask: error: unknown task '{task}' (known: ci, bench, fuzz, fuzz-one, levels)");
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
