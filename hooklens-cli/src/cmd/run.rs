//! `hooklens run`: the loss of a prompt and its most likely next tokens.

use candle_core::{DType, D};
use hooklens_models::model::PaddingSide;
use hooklens_models::{ForwardOptions, ReturnType};

use super::common::{InputArgs, ModelArgs};
use crate::error::{CliError, CliResult};

/// Print the loss of a prompt and its most likely next tokens.
///
/// The loss is the mean next-token cross-entropy; the next tokens after the last
/// position come with their probabilities and logits.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// How many next tokens to show.
    #[arg(long, value_name = "K", default_value_t = 10, allow_negative_numbers = true)]
    pub top: usize,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    if args.top == 0 {
        return Err(CliError::msg("--top must be at least 1"));
    }
    let model = args.model.load()?;
    let input = args.input.read(&model, PaddingSide::Left)?;
    let (batch, pos) = input.tokens.dims2()?;
    // The logits (and their log-softmax for the loss), and one layer's activations at a time.
    super::common::check_forward_fits(
        &model,
        "running",
        batch,
        pos,
        3,
        1,
        "give fewer or shorter prompts, or a smaller --dtype",
    )?;
    // Token ids from a file need no tokenizer; their text is shown where there is one.
    let tokenizer = model.tokenizer().ok();
    let mut fwd = ForwardOptions::new().return_type(if pos >= 2 { ReturnType::Both } else { ReturnType::Logits });
    if let Some(mask) = &input.mask {
        fwd = fwd.attention_mask(mask.clone());
    }
    let out = model.forward_with(&input.tokens, &fwd)?;
    let logits = out
        .logits
        .ok_or_else(|| CliError::msg("the model returned no logits"))?;
    // NaN weights (or an overflow) would print "loss: NaN" and exit 0: say where the
    // first non-finite value appears instead.
    let loss_finite = match &out.loss {
        Some(loss) => super::common::all_finite(loss)?,
        None => true,
    };
    if !loss_finite || !super::common::all_finite(&logits)? {
        let first = super::common::first_non_finite_point(&model, &input.tokens, input.mask.as_ref())?;
        return Err(CliError(format!(
            "the model's output is not finite: {first} (are the weights finite?)"
        )));
    }
    match &out.loss {
        Some(loss) => {
            let loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            crate::outln!("loss: {loss:.4} (mean next-token cross-entropy over the batch)");
        }
        None => crate::outln!("loss: none (one position: nothing to predict)"),
    }
    // With left padding every sequence ends at the last position.
    let last = logits.narrow(1, pos - 1, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax(&last, D::Minus1)?.to_vec2::<f32>()?;
    let last = last.to_vec2::<f32>()?;
    for b in 0..batch {
        if batch > 1 {
            crate::outln!("sequence {b}:");
        }
        let mut order: Vec<usize> = (0..probs[b].len()).collect();
        order.sort_by(|&i, &j| probs[b][j].total_cmp(&probs[b][i]));
        crate::outln!("top {} next tokens:", args.top.min(order.len()));
        for (rank, &id) in order.iter().take(args.top).enumerate() {
            let text = match tokenizer {
                Some(t) => t
                    .token_str(id as u32)
                    .unwrap_or_else(|_| format!("<id {id}, outside the tokenizer>")),
                None => format!("<id {id}: no tokenizer>"),
            };
            crate::outln!(
                "  {:>2}. {:<20} id {:<6} p {:.4}  logit {:.3}",
                rank + 1,
                serde_json::to_string(&text).unwrap_or(text),
                id,
                probs[b][id],
                last[b][id]
            );
        }
    }
    Ok(())
}
