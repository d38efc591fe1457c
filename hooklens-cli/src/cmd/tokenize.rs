//! `hooklens tokenize`: text to ids (or string tokens), as JSON.

use hooklens_models::hub;
use hooklens_models::{Gpt2Config, Tokenizer};

use crate::error::{CliError, CliResult};

/// Print the token ids (or string tokens) of a text as a JSON list.
///
/// Without --model, GPT-2's BPE (built in, no download). With --model, the model's
/// tokenizer.json when it has one (GPT-2's BPE otherwise), and every id must fit the
/// model's vocabulary.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory or a Hugging Face id whose tokenizer to use.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Put the BOS token (`<|endoftext|>` for GPT-2) first, as TransformerLens's
    /// `to_tokens` does by default.
    #[arg(long)]
    pub prepend_bos: bool,
    /// Print the text of each token instead of its id.
    #[arg(long)]
    pub str_tokens: bool,
    /// The text to tokenize.
    #[arg(value_name = "TEXT")]
    pub text: String,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let (tokenizer, config) = match &args.model {
        None => (Tokenizer::gpt2()?, None),
        Some(name) => {
            let files = hub::resolve_text_with(name, &hub::HubOptions::from_env())?;
            (files.tokenizer()?, Some(Gpt2Config::from_hf_json(&files.config)?))
        }
    };
    let mut ids = Vec::new();
    if args.prepend_bos {
        let bos = config
            .as_ref()
            .and_then(|c| c.bos_token_id)
            .or(tokenizer.bos_token_id())
            .ok_or_else(|| CliError::msg("--prepend-bos: the model and its tokenizer name no BOS token"))?;
        ids.push(bos);
    }
    ids.extend(tokenizer.encode(&args.text)?);
    if let (Some(config), Some(model)) = (&config, &args.model) {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= config.d_vocab) {
            return Err(CliError(format!(
                "token id {bad} (from {}) is outside the vocabulary of model `{model}` ({} ids): \
                 this tokenizer does not fit this model",
                tokenizer.source(),
                config.d_vocab
            )));
        }
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
