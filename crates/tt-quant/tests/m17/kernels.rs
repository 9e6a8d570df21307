//! Every integer kernel level against the plain reference, exactly, on odd sizes and extreme codes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tt_quant::kernels::{matmul_reference, IntLevel, PackedI8, MAX_K};

fn random(rows: usize, in_f: usize, out_f: usize, seed: u64) -> (Vec<u8>, Vec<i8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = (0..rows * in_f).map(|_| rng.random::<u8>()).collect();
    let w = (0..out_f * in_f).map(|_| rng.random::<i8>()).collect();
    (a, w)
}

/// Runs `w · a` at `level` and returns the `rows × out` accumulators (padding stripped).
fn run(level: IntLevel, a: &[u8], w: &[i8], rows: usize, in_f: usize, out_f: usize) -> Vec<i32> {
    let p = PackedI8::new(w, out_f, in_f).unwrap();
    let kb = p.row_bytes();
    let mut padded = vec![0u8; rows * kb];
    for r in 0..rows {
        padded[r * kb..r * kb + in_f].copy_from_slice(&a[r * in_f..(r + 1) * in_f]);
    }
    let mut acc = vec![i32::MIN; rows * p.acc_cols()];
    p.matmul(level, &padded, rows, &mut acc).unwrap();
    (0..rows).flat_map(|r| acc[r * p.acc_cols()..r * p.acc_cols() + out_f].to_vec()).collect()
}

#[test]
fn every_level_equals_the_reference_exactly_on_odd_sizes() {
    let levels = IntLevel::available();
    assert!(levels.contains(&IntLevel::Scalar));
    eprintln!("integer levels here: {levels:?}");
    let sizes = [1usize, 2, 3, 4, 7, 13, 17, 33, 129];
    let mut seed = 0;
    for &rows in &[1usize, 2, 3, 5, 11, 12, 13, 25] {
        for &in_f in &sizes {
            for &out_f in &[1usize, 7, 16, 17, 33, 50] {
                seed += 1;
                let (a, w) = random(rows, in_f, out_f, seed);
                let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
                for &level in &levels {
                    assert_eq!(run(level, &a, &w, rows, in_f, out_f), want, "{level}: {rows}×{in_f}×{out_f}");
                }
            }
        }
    }
}

/// 255 · (−128) and 255 · 127 everywhere: the pair sums a 16-bit `vpmaddubsw` would saturate
/// (2 · 255 · 127 > 32767). Every level must still be exact, up to the longest rows allowed.
#[test]
fn extreme_codes_do_not_saturate_at_any_level() {
    for (in_f, wv) in [(64usize, -128i8), (64, 127), (MAX_K, -128), (MAX_K, 127)] {
        let (rows, out_f) = (2, 17);
        let a = vec![255u8; rows * in_f];
        let w = vec![wv; out_f * in_f];
        let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
        assert_eq!(want[0] as i64, 255 * wv as i64 * in_f as i64);
        for level in IntLevel::available() {
            assert_eq!(run(level, &a, &w, rows, in_f, out_f), want, "{level}: {in_f} inputs of {wv}");
        }
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    assert!(PackedI8::new(&[1, 2, 3], 2, 2).is_err());
    let e = PackedI8::new(&vec![0; MAX_K + 1], 1, MAX_K + 1).unwrap_err();
    assert!(e.to_string().contains("int32"), "{e}");
    let p = PackedI8::new(&[1; 8], 2, 4).unwrap();
    let mut acc = vec![0; 16];
    assert!(p.matmul(IntLevel::Scalar, &[0; 3], 1, &mut acc).is_err());
    assert!(p.matmul(IntLevel::Scalar, &[0; 4], 1, &mut acc[..15]).is_err());
    assert!(p.matmul(IntLevel::Scalar, &[0; 4], usize::MAX, &mut acc).is_err());
}

#[test]
fn forcing_tt_accels_level_forces_the_integer_level() {
    for l in tt_accel::dispatch::available() {
        tt_accel::with_level(l, |_| {
            let il = IntLevel::current();
            match l {
                tt_accel::Level::Scalar => assert_eq!(il, IntLevel::Scalar),
                tt_accel::Level::Avx2 => assert_eq!(il, IntLevel::Avx2),
                tt_accel::Level::Avx512 => assert!(il >= IntLevel::Avx2),
            }
        });
    }
}

/// Edges of the sizes that guard the kernels' pointer arithmetic: 0, 1, `usize::MAX` and
/// products that wrap, for the packing, the product, the references and the int8 layers built on
/// them. Each is a result or a clean error, quickly (no loop over `usize::MAX` empty rows).
#[test]
fn kernel_sizes_at_the_edges_are_results_or_errors() {
    use tt_quant::kernels::MAX_UNBACKED;
    // Packing: a product that wraps to 0 (no codes) and padded widths that overflow.
    for (out_f, in_f) in [(1usize << 32, 1usize << 32), (usize::MAX, 2), (2, usize::MAX)] {
        assert!(PackedI8::new(&[], out_f, in_f).is_err(), "{out_f}×{in_f}");
    }
    assert!(PackedI8::new(&[], usize::MAX, 0).is_err(), "usize::MAX outputs: the padded width overflows");
    // With no inputs a large output count packs nothing and is bounded by the caller's slices.
    let wide = PackedI8::new(&[], 1 << 40, 0).unwrap();
    assert_eq!((wide.bytes(), wide.row_bytes(), wide.acc_cols()), (0, 0, 1 << 40));
    assert!(wide.matmul(IntLevel::Scalar, &[], 1, &mut [0; 16]).is_err());
    for (out_f, in_f) in [(0usize, 0usize), (0, 1), (1, 0), (1, 1)] {
        let p = PackedI8::new(&vec![1; out_f * in_f], out_f, in_f).unwrap();
        for level in IntLevel::available() {
            for rows in [0usize, 1] {
                let mut acc = vec![7; rows * p.acc_cols()];
                p.matmul(level, &vec![3; rows * p.row_bytes()], rows, &mut acc).unwrap();
                let want = matmul_reference(&vec![3; rows * in_f], &vec![1; out_f * in_f], rows, in_f, out_f).unwrap();
                let got: Vec<i32> = (0..rows).flat_map(|r| acc[r * p.acc_cols()..][..out_f].to_vec()).collect();
                assert_eq!(got, want, "{level}: {rows}×{in_f}×{out_f}");
            }
            // usize::MAX rows: an error where a row has bytes; with none, nothing to do.
            let r = p.matmul(level, &[], usize::MAX, &mut []);
            assert_eq!(r.is_ok(), p.acc_cols() == 0 && p.row_bytes() == 0, "{level}: {out_f}×{in_f}");
        }
    }
    // rows·row_bytes and rows·acc_cols that wrap to small numbers.
    let p = PackedI8::new(&[1; 4], 1, 4).unwrap();
    let wraps = (usize::MAX / 4) + 2; // ·4 wraps to 4
    assert!(p.matmul(IntLevel::Scalar, &[0; 64], wraps, &mut [0; 64]).is_err());
    let wraps16 = (usize::MAX / 16) + 2; // ·16 wraps to 16
    assert!(p.matmul(IntLevel::Scalar, &[0; 64], wraps16, &mut [0; 64]).is_err());
    // The reference: wrapped products and unbacked results are errors.
    assert!(matmul_reference(&[], &[], 1 << 32, 1 << 32, 1).is_err());
    assert!(matmul_reference(&[], &[], usize::MAX, 0, usize::MAX).is_err());
    assert!(matmul_reference(&[], &[], MAX_UNBACKED + 1, 0, 1).is_err());
    assert_eq!(matmul_reference(&[], &[], MAX_UNBACKED, 0, 1).unwrap().len(), MAX_UNBACKED);
    assert!(matmul_reference(&[1; 3], &[1; 4], 2, 2, 2).is_err(), "a short activation slice");
}

/// The probe's example: 2²⁰ rows against 2²⁰ outputs of one input — 1 MiB slices — aborted
/// asking for 4 TiB of results. The product is checked and the result reserved fallibly: an
/// error, quickly. Sums wider than `MAX_K` inputs (which could overflow i32) are refused as the
/// packing refuses them; at `MAX_K` the extreme codes sum exactly.
#[test]
fn reference_results_that_do_not_fit_or_overflow_are_errors() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (a, w) = (vec![0u8; 1 << 20], vec![0i8; 1 << 20]);
        tx.send(matmul_reference(&a, &w, 1 << 20, 1, 1 << 20).map(|v| v.len()).map_err(|e| e.to_string()))
    });
    let e = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("within 20 s").unwrap_err();
    assert!(e.contains("do not fit in memory"), "{e}");
    let (a, w) = (vec![255u8; MAX_K + 1], vec![-128i8; MAX_K + 1]);
    assert!(matmul_reference(&a, &w, 1, MAX_K + 1, 1).is_err(), "MAX_K + 1 inputs");
    let want = 255 * -128 * MAX_K as i32;
    assert_eq!(matmul_reference(&a[..MAX_K], &w[..MAX_K], 1, MAX_K, 1).unwrap(), [want]);
}

#[test]
#[should_panic(expected = "outside 2×3")]
fn a_code_outside_the_matrix_panics_as_documented() {
    PackedI8::new(&[1; 6], 2, 3).unwrap().code(0, 3);
}

/// The int8 layers over degenerate shapes: workspace sizes that would overflow are `usize::MAX`,
/// so `project` refuses them; the fully integer layer with no outputs returns at once for any
/// row count, and its float reference refuses a result nothing bounds.
#[test]
fn int8_layers_with_degenerate_shapes_and_extreme_row_counts() {
    use ndarray::Array2;
    use tt_quant::requant::IntegerLinear;
    use tt_quant::{Activations, Int8Linear, QParams, QuantizedMatrix, Scheme, WeightConfig};
    use tt_tensor::projection::{project, Projection};
    for (out_f, in_f) in [(0usize, 0usize), (0, 5), (5, 0), (1, 1)] {
        let q =
            Int8Linear::new(&Array2::zeros((out_f, in_f)), WeightConfig::PER_CHANNEL, Activations::Dynamic).unwrap();
        assert_eq!(q.workspace_len(usize::MAX), usize::MAX, "{out_f}×{in_f}");
        assert_eq!(q.workspace_len(usize::MAX / 16 + 1), usize::MAX, "{out_f}×{in_f}: ·16 wraps");
        assert!(project(&q, &[], usize::MAX, None, &mut [], &mut []).is_err(), "{out_f}×{in_f}");
        assert!(q.workspace_len(1) < 1 << 10);
    }
    let w = QuantizedMatrix::from_parts(0, 0, vec![], vec![], Scheme::Symmetric, tt_quant::Granularity::PerChannel);
    let p = QParams::new(0.5, 10).unwrap();
    let layer = IntegerLinear::new(&w.unwrap(), None, p, p).unwrap();
    layer.forward(&[], usize::MAX, &mut []).unwrap();
    let sym = vec![QParams::new(0.5, 0).unwrap(); 3];
    let w = QuantizedMatrix::from_parts(3, 0, vec![], sym, Scheme::Symmetric, tt_quant::Granularity::PerChannel);
    let layer = IntegerLinear::new(&w.unwrap(), None, p, p).unwrap();
    assert!(layer.forward(&[], usize::MAX, &mut [0; 3]).is_err(), "rows·3 overflows");
    assert!(layer.float_reference(&[], usize::MAX / 2).is_err(), "a result nothing bounds");
    assert_eq!(layer.float_reference(&[], 2).unwrap().len(), 6);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// Every level of the public int8 product equals the plain integer reference exactly, on
    /// shapes from 0 up and codes drawn mostly from the extremes (0, 255 × −128, 127), and a row
    /// count the slices cannot hold is a clean error at every level.
    #[test]
    fn int8_kernels_equal_the_reference_exactly_on_extreme_codes(
        rows in 0usize..14,
        in_f in proptest::prop_oneof![0usize..70, proptest::strategy::Just(MAX_K)],
        out_f in 0usize..40,
        seed in proptest::prelude::any::<u64>(),
        extra_rows in proptest::prelude::prop_oneof![proptest::strategy::Just(1usize), proptest::strategy::Just(usize::MAX / 2), proptest::strategy::Just(usize::MAX)],
    ) {
        let rows = if in_f == MAX_K { rows.min(2) } else { rows };
        let out_f = if in_f == MAX_K { out_f.min(17) } else { out_f };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a: Vec<u8> = (0..rows * in_f).map(|_| *[0u8, 255, 255, rng.random()].get(rng.random_range(0..4)).unwrap()).collect();
        let w: Vec<i8> = (0..out_f * in_f).map(|_| *[-128i8, 127, -128, rng.random()].get(rng.random_range(0..4)).unwrap()).collect();
        let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
        let p = PackedI8::new(&w, out_f, in_f).unwrap();
        for level in IntLevel::available() {
            proptest::prop_assert_eq!(&run(level, &a, &w, rows, in_f, out_f), &want, "{}", level);
            let claim = rows.saturating_add(extra_rows);
            let mut acc = vec![0; rows * p.acc_cols()];
            let padded = vec![0u8; rows * p.row_bytes()];
            let r = p.matmul(level, &padded, claim, &mut acc);
            let nothing_to_do = p.acc_cols() == 0 && p.row_bytes() == 0;
            proptest::prop_assert!(r.is_err() || nothing_to_do, "{} rows claimed", claim);
        }
    }
}

/// Split by output panels over an installed team of 2, 3 or 7 members (more than this machine's
/// cores included), every level still equals the reference exactly: each accumulator is the same
/// integer sum whoever computes it. Sizes past the split threshold, odd edges included.
#[test]
fn a_product_split_over_a_team_equals_the_reference_exactly() {
    use std::sync::Arc;
    use tt_quant::kernels::MIN_SPLIT_MACS;
    let mut seed = 900;
    for size in [2, 3, 7] {
        let team = Arc::new(tt_accel::team::Team::new(size).unwrap());
        for &(rows, in_f, out_f) in &[(1usize, 256usize, 300usize), (3, 129, 513), (16, 257, 100), (33, 200, 250)] {
            assert!(rows * out_f.next_multiple_of(16) * in_f.next_multiple_of(4) >= MIN_SPLIT_MACS);
            seed += 1;
            let (a, w) = random(rows, in_f, out_f, seed);
            let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
            for level in IntLevel::available() {
                let got = tt_accel::team::install(Some(Arc::clone(&team)), || run(level, &a, &w, rows, in_f, out_f));
                assert_eq!(got, want, "{size} members, {level}: {rows}×{in_f}×{out_f}");
            }
        }
        assert!(team.stats().shared_jobs > 0, "the products were split: {:?}", team.stats());
    }
}

/// The tile kernel (AMX `tdpbusd`) equals the VNNI kernel exactly — and both the reference — on
/// every tile edge: row counts around the 16-row tiles (16 is the smallest it takes; 17, 31, 33
/// leave partial tiles, 48 an odd number of full ones), inputs that are and are not a multiple of
/// 64 (the zero-padded tail), odd and even panel counts, and split over a team. Skipped, with
/// the reason printed, where the CPU or OS has no AMX.
#[test]
fn amx_equals_vnni_exactly_on_tile_edges() {
    if !IntLevel::available().contains(&IntLevel::Amx) {
        eprintln!("amx_equals_vnni_exactly_on_tile_edges: skipped — {}", tt_accel::amx::describe());
        return;
    }
    let team = std::sync::Arc::new(tt_accel::team::Team::new(3).unwrap());
    let mut seed = 7000;
    for &rows in &[16usize, 17, 31, 32, 33, 48, 100] {
        for &in_f in &[1usize, 4, 63, 64, 65, 100, 128, 288, 300] {
            for &out_f in &[1usize, 16, 17, 33, 48, 100] {
                seed += 1;
                let (a, w) = random(rows, in_f, out_f, seed);
                let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
                assert_eq!(run(IntLevel::Avx512Vnni, &a, &w, rows, in_f, out_f), want, "vnni {rows}×{in_f}×{out_f}");
                assert_eq!(run(IntLevel::Amx, &a, &w, rows, in_f, out_f), want, "amx {rows}×{in_f}×{out_f}");
                let split =
                    tt_accel::team::install(Some(team.clone()), || run(IntLevel::Amx, &a, &w, rows, in_f, out_f));
                assert_eq!(split, want, "amx split over 3: {rows}×{in_f}×{out_f}");
            }
        }
    }
    // Extreme codes over the longest rows: no saturation anywhere in the engine either.
    for wv in [-128i8, 127] {
        let (rows, in_f, out_f) = (20, 4096, 17);
        let (a, w) = (vec![255u8; rows * in_f], vec![wv; out_f * in_f]);
        let want = matmul_reference(&a, &w, rows, in_f, out_f).unwrap();
        assert_eq!(run(IntLevel::Amx, &a, &w, rows, in_f, out_f), want, "amx with codes {wv}");
    }
}

/// What the detection reports agrees with the kernel's view of the CPU (`/proc/cpuinfo` on
/// Linux: the kernel clears the flags it does not support), and a forced level turns AMX off.
/// Runs everywhere.
#[test]
fn amx_detection_agrees_with_the_os_and_forcing_a_level_turns_it_off() {
    let f = tt_accel::amx::features();
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        let flags: Vec<&str> =
            info.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
        if tt_accel::amx::usable().is_ok() {
            assert!(flags.contains(&"amx_tile") && flags.contains(&"amx_int8"), "usable, yet the OS lists no AMX");
        }
        if flags.contains(&"amx_int8") {
            assert!(f.tile && f.int8, "the OS lists AMX-INT8, CPUID does not: {f:?}");
        }
    }
    eprintln!("{}", tt_accel::amx::describe());
    for l in tt_accel::dispatch::available() {
        tt_accel::with_level(l, |_| {
            assert!(!tt_accel::dispatch::matrix_engine_allowed());
            assert_ne!(IntLevel::current(), IntLevel::Amx, "with_level({l}) must force AMX off");
        });
    }
    assert_eq!(IntLevel::Amx.without_amx(), IntLevel::Avx512Vnni);
    assert!(IntLevel::available().iter().all(|&l| l <= IntLevel::detected()));
}
