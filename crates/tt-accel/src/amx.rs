//! The matrix engine (Intel AMX): whether this CPU and operating system can run it, and the
//! per-process permission Linux requires before the first tile instruction.
//!
//! AMX adds eight tile registers (`tmm0`–`tmm7`, up to 16 rows × 64 bytes each) and instructions
//! that multiply whole tiles: `tdpbusd` adds to a 16×16 tile of i32 the products of a 16×64 tile
//! of u8 with a 16×64 tile of i8 (4 bytes per i32 lane, the same `vpdpbusd` layout tt-quant
//! packs its weights in) — 16 384 multiply-adds in one instruction. The kernels live with their
//! families (the int8 one in `tt_quant::kernels`); this module only answers "may we?", once:
//!
//! 1. CPUID leaf 7 (EDX bits 24 `AMX-TILE`, 25 `AMX-INT8`, 22 `AMX-BF16`): the CPU has it;
//! 2. XCR0 bits 17 and 18 (`XTILECFG`, `XTILEDATA`), read with `xgetbv`: the OS saves the tile
//!    state on context switches;
//! 3. Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` grants this process the 8 KiB
//!    tile state (without it the first tile instruction kills the process with `SIGILL`).
//!
//! Any step failing leaves AMX off with the reason ([`usable`]); the int8 kernels then use VNNI /
//! AVX2 / scalar. `TT_ACCEL_LEVEL` set to a SIMD level forces it off
//! ([`crate::dispatch::matrix_engine_allowed`]).

use std::sync::OnceLock;

/// What the CPU and OS offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub tile: bool,
    pub int8: bool,
    pub bf16: bool,
    /// XCR0 has the tile configuration and data bits (the OS manages the state).
    pub os_enabled: bool,
}

/// CPUID and XCR0, read once.
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(read_features)
}

#[cfg(target_arch = "x86_64")]
fn read_features() -> Features {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return Features { tile: false, int8: false, bf16: false, os_enabled: false };
    }
    let l7 = __cpuid_count(7, 0);
    let bit = |b: u32| l7.edx & (1 << b) != 0;
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    let os_enabled = osxsave && {
        // SAFETY: OSXSAVE set means XGETBV is enabled; ECX = 0 selects XCR0.
        let xcr0 = unsafe { xgetbv0() };
        xcr0 & (0b11 << 17) == 0b11 << 17
    };
    Features { tile: bit(24), int8: bit(25), bf16: bit(22), os_enabled }
}

#[cfg(not(target_arch = "x86_64"))]
fn read_features() -> Features {
    Features { tile: false, int8: false, bf16: false, os_enabled: false }
}

/// XCR0.
///
/// # Safety
/// CPUID.1:ECX.OSXSAVE is set.
#[cfg(target_arch = "x86_64")]
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; enabled by the OS (caller's contract). It touches
    // no memory and no flags.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Whether the int8 tile instructions can run in this process — `Err` names the missing piece.
/// The first call requests the Linux permission (once per process).
///
/// # Errors
/// The CPU lacks AMX-TILE or AMX-INT8; the OS does not enable the tile state in XCR0; the OS
/// refused the permission (or is not Linux).
pub fn usable() -> Result<(), &'static str> {
    static U: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *U.get_or_init(|| {
        let f = features();
        if !(f.tile && f.int8) {
            return Err("this CPU has no AMX-INT8 (CPUID leaf 7)");
        }
        if !f.os_enabled {
            return Err("the OS does not enable the AMX tile state (XCR0 bits 17–18)");
        }
        request_permission()
    })
}

/// Whether int8 kernels on this thread use AMX now: [`usable`] and not forced off.
pub fn enabled() -> bool {
    crate::dispatch::matrix_engine_allowed() && usable().is_ok()
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux's per-process grant of the tile
/// data state (kernel ≥ 5.16).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_permission() -> Result<(), &'static str> {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with two integer arguments; it reads and writes no
    // memory of ours. `syscall` clobbers rcx and r11 (declared).
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    if ret == 0 {
        Ok(())
    } else {
        Err("Linux refused the AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM)")
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_permission() -> Result<(), &'static str> {
    Err("AMX permission is only requested on Linux")
}

/// One line for reports: the features and whether the int8 kernels use them.
pub fn describe() -> String {
    let f = features();
    match usable() {
        Ok(()) => format!(
            "AMX usable (tile, int8{}); {}",
            if f.bf16 { ", bf16" } else { "" },
            if enabled() { "on" } else { "forced off" }
        ),
        Err(why) => format!("no AMX: {why}"),
    }
}
