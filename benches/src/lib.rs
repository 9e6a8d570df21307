//! Shared helpers for the criterion benches in `benches/benches/`. Each bench measures an
//! implementation and its baseline in the same run so their ratio is meaningful on a noisy machine.
