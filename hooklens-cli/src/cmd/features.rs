//! `hooklens features`: which SAE features fire on each token of a prompt.

use std::path::PathBuf;

use hooklens_models::model::PaddingSide;
use hooklens_models::viz::{feature_activations, features_html};

use super::common::{check_out, write_text_file, InputArgs, ModelArgs};
use crate::error::CliResult;

/// Show the most active features of an SAE at each token of a prompt.
///
/// The SAE is spliced in with its error term, so it reads the model as it is. Prints a
/// table (position, token, the top features as `feature:activation`); with --out, also
/// writes a self-contained HTML page of the prompt coloured by one feature's activation
/// (--feature, else the most active one), with a selector over the features that fire.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// The SAE: a SAELens folder (cfg.json, sae_weights.safetensors) or
    /// `REPO_ID:FOLDER` on the Hugging Face hub.
    #[arg(long, value_name = "DIR|REPO:FOLDER")]
    pub sae: String,
    /// How many features to show per token.
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub top: usize,
    /// The feature the page opens on (default: the most active one in the prompt).
    #[arg(long, value_name = "F")]
    pub feature: Option<usize>,
    /// Which prompt or row of the tokens file to show (from 0).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub row: usize,
    /// The HTML page to write.
    #[arg(long, value_name = "FILE.html")]
    pub out: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    let sae_args = super::sae_args::SaeArgs {
        saes: vec![args.sae.clone()],
        sae_error_term: true,
    };
    // The page is checked before anything runs, as every output is: none of the
    // model's, the input's or the SAE's files, no FIFO, device or directory.
    if let Some(out) = &args.out {
        check_out(out, &args.model, Some(&args.input), true)?;
        if out.as_os_str() != "-" {
            crate::output::check_output_file("--out", out, &sae_args.files())?;
        }
    }
    let sae = sae_args.load(model.device())?.remove(0);
    let input = args.input.read(&model, PaddingSide::Right)?;
    let tokens = input.row(args.row)?;
    let view = feature_activations(&model, &sae, &tokens, args.top, args.feature)?;
    crate::outln!("{:>4}  {:<16}  top features (feature:activation)", "pos", "token");
    for (i, (t, top)) in view.tokens.iter().zip(&view.top).enumerate() {
        let shown = format!("{t:?}");
        let feats: Vec<String> = top.iter().map(|(f, a)| format!("{f}:{a:.3}")).collect();
        crate::outln!("{i:>4}  {shown:<16}  {}", feats.join("  "));
    }
    if let Some(path) = &args.out {
        write_text_file(path, &features_html(&view))?;
        eprintln!(
            "wrote the features of {} tokens to {} (opens on feature {})",
            view.tokens.len(),
            path.display(),
            view.feature
        );
    }
    Ok(())
}
