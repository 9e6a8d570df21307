//! This machine's cache sizes, read once at run time: what the GEMM block sizes
//! ([`crate::gemm::Blocking`], the blocked rung's tiles) and tt-profile's memory-level working
//! sets are derived from. Detected like the SIMD level, since the same binary moves between
//! machines whose caches differ.

use serde::Serialize;

/// Per-core cache sizes in bytes: L1 data, L2, and the (shared) L3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheSizes {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
    /// Whether they were read from the operating system (else [`CacheSizes::FALLBACK`]).
    pub detected: bool,
}

impl CacheSizes {
    /// Used where the sizes cannot be read: L1d 48 KiB, L2 1 MiB, L3 32 MiB.
    pub const FALLBACK: CacheSizes = CacheSizes { l1d: 48 << 10, l2: 1 << 20, l3: 32 << 20, detected: false };

    /// This machine's caches, read once from Linux's `/sys/devices/system/cpu/cpu0/cache`
    /// (`level`, `type` and `size` of each index); [`CacheSizes::FALLBACK`] elsewhere or if any
    /// of the three is missing. Detected at run time, like the SIMD level: the same binary moves
    /// between machines whose L2 differs (1 MiB and 2 MiB per core on the two VMs this course
    /// has run on).
    pub fn detect() -> CacheSizes {
        static SIZES: std::sync::OnceLock<CacheSizes> = std::sync::OnceLock::new();
        *SIZES.get_or_init(|| {
            Self::read_sysfs(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache")).unwrap_or(Self::FALLBACK)
        })
    }

    /// Reads `dir/index*/{level,type,size}`; `None` unless L1d, L2 and L3 are all found.
    pub fn read_sysfs(dir: &std::path::Path) -> Option<CacheSizes> {
        let (mut l1d, mut l2, mut l3) = (None, None, None);
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let p = entry.path();
            if !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("index")) {
                continue;
            }
            let read = |f: &str| std::fs::read_to_string(p.join(f)).ok().map(|s| s.trim().to_string());
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else { continue };
            let Some(bytes) = parse_cache_size(&size) else { continue };
            match (level.as_str(), kind.as_str()) {
                ("1", "Data") => l1d = Some(bytes),
                ("2", "Unified" | "Data") => l2 = Some(bytes),
                ("3", "Unified" | "Data") => l3 = Some(bytes),
                _ => {}
            }
        }
        Some(CacheSizes { l1d: l1d?, l2: l2?, l3: l3?, detected: true })
    }
}

/// `"48K"`, `"2048K"`, `"300M"`, `"1G"` or a plain byte count → bytes.
pub fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1usize << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult).filter(|&b| b > 0)
}
