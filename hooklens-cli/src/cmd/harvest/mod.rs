//! `hooklens harvest`: activations of a whole corpus, streamed into safetensors shards.
//!
//! Built for runs that outlive a terminal or a job's time limit, and for many machines:
//! - The input is read line by line and activations are written as soon as a shard is
//!   full, so memory holds one shard (plus one batch) whatever the input's size.
//! - Each shard is written to a temporary name and renamed when complete; the manifest
//!   (also replaced atomically) lists the finished shards. A rerun with the same flags
//!   skips them and carries on; a half-written temporary file is simply deleted.
//! - `--shard-index I --num-shards K` keeps input lines whose number is I modulo K, so
//!   K workers (a Slurm array, a Kubernetes indexed job) split one corpus between them
//!   with no coordination; each writes its own files, named after I and K.
//! - Shard boundaries depend only on the flags (rows per shard comes from the shard
//!   size), and batches never straddle a shard, so an interrupted and resumed run writes
//!   the same bytes as an uninterrupted one.
//! - Resuming proves it continues the same run: the manifest holds SHA-256 fingerprints
//!   of the input, of the model's files and of every shard, and the settings; any
//!   difference is refused, naming it. A lock file keeps a second worker with the same
//!   index out while the first lives.

mod fingerprint;
mod manifest;
mod worker_lock;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hooklens::{CacheOptions, HookedModel, NamesFilter};
use hooklens_models::corpus::{self, stop_layer, CorpusFormat, TokenQueue};
use hooklens_models::{ForwardOptions, HookedTransformer, ReturnType};
use serde_json::{json, Value};

use self::manifest::{shard_file, Manifest, ShardEntry, FORMAT};
use self::worker_lock::WorkerLock;
use super::common::ModelArgs;
use super::sae_args::SaeArgs;
use crate::error::{CliError, CliResult};

/// How the input file is read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// `jsonl` for files ending in .jsonl, .ndjson or .json, else `text`.
    Auto,
    /// One document per line.
    Text,
    /// One JSON object per line, the document in a string field (--text-field).
    Jsonl,
}

impl InputFormat {
    /// `auto` resolved for `input` ([`CorpusFormat::detect`]).
    pub fn resolve(self, input: &Path) -> InputFormat {
        match self {
            InputFormat::Auto => match CorpusFormat::detect(input) {
                CorpusFormat::Jsonl => InputFormat::Jsonl,
                CorpusFormat::Text => InputFormat::Text,
            },
            f => f,
        }
    }

    /// The library's format (`auto` resolves as text: call [`InputFormat::resolve`] first).
    pub fn corpus_format(self) -> CorpusFormat {
        match self {
            InputFormat::Jsonl => CorpusFormat::Jsonl,
            InputFormat::Auto | InputFormat::Text => CorpusFormat::Text,
        }
    }
}

/// Stream activations of a corpus into safetensors shards (resumable, splittable).
///
/// Each input line is a document (--input-format text) or a JSON object whose "text"
/// field is one (jsonl). Documents are tokenized, joined with the end-of-text token
/// between them and cut into sequences of --context-size tokens, each starting with BOS
/// (TransformerLens's tokenize_and_concatenate); the tokens left over at the end are
/// dropped. Every sequence's activations at the hook points --names selects are saved.
///
/// Output, in --out DIR, for worker I of K (`--shard-index I --num-shards K`; 0 of 1 by
/// default): `IIIII-of-KKKKK-shard-NNNNNN.safetensors`, each holding `tokens` [rows,
/// context] (i64) and one tensor [rows, context, ...] per hook point, named as the hook
/// point, and `IIIII-of-KKKKK-manifest.json` listing the settings and the finished
/// shards. Running the same command again resumes where it stopped; changed settings
/// are an error.
///
/// The forward stops after the last block a hook point needs (stop_at_layer), and the
/// unembedding never runs.
///
/// With --sae, the SAEs are spliced in and their points can be harvested too
/// (`<point>.hook_sae_acts_post`, ...). Feature activations are stored sparsely: for
/// each harvested `<point>.hook_sae_acts_post`, `<name>.indices` [rows, context, K]
/// (i64; -1 where fewer than K features fire) and `<name>.values` [rows, context, K],
/// the K (--sae-top-k) largest activations of each token, largest first.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub saes: SaeArgs,
    /// With --sae: how many of each token's most active features are stored per
    /// harvested `hook_sae_acts_post` (at most the smallest SAE's d_sae).
    #[arg(long, value_name = "K", default_value_t = 64, allow_negative_numbers = true)]
    pub sae_top_k: usize,
    /// The corpus: text lines, or JSON lines with a text field.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// How to read --input.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub input_format: InputFormat,
    /// The field holding the document in JSON lines.
    #[arg(long, value_name = "FIELD", default_value = "text")]
    pub text_field: String,
    /// Hook points to save: names or globs (`blocks.*.hook_resid_post`): repeat the flag,
    /// or separate them by commas or spaces. Each must match a hook point.
    #[arg(long = "names", value_name = "PATTERN", num_args = 1.., value_delimiter = ',', required = true)]
    pub names: Vec<String>,
    /// Tokens per sequence, BOS included (at most the model's n_ctx; n_ctx by default).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub context_size: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, value_name = "B", default_value_t = 8, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// The output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// This worker's part of the input: lines whose number (from 0) is I modulo
    /// --num-shards.
    #[arg(long, value_name = "I", default_value_t = 0, allow_negative_numbers = true)]
    pub shard_index: usize,
    /// How many workers split the input.
    #[arg(long, value_name = "K", default_value_t = 1, allow_negative_numbers = true)]
    pub num_shards: usize,
    /// The most a shard file may hold, in MiB (a shard holds at least one sequence).
    #[arg(long, value_name = "M", default_value_t = 256.0, allow_negative_numbers = true)]
    pub shard_size_mb: f64,
    /// The longest input line, in MiB: a line with no end never fills memory.
    #[arg(long, value_name = "M", default_value_t = 256, allow_negative_numbers = true)]
    pub max_line_mb: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The settings a resumed run must share with the run it resumes, as stored in the
/// manifest. Paths are not among them (`./c.txt` and `c.txt` are one input): the
/// contents' fingerprints are.
#[allow(clippy::too_many_arguments)]
fn settings(
    args: &Args,
    input_sha256: &str,
    model_sha256: &str,
    sae_sha256: &str,
    names: &[String],
    fmt: InputFormat,
    ctx: usize,
    rows_per_shard: usize,
    dtype: DType,
) -> Value {
    json!({
        // An edited corpus or replaced weights would make a resumed harvest a mix of two.
        "input_sha256": input_sha256,
        "model_sha256": model_sha256,
        "no_processing": args.model.no_processing,
        "all_hooks": args.model.all_hooks,
        "dtype": format!("{dtype:?}").to_lowercase(),
        "input_format": format!("{fmt:?}").to_lowercase(),
        "text_field": args.text_field,
        "names": names,
        "context_size": ctx,
        "batch_size": args.batch_size,
        "shard_index": args.shard_index,
        "num_shards": args.num_shards,
        "rows_per_shard": rows_per_shard,
        // The SAEs by content (folders) or by hub spec: where they sit does not matter.
        "sae_sha256": sae_sha256,
        "sae_hub_specs": args.saes.saes.iter().filter(|s| !std::path::Path::new(s).is_dir()).collect::<Vec<_>>(),
        "sae_error_term": args.saes.sae_error_term,
        "sae_top_k": args.sae_top_k,
    })
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let input = check_args(&args)?;
    let setup = Setup::load(&args)?;
    let stored = setup.plan.stored_names();
    let Sizing {
        bos,
        eos,
        rows_per_shard,
        per_row_shapes,
    } = size_shards(&args, &setup, &stored)?;

    let prefix = format!("{:05}-of-{:05}", args.shard_index, args.num_shards);
    let manifest_path = args.out.join(format!("{prefix}-manifest.json"));
    // Checked before anything is written: no file this worker writes is an input.
    let mut inputs = setup.model_files.clone();
    inputs.push(args.input.clone());
    inputs.extend(args.saes.files());
    crate::output::check_output_file("--out", &manifest_path, &inputs)?;
    crate::output::check_output_file("--out", &args.out.join(shard_file(&prefix, 0)), &inputs)?;

    let fingerprints = Fingerprints::compute(&args, &setup.model_files)?;
    let settings = settings(
        &args,
        &fingerprints.input,
        &fingerprints.model,
        &fingerprints.sae,
        &setup.plan.names,
        input.fmt,
        setup.ctx,
        rows_per_shard,
        setup.model.dtype(),
    );
    let (_lock, manifest) = open_manifest(&args, &prefix, &manifest_path, settings, per_row_shapes, rows_per_shard)?;
    if manifest.complete {
        eprintln!(
            "{} is complete ({} shards, {} sequences): nothing to do",
            manifest_path.display(),
            manifest.shards.len(),
            manifest.rows()
        );
        return Ok(());
    }
    let skip_rows = manifest.rows();
    if skip_rows > 0 {
        // A resumed worker says where it picks up, so a log shows what this run added.
        eprintln!(
            "resuming {}: {} shards ({skip_rows} sequences) already written and verified; continuing from \
             sequence {} of the same input and model",
            manifest_path.display(),
            manifest.shards.len(),
            skip_rows + 1
        );
    }

    let file = File::open(&args.input).map_err(|e| CliError(format!("--input {}: {e}", args.input.display())))?;
    // Hashed as it is read: a corpus rewritten in place during the run is caught at the
    // end (its shards would hold two corpora under the first one's fingerprint).
    let mut reader = BufReader::new(fingerprint::HashingReader::new(file, input.len));
    let mut worker = Worker {
        args: &args,
        setup: &setup,
        fmt: input.fmt,
        tokenizer: setup.model.tokenizer()?,
        bos,
        eos,
        rows_per_shard,
        skip_rows,
        prefix: &prefix,
        stored: &stored,
        manifest,
        bar: progress_bar(input.len, args.quiet),
        started: Instant::now(),
        line_no: 0,
        bytes_read: 0,
        pending: TokenQueue::default(),
        row_index: 0,
        batch: Vec::new(),
        shard: ShardBuffer::new(stored.len()),
        new_tokens: 0,
    };
    worker.read_input(&mut reader, input.max_line)?;
    check_input_unchanged(&args.input, &fingerprints.input, &reader.get_ref().sha256())?;
    worker.finish()
}

/// Refuses an input whose bytes as read (`read_sha256`) are not the ones fingerprinted
/// when the harvest started (`input_sha256`).
fn check_input_unchanged(input: &Path, input_sha256: &str, read_sha256: &str) -> CliResult<()> {
    if read_sha256 != input_sha256 {
        return Err(CliError(format!(
            "--input {} changed while it was read: it had SHA-256 {input_sha256} when the harvest \
             started, what was read has {read_sha256}; the shards written so far may mix two corpora: \
             delete this worker's files in --out (or use another --out) and harvest again from a \
             file that stays as it is",
            input.display()
        )));
    }
    Ok(())
}

/// What the checks of the arguments read from the input and its name.
struct InputInfo {
    /// The longest line, in bytes.
    max_line: u64,
    /// The input's length, in bytes.
    len: u64,
    /// The input's format, `auto` resolved.
    fmt: InputFormat,
}

/// Refuses arguments that cannot make a harvest, before anything is loaded.
fn check_args(args: &Args) -> CliResult<InputInfo> {
    if args.num_shards == 0 {
        return Err(CliError::msg("--num-shards must be at least 1"));
    }
    if args.shard_index >= args.num_shards {
        return Err(CliError(format!(
            "--shard-index {} must be below --num-shards {} (workers are numbered from 0)",
            args.shard_index, args.num_shards
        )));
    }
    if args.batch_size == 0 {
        return Err(CliError::msg("--batch-size must be at least 1"));
    }
    if !(args.shard_size_mb > 0.0 && args.shard_size_mb.is_finite()) {
        return Err(CliError(format!(
            "--shard-size-mb {} must be a positive number",
            args.shard_size_mb
        )));
    }
    if args.max_line_mb == 0 {
        return Err(CliError::msg("--max-line-mb must be at least 1"));
    }
    let max_line = args.max_line_mb.saturating_mul(1 << 20);
    let input_meta =
        std::fs::metadata(&args.input).map_err(|e| CliError(format!("--input {}: {e}", args.input.display())))?;
    if !input_meta.is_file() {
        return Err(CliError(format!(
            "--input {} is not a regular file: the corpus is read twice (once to fingerprint it)",
            args.input.display()
        )));
    }
    let len = input_meta.len();
    crate::output::check_output_dir("--out", &args.out)?;
    let fmt = args.input_format.resolve(&args.input);

    if args.sae_top_k == 0 {
        return Err(CliError::msg("--sae-top-k must be at least 1"));
    }
    Ok(InputInfo { max_line, len, fmt })
}

/// The model with its SAEs and what each forward harvests.
struct Setup {
    model: HookedTransformer,
    plan: Plan,
    /// The block to stop before (see [`corpus::stop_layer`]).
    stop: Option<usize>,
    /// Tokens per sequence.
    ctx: usize,
    /// The model's files (none for a built-in model).
    model_files: Vec<PathBuf>,
    /// The SAEs' activations, per position of a forward.
    sae_per_pos: u64,
    /// " with N SAEs" for the memory checks' messages.
    sae_note: String,
}

impl Setup {
    fn load(args: &Args) -> CliResult<Self> {
        let model = args.model.load()?;
        let saes = args.saes.load(model.device())?;
        // More than an SAE has would be padded (and a huge K overflows or aborts): refused
        // before anything runs.
        if let Some(small) = saes.iter().min_by_key(|s| s.cfg().d_sae) {
            let d_sae = small.cfg().d_sae;
            if args.sae_top_k > d_sae {
                return Err(CliError(format!(
                    "--sae-top-k {}: more than the {d_sae} features of the SAE at {} (d_sae); give at most {d_sae}",
                    args.sae_top_k,
                    small.cfg().hook_name
                )));
            }
        }
        let set = hooklens_models::sae::SaeSet::from(&saes).use_error_term(args.saes.sae_error_term);
        crate::cmd::sae_args::check_names_against_saes(&set, &args.names)?;
        let splices = set.hooks()?;
        let model_files = args.model.files()?;
        let n_ctx = model.cfg().n_ctx;
        let ctx = args.context_size.unwrap_or(n_ctx);
        if ctx < 2 || ctx > n_ctx {
            return Err(CliError(format!(
                "--context-size {ctx} must be between 2 and the model's n_ctx = {n_ctx}"
            )));
        }
        // With SAEs spliced in, their points are hook points too.
        let all_names = model.run_with_hooks(splices.clone(), |m| Ok::<_, hooklens::Error>(m.hook_names()))?;
        let names = resolve_names(&all_names, &args.names)?;
        let stop = stop_layer(&names, model.cfg().n_layers);
        let plan = Plan {
            names,
            splices,
            top_k: (!args.saes.saes.is_empty()).then_some(args.sae_top_k),
        };
        let sae_per_pos = super::common::sae_bytes_per_pos(&saes, model.dtype().size_in_bytes() as u64);
        let sae_note = match saes.len() {
            0 => String::new(),
            1 => " with 1 SAE".to_string(),
            n => format!(" with {n} SAEs"),
        };
        Ok(Setup {
            model,
            plan,
            stop,
            ctx,
            model_files,
            sae_per_pos,
            sae_note,
        })
    }

    /// About what one sequence's forward holds at its peak with the SAEs, in bytes.
    fn bytes_per_sequence(&self) -> u64 {
        forward_bytes(&self.model, self.ctx).saturating_add((self.ctx as u64).saturating_mul(self.sae_per_pos))
    }
}

/// How the sequences are made and cut into shards.
struct Sizing {
    bos: u32,
    eos: u32,
    rows_per_shard: usize,
    /// Each stored tensor's shape and dtype per sequence, for the manifest.
    per_row_shapes: BTreeMap<String, Value>,
}

/// The rows per shard that keep a shard within --shard-size-mb, from one probe
/// sequence, after checking that the probe, a shard and a batch fit in memory.
fn size_shards(args: &Args, setup: &Setup, stored: &[String]) -> CliResult<Sizing> {
    let (model, ctx, sae_note) = (&setup.model, setup.ctx, &setup.sae_note);
    let hint = "give a smaller --shard-size-mb or --batch-size, fewer --names, or a shorter --context-size";
    // The probe below is one sequence of the full context (n_ctx by default, 131072
    // for some models): checked before it runs, or it aborts.
    hooklens::__internal::check_memory(
        &format!("one sequence of {ctx} tokens{sae_note} (the probe that sizes the shards)"),
        setup.bytes_per_sequence(),
        hint,
    )?;

    // Shapes per sequence, from one probe sequence: they set the rows per shard.
    let bos = model.bos_token_id()?;
    let eos = model.cfg().eos_token_id.unwrap_or(bos);
    let probe = Tensor::from_vec(vec![bos; ctx], (1, ctx), model.device())?;
    let probe_acts = forward(model, &setup.plan, setup.stop, &probe)?;
    let mut bytes_per_row = ctx * 8; // tokens, i64
    let mut per_row_shapes = BTreeMap::new();
    for (name, t) in stored.iter().zip(&probe_acts) {
        bytes_per_row += t.elem_count() * t.dtype().size_in_bytes();
        per_row_shapes.insert(
            name.clone(),
            json!({ "shape": &t.dims()[1..], "dtype": format!("{:?}", t.dtype()).to_lowercase() }),
        );
    }
    let budget = (args.shard_size_mb * 1024.0 * 1024.0) as usize;
    let rows_per_shard = (budget / bytes_per_row).max(1);
    // A shard is held, then copied once into its file's tensors; a batch's forward
    // holds its activations (the probe's, times the batch) several times over.
    let shard_bytes = (rows_per_shard as u64).saturating_mul(bytes_per_row as u64);
    let per_seq = setup.bytes_per_sequence();
    let batch_bytes = (args.batch_size.min(rows_per_shard) as u64).saturating_mul(per_seq);
    hooklens::__internal::check_memory(
        &format!(
            "a shard of {rows_per_shard} sequences plus a batch of {}{sae_note}",
            args.batch_size
        ),
        shard_bytes.saturating_mul(2).saturating_add(batch_bytes),
        hint,
    )?;
    Ok(Sizing {
        bos,
        eos,
        rows_per_shard,
        per_row_shapes,
    })
}

/// SHA-256 fingerprints of the input, the model's files and the SAEs' files.
struct Fingerprints {
    input: String,
    model: String,
    /// Empty without SAE folders.
    sae: String,
}

impl Fingerprints {
    fn compute(args: &Args, model_files: &[PathBuf]) -> CliResult<Self> {
        let input = fingerprint::file_sha256("--input", &args.input)?;
        let model = if model_files.is_empty() {
            let (config, weights) = hooklens_models::builtin::builtin_files()?;
            fingerprint::bytes_sha256(&[config.as_bytes(), weights].concat())
        } else {
            fingerprint::files_sha256("--model", model_files)?
        };
        let sae_files = args.saes.files();
        let sae = if sae_files.is_empty() {
            String::new()
        } else {
            fingerprint::files_sha256("--sae", &sae_files)?
        };
        Ok(Fingerprints { input, model, sae })
    }
}

/// This worker's manifest, checked against `settings` and the other workers', opened
/// with the worker's lock held (to be kept for the rest of the run) and this worker's
/// stale temporary files removed.
fn open_manifest(
    args: &Args,
    prefix: &str,
    manifest_path: &Path,
    settings: Value,
    per_row_shapes: BTreeMap<String, Value>,
    rows_per_shard: usize,
) -> CliResult<(WorkerLock, Manifest)> {
    let about = json!({
        "model": args.model.model,
        "input": std::fs::canonicalize(&args.input).unwrap_or_else(|_| args.input.clone()),
    });

    std::fs::create_dir_all(&args.out).map_err(|e| CliError(format!("--out {}: {e}", args.out.display())))?;
    let lock = WorkerLock::acquire(&args.out, prefix)?;
    manifest::check_same_harvest(&args.out, manifest_path, &settings)?;
    remove_stale_temporaries(&args.out, prefix)?;
    let manifest = Manifest::open(manifest_path, prefix, settings, about, per_row_shapes, rows_per_shard)?;
    Ok((lock, manifest))
}

/// The worker loop and its state: it reads this worker's lines, cuts their tokens into
/// sequences and runs them, a batch at a time, into shards.
struct Worker<'a> {
    args: &'a Args,
    setup: &'a Setup,
    fmt: InputFormat,
    tokenizer: &'a hooklens_models::Tokenizer,
    bos: u32,
    eos: u32,
    rows_per_shard: usize,
    /// Sequences in the shards a previous run finished.
    skip_rows: usize,
    prefix: &'a str,
    stored: &'a [String],
    manifest: Manifest,
    bar: indicatif::ProgressBar,
    started: Instant,
    line_no: usize,
    bytes_read: u64,
    // Tokens waiting to fill a sequence: at most one document's plus one sequence.
    pending: TokenQueue,
    row_index: usize, // sequences made so far, finished shards included
    batch: Vec<Vec<u32>>,
    shard: ShardBuffer,
    new_tokens: usize,
}

impl Worker<'_> {
    /// Reads the input to its end, harvesting this worker's lines.
    fn read_input(&mut self, reader: &mut BufReader<fingerprint::HashingReader<File>>, max_line: u64) -> CliResult<()> {
        let mut line_bytes: Vec<u8> = Vec::new();
        let mut line = String::new();
        loop {
            let n = read_line(reader, &mut line_bytes, max_line, self.args, self.line_no)?;
            if n == 0 {
                break;
            }
            self.bytes_read += n as u64;
            let this_line = self.line_no;
            self.line_no += 1;
            if this_line % self.args.num_shards != self.args.shard_index {
                continue;
            }
            line.clear();
            line.push_str(std::str::from_utf8(&line_bytes).map_err(|e| {
                CliError(format!(
                    "--input {} line {}: not UTF-8 text: {e}",
                    self.args.input.display(),
                    this_line + 1
                ))
            })?);
            if this_line == 0 {
                // A byte-order mark starts the file, not the first document.
                if let Some(rest) = line.strip_prefix('\u{feff}') {
                    line = rest.to_string();
                }
            }
            let Some(text) = document(&line, self.fmt, &self.args.text_field, this_line + 1, &self.args.input)? else {
                continue;
            };
            let mut doc = self.tokenizer.encode(&text)?;
            doc.push(self.eos);
            self.pending.extend(doc);
            self.take_sequences()?;
            self.bar.set_position(self.bytes_read);
        }
        Ok(())
    }

    /// Cuts the pending tokens into sequences, running each full batch into the shard
    /// and writing each full shard.
    fn take_sequences(&mut self) -> CliResult<()> {
        let (ctx, skip_rows) = (self.setup.ctx, self.skip_rows);
        while self.pending.len() >= ctx - 1 {
            let mut seq = Vec::with_capacity(ctx);
            seq.push(self.bos);
            self.pending.take_into(ctx - 1, &mut seq);
            self.row_index += 1;
            if self.row_index <= skip_rows {
                continue; // in a finished shard
            }
            if self.row_index == skip_rows + 1 && skip_rows > 0 {
                // Skipping finished shards was fast: estimate from here on.
                self.bar.reset_eta();
            }
            self.batch.push(seq);
            // A batch never straddles two shards, so resuming at a shard boundary
            // batches every later sequence exactly as an uninterrupted run does.
            let room = self.rows_per_shard - self.shard.rows;
            if self.batch.len() == self.args.batch_size.min(room) {
                self.run_batch()?;
                self.new_tokens += shard_tokens_added(self.args.batch_size.min(room), ctx);
                if self.shard.rows == self.rows_per_shard {
                    self.finish_shard()?;
                }
                update_bar(
                    &self.bar,
                    self.bytes_read,
                    &self.manifest,
                    self.shard.rows,
                    self.new_tokens,
                    &self.started,
                );
            }
        }
        Ok(())
    }

    fn run_batch(&mut self) -> CliResult<()> {
        let Setup {
            model, plan, stop, ctx, ..
        } = self.setup;
        run_batch(
            model,
            plan,
            *stop,
            &mut self.batch,
            &mut self.shard,
            *ctx,
            self.row_index,
        )
    }

    fn finish_shard(&mut self) -> CliResult<()> {
        finish_shard(
            &self.args.out,
            self.prefix,
            self.stored,
            &mut self.shard,
            &mut self.manifest,
        )
    }

    /// Runs the last batch, writes the last shard, marks the manifest complete and
    /// says what was written.
    fn finish(mut self) -> CliResult<()> {
        let ctx = self.setup.ctx;
        if !self.batch.is_empty() {
            let rows = self.batch.len();
            self.run_batch()?;
            self.new_tokens += shard_tokens_added(rows, ctx);
        }
        if self.shard.rows > 0 {
            self.finish_shard()?;
        }
        self.manifest.complete = true;
        self.manifest.extra = json!({
            "lines": self.line_no,
            "sequences": self.row_index,
            "tokens": self.row_index * ctx,
            "dropped_tail_tokens": self.pending.len(),
        });
        self.manifest.save()?;
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "wrote {} shards ({} sequences of {ctx} tokens, {} of them now at {:.0} tokens/s) to {}; manifest {}",
            self.manifest.shards.len(),
            self.row_index,
            self.row_index.saturating_sub(self.skip_rows),
            self.new_tokens as f64 / secs,
            self.args.out.display(),
            self.manifest.path().display()
        );
        Ok(())
    }
}

/// Reads input line `line_no` (from 0) into `buf`, its end included; 0 at the end of
/// the input. A line longer than `max_line` bytes is an error.
fn read_line(
    reader: &mut BufReader<fingerprint::HashingReader<File>>,
    buf: &mut Vec<u8>,
    max_line: u64,
    args: &Args,
    line_no: usize,
) -> CliResult<usize> {
    let at = || format!("--input {} line {}", args.input.display(), line_no + 1);
    buf.clear();
    let n = reader
        .take(max_line.saturating_add(1))
        .read_until(b'\n', buf)
        .map_err(|e| CliError(format!("{}: {e}", at())))?;
    if n as u64 > max_line {
        return Err(CliError(format!(
            "{}: longer than --max-line-mb {} MiB (a file with no line ends?); raise --max-line-mb \
             if the document is meant to be that long",
            at(),
            args.max_line_mb
        )));
    }
    Ok(n)
}

/// About what one sequence's forward holds at its peak, in bytes: the probe's saved
/// activations are not all of it, so a generous multiple of the residual stream per
/// layer and of the attention pattern.
fn forward_bytes(model: &HookedTransformer, ctx: usize) -> u64 {
    let cfg = model.cfg();
    let per_pos = 16 * cfg.d_model as u64 + 4 * cfg.d_mlp as u64 + 4 * (cfg.n_heads * ctx) as u64;
    per_pos
        .saturating_mul(ctx as u64)
        .saturating_mul(model.dtype().size_in_bytes() as u64)
}

fn shard_tokens_added(rows: usize, ctx: usize) -> usize {
    rows * ctx
}

/// The full names of the hook points `patterns` select, in the model's order (`all`);
/// a pattern that selects nothing is an error suggesting the nearest names.
fn resolve_names(all: &[String], patterns: &[String]) -> CliResult<Vec<String>> {
    for p in patterns {
        let filter = NamesFilter::from(p.as_str());
        if !all.iter().any(|n| filter.matches(n)) {
            let near = hooklens::__internal::nearest_names(p, all.iter().map(String::as_str), 3);
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean `{}`?)", near.join("`, `"))
            };
            return Err(CliError(format!(
                "--names `{p}` matched no hook point{hint}; `hooklens hooks` lists them"
            )));
        }
    }
    let filter = NamesFilter::Names(patterns.to_vec());
    Ok(all.iter().filter(|n| filter.matches(n)).cloned().collect())
}

/// What one forward caches and how it is stored.
struct Plan {
    /// The hook points harvested, in the model's order.
    names: Vec<String>,
    /// The SAEs spliced in (empty without --sae).
    splices: hooklens::HookSet,
    /// With SAEs: feature activations are stored as their top k per token.
    top_k: Option<usize>,
}

impl Plan {
    /// Whether `name` is stored sparsely.
    fn sparse(&self, name: &str) -> bool {
        self.top_k.is_some() && name.ends_with(".hook_sae_acts_post")
    }

    /// The tensors of a shard besides `tokens`, in order: each name, or its
    /// `.indices` and `.values` when stored sparsely.
    fn stored_names(&self) -> Vec<String> {
        self.names
            .iter()
            .flat_map(|n| {
                if self.sparse(n) {
                    vec![format!("{n}.indices"), format!("{n}.values")]
                } else {
                    vec![n.clone()]
                }
            })
            .collect()
    }
}

/// The tensors `plan` stores for `tokens` `[batch, ctx]`, on the CPU, in
/// [`Plan::stored_names`]' order.
fn forward(model: &HookedTransformer, plan: &Plan, stop: Option<usize>, tokens: &Tensor) -> CliResult<Vec<Tensor>> {
    let mut fwd = ForwardOptions::new().return_type(ReturnType::None);
    if let Some(stop) = stop {
        fwd = fwd.stop_at_layer(stop as isize);
    }
    let opts = CacheOptions::new()
        .names(NamesFilter::Names(plan.names.clone()))
        .device(Device::Cpu);
    let (_, cache) = model.run_with_cache_and_hooks(opts, plan.splices.clone(), |m| m.forward_with(tokens, &fwd))?;
    let mut out = Vec::new();
    for n in &plan.names {
        let t = cache.try_get(n)?;
        match plan.top_k {
            Some(k) if plan.sparse(n) => {
                let (indices, values) = hooklens_models::sae::sparse_top_k(t, k)?;
                out.extend([indices, values]);
            }
            _ => out.push(t.clone()),
        }
    }
    Ok(out)
}

/// Sequences and activations of the shard being filled.
struct ShardBuffer {
    rows: usize,
    tokens: Vec<Tensor>,
    acts: Vec<Vec<Tensor>>,
}

impl ShardBuffer {
    fn new(n_names: usize) -> Self {
        ShardBuffer {
            rows: 0,
            tokens: Vec::new(),
            acts: vec![Vec::new(); n_names],
        }
    }
}

/// Runs one batch into the shard. `last_row` is the number of the batch's last
/// sequence (from 1), for the error when the model's output is not finite: a NaN
/// harvest would be written and resumed as if it were data.
fn run_batch(
    model: &HookedTransformer,
    plan: &Plan,
    stop: Option<usize>,
    batch: &mut Vec<Vec<u32>>,
    shard: &mut ShardBuffer,
    ctx: usize,
    last_row: usize,
) -> CliResult<()> {
    let rows = batch.len();
    let ids: Vec<u32> = batch.drain(..).flatten().collect();
    let tokens = Tensor::from_vec(ids, (rows, ctx), &Device::Cpu)?;
    let on_device = tokens.to_device(model.device())?;
    let acts = forward(model, plan, stop, &on_device)?;
    for t in &acts {
        if !super::common::all_finite(t)? {
            let first = super::common::first_non_finite_point(model, &on_device, None)?;
            return Err(CliError(format!(
                "sequences {}..={last_row}: {first}; nothing of this batch was written (are the weights finite?)",
                last_row + 1 - rows
            )));
        }
    }
    for (buf, t) in shard.acts.iter_mut().zip(acts) {
        buf.push(t);
    }
    shard.tokens.push(tokens.to_dtype(DType::I64)?);
    shard.rows += rows;
    Ok(())
}

/// Writes the buffered shard (temporary name, then rename) and records it in the
/// manifest, which is saved right away.
fn finish_shard(
    out: &Path,
    prefix: &str,
    names: &[String],
    shard: &mut ShardBuffer,
    manifest: &mut Manifest,
) -> CliResult<()> {
    let file = shard_file(prefix, manifest.shards.len());
    let path = out.join(&file);
    let tokens = Tensor::cat(&shard.tokens, 0)?;
    let acts: Vec<Tensor> = shard
        .acts
        .iter()
        .map(|parts| Tensor::cat(parts, 0))
        .collect::<candle_core::Result<_>>()?;
    let mut tensors: Vec<(&str, &Tensor)> = vec![("tokens", &tokens)];
    for (name, t) in names.iter().zip(&acts) {
        tensors.push((name.as_str(), t));
    }
    // One metadata key only: safetensors keeps metadata in a HashMap, and one entry
    // serialises the same way every time (the files must be byte-identical on reruns).
    let meta = std::collections::HashMap::from([("format".to_string(), FORMAT.to_string())]);
    hooklens::__internal::save_safetensors(&path, tensors, meta)?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?
        .len();
    let sha256 = fingerprint::file_sha256("shard", &path)?;
    manifest.shards.push(ShardEntry {
        file,
        rows: shard.rows,
        bytes,
        sha256,
    });
    manifest.save()?;
    *shard = ShardBuffer::new(names.len());
    Ok(())
}

/// Deletes this worker's temporary files left by an interrupted run (a shard or the
/// manifest being written when the process died), and the safetensors crate's
/// `.tmpXXXXXX` files older versions left; finished files are never touched. Called
/// with the worker's lock held, so no live writer owns them.
fn remove_stale_temporaries(out: &Path, prefix: &str) -> CliResult<()> {
    let entries = std::fs::read_dir(out).map_err(|e| CliError(format!("--out {}: {e}", out.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!(".{prefix}-")) && hooklens::__internal::is_temporary(&name);
        let crates = hooklens::__internal::is_temporary(&name) && name.starts_with(".tmp") && !name.contains(".tmp-");
        if (ours || crates) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| CliError(format!("cannot remove {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// The document on one input line; `None` for a blank line or a blank document
/// (read as `train-sae --input` reads it: [`hooklens_models::corpus::document`]).
fn document(line: &str, fmt: InputFormat, field: &str, line_no: usize, input: &Path) -> CliResult<Option<String>> {
    corpus::document(line, fmt.corpus_format(), field).map_err(|e| {
        let hint = match e {
            corpus::DocumentError::NoField(_) => " (--text-field names the field holding the text)",
            _ => "",
        };
        CliError(format!("--input {} line {line_no}: {e}{hint}", input.display()))
    })
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise), so
    // logs of batch jobs stay clean.
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} of input, ETA {eta}  {msg}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

fn update_bar(
    bar: &indicatif::ProgressBar,
    bytes: u64,
    manifest: &Manifest,
    buffered: usize,
    new_tokens: usize,
    started: &Instant,
) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    bar.set_position(bytes);
    bar.set_message(format!(
        "{} shards + {buffered} seqs, {:.0} tok/s",
        manifest.shards.len(),
        new_tokens as f64 / secs
    ));
}
