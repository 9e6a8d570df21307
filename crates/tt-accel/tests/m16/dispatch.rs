use tt_accel::dispatch::{available, detected, level, with_level, Level};

#[test]
fn levels_can_be_lowered_but_never_raised() {
    let top = detected();
    assert_eq!(available().last().copied(), Some(level()));
    for l in Level::ALL {
        let used = with_level(l, |used| used);
        assert_eq!(used, l.min(level()), "{l}");
        assert_eq!(level(), available()[available().len() - 1], "restored after with_level");
    }
    assert!(with_level(Level::Avx512, |u| u) <= top);
    assert_eq!(Level::parse("AVX2"), Some(Level::Avx2));
    assert_eq!(Level::parse("sse"), None);
    // Nested overrides restore the outer one.
    with_level(Level::Avx2, |_| {
        with_level(Level::Scalar, |u| assert_eq!(u, Level::Scalar));
        // Capped by the process level too (TT_ACCEL_LEVEL may lower it).
        assert_eq!(level(), Level::Avx2.min(*available().last().unwrap()));
    });
}
