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
    save_module(&model, &path, None).unwrap();
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
