//! What a loader that never holds a whole model uses: checkpoint unit parts opened verified and
//! read piece by piece (`open_unit_part`), `Unloaded` placeholders for a model skeleton, and
//! `map_embeddings` to reach token tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tt_tensor::nn::{map_embeddings, Embedding, Linear, Relu, Sequential};
use tt_tensor::projection::{project, DenseF32, Projection, Unloaded};
use tt_tensor::serialize::{open_unit_part, save_unit, MANIFEST};

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tt-loading-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The file holding `part`, as the manifest names it.
fn stored(dir: &Path, part: &str) -> PathBuf {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    dir.join(m["files"][part]["file"].as_str().unwrap())
}

/// 2.5 MiB of varied bytes: the checksum is computed over several 1 MiB chunks.
fn payload() -> Vec<u8> {
    (0..(5usize << 19)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

#[test]
fn a_unit_part_is_verified_and_read_in_pieces_within_its_size() {
    let dir = fresh_dir("read");
    let bytes = payload();
    save_unit(&dir, &[("w.bin", &bytes), ("cfg.json", b"{}")]).unwrap();
    let part = open_unit_part(&dir, "w.bin").unwrap();
    assert_eq!((part.len(), part.is_empty()), (bytes.len() as u64, false));
    assert_eq!(part.path(), stored(&dir, "w.bin"));
    for (offset, len) in [(0usize, 8usize), (1 << 20, 4096), (bytes.len() - 3, 3), (bytes.len(), 0)] {
        assert_eq!(part.read_at(offset as u64, len).unwrap(), bytes[offset..offset + len], "{offset}+{len}");
    }
    let end = bytes.len() as u64;
    for (offset, len) in [(end - 3, 4), (end + 1, 0), (u64::MAX, 2), (1, usize::MAX)] {
        let e = part.read_at(offset, len).unwrap_err().to_string();
        assert!(e.contains("goes past the part's"), "{offset}+{len}: {e}");
    }
    assert!(open_unit_part(&dir, "cfg.json").unwrap().read_at(0, 2).unwrap() == b"{}");
    let e = open_unit_part(&dir, "tokenizer.json").unwrap_err().to_string();
    assert!(e.contains("names no part \"tokenizer.json\""), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_unit_part_with_a_wrong_checksum_or_size_is_refused() {
    let dir = fresh_dir("bad");
    let bytes = payload();
    save_unit(&dir, &[("w.bin", &bytes)]).unwrap();
    let file = stored(&dir, "w.bin");
    let mut flipped = bytes.clone();
    flipped[(3 << 19) + 5] ^= 1; // in the second MiB chunk
    let mut longer = bytes.clone();
    longer.push(0);
    for (what, content, needle) in [
        ("flipped", &flipped, "checksum mismatch"),
        ("truncated", &bytes[..bytes.len() - 1].to_vec(), "truncated"),
        ("longer", &longer, "more than the"),
    ] {
        std::fs::write(&file, content).unwrap();
        let e = open_unit_part(&dir, "w.bin").unwrap_err().to_string();
        assert!(e.contains(needle), "{what}: {e}");
    }
    std::fs::write(&file, &bytes).unwrap();
    assert!(open_unit_part(&dir, "w.bin").is_ok());
    #[cfg(unix)]
    {
        // A link out of the unit, even to the very same bytes, is not read.
        let outside = fresh_dir("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("w.bin"), &bytes).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(outside.join("w.bin"), &file).unwrap();
        let e = open_unit_part(&dir, "w.bin").unwrap_err().to_string();
        assert!(e.contains("a symlink out of the checkpoint unit"), "{e}");
        let _ = std::fs::remove_dir_all(&outside);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unloaded_placeholder_has_a_shape_and_no_weights() {
    let p = Unloaded::new(3, 5);
    assert_eq!((p.shape(), p.format(), p.storage_bytes()), ((3, 5), "unloaded", 0));
    let layer = Linear::from_projection(Arc::new(p), None, "fc.weight").unwrap();
    assert!(layer.weight.is_released());
    assert_eq!(layer.weight.shape(), [3, 5]);
    // Installing the real format keeps the weight released: the format is its only copy.
    let mut layer = layer;
    let real = Arc::new(DenseF32::from_array(ndarray::Array2::from_elem((3, 5), 0.5)));
    layer.set_projection(real).unwrap();
    assert!(layer.weight.is_released());
    assert_eq!(layer.installed_projection().unwrap().format(), "f32");
    assert_eq!(layer.weight.to_vec(), vec![0.5; 15]);
}

#[test]
#[should_panic(expected = "the layer's weights were never loaded")]
fn computing_with_an_unloaded_weight_panics() {
    let p = Unloaded::new(2, 2);
    let mut y = [0.0f32; 2];
    let _ = project(&p, &[1.0, 1.0], 1, None, &mut y, &mut []);
}

#[test]
#[should_panic(expected = "the layer's weights were never loaded")]
fn reading_an_unloaded_table_panics() {
    let e = Embedding::from_projection(Arc::new(Unloaded::new(4, 2)), "tok_emb.weight").unwrap();
    // Inference (no graph) reads rows from the table's format.
    let _ = tt_tensor::no_grad(|| e.forward_ids(&[1], &[1]));
}

#[test]
fn map_embeddings_visits_every_table_by_path() {
    let mut m = Sequential::new()
        .layer(Embedding::new(10, 4, 1.0, 0).unwrap())
        .layer(Relu)
        .layer(Sequential::new().layer(Linear::new(4, 4, true, 1)).layer(Embedding::new(6, 4, 1.0, 2).unwrap()));
    let mut seen = Vec::new();
    let n = map_embeddings(&mut m, |name, e| {
        seen.push((name.to_string(), e.weight.shape()));
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen, [("0".to_string(), vec![10, 4]), ("2.1".to_string(), vec![6, 4])]);
}
