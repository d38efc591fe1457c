//! Loading a pretrained model by name, as TransformerLens's `from_pretrained` does:
//! the built-in model, a model directory, or a Hugging Face id resolved through the
//! hub. It stands above the model, the built-in model and name resolution, which it
//! joins.

use hooklens_core::Result;

use crate::builtin::is_builtin;
use crate::loading::hub::{resolve_with, HubOptions};
use crate::model::{HookedTransformer, LoadOptions, ProcessingOptions};

impl HookedTransformer {
    /// TransformerLens's `from_pretrained`: loads `name` (`builtin` for the built-in
    /// model, see [`HookedTransformer::builtin`]; a model directory or a Hugging Face id, see
    /// [`resolve_with`]) with `opts` (weight processing as TransformerLens does by
    /// default), with its `tokenizer.json` (GPT-2's BPE when it has none) for the
    /// text methods. The Hugging Face cache and offline mode come from the environment
    /// ([`HubOptions::from_env`]).
    pub fn from_pretrained(name: &str, opts: &LoadOptions) -> Result<Self> {
        Self::from_pretrained_with(name, opts, &HubOptions::from_env())
    }

    /// TransformerLens's `from_pretrained_no_processing`: [`HookedTransformer::from_pretrained`]
    /// with the weights as stored, whatever `opts.processing` says.
    pub fn from_pretrained_no_processing(name: &str, opts: &LoadOptions) -> Result<Self> {
        let opts = opts.clone().with_processing(ProcessingOptions::none());
        Self::from_pretrained(name, &opts)
    }

    /// [`HookedTransformer::from_pretrained`] with explicit hub options (cache directory,
    /// offline mode, revision).
    pub fn from_pretrained_with(name: &str, opts: &LoadOptions, hub: &HubOptions) -> Result<Self> {
        if is_builtin(name) {
            return Self::builtin_with(opts);
        }
        let files = resolve_with(name, hub)?;
        let model = Self::from_files(&files.config, &files.weights, opts)?;
        // GPT-2's BPE stands in for a missing tokenizer.json of a GPT-2 whose
        // vocabulary it fits; `tokenizer()` says what is missing for any other.
        if files.tokenizer.is_none() && !(model.cfg().is_gpt2() && model.cfg().d_vocab >= 50257) {
            return Ok(model);
        }
        let tokenizer = files.tokenizer()?;
        Ok(model.with_tokenizer(tokenizer))
    }
}

#[cfg(all(test, feature = "hub"))]
mod tests {
    use std::path::Path;

    use hooklens_testutil::hub_standin::{skipped_for_proxy, StandIn, COMMIT};
    use hooklens_testutil::TempDir;

    use super::*;
    use crate::loading::hub::test_cache::{fake_cache, named, offline, tiny_model_dir};
    use crate::loading::hub::{shard_files, CONFIG_FILE, SHARD_INDEX_FILE, TOKENIZER_FILE};

    #[test]
    fn from_pretrained_loads_from_the_cache_with_its_tokenizer() {
        let tmp = TempDir::new("pretrained");
        fake_cache(&tmp, "gpt2", true);
        let snap = tmp.join("models--gpt2/snapshots").join(COMMIT);
        let opts = LoadOptions::default();
        let plain = HookedTransformer::from_pretrained_with("gpt2", &opts, &offline(&tmp)).unwrap();
        assert_eq!(plain.cfg().d_vocab, 512);
        // GPT-2's BPE does not fit a 512-token vocabulary: no silent stand-in.
        let err = plain.tokenizer().unwrap_err().to_string();
        assert!(err.contains("tokenizer.json") && err.contains("512"), "{err}");
        let tiny_tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-tokenizer/tokenizer.json");
        std::fs::copy(tiny_tok, snap.join(TOKENIZER_FILE)).unwrap();
        let m = HookedTransformer::from_pretrained_with("gpt2", &opts, &offline(&tmp)).unwrap();
        assert_eq!(m.tokenizer().unwrap().vocab_size(), 512);
        let tokens = m.to_tokens("Hello", true, crate::model::PaddingSide::Right).unwrap();
        assert_eq!(m.forward(&tokens).unwrap().dims(), &[1, 5, 512]);
        let err = HookedTransformer::from_pretrained_with("gpt2-large", &opts, &offline(&tmp))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpt2-large") && err.contains("HF_HUB_OFFLINE"), "{err}");
    }

    #[test]
    fn builtin_loads_by_name() {
        let opts = offline(Path::new("/nonexistent"));
        let m = HookedTransformer::from_pretrained_with("builtin", &LoadOptions::default(), &opts).unwrap();
        assert_eq!(m.cfg().d_model, crate::builtin::builtin_config().d_model);
        assert_eq!(m.cfg().normalization_type, crate::model::NormalizationType::LNPre);
        let raw = HookedTransformer::from_pretrained_no_processing("builtin", &LoadOptions::default()).unwrap();
        assert_eq!(raw.cfg().normalization_type, crate::model::NormalizationType::LN);
    }

    #[test]
    fn from_pretrained_no_processing_reads_a_directory_as_stored() {
        let dir = tiny_model_dir();
        let m =
            HookedTransformer::from_pretrained_no_processing(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(m.cfg().normalization_type, crate::model::NormalizationType::LN);
        let p = HookedTransformer::from_pretrained(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert_eq!(p.cfg().normalization_type, crate::model::NormalizationType::LNPre);
    }

    #[test]
    fn sharded_checkpoints_download_every_shard() {
        if skipped_for_proxy() {
            return;
        }
        let tmp = TempDir::new("download-shards");
        let config =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/llama/model/config.json"))
                .unwrap();
        let weights = crate::convert::synthetic_checkpoint(&config, 4).unwrap();
        let served_dir = tmp.join("served");
        crate::convert::write_checkpoint(&served_dir, &config, &weights, candle_core::DType::F32, 3).unwrap();
        let mut files = vec![CONFIG_FILE.to_string(), SHARD_INDEX_FILE.to_string()];
        files.extend(shard_files(&served_dir.join(SHARD_INDEX_FILE)).unwrap());
        assert_eq!(files.len(), 5);
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        let server = StandIn::serve(named(&served_dir, &names, ""));
        let cache = tmp.join("cache");
        let mut opts = HubOptions::from_vars(|_| None).cache_dir(&cache).progress(false);
        opts.endpoint = Some(server.endpoint.clone());
        let got = HookedTransformer::from_pretrained_with("org/tiny-llama", &LoadOptions::no_processing(), &opts);
        server.finish();
        let got = got.unwrap();
        let local = HookedTransformer::from_dir(&served_dir, &LoadOptions::no_processing()).unwrap();
        let tokens = candle_core::Tensor::new(&[[1u32, 5, 9, 300]], &candle_core::Device::Cpu).unwrap();
        let diff = hooklens_testutil::max_abs_diff(&got.forward(&tokens).unwrap(), &local.forward(&tokens).unwrap());
        assert_eq!(diff, 0.0);
        // A Llama without tokenizer.json gets no GPT-2 BPE: text is a clear error.
        let err = got
            .to_tokens("hi", true, crate::model::PaddingSide::Right)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        // Every shard is in the cache now: offline works.
        let again = resolve_with("org/tiny-llama", &offline(&cache)).unwrap();
        assert!(again.weights.ends_with(SHARD_INDEX_FILE));
    }
}
