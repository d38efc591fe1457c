//! What several subcommands share: loading a model, reading the input (prompts or a
//! tokens file), writing safetensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hooklens_models::model::PaddingSide;
use hooklens_models::{HookedTransformer, HubOptions, LoadOptions, ProcessingOptions};

use crate::error::{CliError, CliResult};

/// The dtype of weights and activations.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DTypeArg {
    /// 32-bit float (TransformerLens's default).
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl DTypeArg {
    fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// The flags that choose and load a model.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// `builtin` (the small trained model shipped inside hooklens, no download), a model
    /// directory (config.json, model.safetensors or its shards, optional tokenizer.json) of
    /// any supported family, or a Hugging Face id (gpt2, EleutherAI/pythia-160m,
    /// meta-llama/Llama-3.2-1B, Qwen/Qwen3-0.6B, google/gemma-2-2b, ...).
    #[arg(long, value_name = "MODEL", default_value = "builtin")]
    pub model: String,
    /// Load the weights as stored (TransformerLens's from_pretrained_no_processing)
    /// instead of folding LayerNorms and centring weights as from_pretrained does.
    #[arg(long)]
    pub no_processing: bool,
    /// Switch on TransformerLens's optional hook points (use_attn_result,
    /// use_split_qkv_input, use_attn_in, use_hook_mlp_in, use_hook_tokens).
    #[arg(long)]
    pub all_hooks: bool,
    /// The dtype of weights and activations.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Where to run: `cpu`, `cuda`, `cuda:N` or `metal` (the GPU ones need a build with
    /// the `cuda` or `metal` feature).
    #[arg(long, value_name = "DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,
    /// The branch, tag or commit of a Hugging Face model.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Load a checkpoint that holds tensors the model does not read (by default an
    /// error naming them: config.json may describe fewer layers than the weights hold).
    #[arg(long)]
    pub allow_unused_tensors: bool,
}

/// A device, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
    /// The Metal GPU.
    Metal,
}

pub(crate) fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s {
        "cpu" => Ok(DeviceArg::Cpu),
        "cuda" => Ok(DeviceArg::Cuda(0)),
        "metal" => Ok(DeviceArg::Metal),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceArg::Cuda)
            .ok_or_else(|| "expected cpu, cuda, cuda:N or metal".to_string()),
    }
}

impl DeviceArg {
    fn device(self) -> CliResult<Device> {
        let made = match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda(n) => Device::new_cuda(n),
            DeviceArg::Metal => Device::new_metal(0),
        };
        made.map_err(|e| CliError(format!("--device {self}: {e}")))
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceArg::Metal => f.write_str("metal"),
        }
    }
}

impl ModelArgs {
    /// The files the model is read from (none for the built-in model, which is compiled
    /// in): what no output may overwrite. Call after [`ModelArgs::load`], which has
    /// already found them (a Hugging Face id is then in the local cache).
    pub fn files(&self) -> CliResult<Vec<PathBuf>> {
        if hooklens_models::builtin::is_builtin(&self.model) {
            return Ok(Vec::new());
        }
        let hub = HubOptions::from_env().revision(self.revision.clone());
        Ok(hooklens_models::hub::resolve_with(&self.model, &hub)?.all_files()?)
    }

    /// Loads the model on its device, with its tokenizer.
    pub fn load(&self) -> CliResult<HookedTransformer> {
        let mut opts = LoadOptions::default()
            .with_dtype(self.dtype.dtype())
            .with_device(self.device.device()?)
            .with_allow_unused_tensors(self.allow_unused_tensors);
        if self.no_processing {
            opts = opts.with_processing(ProcessingOptions::none());
        }
        let hub = HubOptions::from_env().revision(self.revision.clone());
        let mut model = HookedTransformer::from_pretrained_with(&self.model, &opts, &hub)?;
        if self.all_hooks {
            model.set_all_optional_hooks(true);
        }
        Ok(model)
    }
}

/// The input of a run: prompts (tokenized with the model's tokenizer) or a file of tokens.
#[derive(clap::Args, Debug)]
pub struct InputArgs {
    /// A prompt; several (`--prompt A B` or `--prompt A --prompt B`) make a batch,
    /// padded to the longest.
    #[arg(long, value_name = "TEXT", num_args = 1.., required_unless_present = "tokens", conflicts_with = "tokens")]
    pub prompt: Vec<String>,
    /// A safetensors file holding an integer tensor `tokens` [batch, pos] (or [pos]).
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Do not put BOS before each prompt. By default BOS goes first where the model's
    /// family has TransformerLens prepend it (`default_prepend_bos`: every family but
    /// Qwen 2 / Qwen 3 and BLOOM).
    #[arg(long, conflicts_with = "prepend_bos")]
    pub no_bos: bool,
    /// Put BOS before each prompt even where the model's family does not by default.
    #[arg(long)]
    pub prepend_bos: bool,
}

/// Tokens `[batch, pos]` (u32) and, when prompts had to be padded, their attention
/// mask `[batch, pos]`.
pub struct Input {
    /// Token ids `[batch, pos]`.
    pub tokens: Tensor,
    /// 1 at real tokens, 0 at padding; `None` when nothing is padded.
    pub mask: Option<Tensor>,
    /// Whether BOS was put before each prompt.
    pub prepended_bos: bool,
}

/// Whether BOS goes first: `--prepend-bos` / `--no-bos`, else `default` (the model's
/// `default_prepend_bos`), as TransformerLens's `to_tokens` decides.
pub fn prepend_bos(prepend: bool, no_bos: bool, default: bool) -> bool {
    prepend || (!no_bos && default)
}

impl InputArgs {
    /// Whether BOS goes before each prompt.
    pub fn bos(&self, model: &HookedTransformer) -> bool {
        prepend_bos(self.prepend_bos, self.no_bos, model.cfg().default_prepend_bos)
    }

    /// The input files (the tokens file, if any): what no output may overwrite.
    pub fn files(&self) -> Vec<PathBuf> {
        self.tokens.iter().cloned().collect()
    }

    /// The tokens of the prompts (padded on `side`) or of the tokens file.
    pub fn read(&self, model: &HookedTransformer, side: PaddingSide) -> CliResult<Input> {
        if let Some(path) = &self.tokens {
            let tokens = read_tokens(path, model.cfg().d_vocab, model.device())?;
            return Ok(Input {
                tokens,
                mask: None,
                prepended_bos: false,
            });
        }
        let prompts: Vec<&str> = self.prompt.iter().map(String::as_str).collect();
        if model.tokenizer().is_err() {
            return Err(CliError(format!(
                "--prompt: this {} model has no tokenizer (no tokenizer.json beside its config.json): \
                 put its tokenizer.json there, or give token ids with --tokens FILE (a safetensors file \
                 holding an integer tensor `tokens` [batch, pos])",
                model.cfg().original_architecture
            )));
        }
        let bos = self.bos(model);
        let (tokens, mask) = model.to_tokens_with_mask(prompts, bos, side)?;
        let padded = mask.min_all()?.to_scalar::<u32>()? == 0;
        Ok(Input {
            tokens,
            mask: padded.then_some(mask),
            prepended_bos: bos,
        })
    }
}

impl Input {
    /// Row `row` of the batch as `[1, pos]`, its padding cut off: what the one-prompt
    /// views show. Out of range is an error naming `--row` and the row count.
    pub fn row(&self, row: usize) -> CliResult<Tensor> {
        let batch = self.tokens.dim(0)?;
        if row >= batch {
            return Err(CliError(format!(
                "--row {row}: the input has {batch} row(s) (0..{batch}); --row picks one"
            )));
        }
        let tokens = self.tokens.narrow(0, row, 1)?;
        let Some(mask) = &self.mask else {
            return Ok(tokens);
        };
        // Right padding: the real tokens are the row's first `sum(mask)`.
        let real = mask
            .narrow(0, row, 1)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        Ok(tokens.narrow(1, 0, real)?)
    }
}

/// Reads the integer tensor `tokens` `[batch, pos]` (or `[pos]`) of a safetensors file
/// as u32, every id checked against `d_vocab`. The file must be a regular file, and only
/// its header and the `tokens` tensor are read, whatever else it holds.
pub fn read_tokens(path: &Path, d_vocab: usize, device: &Device) -> CliResult<Tensor> {
    let shown = path.display();
    crate::output::check_input_file("--tokens", path, None)?;
    let t = read_tokens_tensor(path)?;
    if !matches!(t.dtype(), DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64) {
        return Err(CliError(format!(
            "--tokens {shown}: `tokens` is {:?}, expected an integer tensor",
            t.dtype()
        )));
    }
    let t = match t.rank() {
        1 => t.unsqueeze(0)?,
        2 => t,
        r => {
            return Err(CliError(format!(
                "--tokens {shown}: `tokens` has shape {:?} (rank {r}), expected [batch, pos]",
                t.dims()
            )))
        }
    };
    let (b, p) = t.dims2()?;
    if b == 0 || p == 0 {
        return Err(CliError(format!(
            "--tokens {shown}: `tokens` is empty, shape [{b}, {p}]"
        )));
    }
    let ids = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    if let Some(i) = ids.iter().position(|&id| id < 0 || id as usize >= d_vocab) {
        return Err(CliError(format!(
            "--tokens {shown}: token id {} at [{}, {}] is outside the model's vocabulary of {d_vocab}",
            ids[i],
            i / p,
            i % p
        )));
    }
    let ids: Vec<u32> = ids.into_iter().map(|id| id as u32).collect();
    Ok(Tensor::from_vec(ids, (b, p), device)?)
}

/// safetensors' own bound on the header (100 MB): a longer one is a corrupt length.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The tensor `tokens` of the safetensors file `path`, read alone: the header, then
/// that tensor's bytes. Errors name `--tokens` and the file.
fn read_tokens_tensor(path: &Path) -> CliResult<Tensor> {
    use std::io::{Read, Seek, SeekFrom};
    let shown = path.display();
    let cant = |reason: String| CliError(format!("--tokens {shown}: cannot read it as safetensors: {reason}"));
    let mut file = std::fs::File::open(path).map_err(|e| cant(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| cant(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| cant(format!("{file_len} bytes, too short for the header length")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(cant(format!(
            "header length {header_len} does not fit a file of {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| cant(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| cant(format!("header is not JSON: {e}")))?;
    let Some(entry) = header.get("tokens") else {
        let mut names: Vec<_> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        names.sort();
        let more = names.len().saturating_sub(5);
        names.truncate(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(CliError(format!(
            "--tokens {shown}: no tensor named `tokens` (it has {names:?}{more})"
        )));
    };
    let bad = |reason: &str| CliError(format!("--tokens {shown}: `tokens` {reason}"));
    let dtype_name = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("has no dtype in the header"))?;
    let dtype = match dtype_name {
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I16" => DType::I16,
        "I32" => DType::I32,
        "I64" => DType::I64,
        other => {
            return Err(CliError(format!(
                "--tokens {shown}: `tokens` is {other}, expected an integer tensor"
            )))
        }
    };
    let shape: Vec<usize> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|s| {
            s.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        })
        .ok_or_else(|| bad("has no shape of whole numbers in the header"))?;
    let (start, end) = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .and_then(|o| match o.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| bad("has no data_offsets [start, end] in the header"))?;
    let data_start = 8 + header_len;
    let bytes = shape
        .iter()
        .try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
    if end < start || bytes != Some(end - start) || data_start.checked_add(end).is_none_or(|e| e > file_len) {
        return Err(bad(&format!(
            "has offsets {start}..{end}, which do not hold {dtype_name} {shape:?} in a file of {file_len} bytes"
        )));
    }
    let mut data = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(data_start + start))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| cant(e.to_string()))?;
    Ok(Tensor::from_raw_buffer(&data, dtype, &shape, &Device::Cpu)?)
}

/// Writes `tensors` to `path` as safetensors, atomically (temporary file and rename).
pub fn write_safetensors(path: &Path, tensors: Vec<(&str, &Tensor)>) -> CliResult<()> {
    hooklens::__internal::save_safetensors(path, tensors, HashMap::new())?;
    Ok(())
}

/// Token ids as i64 on the CPU, the dtype TransformerLens and PyTorch use for tokens,
/// so that files written here read back as `--tokens` and in Python alike.
pub fn tokens_i64(tokens: &Tensor) -> CliResult<Tensor> {
    Ok(tokens.to_device(&Device::Cpu)?.to_dtype(DType::I64)?)
}

/// Writes `text` to `path` atomically (a temporary file beside it, fsynced, then a
/// rename), so a reader never sees half a file; `-` is standard output. Errors name
/// the path.
pub fn write_text_file(path: &Path, text: &str) -> CliResult<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => CliError::msg(crate::error::BROKEN_PIPE),
                _ => CliError(format!("cannot write to stdout: {e}")),
            });
    }
    hooklens::__internal::write_atomically(path, |w| {
        w.write_all(text.as_bytes()).map_err(|e| hooklens::Error::io(path, e))
    })
    .map_err(|e| match e {
        hooklens::Error::Io { source, .. } => CliError(format!("cannot write {}: {source}", path.display())),
        other => CliError(other.to_string()),
    })
}

/// Checks the output file `path` of `--out` before the run: a regular file or a new
/// path, and none of the model's or the input's files. `stdout_ok`: the format is text,
/// and `-` writes it to standard output.
pub fn check_out(path: &Path, model: &ModelArgs, input: Option<&InputArgs>, stdout_ok: bool) -> CliResult<()> {
    if stdout_ok && path.as_os_str() == "-" {
        return Ok(());
    }
    let mut inputs = model.files()?;
    inputs.extend(input.map(InputArgs::files).unwrap_or_default());
    crate::output::check_output_file("--out", path, &inputs)?;
    crate::output::check_output_parent("--out", path)
}

/// Whether every value of `t` is finite (integer tensors always are).
pub fn all_finite(t: &Tensor) -> CliResult<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let t = t.to_dtype(DType::F32)?;
    // NaN != NaN; infinities stay infinite under abs.
    let bad = (t.ne(&t)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? > 0)
        || (t
            .abs()?
            .eq(f64::INFINITY)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?
            > 0);
    Ok(!bad)
}

/// Runs `tokens` again with a check at every hook point and says where the first NaN
/// or infinity appeared (or that none did before the output).
pub fn first_non_finite_point(model: &HookedTransformer, tokens: &Tensor, mask: Option<&Tensor>) -> CliResult<String> {
    let mut fwd = hooklens_models::ForwardOptions::new().return_type(hooklens_models::ReturnType::Logits);
    if let Some(mask) = mask {
        fwd = fwd.attention_mask(mask.clone());
    }
    let (_, found) = hooklens::first_non_finite(model, |m| m.forward_with(tokens, &fwd))?;
    Ok(match found {
        Some(found) => found.to_string(),
        None => "non-finite values after the last hook point".to_string(),
    })
}

/// The bytes spliced SAEs add per position of a forward: each one's pre- and
/// post-activations (d_sae each) and what the splice allocates around them (the
/// encoder's product, the gate, their cached and sparse copies), generously, and its
/// reconstruction and error term (d_in or d_out each).
pub fn sae_bytes_per_pos<'a>(saes: impl IntoIterator<Item = &'a hooklens_models::sae::Sae>, elem: u64) -> u64 {
    saes.into_iter()
        .map(|s| {
            let c = s.cfg();
            let d_out = c.d_out.unwrap_or(c.d_in) as u64;
            (8 * c.d_sae as u64).saturating_add(2 * c.d_in as u64 + 2 * d_out)
        })
        .fold(0u64, u64::saturating_add)
        .saturating_mul(elem.max(4))
}

/// About what a forward over `batch` sequences of `pos` tokens holds at its peak, in
/// bytes: `logit_copies` copies of the logits (the logits, their log-softmax for the
/// loss, an f32 copy), per layer kept (`layers`) the residual stream and its
/// neighbours, the MLP's hidden layer, the attention scores and pattern; and
/// `sae_per_pos` bytes ([`sae_bytes_per_pos`]) per position.
pub fn forward_need(
    model: &HookedTransformer,
    batch: usize,
    pos: usize,
    logit_copies: u64,
    layers: u64,
    sae_per_pos: u64,
) -> u64 {
    let cfg = model.cfg();
    let elem = model.dtype().size_in_bytes() as u64;
    let tokens = (batch as u64).saturating_mul(pos as u64);
    let logits = tokens
        .saturating_mul(cfg.d_vocab as u64)
        .saturating_mul(logit_copies.saturating_mul(elem.max(4)));
    let per_pos = (16 * cfg.d_model as u64 + 4 * cfg.d_mlp as u64)
        .saturating_add(4u64.saturating_mul(cfg.n_heads as u64).saturating_mul(pos as u64));
    let per_layer = tokens.saturating_mul(per_pos).saturating_mul(elem);
    logits
        .saturating_add(per_layer.saturating_mul(layers))
        .saturating_add(tokens.saturating_mul(sae_per_pos))
}

/// An error before a forward over `batch` x `pos` tokens ([`forward_need`] with
/// `logit_copies` and `layers`, no SAE) that cannot fit in the memory available:
/// allocating it would abort the process halfway instead. `doing` says what runs
/// (`running`), `hint` what makes it smaller.
pub fn check_forward_fits(
    model: &HookedTransformer,
    doing: &str,
    batch: usize,
    pos: usize,
    logit_copies: u64,
    layers: u64,
    hint: &str,
) -> CliResult<()> {
    if pos > model.cfg().n_ctx {
        // The forward refuses it before allocating, with the better message.
        return Ok(());
    }
    hooklens::__internal::check_memory(
        &format!("{doing} tokens [{batch}, {pos}]"),
        forward_need(model, batch, pos, logit_copies, layers, 0),
        hint,
    )?;
    Ok(())
}
