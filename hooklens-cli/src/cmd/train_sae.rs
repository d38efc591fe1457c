//! `hooklens train-sae`: train a sparse autoencoder on a harvest's activations, with
//! SAELens's semantics and setting names, resuming from the last checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use clap::builder::{PossibleValue, TypedValueParser};
use hooklens::HookedModel;
use hooklens_models::corpus::Corpus;
use hooklens_models::sae::train::{
    train, ActivationSource, HarvestActivations, JumpReluSparsityLoss, ModelActivations, NormalizeActivations,
    TrainArchitecture, TrainEvent, TrainOptions, METRICS_FILE, METRICS_HTML_FILE,
};

use super::common::{DTypeArg, DeviceArg, ModelArgs};
use super::harvest::InputFormat;
use crate::error::{CliError, CliResult};

/// Train a sparse autoencoder on activations saved by `hooklens harvest`, or computed
/// on the fly by a model run over a corpus.
///
/// Reads the harvest's shards in --activations (the tensor named --hook), or runs
/// --model over --input (the corpus, cut into sequences as `hooklens harvest --input`
/// cuts it, caching only --hook and --hook-out; read again from its start when it runs
/// out), shuffles the activations through a seeded buffer, and trains as SAELens 6.54 does (same
/// initialisation, losses, gradient clipping, Adam and schedules; option names follow
/// SAELens's LanguageModelSAERunnerConfig). Writes a SAELens folder to --out (cfg.json,
/// sae_weights.safetensors, sparsity.safetensors) that `--sae OUT` of the other commands
/// and SAELens's SAE.load_from_disk read, checkpoints in OUT/checkpoints/ (every
/// --checkpoint-every-tokens and at the end), metrics in OUT/metrics.jsonl and their
/// plots in OUT/metrics.html. With --model, the metrics include the cross-entropy loss
/// recovered (SAELens's ce_loss_score) on the corpus's first --store-batch-size-prompts
/// sequences.
///
/// Rerunning the same command resumes from the newest checkpoint and ends with the
/// weights an uninterrupted run would have; changed settings are an error.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The harvest's output folder (its `*-shard-*.safetensors` files); or give --input.
    #[arg(long, value_name = "HARVEST_DIR")]
    pub activations: Option<PathBuf>,
    /// The corpus --model runs over (as `hooklens harvest --input` reads it: text lines,
    /// or JSON lines with a text field); in place of --activations.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// With --input: the model computing the activations (`builtin` by default, a model
    /// directory or a Hugging Face id, as for `hooklens harvest`).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// With --input: how to read it (auto: jsonl for .jsonl, .ndjson or .json, else text).
    #[arg(long, value_enum)]
    pub input_format: Option<InputFormat>,
    /// With --input: the field holding the document in JSON lines (default text).
    #[arg(long, value_name = "FIELD")]
    pub text_field: Option<String>,
    /// With --input: tokens per sequence, BOS included (at most the model's n_ctx;
    /// n_ctx by default).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub context_size: Option<usize>,
    /// With --input: sequences per forward pass of the model (default 8, as harvest's
    /// --batch-size); also the sequences the cross-entropy metrics are measured on.
    #[arg(long, value_name = "B", allow_negative_numbers = true)]
    pub store_batch_size_prompts: Option<usize>,
    /// With --input: where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (the cross-entropy metrics are measured on the CPU only).
    #[arg(long, value_name = "DEVICE", value_parser = super::common::parse_device)]
    pub device: Option<DeviceArg>,
    /// With --input: load the model's weights as stored, as harvest's --no-processing.
    #[arg(long)]
    pub no_processing: bool,
    /// The hook point whose activations are trained on (a tensor of the shards, or a
    /// hook point of --model).
    #[arg(long, value_name = "NAME")]
    pub hook: String,
    /// Trains a transcoder: reads --hook and reconstructs this hook point of the same
    /// harvest (standard and jumprelu; saved as SAELens's `transcoder` /
    /// `jumprelu_transcoder`).
    #[arg(long, value_name = "NAME")]
    pub hook_out: Option<String>,
    /// The architecture (SAELens's name).
    #[arg(long, value_name = "ARCH", value_parser = ArchitectureParser)]
    pub architecture: TrainArchitecture,
    /// Number of features.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub d_sae: usize,
    /// TopK: features firing per token; (Matryoshka) BatchTopK: per token on average (the
    /// batch keeps its k * batch largest activations; saved as JumpReLU with the learnt
    /// threshold).
    /// Default 100; an error with the other architectures.
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    pub k: Option<usize>,
    /// Adam's learning rate.
    #[arg(long, value_name = "F", default_value_t = 3e-4, allow_negative_numbers = true)]
    pub lr: f64,
    /// Standard: the L1 penalty's coefficient (default 1.0; an error with the other
    /// architectures).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub l1_coefficient: Option<f64>,
    /// Standard: steps over which the L1 coefficient rises linearly from 0 (default 0).
    #[arg(long, value_name = "N")]
    pub l1_warm_up_steps: Option<usize>,
    /// Matryoshka BatchTopK: the nested levels' widths, strictly increasing, separated by
    /// commas (`--matryoshka-widths 128,512,2048`); d_sae is added as the last level if
    /// missing.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', num_args = 1..)]
    pub matryoshka_widths: Vec<usize>,
    /// Matryoshka BatchTopK: one auxiliary loss per level (its dead features reconstruct
    /// the residual of the reconstruction up to it) instead of one for the whole SAE.
    #[arg(long)]
    pub use_matryoshka_aux_loss: bool,
    /// JumpReLU: the sparsity loss's coefficient (default 1.0).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub l0_coefficient: Option<f64>,
    /// JumpReLU: steps over which the sparsity coefficient rises linearly from 0
    /// (default 0).
    #[arg(long, value_name = "N")]
    pub l0_warm_up_steps: Option<usize>,
    /// JumpReLU: the sparsity loss, `step` (DeepMind's L0; default), `tanh` (Anthropic's)
    /// or `quadratic` (Gemma Scope 2's penalty around --target-l0).
    #[arg(long, value_name = "MODE", value_parser = ["step", "tanh", "quadratic"])]
    pub jumprelu_sparsity_loss_mode: Option<String>,
    /// JumpReLU: the target L0 of the `quadratic` sparsity loss (required by it).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub target_l0: Option<f64>,
    /// JumpReLU: the width of the straight-through estimators' rectangle kernel
    /// (default 0.05).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub jumprelu_bandwidth: Option<f64>,
    /// JumpReLU: every feature's threshold at initialisation (default 0.01).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub jumprelu_init_threshold: Option<f64>,
    /// JumpReLU: the scale inside the `tanh` sparsity loss (default 4.0).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub jumprelu_tanh_scale: Option<f64>,
    /// JumpReLU: the straight-through estimators also pass their gradient to the encoder,
    /// not only to the threshold (Anthropic's setup).
    #[arg(long)]
    pub jumprelu_ste_to_input: bool,
    /// JumpReLU: the coefficient of the pre-activation loss on dead features (off by
    /// default; Anthropic's is 3e-6).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub pre_act_loss_coefficient: Option<f64>,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lr_warm_up_steps: usize,
    /// Final steps of linear learning-rate decay to 0.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lr_decay_steps: usize,
    /// Adam's beta1.
    #[arg(long, value_name = "F", default_value_t = 0.9, allow_negative_numbers = true)]
    pub adam_beta1: f64,
    /// Adam's beta2.
    #[arg(long, value_name = "F", default_value_t = 0.999, allow_negative_numbers = true)]
    pub adam_beta2: f64,
    /// Tokens to train on (the harvest is read again from the start if it holds fewer).
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    pub training_tokens: u64,
    /// Tokens per step (SAELens's train_batch_size_tokens).
    #[arg(long, value_name = "N", default_value_t = 4096, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Input scaling: `none`, or `expected_average_only_in` (scaled to mean norm
    /// sqrt(d_in) while training, folded into the saved weights).
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = ["none", "expected_average_only_in"])]
    pub normalize_activations: String,
    /// A feature not fired for more than this many steps is dead (TopK's auxiliary loss
    /// trains dead features).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub dead_feature_window: usize,
    /// Steps over which firing frequencies (sparsity.safetensors) are accumulated.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub feature_sampling_window: usize,
    /// Seeds the initialisation and the shuffling.
    #[arg(long, value_name = "S", default_value_t = 42)]
    pub seed: u64,
    /// Writes a checkpoint every N tokens (besides the one at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every_tokens: Option<u64>,
    /// Prints and logs metrics every N steps.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub metrics_every: usize,
    /// The output folder (created if missing; resumed from if it holds checkpoints).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar and no metric lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `--architecture`, listing only the implemented architectures in `--help`
/// and naming SAELens's others as not implemented yet.
#[derive(Clone)]
struct ArchitectureParser;

impl TypedValueParser for ArchitectureParser {
    type Value = TrainArchitecture;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let name = value.to_string_lossy();
        TrainArchitecture::from_name(&name)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("--architecture: {e}\n")))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            TrainArchitecture::ALL.into_iter().map(|a| PossibleValue::new(a.name())),
        ))
    }
}

/// Where the activations come from, as the flags say.
enum Source<'a> {
    Harvest(&'a PathBuf),
    Model(&'a PathBuf),
}

/// Exactly one of --activations and --input, and the model's flags only with --input.
fn check_source(args: &Args) -> CliResult<Source<'_>> {
    match (&args.activations, &args.input) {
        (Some(_), Some(_)) => Err(CliError::msg(
            "--activations and --input: give one (a harvest's folder, or a corpus that --model runs over), not both",
        )),
        (None, None) => Err(CliError::msg(
            "give --activations HARVEST_DIR (activations saved by `hooklens harvest`) or --input CORPUS \
             (activations computed on the fly by --model, builtin by default)",
        )),
        (Some(dir), None) => {
            let model_flags = [
                ("--model", args.model.is_some()),
                ("--input-format", args.input_format.is_some()),
                ("--text-field", args.text_field.is_some()),
                ("--context-size", args.context_size.is_some()),
                ("--store-batch-size-prompts", args.store_batch_size_prompts.is_some()),
                ("--device", args.device.is_some()),
                ("--no-processing", args.no_processing),
            ];
            match model_flags.iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(CliError(format!(
                    "{flag} is a setting of the model run over --input, not of --activations (a harvest \
                     holds activations already)"
                ))),
                None => Ok(Source::Harvest(dir)),
            }
        }
        (None, Some(input)) => Ok(Source::Model(input)),
    }
}

/// The model over the corpus, after checking the flags against the model, naming them.
fn open_model_source(args: &Args, input: &std::path::Path) -> CliResult<ModelActivations> {
    let meta = std::fs::metadata(input).map_err(|e| CliError(format!("--input {}: {e}", input.display())))?;
    if !meta.is_file() {
        return Err(CliError(format!("--input {} is not a regular file", input.display())));
    }
    let batch = args.store_batch_size_prompts.unwrap_or(8);
    if batch == 0 {
        return Err(CliError::msg("--store-batch-size-prompts must be at least 1"));
    }
    let model_args = ModelArgs {
        model: args.model.clone().unwrap_or_else(|| "builtin".to_string()),
        no_processing: args.no_processing,
        all_hooks: false,
        dtype: DTypeArg::F32,
        device: args.device.unwrap_or(DeviceArg::Cpu),
        revision: "main".to_string(),
        allow_unused_tensors: false,
    };
    let model = model_args.load()?;
    let n_ctx = model.cfg().n_ctx;
    if let Some(ctx) = args.context_size {
        if ctx < 2 || ctx > n_ctx {
            return Err(CliError(format!(
                "--context-size {ctx} must be between 2 and the model's n_ctx = {n_ctx}"
            )));
        }
    }
    if args.hook_out.as_ref() == Some(&args.hook) {
        return Err(CliError(format!(
            "--hook-out {0} is --hook {0}: a transcoder maps one hook point to another; to reconstruct a \
             hook point, train an SAE (no --hook-out)",
            args.hook
        )));
    }
    let names = model.hook_names();
    let flags = [("--hook", Some(&args.hook)), ("--hook-out", args.hook_out.as_ref())];
    for (flag, name) in flags {
        let Some(name) = name else { continue };
        if !names.iter().any(|n| n == name) {
            let near = hooklens::__internal::nearest_names(name, names.iter().map(String::as_str), 3);
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean `{}`?)", near.join("`, `"))
            };
            return Err(CliError(format!(
                "{flag} `{name}` is not a hook point of --model {}{hint}; `hooklens hooks` lists them",
                model_args.model
            )));
        }
    }
    let format = args
        .input_format
        .unwrap_or(InputFormat::Auto)
        .resolve(input)
        .corpus_format();
    let corpus = Corpus {
        path: input.to_path_buf(),
        format,
        text_field: args.text_field.clone().unwrap_or_else(|| "text".to_string()),
    };
    ModelActivations::new(
        model,
        corpus,
        &args.hook,
        args.hook_out.as_deref(),
        args.context_size,
        batch,
    )
    .map_err(|e| CliError(format!("--input: {e}")))
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let source = check_source(&args)?;
    crate::output::check_output_dir("--out", &args.out)?;
    let arch = args.architecture;
    if let Some(out) = &args.hook_out {
        if !matches!(arch, TrainArchitecture::Standard | TrainArchitecture::JumpRelu) {
            return Err(CliError(format!(
                "--hook-out {out}: transcoders are implemented for standard and jumprelu, not {} \
                 (SAELens has no {0} transcoder format)",
                arch.name()
            )));
        }
        if args.normalize_activations != "none" {
            return Err(CliError(format!(
                "--hook-out {out}: --normalize-activations must be none for a transcoder"
            )));
        }
    }
    if args.k.is_some() && !arch.uses_k() {
        return Err(CliError(format!(
            "--k is a setting of topk, batchtopk and matryoshka_batchtopk, not of --architecture {}",
            arch.name()
        )));
    }
    let jumprelu_flags = [
        ("--l0-coefficient", args.l0_coefficient.is_some()),
        ("--l0-warm-up-steps", args.l0_warm_up_steps.is_some()),
        (
            "--jumprelu-sparsity-loss-mode",
            args.jumprelu_sparsity_loss_mode.is_some(),
        ),
        ("--jumprelu-bandwidth", args.jumprelu_bandwidth.is_some()),
        ("--jumprelu-init-threshold", args.jumprelu_init_threshold.is_some()),
        ("--jumprelu-tanh-scale", args.jumprelu_tanh_scale.is_some()),
        ("--target-l0", args.target_l0.is_some()),
        ("--jumprelu-ste-to-input", args.jumprelu_ste_to_input),
        ("--pre-act-loss-coefficient", args.pre_act_loss_coefficient.is_some()),
    ];
    if arch != TrainArchitecture::Standard {
        let given = [
            ("--l1-coefficient", args.l1_coefficient.is_some()),
            ("--l1-warm-up-steps", args.l1_warm_up_steps.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(CliError(format!(
                "{flag} is a setting of standard, not of --architecture {}",
                arch.name()
            )));
        }
    }
    if arch != TrainArchitecture::MatryoshkaBatchTopK {
        let flag = if !args.matryoshka_widths.is_empty() {
            Some("--matryoshka-widths")
        } else if args.use_matryoshka_aux_loss {
            Some("--use-matryoshka-aux-loss")
        } else {
            None
        };
        if let Some(flag) = flag {
            return Err(CliError(format!(
                "{flag} is a setting of matryoshka_batchtopk, not of --architecture {}",
                arch.name()
            )));
        }
    }
    if arch != TrainArchitecture::JumpRelu {
        if let Some((flag, _)) = jumprelu_flags.iter().find(|(_, given)| *given) {
            return Err(CliError(format!(
                "{flag} is a setting of jumprelu, not of --architecture {}",
                arch.name()
            )));
        }
    }
    let defaults = TrainOptions::new(arch, args.d_sae);
    let sparsity_mode = match &args.jumprelu_sparsity_loss_mode {
        Some(m) => JumpReluSparsityLoss::from_name(m)?,
        None => defaults.jumprelu_sparsity_loss_mode,
    };
    let opts = TrainOptions {
        k: args.k.unwrap_or(defaults.k),
        matryoshka_widths: args.matryoshka_widths.clone(),
        use_matryoshka_aux_loss: args.use_matryoshka_aux_loss,
        l0_coefficient: args.l0_coefficient.unwrap_or(defaults.l0_coefficient),
        l0_warm_up_steps: args.l0_warm_up_steps.unwrap_or(defaults.l0_warm_up_steps),
        jumprelu_sparsity_loss_mode: sparsity_mode,
        jumprelu_bandwidth: args.jumprelu_bandwidth.unwrap_or(defaults.jumprelu_bandwidth),
        jumprelu_init_threshold: args.jumprelu_init_threshold.unwrap_or(defaults.jumprelu_init_threshold),
        jumprelu_tanh_scale: args.jumprelu_tanh_scale.unwrap_or(defaults.jumprelu_tanh_scale),
        jumprelu_ste_to_input: args.jumprelu_ste_to_input,
        target_l0: args.target_l0,
        pre_act_loss_coefficient: args.pre_act_loss_coefficient,
        lr: args.lr,
        l1_coefficient: args.l1_coefficient.unwrap_or(defaults.l1_coefficient),
        l1_warm_up_steps: args.l1_warm_up_steps.unwrap_or(defaults.l1_warm_up_steps),
        lr_warm_up_steps: args.lr_warm_up_steps,
        lr_decay_steps: args.lr_decay_steps,
        adam_beta1: args.adam_beta1,
        adam_beta2: args.adam_beta2,
        training_tokens: args.training_tokens,
        train_batch_size_tokens: args.batch_size,
        normalize_activations: NormalizeActivations::from_name(&args.normalize_activations)?,
        dead_feature_window: args.dead_feature_window,
        feature_sampling_window: args.feature_sampling_window,
        seed: args.seed,
        checkpoint_every_tokens: args.checkpoint_every_tokens,
        metrics_every_steps: args.metrics_every,
        ..defaults
    };
    // Every setting is checked before the shards are opened, and they before training.
    opts.validate().map_err(|e| CliError(format!("bad settings: {e}")))?;
    let harvest;
    let model;
    let (src, whence): (ActivationSource, String) = match source {
        Source::Harvest(dir) => {
            harvest = match &args.hook_out {
                Some(out) => HarvestActivations::open_transcoder(dir, &args.hook, out),
                None => HarvestActivations::open(dir, &args.hook),
            }
            .map_err(|e| CliError(format!("--activations: {e}")))?;
            let whence = format!("{} tokens harvested", harvest.tokens());
            ((&harvest).into(), whence)
        }
        Source::Model(input) => {
            model = open_model_source(&args, input)?;
            let whence = format!(
                "computed by {} over {} in sequences of {} tokens",
                args.model.as_deref().unwrap_or("builtin"),
                input.display(),
                model.context_size()
            );
            ((&model).into(), whence)
        }
    };
    let target = match src.hook_out() {
        Some((h, d)) => format!(" transcoder to `{h}` ({d} wide)"),
        None => " SAE".to_string(),
    };
    eprintln!(
        "training a {}{target} ({} features) on `{}` ({} wide, {whence}) for {} tokens",
        args.architecture.name(),
        opts.d_sae,
        src.hook(),
        src.d_in(),
        opts.training_tokens
    );
    let bar = progress_bar(opts.training_tokens, args.quiet);
    let started = Instant::now();
    let mut start_tokens = 0u64;
    let quiet = args.quiet;
    let report = train(src, &opts, &args.out, &mut |event| match event {
        TrainEvent::Resumed { tokens, checkpoint } => {
            start_tokens = tokens;
            bar.set_position(tokens);
            if !quiet {
                bar.suspend(|| eprintln!("resuming from {} ({tokens} tokens)", checkpoint.display()));
            }
        }
        TrainEvent::ScalingFactor(f) if !quiet => {
            bar.suspend(|| eprintln!("expected_average_only_in: scaling activations by {f:.6}"));
        }
        TrainEvent::Step { tokens, .. } => {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(tokens);
            bar.set_message(format!("{:.0} tok/s", (tokens - start_tokens) as f64 / secs));
        }
        TrainEvent::Metrics(m) if !quiet => bar.suspend(|| eprintln!("{m}")),
        TrainEvent::CorpusRestarted { tokens_per_pass } if !quiet => bar.suspend(|| {
            eprintln!(
                "--input holds {tokens_per_pass} tokens in sequences, fewer than --training-tokens {}: \
                 reading it again from the start",
                opts.training_tokens
            )
        }),
        _ => {}
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let trained = report.tokens - report.resumed_from.unwrap_or(0);
    eprintln!(
        "wrote the {} to {} ({} tokens, {} steps; {trained} tokens this run at {:.0} tok/s); metrics in {} and {}",
        if src.hook_out().is_some() { "transcoder" } else { "SAE" },
        report.sae_dir.display(),
        report.tokens,
        report.steps,
        trained as f64 / secs,
        args.out.join(METRICS_FILE).display(),
        args.out.join(METRICS_HTML_FILE).display()
    );
    Ok(())
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise), as
    // harvest's, so that logs of batch jobs stay clean.
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} tokens, ETA {eta}  {msg}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}
