//! Measurements that need a process of their own (a peak resident set is the whole process's; a
//! kernel level is forced per process): run `tito` again with a hidden subcommand and read the
//! JSON it prints.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{MilestoneError, Result};

/// Runs `cmd`, waits at most `limit` (then kills it: a hung child must not hang the milestone),
/// and parses its stdout as JSON. Both pipes are drained while it runs, so a child that prints
/// a lot cannot block on a full pipe. `what` names the child in errors.
///
/// # Errors
/// It cannot start, runs past `limit`, exits non-zero (the error carries its stderr), or prints
/// no JSON.
pub fn run_json(mut cmd: Command, limit: Duration, what: &str) -> Result<Value> {
    let err = |m: String| MilestoneError::Other(format!("{what}: {m}"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let errs = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| err(e.to_string()))? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("did not finish in {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), errs.join().unwrap_or_default());
    if !status.success() {
        return Err(err(format!("failed ({status}): {}", String::from_utf8_lossy(&stderr).trim())));
    }
    serde_json::from_slice(&stdout).map_err(|e| err(format!("printed no JSON: {e}")))
}

/// A `/proc/self/status` size in bytes (`VmHWM`: the peak resident set; `VmRSS`: the current
/// one), if the OS says.
pub fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Makes the C allocator return large freed blocks to the OS at once, for the rest of the
/// process: blocks of 128 KiB and up are mapped on their own and unmapped when freed, and free
/// memory at the heap's top is trimmed past 128 KiB.
///
/// Why: glibc raises its mmap threshold each time a large mapped block is freed (up to 32 MiB),
/// after which blocks that size come from the heap and stay resident when freed. A loader that
/// reads each tensor into a buffer and frees it after packing then holds tens of MB of freed
/// buffers — memory the process no longer uses but the resident set still counts. A deployment
/// that cares about its resident set fixes both thresholds (as `MALLOC_MMAP_THRESHOLD_` does).
/// Does nothing off glibc.
pub fn return_freed_memory_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt takes two ints and only changes allocator parameters; called before the
        // process allocates anything large, from one thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}
