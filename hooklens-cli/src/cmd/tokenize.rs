//! `hooklens tokenize`: text to ids (or string tokens), as JSON.

use hooklens_models::{builtin, hub};
use hooklens_models::{Tokenizer, TransformerConfig};

use crate::error::{CliError, CliResult};

/// Print the token ids (or string tokens) of a text as a JSON list, BOS first where
/// TransformerLens's `to_tokens` puts it (--prepend-bos / --no-bos decide otherwise).
///
/// The model's tokenizer.json when it has one, GPT-2's BPE otherwise (the built-in
/// model's, the default: no download); every id must fit the model's vocabulary.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `builtin`, a model directory or a Hugging Face id whose tokenizer to use.
    #[arg(long, value_name = "MODEL", default_value = "builtin")]
    pub model: String,
    /// Put the BOS token (`<|endoftext|>` for GPT-2) first even where the model's family
    /// does not by default. By default BOS goes first as TransformerLens's `to_tokens`
    /// puts it for the model (`default_prepend_bos`: every family but Qwen 2 / Qwen 3
    /// and BLOOM).
    #[arg(long)]
    pub prepend_bos: bool,
    /// Do not put BOS first.
    #[arg(long, conflicts_with = "prepend_bos")]
    pub no_bos: bool,
    /// Print the text of each token instead of its id.
    #[arg(long)]
    pub str_tokens: bool,
    /// The text to tokenize.
    #[arg(value_name = "TEXT")]
    pub text: String,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let (tokenizer, config) = if builtin::is_builtin(&args.model) {
        (Tokenizer::gpt2()?, builtin::builtin_stored_config()?)
    } else {
        let files = hub::resolve_text_with(&args.model, &hub::HubOptions::from_env())?;
        let config = TransformerConfig::from_hf_json(&files.config)?;
        // GPT-2's BPE stands in only for a GPT-2 whose vocabulary it fits.
        if files.tokenizer.is_none() && !(config.is_gpt2() && config.d_vocab >= 50257) {
            return Err(CliError(format!(
                "model `{}` has no tokenizer.json, and GPT-2's BPE does not fit it ({}, {} ids): \
                 put its tokenizer.json beside config.json",
                args.model, config.original_architecture, config.d_vocab
            )));
        }
        (files.tokenizer()?, config)
    };
    let mut ids = Vec::new();
    if super::common::prepend_bos(args.prepend_bos, args.no_bos, config.default_prepend_bos) {
        let bos = config
            .bos_token_id
            .or(tokenizer.bos_token_id())
            .ok_or_else(|| CliError::msg("--prepend-bos: the model and its tokenizer name no BOS token"))?;
        ids.push(bos);
    }
    ids.extend(tokenizer.encode(&args.text)?);
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= config.d_vocab) {
        return Err(CliError(format!(
            "token id {bad} (from {}) is outside the vocabulary of model `{}` ({} ids): \
             this tokenizer does not fit this model",
            tokenizer.source(),
            args.model,
            config.d_vocab
        )));
    }
    let json = if args.str_tokens {
        let strs = ids
            .iter()
            .map(|&id| tokenizer.token_str(id))
            .collect::<Result<Vec<_>, _>>()?;
        serde_json::to_string(&strs)
    } else {
        serde_json::to_string(&ids)
    };
    crate::outln!("{}", json.map_err(|e| CliError(format!("cannot write JSON: {e}")))?);
    Ok(())
}
