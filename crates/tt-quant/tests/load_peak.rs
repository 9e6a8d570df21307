//! The heap a quantized checkpoint's load takes, measured by the counting allocator (a binary of
//! its own: the allocator is process-wide). Loading an int8 or int4 GPT into a skeleton of
//! `Unloaded` placeholders never builds its f32 weights and never holds the file whole, so the
//! heap's peak while building the skeleton and loading stays within 1.2× of what the loaded model
//! keeps, plus [`SLACK`] for the parser's fixed costs. The cached decoder's prefill likewise
//! holds no buffer of prompt length × vocabulary for its quantized head.

use std::sync::Arc;

use tt_profile::alloc::{measure_peak, thread_snapshot, CountingAllocator};
use tt_quant::checkpoint;
use tt_tensor::projection::Unloaded;
use tt_tensor::serialize::{load_unit, open_unit_part};
use tt_transformer::testing::tiny_config;
use tt_transformer::{Gpt, GptConfig};

#[path = "m17/quantize_all.rs"]
mod quantize_all;
use quantize_all::quantize_all;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Fixed costs of a load whatever the model's size: the 1 MiB buffer the checksum is computed
/// through, the header's JSON and its parsed maps, the manifest, layer lists and names. The model
/// below keeps several MB, so the 1.2× bound is what is tested, not the slack.
const SLACK: usize = (1 << 20) + (128 << 10);

/// 4 blocks of width 384, vocabulary 1024: about 7.5 M weights, large enough that the fixed costs
/// are small beside them.
fn config() -> GptConfig {
    GptConfig { d_model: 384, n_heads: 6, n_layers: 4, ..tiny_config(1024, 5) }
}

fn quantized(int4: bool) -> Gpt {
    quantize_all(Gpt::new(config()).unwrap(), int4)
}

#[test]
fn loading_into_a_skeleton_peaks_within_1_2x_of_the_loaded_model() {
    for int4 in [false, true] {
        let tag = if int4 { "int4" } else { "int8" };
        let dir = std::env::temp_dir().join(format!("tt-load-peak-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut saved = quantized(int4);
        checkpoint::save(&mut saved, &dir).unwrap();
        let file_bytes = open_unit_part(&dir, checkpoint::WEIGHTS_PART).unwrap().len();
        drop(saved);

        let ((model, kept), peak) = measure_peak(|| {
            let start = thread_snapshot().0;
            let mut skel =
                Gpt::new_with(config(), &mut |_, (o, i), _| Ok(Some(Arc::new(Unloaded::new(o, i))))).unwrap();
            checkpoint::load(&mut skel, &dir).unwrap();
            let kept = usize::try_from(thread_snapshot().0 - start).unwrap();
            (skel, kept)
        });
        let formats: usize = tt_tensor::nn::linears(&model)
            .iter()
            .map(|(_, l)| l.installed_projection().unwrap().storage_bytes())
            .sum::<usize>()
            + model.tok_emb.installed_projection().unwrap().storage_bytes();
        drop(model);
        // The way without a skeleton, for comparison: an f32 model built, the file read whole.
        let (_, resident_peak) = measure_peak(|| {
            let mut m = Gpt::new(config()).unwrap();
            let bytes = load_unit(&dir, &[checkpoint::WEIGHTS_PART]).unwrap().remove(0);
            checkpoint::from_safetensors(&mut m, &bytes).unwrap();
            m
        });
        eprintln!(
            "{tag}: file {file_bytes} bytes, formats' storage {formats} bytes, loaded model keeps {kept} bytes, load \
             peak {peak} bytes ({:.3}× kept); an f32 model loaded from the whole file in memory peaks at \
             {resident_peak} bytes",
            peak as f64 / kept as f64
        );
        assert!(peak < resident_peak, "{tag}");
        assert!(kept >= formats, "{tag}: the model keeps at least its formats' bytes ({kept} < {formats})");
        assert!(
            peak as f64 <= 1.2 * kept as f64 + SLACK as f64,
            "{tag}: peak {peak} bytes is over 1.2 × {kept} + {SLACK}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The head runs on a prefill's last position only, so its workspace is one row's: an int8 head's
/// i32 accumulators sized for every prompt row were `rows · vocab · 4` bytes (2 MB for a 16-token
/// prompt over a 32,000-token vocabulary) that no step used.
#[test]
fn a_prefill_holds_no_prompt_by_vocabulary_buffer_for_a_quantized_head() {
    use tt_kvcache::{CachedGpt, OverflowPolicy};
    let config = GptConfig { vocab_size: 8192, d_model: 64, n_heads: 2, n_layers: 1, ..tiny_config(8192, 7) };
    for int4 in [false, true] {
        let model = quantize_all(Gpt::new(config.clone()).unwrap(), int4);
        let mut engine = CachedGpt::new(&model, 1, OverflowPolicy::Error).unwrap();
        let prompt: Vec<usize> = (0..64).map(|i| i * 37 % 8192).collect();
        let (logits, peak) = measure_peak(|| engine.prefill(&prompt, prompt.len()).unwrap().len());
        assert_eq!(logits, 8192);
        let all_rows = prompt.len() * 8192 * 4;
        assert!(peak < all_rows / 4, "int4 {int4}: a 64-token prefill took {peak} bytes (all rows' head: {all_rows})");
    }
}
