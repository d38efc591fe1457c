//! `hooklens generate`: continue a prompt.

use std::path::PathBuf;

use hooklens_models::model::PaddingSide;
use hooklens_models::GenerateOptions;

use super::common::{check_out, tokens_i64, write_safetensors, InputArgs, ModelArgs};
use crate::error::{CliError, CliResult};

/// Continue a prompt and print the text.
///
/// The text includes the prompt (without the BOS put before it) and ends before the
/// first generated end-of-text token (--ignore-eos to go on). A model without a
/// tokenizer prints the token ids instead (space-separated), with --tokens as input.
///
/// Sampling at temperature 1 by default, as TransformerLens's `generate`; --greedy takes
/// the most likely token each step. Several prompts are left-padded into one batch and
/// printed one after another, separated by a line `---`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// How many tokens to add at most.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    /// Take the most likely token at each step instead of sampling.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed", "freq_penalty"])]
    pub greedy: bool,
    /// Divide logits by T before sampling (0 is greedy).
    #[arg(long, value_name = "T", default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample among the K most likely tokens only.
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to P (0 < P <= 1).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Subtract F times its count so far from each token's logit.
    #[arg(long, value_name = "F", default_value_t = 0.0, allow_hyphen_values = true)]
    pub freq_penalty: f64,
    /// The sampler's seed: the same seed gives the same text.
    #[arg(long, value_name = "S", default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Keep going after the end-of-text token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Also write `tokens` [batch, pos + N] (i64) to this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: Option<PathBuf>,
}

// `allow_negative_numbers` on the numeric flags: without it clap takes `-0.5` for the
// short flags `-0 -. -5` and reports "unexpected argument '-0'", which names neither
// the flag nor the value; with it the value reaches the parser or the option checks.

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    if let Some(out) = &args.out {
        check_out(out, &args.model, Some(&args.input), false)?;
    }
    let input = args.input.read(&model, PaddingSide::Left)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        do_sample: !args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        freq_penalty: args.freq_penalty,
        seed: args.seed,
        stop_at_eos: !args.ignore_eos,
        attention_mask: input.mask.clone(),
        ..GenerateOptions::default()
    };
    let prompt_len = input.tokens.dim(1)?;
    let out = model.generate(&input.tokens, &opts).map_err(|e| match e {
        hooklens::Error::ContextTooLong { n_ctx, .. } => {
            let room = (n_ctx + 1).saturating_sub(prompt_len);
            let fix = if room == 0 {
                "shorten the prompt".to_string()
            } else {
                format!("give --max-new-tokens {room} or less, or shorten the prompt")
            };
            CliError(format!(
                "--max-new-tokens {}: {prompt_len} prompt positions + {} new tokens exceed the model's context of {n_ctx} positions: {fix}",
                args.max_new_tokens, args.max_new_tokens
            ))
        }
        other => other.into(),
    })?;
    if let Some(path) = &args.out {
        write_safetensors(path, vec![("tokens", &tokens_i64(&out)?)])?;
    }
    let rows = out.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?;
    let pads: Vec<usize> = match &input.mask {
        Some(mask) => mask
            .to_vec2::<u32>()?
            .iter()
            .map(|r| r.iter().take_while(|&&m| m == 0).count())
            .collect(),
        None => vec![0; rows.len()],
    };
    let skip_bos = usize::from(input.prepended_bos);
    // A finished sequence is filled with EOS up to the batch's length: show the text
    // up to its first generated EOS (the --out file keeps every token).
    let eos = model.cfg().eos_token_id.filter(|_| !args.ignore_eos);
    // Token ids in (--tokens) need no tokenizer: without one the ids are printed.
    let tokenizer = match model.tokenizer() {
        Ok(t) => Some(t),
        Err(_) if args.input.tokens.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    for (i, (row, pad)) in rows.iter().zip(pads).enumerate() {
        if i > 0 {
            crate::outln!("---");
        }
        let end = eos
            .and_then(|eos| row.iter().skip(prompt_len).position(|&t| t == eos))
            .map_or(row.len(), |n| prompt_len + n);
        let ids = row.get(pad + skip_bos..end).unwrap_or_default();
        let Some(tokenizer) = tokenizer else {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            crate::outln!("{}", ids.join(" "));
            continue;
        };
        let text = tokenizer
            .decode(ids)
            .map_err(|e| CliError(format!("cannot show the generated tokens as text: {e}")))?;
        crate::outln!("{text}");
    }
    Ok(())
}
