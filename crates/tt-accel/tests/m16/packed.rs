//! The packed decode projection against the dense reference, at every level.
//!
//! Tolerance: both sum `in` products of values in [-1, 1) in index order, the SIMD kernels with
//! fused multiply-adds (one rounding per step instead of two): differences grow like √in·ε·|terms|
//! — ~1e-6 at in = 512. 1e-5 is the stated bound; a wrong layout or a missed tail moves outputs by
//! O(0.1).

use std::sync::Arc;

use tt_accel::dispatch::{available, with_level, Level};
use tt_accel::packed::PackedF32;
use tt_tensor::kernels::linear_rows_reference;
use tt_tensor::projection::{check_projection, project, Projection, Workspace};

use crate::common::{max_diff, random, ODD_SIZES};

fn matrix(out_f: usize, in_f: usize, seed: u64) -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_vec((out_f, in_f), random(out_f * in_f, seed)).unwrap()
}

#[test]
fn packed_projection_equals_the_dense_reference_at_every_level() {
    for level in available() {
        for &out_f in &[1, 7, 16, 17, 33, 64, 65, 129] {
            for &in_f in &ODD_SIZES {
                let w = matrix(out_f, in_f, (out_f * 1000 + in_f) as u64);
                let p = PackedF32::with_level(&w, level);
                assert_eq!(p.level(), level);
                assert_eq!(p.to_dense(), w, "packing round-trips exactly");
                for o in 0..out_f {
                    let mut row = vec![f32::NAN; in_f];
                    p.dense_row(o, &mut row);
                    assert_eq!(row, w.row(o).to_vec(), "row {o} of a packed table");
                }
                for rows in [1, 2, 3, 4, 5, 9] {
                    let x = random(rows * in_f, 7);
                    let b = random(out_f, 8);
                    for bias in [Some(&b[..]), None] {
                        let mut y = vec![f32::NAN; rows * out_f];
                        project(&p, &x, rows, bias, &mut y, &mut []).unwrap();
                        let want = linear_rows_reference(&x, w.as_slice().unwrap(), bias, rows, in_f, out_f);
                        let d = max_diff(&y, &want);
                        assert!(d <= 1e-5, "{level}: {rows}×{in_f}→{out_f}: {d}");
                    }
                }
            }
        }
    }
}

/// Wide enough that the panels go in several L2 blocks, with rows in several groups of four (and a
/// partial one): every row equals the reference (1e-4: the header's bound scaled to in = 1024,
/// with margin), and equals itself computed alone, bit for bit —
/// a row's sum does not depend on its neighbours (what continuous batching relies on).
#[test]
fn blocked_panels_and_row_groups_keep_each_row_exact() {
    let (out_f, in_f) = (16 * 40 + 3, 1024);
    let w = matrix(out_f, in_f, 99);
    for level in available() {
        let p = PackedF32::with_level(&w, level);
        let rows = 9;
        let x = random(rows * in_f, 5);
        let mut y = vec![f32::NAN; rows * out_f];
        project(&p, &x, rows, None, &mut y, &mut []).unwrap();
        let want = linear_rows_reference(&x, w.as_slice().unwrap(), None, rows, in_f, out_f);
        assert!(max_diff(&y, &want) <= 1e-4, "{level}: {}", max_diff(&y, &want));
        for r in 0..rows {
            let mut one = vec![f32::NAN; out_f];
            project(&p, &x[r * in_f..(r + 1) * in_f], 1, None, &mut one, &mut []).unwrap();
            assert_eq!(one, y[r * out_f..(r + 1) * out_f], "{level}: row {r} alone vs among {rows}");
        }
    }
}

#[test]
fn packed_projection_reports_its_real_storage_and_level() {
    let w = matrix(17, 9, 1);
    let p = PackedF32::with_level(&w, Level::Avx512);
    // Two panels of 16 outputs, padded: 32 × 9 floats.
    assert_eq!((p.shape(), p.format(), p.storage_bytes()), ((17, 9), "f32-packed", 4 * 32 * 9));
    assert!(check_projection(&p, 6, 3).unwrap() < 1e-5);
    let forced = with_level(Level::Scalar, |_| PackedF32::new(&w));
    assert_eq!(forced.level(), Level::Scalar, "built under a lowered level, it keeps it");
    let mut ws = Workspace::default();
    ws.ensure(p.workspace_len(3));
    let arc: Arc<dyn Projection> = Arc::new(p);
    let mut y = vec![0.0; 17];
    assert!(project(arc.as_ref(), &[0.0; 8], 1, None, &mut y, ws.bytes()).is_err(), "short input is an error");
}

/// Split across teams of 2, 3 and 7 members (more than this machine's cores: members then wait
/// on each other's preemption, slower but never different), every output equals one thread's.
#[test]
fn a_team_split_is_bit_identical_to_one_thread() {
    use tt_accel::team::{share, Team};
    for size in [2, 3, 7] {
        let team = Arc::new(Team::new(size).unwrap());
        assert_eq!(team.size(), size);
        for level in available() {
            for &(out_f, in_f) in &[(17usize, 33usize), (129, 7), (512, 128), (16, 5)] {
                let w = matrix(out_f, in_f, 11);
                let one = PackedF32::with_level(&w, level);
                let split = PackedF32::with_level(&w, level).with_team(Arc::clone(&team));
                for rows in [1, 3, 6] {
                    let x = random(rows * in_f, 3);
                    let b = random(out_f, 4);
                    let (mut y1, mut y2) = (vec![0.0; rows * out_f], vec![f32::NAN; rows * out_f]);
                    project(&one, &x, rows, Some(&b), &mut y1, &mut []).unwrap();
                    project(&split, &x, rows, Some(&b), &mut y2, &mut []).unwrap();
                    assert_eq!(y1, y2, "{size} members, {level} {rows}×{in_f}→{out_f}");
                }
            }
        }
    }
    // Every member runs exactly its share; shares cover the range without overlap.
    let hits: Vec<std::sync::atomic::AtomicUsize> = (0..10).map(|_| Default::default()).collect();
    let t3 = Team::new(3).unwrap();
    t3.run(&|i| {
        for j in share(10, 3, i) {
            hits[j].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(hits.iter().all(|h| h.load(std::sync::atomic::Ordering::Relaxed) == 1));
}

#[test]
fn an_idle_team_sleeps_and_wakes_for_the_next_job() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let team = tt_accel::team::Team::new(2).unwrap();
    let n = AtomicUsize::new(0);
    for pause_ms in [0u64, 5, 0, 20] {
        // Long enough pauses put the worker to sleep; the next job must still reach it.
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        team.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(n.load(Ordering::Relaxed), 8, "two members ran each of four jobs");
}

/// GELU as the epilogue (`forward_rows_gelu`) equals the projection followed by the GELU row
/// kernel bit for bit, at every level, on one thread and split across a team: it is the same
/// elementwise kernel applied to the same outputs, only earlier (while they are in cache).
#[test]
fn the_gelu_epilogue_equals_projection_then_gelu_bit_for_bit_at_every_level() {
    let team = Arc::new(tt_accel::team::Team::new(2).unwrap());
    for level in available() {
        with_level(level, |_| {
            for &(out_f, in_f) in &[(1, 3), (17, 33), (64, 16), (129, 65)] {
                let w = matrix(out_f, in_f, (out_f * 31 + in_f) as u64);
                for p in [PackedF32::with_level(&w, level), PackedF32::with_level(&w, level).with_team(team.clone())] {
                    for rows in [1, 3, 4, 5, 9] {
                        let x = random(rows * in_f, 17);
                        // Outputs spread over GELU's curved range, negatives included.
                        let b: Vec<f32> = random(out_f, 18).iter().map(|v| 3.0 * v).collect();
                        let mut want = vec![f32::NAN; rows * out_f];
                        p.forward_rows(&x, rows, Some(&b), &mut want, &mut []);
                        want.chunks_exact_mut(out_f).for_each(tt_accel::fused::gelu);
                        let mut got = vec![f32::NAN; rows * out_f];
                        p.forward_rows_gelu(&x, rows, Some(&b), &mut got, &mut [], tt_accel::fused::gelu);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{level}: {rows}×{in_f}→{out_f}");
                    }
                }
            }
        });
    }
}
