//! `hooklens cache`: run the model with a cache and save every activation.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use hooklens::{CacheOptions, HookedModel, NamesFilter, Slice};
use hooklens_models::model::PaddingSide;
use hooklens_models::{ForwardOptions, ReturnType};

use super::common::{check_out, tokens_i64, InputArgs, ModelArgs};
use super::sae_args::SaeArgs;
use crate::error::{CliError, CliResult};

/// Run the model and save every activation as safetensors.
///
/// Each cached activation is saved under its TransformerLens name. Besides the activations the file holds `logits` [batch, pos, d_vocab], `loss` [1]
/// (mean next-token cross-entropy), `loss_per_token` [batch, pos-1], `tokens`
/// [batch, pos] (i64) and, when prompts of
/// different lengths were padded (on the right), `attention_mask` [batch, pos].
/// With --grads, `<name>_grad` beside each activation.
/// --names, --pos-slice and --remove-batch-dim apply to the activations only.
/// With --sae, each SAE's activations are saved under the point it replaces
/// (`blocks.0.hook_resid_pre.hook_sae_acts_post`, ...), as SAELens names them.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub saes: SaeArgs,
    /// Cache only hook points matching these names or globs (`blocks.*.attn.hook_pattern`):
    /// repeat the flag, or separate them by commas or spaces. Each must match a hook point.
    #[arg(long = "names", value_name = "PATTERN", num_args = 1.., value_delimiter = ',')]
    pub names: Vec<String>,
    /// Drop the batch axis of every activation (needs a batch of one).
    #[arg(long)]
    pub remove_batch_dim: bool,
    /// Keep only these positions of each activation: `-1`, `2:8`, `::2`, `1,3,5`, ...
    #[arg(long, value_name = "SLICE", allow_hyphen_values = true, value_parser = parse_slice)]
    pub pos_slice: Option<Slice>,
    /// Also back-propagate the mean loss and save `<name>_grad`, the gradient of the
    /// loss with respect to each cached activation (TransformerLens's `incl_bwd`).
    #[arg(long)]
    pub grads: bool,
    /// The safetensors file to write (atomically: a temporary file, then a rename).
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
}

fn parse_slice(s: &str) -> Result<Slice, String> {
    s.parse::<Slice>().map_err(|e| e.to_string())
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    let saes = args.saes.set(model.device())?;
    let splices = saes.hooks()?;
    super::sae_args::check_names_against_saes(&saes, &args.names)?;
    check_out(&args.out, &args.model, Some(&args.input), false)?;
    crate::output::check_output_file("--out", &args.out, &args.saes.files())?;
    let input = args.input.read(&model, PaddingSide::Right)?;
    let (batch, pos) = input.tokens.dims2()?;
    if pos < 2 {
        return Err(CliError(format!(
            "the input has {pos} position(s): the next-token loss needs at least 2"
        )));
    }
    check_cache_fits(&model, batch, pos, args.names.is_empty(), args.grads, &saes)?;
    // Saving reads tensors on the CPU; a GPU run moves each one there as it is cached.
    let mut opts = CacheOptions::new()
        .remove_batch_dim(args.remove_batch_dim)
        .device(Device::Cpu);
    if !args.names.is_empty() {
        opts = opts.names(NamesFilter::Names(args.names.clone()));
    }
    if let Some(slice) = args.pos_slice.clone() {
        // Checked against the input here, so a slice that does not fit is the option's
        // error rather than a failure of the first hook it reaches.
        slice
            .indices(pos)
            .map_err(|e| CliError(format!("--pos-slice: {e} (the input has {pos} positions)")))?;
        opts = opts.pos_slice(slice);
    }
    if args.remove_batch_dim && batch != 1 {
        return Err(CliError(format!(
            "--remove-batch-dim needs a batch of one; the input has {batch} sequences"
        )));
    }
    let mut fwd = ForwardOptions::new().return_type(ReturnType::Both).loss_per_token(true);
    if let Some(mask) = &input.mask {
        fwd = fwd.attention_mask(mask.clone());
    }
    let (out, mut cache) = if args.grads {
        // The backward pass needs the scalar inside the run; the forward's other outputs
        // are kept from the same run.
        let mut kept = None;
        let (_, cache) = model.run_with_cache_bwd(opts, splices, |m| -> hooklens::Result<Tensor> {
            let out = m.forward_with(&input.tokens, &fwd)?;
            let per_token = out
                .loss
                .clone()
                .ok_or_else(|| hooklens::Error::invalid("the model returned no loss"))?;
            let loss = mean_loss(&per_token, input.mask.as_ref()).map_err(|e| hooklens::Error::invalid(e.0))?;
            kept = Some(out);
            Ok(loss)
        })?;
        (kept.ok_or_else(|| CliError::msg("the forward did not run"))?, cache)
    } else {
        model.run_with_cache_and_hooks(opts, splices, |m| m.forward_with(&input.tokens, &fwd))?
    };
    let logits = out
        .logits
        .ok_or_else(|| CliError::msg("the model returned no logits"))?
        .detach();
    let per_token = out
        .loss
        .ok_or_else(|| CliError::msg("the model returned no loss"))?
        .detach();
    let loss = mean_loss(&per_token, input.mask.as_ref())?;
    // NaN weights (or an overflow) would write non-finite activations and a NaN loss
    // and exit 0: say where the first non-finite value appears, and write nothing.
    if !super::common::all_finite(&loss)? || !super::common::all_finite(&logits)? {
        let first = super::common::first_non_finite_point(&model, &input.tokens, input.mask.as_ref())?;
        return Err(CliError(format!(
            "the model's output is not finite: {first} (are the weights finite?); nothing written"
        )));
    }
    for name in ["logits", "loss", "loss_per_token", "tokens", "attention_mask"] {
        if cache.contains(name) {
            return Err(CliError(format!(
                "the model has a hook point named `{name}`, which the file also needs"
            )));
        }
    }
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu);
    cache.insert("logits", cpu(&logits)?);
    cache.insert("loss", cpu(&loss.reshape(1)?)?);
    cache.insert("loss_per_token", cpu(&per_token)?);
    cache.insert("tokens", cpu(&tokens_i64(&input.tokens)?)?);
    if let Some(mask) = &input.mask {
        cache.insert("attention_mask", cpu(&tokens_i64(mask)?)?);
    }
    cache.save(&args.out)?;
    eprintln!(
        "wrote {} tensors ({} activations) for tokens [{batch}, {pos}] to {}",
        cache.len(),
        cache.len() - 4 - usize::from(input.mask.is_some()),
        args.out.display()
    );
    Ok(())
}

/// An error before the run when its logits and cache (with the activations of the
/// SAEs spliced in) cannot fit in the memory available: allocating them would abort
/// the process halfway instead.
fn check_cache_fits(
    model: &hooklens_models::HookedTransformer,
    batch: usize,
    pos: usize,
    all: bool,
    grads: bool,
    saes: &hooklens_models::sae::SaeSet,
) -> CliResult<()> {
    let cfg = model.cfg();
    let elem = model.dtype().size_in_bytes() as u64;
    let tokens = (batch as u64).saturating_mul(pos as u64);
    // The logits, their log-softmax for the loss and an f32 copy; per layer (or one,
    // with --names) the residual stream and its neighbours, the MLP's hidden layer, the
    // attention scores and pattern; every SAE's activations.
    let layers = if all { cfg.n_layers as u64 } else { 1 };
    let sae_per_pos = super::common::sae_bytes_per_pos(saes.iter().map(|(s, _)| s), elem);
    let mut need = super::common::forward_need(model, batch, pos, 3, layers, sae_per_pos);
    if grads {
        need = need.saturating_mul(2);
    }
    let sae_note = match saes.len() {
        0 => String::new(),
        1 => ", 1 SAE".to_string(),
        n => format!(", {n} SAEs"),
    };
    hooklens::__internal::check_memory(
        &format!(
            "caching tokens [{batch}, {pos}] ({} logits and {}{sae_note})",
            hooklens::__internal::human(tokens.saturating_mul(cfg.d_vocab as u64).saturating_mul(elem)),
            if all {
                "every hook point"
            } else {
                "the --names hook points"
            }
        ),
        need,
        "cache fewer hook points (--names), give fewer or shorter prompts, or a smaller --dtype",
    )?;
    Ok(())
}

/// The mean of the per-token loss `[batch, pos-1]` over the predictions that count:
/// all of them, or with a mask `[batch, pos]` those whose token and next token are
/// both real (the model zeroes the others), as TransformerLens averages.
fn mean_loss(per_token: &Tensor, mask: Option<&Tensor>) -> CliResult<Tensor> {
    let sum = per_token.to_dtype(DType::F32)?.sum_all()?;
    let count = match mask {
        None => per_token.elem_count(),
        Some(mask) => mask
            .to_device(&Device::Cpu)?
            .to_vec2::<u32>()?
            .iter()
            .map(|row| row.windows(2).filter(|w| w[0] != 0 && w[1] != 0).count())
            .sum(),
    };
    if count == 0 {
        return Err(CliError::msg(
            "no position has a next token to predict: the loss is undefined",
        ));
    }
    Ok((sum / count as f64)?)
}
