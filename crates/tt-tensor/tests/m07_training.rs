//! Module 07 — training: a full loop learns, is reproducible, and checkpoints round-trip.

use tt_tensor::loss::cross_entropy;
use tt_tensor::nn::{Linear, Sequential, Tanh};
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::serialize::{load_module, save_module};
use tt_tensor::{Module, Tensor, TensorError};

fn xor_model(seed: u64) -> Sequential {
    Sequential::new().layer(Linear::new(2, 16, true, seed)).layer(Tanh).layer(Linear::new(16, 2, true, seed + 1))
}

fn train_xor(seed: u64) -> (Sequential, Vec<f32>) {
    let model = xor_model(seed);
    let x = Tensor::from_vec(vec![0., 0., 0., 1., 1., 0., 1., 1.], &[4, 2]).unwrap();
    let y = [0usize, 1, 1, 0];
    let mut opt = Adam::new(model.parameters(), 0.05, 0.0).unwrap();
    let mut losses = Vec::new();
    for _ in 0..300 {
        opt.zero_grad();
        let loss = cross_entropy(&model.forward(&x).unwrap(), &y).unwrap();
        losses.push(loss.item().unwrap());
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    (model, losses)
}

#[test]
fn mlp_learns_xor() {
    let (model, losses) = train_xor(3);
    assert!(losses[0] > 0.5, "starts near ln 2: {}", losses[0]);
    assert!(*losses.last().unwrap() < 0.01, "final loss {}", losses.last().unwrap());
    let x = Tensor::from_vec(vec![0., 0., 0., 1., 1., 0., 1., 1.], &[4, 2]).unwrap();
    let pred = tt_tensor::no_grad(|| model.forward(&x)).unwrap().argmax_axis(1).unwrap();
    assert_eq!(pred.iter().copied().collect::<Vec<_>>(), vec![0, 1, 1, 0]);
}

#[test]
fn same_seed_same_training_run() {
    let (a, la) = train_xor(9);
    let (b, lb) = train_xor(9);
    assert_eq!(la, lb);
    for ((_, pa), (_, pb)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert_eq!(pa.to_vec(), pb.to_vec());
    }
}

#[test]
fn checkpoint_round_trip_is_bit_exact_and_atomic() {
    let dir = std::env::temp_dir().join(format!("tt-m07-{}", std::process::id()));
    let path = dir.join("xor.safetensors");
    let (model, _) = train_xor(5);
    // What a writer killed mid-save leaves (pid 999999999 is above Linux's pid limit, so no such
    // process runs), beside a user's file of a similar name: only the first is the save's own.
    std::fs::create_dir_all(&dir).unwrap();
    let (dead, users) = (dir.join(".xor.safetensors.999999999.tmp"), dir.join(".xor.safetensors.tmp"));
    std::fs::write(&dead, "partial").unwrap();
    std::fs::write(&users, "mine").unwrap();
    save_module(&model, &path, None).unwrap();
    assert_eq!(!dead.exists(), std::path::Path::new("/proc/self").exists(), "a dead writer's temp file goes");
    std::fs::remove_file(&users).expect("a user's file stays");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp file left behind");
    let fresh = xor_model(100);
    load_module(&fresh, &path).unwrap();
    for ((na, pa), (nb, pb)) in model.named_parameters().iter().zip(fresh.named_parameters()) {
        assert_eq!(na, &nb);
        let (va, vb) = (pa.to_vec(), pb.to_vec());
        assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    // Mismatched architecture: error names the parameter, model is untouched.
    let other = Sequential::new().layer(Linear::new(2, 8, true, 0));
    let before = other.parameters()[0].to_vec();
    let err = load_module(&other, &path).unwrap_err().to_string();
    assert!(err.contains("0.weight"), "{err}");
    assert_eq!(other.parameters()[0].to_vec(), before);

    // Truncated and missing files are errors that say so.
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_module(&fresh, &truncated).unwrap_err();
    assert!(matches!(err, TensorError::File { .. }) && err.to_string().contains("truncated"), "{err}");
    let err = load_module(&fresh, &dir.join("nope.safetensors")).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Checkpoint units under hostile directories: what a save may delete, what a load may open.
mod checkpoint_units {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use tt_tensor::serialize::{load_unit, prepare_unit_dir, save_unit, MANIFEST};

    fn fresh_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tt-m07-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    }

    fn manifest(dir: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
    }

    fn stored(dir: &Path, part: &str) -> String {
        manifest(dir)["files"][part]["file"].as_str().unwrap().to_string()
    }

    /// Runs `f` on another thread and fails the test if it has not returned in 20 s: a load that
    /// blocks must fail this test, not hang the suite.
    fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("the call blocked for 20 s")
    }

    #[test]
    fn save_removes_only_the_previous_generation_it_wrote() {
        let dir = fresh_dir("gc");
        // A user's files that look content-addressed: a 16-hex-digit component, the part's stem.
        let mine = ["notes.0123456789abcdef.txt", "w.fedcba9876543210.bin", "w.bin"];
        for f in mine {
            std::fs::write(dir.join(f), f).unwrap();
        }
        save_unit(&dir, &[("w.bin", b"one"), ("cfg.json", b"{}")]).unwrap();
        let gen1 = stored(&dir, "w.bin");
        save_unit(&dir, &[("w.bin", b"two"), ("cfg.json", b"{}")]).unwrap();
        let gen2 = stored(&dir, "w.bin");
        assert_ne!(gen1, gen2);
        assert!(!dir.join(&gen1).exists(), "the superseded part is removed");
        for f in mine {
            assert_eq!(std::fs::read(dir.join(f)).unwrap(), f.as_bytes(), "{f} must survive a save");
        }
        assert_eq!(load_unit(&dir, &["w.bin", "cfg.json"]).unwrap(), vec![b"two".to_vec(), b"{}".to_vec()]);
        // A manifest edited to name a user's file as an old part proves nothing: the file's name
        // is not the content-addressed name of that part and checksum, so it stays.
        let mut m = manifest(&dir);
        m["files"]["w.bin"]["file"] = "notes.0123456789abcdef.txt".into();
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        save_unit(&dir, &[("w.bin", b"three"), ("cfg.json", b"{}")]).unwrap();
        assert!(dir.join("notes.0123456789abcdef.txt").exists());
        // Even a planted entry whose name, checksum prefix and size all fit the file: the file's
        // content does not hash to the recorded checksum, so it is not ours.
        let precious = "precious.0123456789abcdef.txt";
        std::fs::write(dir.join(precious), "mine").unwrap();
        let mut m = manifest(&dir);
        m["files"]["precious.txt"] =
            serde_json::json!({"file": precious, "sha256": format!("0123456789abcdef{}", "0".repeat(48)), "bytes": 4});
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        save_unit(&dir, &[("w.bin", b"four"), ("cfg.json", b"{}")]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(precious)).unwrap(), "mine");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_a_killed_save_left_are_removed_by_the_next() {
        let dir = fresh_dir("killed");
        save_unit(&dir, &[("w.bin", b"one")]).unwrap();
        let gen1 = stored(&dir, "w.bin");
        let kept = std::fs::read(dir.join(&gen1)).unwrap();
        save_unit(&dir, &[("w.bin", b"two")]).unwrap();
        // The new manifest records what it superseded, so a save killed between publishing and
        // removing leaves files the next save can prove are its own: put them back, as that
        // crash would have left them.
        assert_eq!(manifest(&dir)["superseded"][0]["file"], gen1.as_str());
        std::fs::write(dir.join(&gen1), &kept).unwrap();
        // Temp files of a dead writer (pid 999999999 is above Linux's pid limit): ours by name
        // only when they carry a part's stored name or the manifest's.
        let gen2 = stored(&dir, "w.bin");
        let ours = [format!(".{gen2}.999999999.tmp"), ".manifest.json.999999999.tmp".to_string()];
        let theirs = [".notes.txt.999999999.tmp", ".manifest.json.tmp"];
        for f in ours.iter().map(String::as_str).chain(theirs) {
            std::fs::write(dir.join(f), "partial").unwrap();
        }
        save_unit(&dir, &[("w.bin", b"three")]).unwrap();
        let gen3 = stored(&dir, "w.bin");
        let mut want: Vec<String> = theirs.iter().map(|s| s.to_string()).collect();
        want.extend([gen3, MANIFEST.to_string(), "manifest.lock".to_string()]);
        want.sort();
        if Path::new("/proc/self").exists() {
            assert_eq!(names(&dir), want);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parts_of_a_save_killed_before_publishing_are_removed_by_the_next() {
        let dir = fresh_dir("unpublished");
        save_unit(&dir, &[("w.bin", b"one")]).unwrap();
        let published = names(&dir);
        // Killed after writing its part, before publishing: the part is on disk, unnamed by the
        // manifest, but announced by the pending record.
        let e = tt_tensor::serialize::save_unit_interrupted(&dir, &[("w.bin", b"orphan")], 1).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert_eq!(names(&dir).len(), published.len() + 2, "the orphan part and the pending record");
        assert_eq!(load_unit(&dir, &["w.bin"]).unwrap(), vec![b"one".to_vec()], "the old one still loads");
        save_unit(&dir, &[("w.bin", b"two")]).unwrap();
        let mut want = vec![stored(&dir, "w.bin"), MANIFEST.to_string(), "manifest.lock".to_string()];
        want.sort();
        assert_eq!(names(&dir), want, "the old generation, the orphan and the record are gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Threads of one process writing one path each get their own temp file: a reader sees one
    /// writer's whole bytes, never a mixture or a truncated file.
    #[test]
    fn atomic_writes_from_two_threads_never_publish_a_partial_file() {
        let dir = fresh_dir("atomic-threads");
        let path = dir.join("report.json");
        let contents = [vec![b'a'; 1 << 16], vec![b'b'; 1 << 16]];
        tt_tensor::serialize::atomic_write(&path, &contents[0]).unwrap();
        let writers: Vec<_> = contents
            .iter()
            .cloned()
            .map(|c| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        tt_tensor::serialize::atomic_write(&path, &c).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let got = std::fs::read(&path).unwrap();
            assert!(contents.contains(&got), "a partial or mixed file: {} bytes", got.len());
        }
        for w in writers {
            w.join().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_saves_killed_in_a_row_leave_nothing_behind_after_the_next() {
        let dir = fresh_dir("killed-twice");
        save_unit(&dir, &[("w.bin", b"one")]).unwrap();
        for orphan in [&b"two"[..], b"three"] {
            assert!(tt_tensor::serialize::save_unit_interrupted(&dir, &[("w.bin", orphan)], 1).is_err());
        }
        assert_eq!(load_unit(&dir, &["w.bin"]).unwrap(), vec![b"one".to_vec()]);
        save_unit(&dir, &[("w.bin", b"four")]).unwrap();
        let mut want = vec![stored(&dir, "w.bin"), MANIFEST.to_string(), "manifest.lock".to_string()];
        want.sort();
        assert_eq!(names(&dir), want, "both killed saves' parts are gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn loading_refuses_fifos_devices_and_links_out_of_the_unit() {
        let dir = fresh_dir("special");
        save_unit(&dir, &[("w.bin", b"weights"), ("c.json", b"{}")]).unwrap();
        let w = dir.join(stored(&dir, "w.bin"));
        let c = dir.join(stored(&dir, "c.json"));
        // A symlink to a regular file of the same unit is fine.
        let target = dir.join("w.copy");
        std::fs::copy(&w, &target).unwrap();
        std::fs::remove_file(&w).unwrap();
        std::os::unix::fs::symlink(&target, &w).unwrap();
        assert_eq!(load_unit(&dir, &["w.bin"]).unwrap(), vec![b"weights".to_vec()]);
        // A FIFO: the open must not wait for a writer.
        std::fs::remove_file(&c).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&c).status().is_ok_and(|s| s.success());
        if made {
            let d = dir.clone();
            let e = within_20s(move || load_unit(&d, &["c.json"])).unwrap_err().to_string();
            assert!(e.contains("not a regular file") && e.contains("c."), "{e}");
            std::fs::remove_file(&c).unwrap();
        }
        // A link out of the unit, to an endless device, under a huge declared size.
        std::os::unix::fs::symlink("/dev/zero", &c).unwrap();
        let mut m = manifest(&dir);
        m["files"]["c.json"]["bytes"] = (1u64 << 40).into();
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        let d = dir.clone();
        let e = within_20s(move || load_unit(&d, &["c.json"])).unwrap_err().to_string();
        assert!(e.contains("symlink out of the checkpoint unit"), "{e}");
        // A sparse file claiming a terabyte, declared as such: an error, not an abort.
        std::fs::remove_file(&c).unwrap();
        std::fs::File::create(&c).unwrap().set_len(1 << 40).unwrap();
        let d = dir.clone();
        let e = within_20s(move || load_unit(&d, &["c.json"])).unwrap_err().to_string();
        assert!(e.contains("do not fit in memory"), "{e}");
        // A directory where a part should be.
        std::fs::remove_file(&c).unwrap();
        std::fs::create_dir(&c).unwrap();
        let e = load_unit(&dir, &["c.json"]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // A FIFO where the lock file should be: refused at once by a load and by a save.
        let lock = dir.join("manifest.lock");
        let _ = std::fs::remove_file(&lock);
        if std::process::Command::new("mkfifo").arg(&lock).status().is_ok_and(|s| s.success()) {
            let d = dir.clone();
            let e = within_20s(move || load_unit(&d, &["w.bin"])).unwrap_err().to_string();
            assert!(e.contains("manifest.lock"), "{e}");
            let d = dir.clone();
            let e = within_20s(move || save_unit(&d, &[("w.bin", b"x")])).unwrap_err().to_string();
            assert!(e.contains("manifest.lock"), "{e}");
            std::fs::remove_file(&lock).unwrap();
        }
        // The manifest itself is held to the same rule.
        std::fs::remove_file(dir.join(MANIFEST)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join(MANIFEST)).unwrap();
        let d = dir.clone();
        let e = within_20s(move || load_unit(&d, &["w.bin"])).unwrap_err().to_string();
        assert!(e.contains("symlink out of the checkpoint unit"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_safetensors_path_that_is_a_device_or_fifo_is_an_error() {
        let e = within_20s(|| tt_tensor::serialize::load_safetensors(Path::new("/dev/zero"))).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dir = fresh_dir("st-fifo");
        let fifo = dir.join("w.safetensors");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let e = within_20s(move || tt_tensor::serialize::load_safetensors(&fifo)).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A link planted at the temp file's name is unlinked, never written through: not to a file
    /// outside the unit (symlink), not to a user's file inside it (hard link).
    #[cfg(unix)]
    #[test]
    fn a_link_planted_at_the_temp_name_is_never_written_through() {
        let dir = fresh_dir("tmp-links");
        let outside = fresh_dir("tmp-links-victim").join("victim.txt");
        std::fs::write(&outside, "victim").unwrap();
        let mine = dir.join("mine.txt");
        std::fs::write(&mine, "mine").unwrap();
        // At every name this process's next writes could use (`<pid>-<n>`, n counting writes).
        let pid = std::process::id();
        for n in 0..512 {
            std::os::unix::fs::symlink(&outside, dir.join(format!(".manifest.json.{pid}-{n}.tmp"))).unwrap();
            std::fs::hard_link(&mine, dir.join(format!(".manifest.pending.json.{pid}-{n}.tmp"))).unwrap();
        }
        save_unit(&dir, &[("w.bin", b"weights")]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "victim");
        assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");
        assert_eq!(load_unit(&dir, &["w.bin"]).unwrap(), vec![b"weights".to_vec()]);
        assert!(!std::fs::symlink_metadata(dir.join(MANIFEST)).unwrap().file_type().is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(outside.parent().unwrap()).unwrap();
    }

    /// Only the temp names `atomic_write` makes count as its own: a pid in plain decimal.
    #[test]
    fn temp_files_with_odd_pids_are_not_taken_for_a_dead_writers() {
        let dir = fresh_dir("odd-pids");
        save_unit(&dir, &[("w.bin", b"one")]).unwrap();
        let odd = [".manifest.json.+4000001.tmp", ".manifest.json.0.tmp", ".manifest.json.04000001.tmp"];
        for f in odd {
            std::fs::write(dir.join(f), "user").unwrap();
        }
        save_unit(&dir, &[("w.bin", b"two")]).unwrap();
        for f in odd {
            assert!(dir.join(f).exists(), "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Saves to one unit run one at a time (the lock is per open file, so threads of one process
    /// contend like processes do): every save succeeds and the unit always loads, whole.
    #[test]
    fn concurrent_saves_to_one_unit_leave_it_loadable() {
        let dir = fresh_dir("concurrent");
        save_unit(&dir, &[("w.bin", b"seed"), ("c.json", b"{}")]).unwrap();
        let writers: Vec<_> = (0..2u8)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let w = vec![t, i, 7];
                        save_unit(&dir, &[("w.bin", &w), ("c.json", &[b'{', t, i, b'}'])]).unwrap();
                    }
                })
            })
            .collect();
        let reader = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    let parts = load_unit(&dir, &["w.bin", "c.json"]).unwrap();
                    // One generation: both parts from the same save.
                    if parts[0] != b"seed" {
                        assert_eq!(&parts[1][1..3], &parts[0][..2], "parts of two saves mixed");
                    }
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        let last = load_unit(&dir, &["w.bin"]).unwrap();
        assert_eq!(last[0][1..], [19, 7]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_unit_path_occupied_by_a_file_is_an_error_naming_it_before_any_work() {
        let dir = fresh_dir("occupied");
        let file = dir.join("cache-entry");
        std::fs::write(&file, "not a directory").unwrap();
        let e = prepare_unit_dir(&file).unwrap_err().to_string();
        assert!(e.contains("cache-entry") && e.contains("not a directory"), "{e}");
        let e = save_unit(&file, &[("w.bin", b"x")]).unwrap_err().to_string();
        assert!(e.contains("cache-entry"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
        prepare_unit_dir(&dir.join("a/b")).unwrap();
        assert!(dir.join("a/b").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
