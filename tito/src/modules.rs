//! The course's module map: number → name → crate and test target.

use std::path::{Path, PathBuf};

/// One course module and where its tests live.
#[derive(Debug, Clone, Copy)]
pub struct CourseModule {
    pub number: &'static str,
    pub name: &'static str,
    /// Cargo package that holds the tests.
    pub package: &'static str,
    /// Crate directory relative to the workspace root.
    pub dir: &'static str,
    /// More test targets of the module in other files or packages: `(package, target)`.
    pub also: &'static [(&'static str, &'static str)],
}

impl CourseModule {
    /// Every `(package, test target)` of the module: its own, then [`CourseModule::also`].
    pub fn targets(&self) -> Vec<(&'static str, String)> {
        let mut t = vec![(self.package, self.test_target())];
        t.extend(self.also.iter().map(|&(p, n)| (p, n.to_string())));
        t
    }

    /// Integration-test target name, e.g. `m05_autograd`.
    pub fn test_target(&self) -> String {
        format!("m{}_{}", self.number, self.name)
    }
    /// Path of the test file in the workspace.
    pub fn test_file(&self, root: &Path) -> PathBuf {
        root.join(self.dir).join("tests").join(format!("{}.rs", self.test_target()))
    }
    pub fn exists(&self, root: &Path) -> bool {
        root.join(self.dir).join("Cargo.toml").is_file() && self.test_file(root).is_file()
    }
}

const fn m(number: &'static str, name: &'static str, package: &'static str, dir: &'static str) -> CourseModule {
    CourseModule { number, name, package, dir, also: &[] }
}

pub const MODULES: &[CourseModule] = &[
    m("01", "tensor", "tt-tensor", "crates/tt-tensor"),
    m("02", "activations", "tt-tensor", "crates/tt-tensor"),
    m("03", "layers", "tt-tensor", "crates/tt-tensor"),
    m("04", "losses", "tt-tensor", "crates/tt-tensor"),
    m("05", "autograd", "tt-tensor", "crates/tt-tensor"),
    m("06", "optimizers", "tt-tensor", "crates/tt-tensor"),
    m("07", "training", "tt-tensor", "crates/tt-tensor"),
    m("08", "dataloader", "tt-tensor", "crates/tt-tensor"),
    m("09", "spatial", "tt-tensor", "crates/tt-tensor"),
    m("10", "tokenization", "tt-transformer", "crates/tt-transformer"),
    m("11", "embeddings", "tt-transformer", "crates/tt-transformer"),
    m("12", "attention", "tt-transformer", "crates/tt-transformer"),
    // The Llama family, the loaders of models people have (llama2.c, Hugging Face) and the CLI
    // verbs that run them.
    CourseModule {
        also: &[
            ("tt-transformer", "m13_llama"),
            ("tt-models", "llama2c_tokenizer"),
            ("tt-models", "llama2c_checkpoint"),
            ("tt-models", "llama2c_model"),
            ("tt-models", "hf"),
            ("tt-models", "open"),
            ("tito", "models_cli"),
        ],
        ..m("13", "transformers", "tt-transformer", "crates/tt-transformer")
    },
    m("14", "kv_caching", "tt-kvcache", "crates/tt-kvcache"),
    m("15", "profiling", "tt-profile", "crates/tt-profile"),
    m("16", "acceleration", "tt-accel", "crates/tt-accel"),
    m("17", "quantization", "tt-quant", "crates/tt-quant"),
    m("18", "compression", "tt-compress", "crates/tt-compress"),
    // Benchmarking, and the deployment it measures: the server (continuous batching, HTTP) and
    // LoadGen over the network.
    CourseModule {
        also: &[
            ("tt-perf", "http_sut"),
            ("tt-serve", "server"),
            ("tt-serve", "batching"),
            ("tito", "serve_cli"),
            ("tito", "loadgen_cli"),
        ],
        ..m("19", "benchmarking", "tt-perf", "crates/tt-perf")
    },
];

/// Resolves user input ("5", "05", "all") to modules; errors name the bad argument.
pub fn resolve(args: &[String]) -> Result<Vec<CourseModule>, String> {
    let mut out: Vec<CourseModule> = Vec::new();
    for a in args {
        if a == "all" {
            return Ok(MODULES.to_vec());
        }
        let found =
            a.parse::<u32>().ok().and_then(|n| MODULES.iter().find(|m| m.number.parse::<u32>().ok() == Some(n)));
        match found {
            Some(m) if !out.iter().any(|o| o.number == m.number) => out.push(*m),
            Some(_) => {}
            None => return Err(format!("unknown module '{a}' (known: 01-19, or 'all')")),
        }
    }
    if out.is_empty() {
        return Err("no module given (e.g. `tito test 05` or `tito test all`)".into());
    }
    Ok(out)
}

/// Counts parsed from a libtest "test result:" line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

/// Parses `test result: ok. 8 passed; 0 failed; 1 ignored; ...`.
pub fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result:")?;
    let num = |key: &str| -> Option<usize> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(key).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok()))
    };
    Some(Counts { passed: num("passed")?, failed: num("failed")?, ignored: num("ignored").unwrap_or(0) })
}

/// Sums every "test result:" line in libtest output (one per test binary that ran).
pub fn sum_results(stdout: &str) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for c in stdout.lines().filter_map(parse_result_line) {
        let t = total.get_or_insert_with(Counts::default);
        t.passed += c.passed;
        t.failed += c.failed;
        t.ignored += c.ignored;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_numbers_and_all() {
        let r = resolve(&["5".into(), "05".into(), "13".into()]).unwrap();
        assert_eq!(r.iter().map(|m| m.number).collect::<Vec<_>>(), vec!["05", "13"]);
        assert_eq!(resolve(&["all".into()]).unwrap().len(), 19);
        assert!(resolve(&["42".into()]).unwrap_err().contains("'42'"));
        assert!(resolve(&["x".into()]).is_err());
        assert!(resolve(&[]).is_err());
    }

    #[test]
    fn parses_libtest_output() {
        let out = "running 2 tests\n\
                   test result: FAILED. 7 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured\n";
        assert_eq!(sum_results(out), Some(Counts { passed: 12, failed: 1, ignored: 2 }));
        assert_eq!(sum_results("no results here"), None);
    }
}
