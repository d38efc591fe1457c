//! The built-in model's files, compiled into the library so that `builtin` loads on any
//! machine with no network and no files beside the binary.

use candle_nn::VarBuilder;
use hooklens_core::{Error, Result};

use crate::model::{HookedTransformer, LoadOptions, TransformerConfig};
use crate::tokenizer::Tokenizer;

/// `config.json` and `model.safetensors` (f16) of the built-in model, when they were
/// present at build time (see `build.rs`).
#[cfg(hooklens_builtin)]
const FILES: Option<(&str, &[u8])> = Some((
    include_str!("../../builtin/config.json"),
    include_bytes!("../../builtin/model.safetensors"),
));
#[cfg(not(hooklens_builtin))]
const FILES: Option<(&str, &[u8])> = None;

/// The built-in model's `config.json` text and `model.safetensors` bytes, or an error
/// when this build was compiled without them.
pub fn builtin_files() -> Result<(&'static str, &'static [u8])> {
    FILES.ok_or_else(|| {
        Error::invalid(
            "the built-in model is not in this build: hooklens-models/builtin/config.json and \
             model.safetensors were missing when hooklens-models was compiled \
             (`cargo run --release --example train_builtin` writes them)",
        )
    })
}

/// The built-in model's configuration as stored (before processing). Without the
/// files, the shape it is trained with ([`crate::builtin::builtin_config`]), which is all that
/// tokenizing needs.
pub fn builtin_stored_config() -> Result<TransformerConfig> {
    match FILES {
        Some((config, _)) => TransformerConfig::from_hf_str(config, "<builtin>/config.json"),
        None => Ok(super::shape::builtin_config()),
    }
}

impl HookedTransformer {
    /// The built-in model (a two-layer GPT-2 trained in this repository to have
    /// induction heads; see [`crate::builtin`]) with TransformerLens's default weight
    /// processing, f32 on the CPU, and GPT-2's tokenizer: what `--model builtin` loads.
    pub fn builtin() -> Result<Self> {
        Self::builtin_with(&LoadOptions::default())
    }

    /// [`HookedTransformer::builtin`] with `opts`' dtype, device and processing. The weights are
    /// stored in f16 and computed with in `opts.dtype` (f32 by default); processing
    /// (folding LayerNorms, centring) is done in f32 first, as for any checkpoint, so
    /// analyses behave as on a model loaded with `from_pretrained`.
    pub fn builtin_with(opts: &LoadOptions) -> Result<Self> {
        let (config, weights) = builtin_files()?;
        let cfg = TransformerConfig::from_hf_str(config, "<builtin>/config.json")?;
        let tensors = candle_core::safetensors::load_buffer(weights, &opts.device)?;
        let vb = VarBuilder::from_tensors(tensors, opts.dtype, &opts.device);
        Ok(Self::load_with(vb, &cfg, &opts.processing)?.with_tokenizer(Tokenizer::gpt2()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProcessingOptions;

    /// The weights ship with the repository (`builtin/`): a build without them is a
    /// test failure, not a skip, so that losing them cannot go unnoticed.
    fn assert_weights_compiled_in() {
        assert!(FILES.is_some(), "{}", builtin_files().unwrap_err());
    }

    #[test]
    fn builtin_loads_processed_and_as_stored() {
        assert_weights_compiled_in();
        let m = HookedTransformer::builtin().unwrap();
        let want = super::super::shape::builtin_config();
        let got = m.cfg();
        assert_eq!(
            (got.n_layers, got.d_model, got.n_heads, got.d_vocab, got.n_ctx),
            (want.n_layers, want.d_model, want.n_heads, want.d_vocab, want.n_ctx)
        );
        assert_eq!(got.normalization_type, crate::model::NormalizationType::LNPre);
        assert_eq!(m.dtype(), candle_core::DType::F32);
        assert_eq!(m.tokenizer().unwrap().vocab_size(), 50257);
        let raw = HookedTransformer::builtin_with(&LoadOptions::default().with_processing(ProcessingOptions::none()))
            .unwrap();
        assert_eq!(raw.cfg().normalization_type, crate::model::NormalizationType::LN);
        // Processing changes the weights, not what the model computes.
        let tokens = m
            .to_tokens("The cat sat on the mat.", true, crate::model::PaddingSide::Right)
            .unwrap();
        let lp =
            |m: &HookedTransformer| candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), candle_core::D::Minus1);
        let diff = (lp(&m).unwrap() - lp(&raw).unwrap()).unwrap();
        let diff = diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-3, "processed and unprocessed log-probs differ by {diff}");
    }

    #[test]
    fn builtin_has_induction_heads() {
        assert_weights_compiled_in();
        let m = HookedTransformer::builtin().unwrap();
        let mut rng = crate::ops::SeededRng::new(0);
        let tokens = super::super::induction::repeated_tokens(&mut rng, 4, 25, m.cfg().d_vocab, 50256).unwrap();
        let scores = super::super::induction::induction_scores(&m, &tokens, 25).unwrap();
        let best = scores.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(best >= 0.5, "the strongest induction score is {best}");
        let (first, second) = super::super::induction::half_losses(&m, &tokens, 25).unwrap();
        assert!(
            second < first / 2.0,
            "loss {first} on the first half, {second} on the repeat"
        );
    }

    /// The context is what training covered: positions past the longest training
    /// sequence have untrained embeddings (earlier releases had 128 such positions, and
    /// the previous-token heads went diffuse past 57).
    #[test]
    fn builtin_context_is_what_it_was_trained_on() {
        assert_weights_compiled_in();
        let m = HookedTransformer::builtin().unwrap();
        let o = super::super::train::TrainOptions::default();
        assert_eq!(m.cfg().n_ctx, 1 + o.prefix_len.1 + o.repeat_len.1);
        assert_eq!(super::super::shape::builtin_config().n_ctx, m.cfg().n_ctx);
    }
}
