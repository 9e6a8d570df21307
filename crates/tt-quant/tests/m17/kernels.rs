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
