//! Run-time CPU feature dispatch: one place that decides which instruction set the kernels use.
//!
//! The level is detected once (`is_x86_feature_detected!`) and can be **lowered** — never raised
//! above what the CPU has — for the whole process by the environment variable
//! `TT_ACCEL_LEVEL=scalar|avx2|avx512`, or for the current thread by [`with_level`] (how the tests
//! run every path on one machine). Every kernel is written once per level beside its scalar
//! reference; an `unsafe` `#[target_feature]` function is only ever called at a level that
//! [`level`] returned, which is at most [`detected`].

use std::cell::Cell;
use std::sync::OnceLock;

/// An instruction-set level, ordered: `Scalar < Avx2 < Avx512`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable Rust; what any CPU runs.
    Scalar,
    /// AVX2 + FMA (256-bit).
    Avx2,
    /// AVX-512F (512-bit), with AVX2 + FMA.
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses `scalar`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s.trim().to_ascii_lowercase())
    }

    /// f32 lanes in one vector register at this level.
    pub fn f32_lanes(self) -> usize {
        match self {
            Level::Scalar => 1,
            Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The highest level this CPU supports (detected once).
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// The process-wide level: [`detected`], lowered by `TT_ACCEL_LEVEL` if set (an unknown value
/// is ignored with a warning on stderr, once). `TT_ACCEL_LEVEL=amx` lowers nothing: it names the
/// top of the ladder, the matrix engine included (see [`matrix_engine_allowed`]).
fn process_level() -> Level {
    process_setting().0
}

/// `TT_ACCEL_LEVEL` read once: the level, and whether it leaves the matrix engine (AMX) on —
/// unset or `amx`; any SIMD level name forces AMX off.
fn process_setting() -> (Level, bool) {
    static PROCESS: OnceLock<(Level, bool)> = OnceLock::new();
    *PROCESS.get_or_init(|| match std::env::var("TT_ACCEL_LEVEL") {
        Ok(v) if v.trim().eq_ignore_ascii_case("amx") => (detected(), true),
        Ok(v) => match Level::parse(&v) {
            Some(l) => (l.min(detected()), false),
            None => {
                eprintln!("tt-accel: ignoring TT_ACCEL_LEVEL={v:?} (expected scalar, avx2, avx512 or amx)");
                (detected(), true)
            }
        },
        Err(_) => (detected(), true),
    })
}

/// Whether kernels on this thread may use the matrix engine (AMX) where the CPU has it: not when
/// `TT_ACCEL_LEVEL` names a SIMD level, nor inside [`with_level`] (a forced level means exactly
/// that level's kernels). Whether the CPU and OS have it is [`crate::amx::usable`]'s question.
pub fn matrix_engine_allowed() -> bool {
    process_allows_matrix_engine() && OVERRIDE.with(|o| o.get()).is_none()
}

/// Whether `TT_ACCEL_LEVEL` leaves the matrix engine on (unset or `amx`), whatever this thread's
/// [`with_level`].
pub fn process_allows_matrix_engine() -> bool {
    process_setting().1
}

thread_local! {
    static OVERRIDE: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The level kernels use on this thread now.
pub fn level() -> Level {
    OVERRIDE.with(|o| o.get()).map_or_else(process_level, |l| l.min(process_level()))
}

/// Runs `f` with this thread's level lowered to `l` (clamped to what the CPU has); returns the
/// level actually used and `f`'s result. Objects that choose kernels at construction (a packed
/// projection) keep the level they were built with.
pub fn with_level<R>(l: Level, f: impl FnOnce(Level) -> R) -> R {
    let prev = OVERRIDE.with(|o| o.replace(Some(l)));
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(prev);
    let used = level();
    record_level_use("f32", used.name());
    f(used)
}

/// Appends `"{family} {level}"` (e.g. `f32 avx2`) to the file named by `TT_ACCEL_LEVEL_LOG`, once
/// per process and value: how CI proves which levels a test suite really ran (`.ci/levels`), so
/// a level the CPU has that no test reached is a failure rather than a silent skip. With the
/// variable unset (always, outside CI) it costs one read of a value initialized once.
pub fn record_level_use(family: &str, level: &str) {
    use std::io::Write;
    static LOG: OnceLock<Option<(std::path::PathBuf, std::sync::Mutex<Vec<String>>)>> = OnceLock::new();
    let Some((path, seen)) =
        LOG.get_or_init(|| std::env::var_os("TT_ACCEL_LEVEL_LOG").map(|p| (p.into(), Default::default()))).as_ref()
    else {
        return;
    };
    let line = format!("{family} {level}");
    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.contains(&line) {
        return;
    }
    // A log that cannot be written is CI's to notice (the coverage check then fails).
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{line}"));
    if written.is_ok() {
        seen.push(line);
    }
}

/// Levels this machine can run, lowest first (what the tests iterate over).
pub fn available() -> Vec<Level> {
    Level::ALL.into_iter().filter(|&l| l <= process_level()).collect()
}
