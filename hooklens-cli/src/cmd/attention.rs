//! `hooklens attention`: every head's attention pattern as one HTML file.

use std::path::PathBuf;

use hooklens_models::model::PaddingSide;
use hooklens_models::viz::{attention_html, attention_patterns};

use super::common::{check_out, write_text_file, InputArgs, ModelArgs};
use crate::error::CliResult;

/// Write every head's attention pattern on a prompt as one HTML file.
///
/// The file is self-contained (scripts and styles inlined; it opens with no network):
/// a thumbnail per head, and the chosen head as a heatmap with the tokens along both
/// axes and the weight under the mouse.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Which prompt or row of the tokens file to show (from 0).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub row: usize,
    /// Only these layers (`--layers 0,1` or `--layers 0 --layers 1`); all by default.
    #[arg(long, value_name = "L", value_delimiter = ',', num_args = 1.., allow_negative_numbers = true)]
    pub layers: Vec<usize>,
    /// The HTML file to write (`-`: standard output).
    #[arg(long, value_name = "FILE.html")]
    pub out: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    check_out(&args.out, &args.model, Some(&args.input), true)?;
    let input = args.input.read(&model, PaddingSide::Right)?;
    let tokens = input.row(args.row)?;
    let layers = (!args.layers.is_empty()).then_some(args.layers.as_slice());
    let mut view = attention_patterns(&model, &tokens, layers)?;
    view.title = format!("Attention patterns of {}", args.model.model);
    let html = attention_html(&view)?;
    write_text_file(&args.out, &html)?;
    let heads: usize = view.layers.iter().map(|(_, p)| p.dim(0).unwrap_or(0)).sum();
    if html.len() > 64 << 20 {
        eprintln!(
            "warning: the page is {} MiB: browsers get slow; --layers shows fewer layers, a shorter prompt fewer cells",
            html.len() >> 20
        );
    }
    eprintln!(
        "wrote {heads} attention patterns ({} layers, {} tokens) to {}",
        view.layers.len(),
        view.tokens.len(),
        args.out.display()
    );
    Ok(())
}
