//! `hooklens hooks`: every hook point and the shape of its activation.

use candle_core::Tensor;
use hooklens::{CacheOptions, HookedModel};

use super::common::ModelArgs;
use crate::error::{CliError, CliResult};

/// List every hook point with the shape of its activation.
///
/// Hook points come in registration order; the shapes are those of a batch of one
/// sequence of --pos tokens (the model runs once on a dummy prompt of BOS tokens).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The length of the dummy prompt that sets the shapes.
    #[arg(long, value_name = "N", default_value_t = 4, allow_negative_numbers = true)]
    pub pos: usize,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    let n_ctx = model.cfg().n_ctx;
    if args.pos == 0 || args.pos > n_ctx {
        return Err(CliError(format!(
            "--pos {} must be between 1 and the context length n_ctx = {n_ctx}",
            args.pos
        )));
    }
    // Every hook point is cached, the logits too.
    super::common::check_forward_fits(
        &model,
        "a dummy prompt of",
        1,
        args.pos,
        1,
        model.cfg().n_layers as u64,
        "give a smaller --pos (the shapes do not need a long prompt)",
    )?;
    let bos = model.bos_token_id()?;
    let tokens = Tensor::from_vec(vec![bos; args.pos], (1, args.pos), model.device())?;
    let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&tokens))?;
    let names = model.hook_names();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for name in &names {
        let shape = match cache.get(name) {
            Some(t) => format!("{:?}", t.dims()),
            None => "(did not fire)".to_string(),
        };
        crate::outln!("{name:width$}  {shape}");
    }
    Ok(())
}
