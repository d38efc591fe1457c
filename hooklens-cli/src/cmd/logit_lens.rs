//! `hooklens logit-lens`: the top token per layer and position.

use std::path::PathBuf;

use hooklens_models::model::PaddingSide;
use hooklens_models::viz::{logit_lens, logit_lens_html};

use super::common::{check_out, write_text_file, InputArgs, ModelArgs};
use crate::error::{CliError, CliResult};

/// Print the most likely next token at every layer and position (the logit lens).
///
/// The residual stream entering each block, and the final one, is put through ln_final
/// and the unembedding (TransformerLens's accumulated_resid, labels `0_pre`, `1_pre`,
/// ..., `final_post`); a model without a final norm (post-LN OPT-350m, whose blocks
/// already return a normalised stream) unembeds each stream as it is. The terminal
/// shows one line per position with the top token of each layer and its probability;
/// --out also writes the table as an HTML heatmap.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Which prompt or row of the tokens file to show (from 0).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub row: usize,
    /// How many top tokens to keep per cell (shown on hover in the HTML).
    #[arg(long, value_name = "K", default_value_t = 5, allow_negative_numbers = true)]
    pub top: usize,
    /// Also write the table as a self-contained HTML heatmap (`-`: standard output).
    #[arg(long, value_name = "FILE.html")]
    pub out: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    if args.top == 0 {
        return Err(CliError::msg("--top must be at least 1"));
    }
    let model = args.model.load()?;
    if let Some(out) = &args.out {
        check_out(out, &args.model, Some(&args.input), true)?;
    }
    let input = args.input.read(&model, PaddingSide::Right)?;
    let tokens = input.row(args.row)?;
    // The residual stream of every layer is kept, and each is unembedded: logits (and
    // their softmax and top tokens) per layer.
    let n_layers = model.cfg().n_layers as u64;
    super::common::check_forward_fits(
        &model,
        "the logit lens of",
        1,
        tokens.dims().last().copied().unwrap_or(0),
        3 * (n_layers + 1),
        n_layers,
        "give fewer or shorter prompts, or a smaller --dtype",
    )?;
    let lens = logit_lens(&model, &tokens, args.top)?;
    use crate::columns::{display_width, pad, percent, truncate};
    // Quoted, so that whitespace-only tokens show; bidirectional controls escaped too,
    // so that a right-to-left override in one token reorders nothing after it.
    let quote = |s: &str| {
        let q = serde_json::to_string(s).unwrap_or_else(|_| s.to_string());
        q.chars()
            .map(|c| match c {
                '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' => {
                    format!("\\u{:04x}", c as u32)
                }
                c => c.to_string(),
            })
            .collect::<String>()
    };
    let cell = |s: &str, p: f32| format!("{} {:>7}", pad(&truncate(&quote(s), 14), 14), percent(p));
    let tok_w = lens
        .tokens
        .iter()
        .map(|t| display_width(&truncate(&quote(t), 16)))
        .max()
        .unwrap_or(5)
        .max(5);
    let cell_w = 22;
    let mut header = format!("{:>4}  {}", "pos", pad("token", tok_w));
    for label in &lens.labels {
        header.push_str(&format!("  {}", pad(label, cell_w)));
    }
    crate::outln!("{}", header.trim_end());
    for (p, token) in lens.tokens.iter().enumerate() {
        let mut line = format!("{p:>4}  {}", pad(&truncate(&quote(token), 16), tok_w));
        for row in &lens.top {
            let (_, text, prob) = &row[p][0];
            line.push_str(&format!("  {}", pad(&cell(text, *prob), cell_w)));
        }
        crate::outln!("{}", line.trim_end());
    }
    if let Some(out) = &args.out {
        let html = logit_lens_html(&lens, &format!("Logit lens of {}", args.model.model));
        write_text_file(out, &html)?;
        eprintln!("wrote the logit lens to {}", out.display());
    }
    Ok(())
}
