//! Module 08 — data: batching, seeded shuffling, and the real UCI digits with a stratified split.

use tt_tensor::data::{digits, ClassificationData, DataLoader, Dataset};

fn toy(n: usize) -> ClassificationData {
    ClassificationData::new((0..n * 2).map(|v| v as f32).collect(), vec![2], (0..n).map(|i| i % 3).collect(), 3)
        .unwrap()
}

#[test]
fn batches_cover_every_sample_once() {
    let d = toy(10);
    let dl = DataLoader::new(&d, 4, true, 1).unwrap();
    assert_eq!(dl.num_batches(), 3);
    let batches: Vec<_> = dl.epoch(0).collect();
    assert_eq!(batches.iter().map(|b| b.y.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert_eq!(batches[0].x.shape(), vec![4, 2]);
    let mut firsts: Vec<f32> =
        batches.iter().flat_map(|b| b.x.to_vec().chunks(2).map(|c| c[0]).collect::<Vec<_>>()).collect();
    firsts.sort_by(f32::total_cmp);
    assert_eq!(firsts, (0..10).map(|i| (2 * i) as f32).collect::<Vec<_>>());
    // Features and labels stay paired.
    for b in &batches {
        for (row, &y) in b.x.to_vec().chunks(2).zip(&b.y) {
            assert_eq!((row[0] as usize / 2) % 3, y);
        }
    }
}

#[test]
fn shuffling_is_seeded_per_epoch() {
    let d = toy(50);
    let a = DataLoader::new(&d, 8, true, 7).unwrap();
    let b = DataLoader::new(&d, 8, true, 7).unwrap();
    let c = DataLoader::new(&d, 8, true, 8).unwrap();
    assert_eq!(a.order(0), b.order(0));
    assert_ne!(a.order(0), a.order(1), "each epoch reshuffles");
    assert_ne!(a.order(0), c.order(0));
    let plain = DataLoader::new(&d, 8, false, 7).unwrap();
    assert_eq!(plain.order(3), (0..50).collect::<Vec<_>>());
    assert!(DataLoader::new(&d, 0, false, 0).is_err());
}

#[test]
fn digits_are_the_real_uci_data() {
    let d = digits::load().unwrap();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.sample_shape(), &[64]);
    let mut counts = [0usize; 10];
    d.labels().iter().for_each(|&l| counts[l] += 1);
    // Class counts of the UCI digits test set as shipped with scikit-learn.
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    let mut x = vec![0.0; 64];
    let mut max = 0.0f32;
    for i in 0..d.len() {
        d.get_into(i, &mut x);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        max = max.max(x.iter().copied().fold(0.0, f32::max));
    }
    assert_eq!(max, 1.0);
}

#[test]
fn stratified_split_is_fixed_and_balanced() {
    let (train, test) = digits::standard_split().unwrap();
    assert_eq!(train.len() + test.len(), 1797);
    let mut per = [0usize; 10];
    test.labels().iter().for_each(|&l| per[l] += 1);
    // 20% of each class, rounded.
    assert_eq!(per, [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]);
    let (train2, test2) = digits::standard_split().unwrap();
    assert_eq!(test.labels(), test2.labels());
    assert_eq!(train.len(), train2.len());
    let img = train.clone().with_sample_shape(vec![1, 8, 8]).unwrap();
    assert_eq!(img.sample_shape(), &[1, 8, 8]);
    assert!(train.with_sample_shape(vec![3, 8]).is_err());
}

/// Zero batch sizes, empty datasets, out-of-range indices and fractions: named errors.
mod bad_input {
    use super::toy;
    use tt_tensor::data::{digits, ClassificationData, DataLoader, Dataset};
    use tt_tensor::TensorError;

    #[test]
    fn loader_rejects_zero_batches_and_empty_datasets() {
        let d = toy(5);
        let e = DataLoader::new(&d, 0, false, 0).err().unwrap();
        assert!(
            matches!(e, TensorError::InvalidArgument { op: "DataLoader", .. })
                && e.to_string().contains("batch_size 0"),
            "{e}"
        );
        let empty = ClassificationData::new(vec![], vec![2], vec![], 3).unwrap();
        let e = DataLoader::new(&empty, 4, true, 0).err().unwrap();
        assert!(
            matches!(e, TensorError::InvalidArgument { op: "DataLoader", .. }) && e.to_string().contains("empty"),
            "{e}"
        );
        assert_eq!(DataLoader::new(&d, 4, false, 0).unwrap().batch_size(), 4);
    }

    #[test]
    fn dataset_sizes_that_overflow() {
        // 2³²·2³² features per sample times 0 labels wraps to 0 in release builds.
        let e = ClassificationData::new(vec![], vec![1 << 32, 1 << 32], vec![], 1).unwrap_err();
        assert!(
            matches!(e, TensorError::InvalidShape { op: "ClassificationData::new", .. })
                && e.to_string().contains("overflows"),
            "{e}"
        );
        let e = ClassificationData::new(vec![0.0; 4], vec![2], vec![0, 0, 0], 1).unwrap_err();
        assert!(e.to_string().contains("do not split into 3 samples"), "{e}");
        let e = toy(2).with_sample_shape(vec![1 << 32, 1 << 32]).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn subset_and_split_reject_bad_indices_and_fractions() {
        let d = toy(5);
        let e = d.subset(&[0, 5]).unwrap_err();
        assert!(
            matches!(e, TensorError::OutOfRange { op: "ClassificationData::subset", index: 5, limit: 5, .. }),
            "{e}"
        );
        assert_eq!(d.subset(&[4, 0]).unwrap().labels(), &[1, 0]);
        for f in [f32::NAN, -0.1, 1.5] {
            let e = digits::split(&d, f, 0).err().unwrap();
            assert!(
                matches!(e, TensorError::InvalidArgument { op: "digits::split", .. })
                    && e.to_string().contains("test_fraction"),
                "{e}"
            );
        }
        let (train, test) = digits::split(&d, 1.0, 0).unwrap();
        assert_eq!((train.len(), test.len()), (0, 5));
    }

    #[test]
    #[should_panic(expected = "output holds 3 values but a sample has 2")]
    fn get_into_with_a_wrong_buffer_panics_instead_of_reading_another_sample() {
        let d = toy(5);
        let mut out = [0.0; 3];
        d.get_into(0, &mut out);
    }
}
