//! `hooklens`: run a hooked transformer of any bundled family from the command line:
//! the built-in demo, cache activations, generate, tokenize, list hook points, draw
//! attention and the logit lens, harvest activations of a corpus, train and splice SAEs, trace
//! attribution graphs.

mod cmd;
mod columns;
mod error;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliResult;

/// Mechanistic interpretability on candle: every activation of a transformer (GPT-2,
/// Pythia, Llama, Mistral, Qwen, Gemma, Phi, OLMo, Mixtral, gpt-oss, ...), by its
/// TransformerLens name.
///
/// MODEL is `builtin` (the default: a small GPT-2 trained to have induction heads,
/// shipped inside hooklens, no download), a directory holding config.json and
/// model.safetensors (and optionally tokenizer.json), or a Hugging Face id such as `gpt2`,
/// `EleutherAI/pythia-160m` or `Qwen/Qwen3-0.6B`,
/// read from the local Hugging Face cache (HF_HUB_CACHE / HF_HOME) or downloaded into it.
/// Set HF_HUB_OFFLINE=1 to never use the network.
#[derive(Parser, Debug)]
#[command(name = "hooklens", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each one's help is the doc comment of its `Args`.
#[derive(Subcommand, Debug)]
enum Command {
    Demo(cmd::demo::Args),
    Cache(cmd::cache::Args),
    Generate(cmd::generate::Args),
    Tokenize(cmd::tokenize::Args),
    Hooks(cmd::hooks::Args),
    Run(cmd::run::Args),
    Attention(cmd::attention::Args),
    LogitLens(cmd::logit_lens::Args),
    Harvest(cmd::harvest::Args),
    Features(cmd::features::Args),
    Attribute(cmd::attribute::Args),
    Saes(cmd::saes::Args),
    TrainSae(cmd::train_sae::Args),
}

fn run(cli: Cli) -> CliResult<()> {
    match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Cache(args) => cmd::cache::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Hooks(args) => cmd::hooks::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Attention(args) => cmd::attention::run(args),
        Command::LogitLens(args) => cmd::logit_lens::run(args),
        Command::Harvest(args) => cmd::harvest::run(args),
        Command::Features(args) => cmd::features::run(args),
        Command::Attribute(args) => cmd::attribute::run(args),
        Command::Saes(args) => cmd::saes::run(args),
        Command::TrainSae(args) => cmd::train_sae::run(args),
    }
}

fn main() -> ExitCode {
    // A command runs models over and over (harvest, demo's ablations): freed activations
    // are reused rather than faulted in afresh on every run.
    hooklens::retain_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
