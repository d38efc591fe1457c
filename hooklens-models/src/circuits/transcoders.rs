//! Transcoders in circuit-tracer's on-disk formats: a per-layer set
//! (`layer_{i}.safetensors`) or a cross-layer transcoder (`W_enc_{i}` /
//! `W_dec_{i}.safetensors`), with ReLU, JumpReLU (thresholds) or TopK activations and
//! optional skip connections; or one SAELens transcoder per layer, already loaded
//! ([`Transcoders::from_saes`]).
//!
//! Encoders are read whole (every position of every layer is encoded); decoders are
//! read row by row from their files when a feature is active, never all at once: a
//! cross-layer transcoder's decoders hold one vector per later layer and are the bulk
//! of its size. (SAELens transcoders are in memory already, decoders included.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hooklens_core::{Error, Result};

use super::transcoder_config::{TranscoderConfig, TranscoderKind};
use crate::loading::SafetensorsFile;
use crate::sae::{Architecture, Normalization, Sae, SaeConfig};

/// The sparsifying nonlinearity of the features.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// `max(pre, 0)`.
    Relu,
    /// `pre * (pre > threshold)`, one threshold per feature (per layer).
    JumpRelu,
    /// The `k` largest pre-activations of each position are kept, the rest zeroed.
    TopK(usize),
    /// SAELens's top-k: every pre-activation at or above the `k`-th largest of its
    /// position is kept (a tie at the cut keeps all the tied values), through
    /// `max(., 0)`; the rest zeroed. What [`Transcoders::from_saes`] makes of a `topk`
    /// SAE.
    TopKRelu(usize),
}

/// One layer's encoder: `pre = x @ W_enc.T + b_enc`.
struct Encoder {
    /// `[d_transcoder, d_model]`, row-major.
    w_enc: Vec<f32>,
    /// `[d_transcoder]`.
    b_enc: Vec<f32>,
    /// JumpReLU thresholds `[d_transcoder]`.
    threshold: Option<Vec<f32>>,
    /// The skip connection as the matrix `S` `[d_model, d_model]` with `skip = x @ S`.
    skip: Option<Vec<f32>>,
}

/// Where one layer's decoder rows come from.
enum DecoderRows {
    /// A safetensors file, read row by row.
    File { file: SafetensorsFile, name: String },
    /// Memory: `[d_transcoder, n_out, d_model]` row-major, checked finite when made.
    Memory(Vec<f32>),
}

/// A transcoder set or a cross-layer transcoder, ready to encode MLP inputs and hand
/// out the decoder vectors of active features.
///
/// ```
/// use hooklens_models::circuits::Transcoders;
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/circuits/transcoders");
/// let tc = Transcoders::from_dir(dir)?;
/// assert_eq!((tc.n_layers(), tc.d_model(), tc.d_transcoder()), (2, 64, 96));
/// assert_eq!(tc.input_hook(1), "blocks.1.mlp.hook_in");
/// # Ok::<(), hooklens_core::Error>(())
/// ```
pub struct Transcoders {
    cfg: TranscoderConfig,
    d_model: usize,
    d_transcoder: usize,
    activation: Activation,
    encoders: Vec<Encoder>,
    decoders: Vec<DecoderRows>,
    /// `b_dec` per output layer, `[d_model]` each.
    b_dec: Vec<Vec<f32>>,
    /// Where the weights were read from, for messages.
    source: String,
    /// The files read (`config.yaml` first); none when built from SAEs already loaded.
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Transcoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoders")
            .field("kind", &self.cfg.kind)
            .field("n_layers", &self.n_layers())
            .field("d_model", &self.d_model)
            .field("d_transcoder", &self.d_transcoder)
            .field("activation", &self.activation)
            .field("source", &self.source)
            .finish()
    }
}

/// Opens a safetensors file for f32 reads.
fn open(path: &Path) -> Result<SafetensorsFile> {
    SafetensorsFile::open(path, &Device::Cpu, DType::F32)
}

/// The whole tensor `name` of `file`, which must have `shape`.
fn read_shaped(file: &SafetensorsFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (data, got) = file.read_f32(name)?;
    // A JumpReLU threshold may carry a leading 1 (`[1, d]`).
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    if got != shape && squeeze(&got) != squeeze(shape) {
        return Err(Error::BadFile {
            path: file.path().to_path_buf(),
            reason: format!("tensor `{name}` has shape {got:?}, expected {shape:?}"),
        });
    }
    Ok(data)
}

impl Transcoders {
    /// Reads a folder in circuit-tracer's format: `config.yaml` and the per-layer
    /// files its `model_kind` implies (or that its `transcoders:` list names, relative
    /// to the folder).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = TranscoderConfig::from_file(&dir.join("config.yaml"))?;
        let files = match cfg.kind {
            TranscoderKind::Set if !cfg.transcoders.is_empty() => cfg
                .transcoders
                .iter()
                .map(|p| {
                    if p.starts_with("hf://") {
                        Err(Error::invalid(format!(
                            "{}: `{p}` is a hub path; load the set with Transcoders::from_pretrained",
                            dir.join("config.yaml").display()
                        )))
                    } else {
                        Ok(vec![dir.join(p)])
                    }
                })
                .collect::<Result<Vec<_>>>()?,
            TranscoderKind::Set => numbered(dir, &["layer_"])?,
            TranscoderKind::CrossLayer => {
                let mut groups = numbered(dir, &["W_enc_", "W_dec_"])?;
                // circuit-tracer 0.5.0 neither writes nor reads a cross-layer skip
                // connection; a `W_skip_{i}.safetensors` beside the layer files (or a
                // `W_skip_{i}` tensor in `W_enc_{i}`) holds it here.
                for (i, g) in groups.iter_mut().enumerate() {
                    let skip = dir.join(format!("W_skip_{i}.safetensors"));
                    if skip.is_file() {
                        g.push(skip);
                    } else if cfg.skip_connection {
                        return Err(Error::io(
                            &skip,
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "config.yaml says skip_connection: true, and this layer's skip file is missing",
                            ),
                        ));
                    }
                }
                groups
            }
        };
        let mut made = Self::from_files(cfg, &files, &dir.display().to_string())?;
        made.files.insert(0, dir.join("config.yaml"));
        Ok(made)
    }

    /// Reads the transcoders of the Hugging Face repository `repo` (`config.yaml` at
    /// its root, or in `folder`), through the same cache and offline rules as models.
    /// `n_layers` is the model's depth: it says which per-layer files to fetch.
    #[cfg(feature = "hub")]
    pub fn from_pretrained(
        repo: &str,
        folder: &str,
        n_layers: usize,
        hub: &crate::loading::hub::HubOptions,
    ) -> Result<Self> {
        use crate::loading::hub::repo_files;
        let folder = folder.trim_matches('/');
        let in_repo = |f: &str| {
            if folder.is_empty() {
                f.to_string()
            } else {
                format!("{folder}/{f}")
            }
        };
        let what = format!("transcoders `{repo}`");
        let cfg_path = repo_files(repo, &[in_repo("config.yaml")], hub, &what)?.remove(0);
        let cfg = TranscoderConfig::from_file(&cfg_path)?;
        let names: Vec<Vec<String>> = match cfg.kind {
            TranscoderKind::Set if !cfg.transcoders.is_empty() => cfg
                .transcoders
                .iter()
                .map(|p| match p.strip_prefix("hf://") {
                    Some(rest) => {
                        let parts: Vec<&str> = rest.splitn(3, '/').collect();
                        if parts.len() < 3 || format!("{}/{}", parts[0], parts[1]) != repo {
                            return Err(Error::invalid(format!(
                                "{what}: `{p}` points into another repository; only files of `{repo}` are read"
                            )));
                        }
                        Ok(vec![parts[2].to_string()])
                    }
                    None => Ok(vec![in_repo(p)]),
                })
                .collect::<Result<_>>()?,
            TranscoderKind::Set => (0..n_layers)
                .map(|i| vec![in_repo(&format!("layer_{i}.safetensors"))])
                .collect(),
            TranscoderKind::CrossLayer => (0..n_layers)
                .map(|i| {
                    let mut files = vec![
                        in_repo(&format!("W_enc_{i}.safetensors")),
                        in_repo(&format!("W_dec_{i}.safetensors")),
                    ];
                    // A hub repository cannot be searched for optional files without
                    // listing it: its config says whether the skip files are there.
                    if cfg.skip_connection {
                        files.push(in_repo(&format!("W_skip_{i}.safetensors")));
                    }
                    files
                })
                .collect(),
        };
        let flat: Vec<String> = names.iter().flatten().cloned().collect();
        let mut paths = repo_files(repo, &flat, hub, &what)?.into_iter();
        let files: Vec<Vec<PathBuf>> = names
            .iter()
            .map(|group| group.iter().map(|_| paths.next().expect("one path per name")).collect())
            .collect();
        let mut made = Self::from_files(cfg, &files, repo)?;
        made.files.insert(0, cfg_path);
        Ok(made)
    }

    /// A transcoder set from SAELens transcoders already loaded: layer `i`'s is
    /// `saes[i]`, used exactly as SAELens encodes and decodes it.
    ///
    /// Every SAE must be a transcoder (`hook_name_out` set) reading `blocks.{i}.X` and
    /// writing `blocks.{i}.Y`, with the same `X` and `Y` at every layer (they become the
    /// [`TranscoderConfig`]'s `feature_input_hook` / `feature_output_hook`), `d_in` equal
    /// to `d_out`, and one `d_sae` for all; no run-time input normalisation
    /// (`normalize_activations` none), no `hook_z` reshaping, no head index.
    /// Architectures:
    /// - `standard` (and `transcoder`, `skip_transcoder`): [`Activation::Relu`].
    /// - `jumprelu` (and the JumpReLU transcoders): [`Activation::JumpRelu`] with the
    ///   SAE's thresholds. SAELens's JumpReLU is `relu(pre) * (pre > threshold)`,
    ///   circuit-tracer's `pre * (pre > threshold)`: the same when every threshold is
    ///   `>= 0`, so a negative threshold is an error.
    /// - `topk`: [`Activation::TopKRelu`] (SAELens's top-k goes through relu, keeps ties
    ///   at the cut). With `rescale_acts_by_decoder_norm`, SAELens ranks and reports
    ///   `pre * ||W_dec[f]||` and decodes with `W_dec[f] / ||W_dec[f]||`: that scale is
    ///   folded into feature `f`'s encoder row and bias and its decoder row, so the
    ///   features' activations are SAELens's (a zero decoder row is an error).
    /// - `gated`: an error (its gate and magnitude paths are not one encoder).
    ///
    /// `apply_b_dec_to_input` is folded into the encoder bias
    /// (`b_enc - b_dec @ W_enc`); a skip transcoder's `W_skip` gives the skip
    /// connection (`x @ W_skip^T`). Weights are copied in f32, decoders included
    /// (kept in memory); a non-finite value is an error naming the tensor and the SAE.
    /// The scan is unknown (`None`); the model name is the SAEs' when they agree.
    pub fn from_saes(saes: &[Sae]) -> Result<Self> {
        if saes.is_empty() {
            return Err(Error::invalid(
                "Transcoders::from_saes: no SAEs (one transcoder per layer is needed)",
            ));
        }
        let first = saes[0].cfg();
        let (d_model, d_transcoder) = (first.d_in, first.d_sae);
        let mut hooks: Option<(String, String)> = None;
        let mut activation: Option<Activation> = None;
        let mut encoders = Vec::with_capacity(saes.len());
        let mut decoders = Vec::with_capacity(saes.len());
        let mut b_dec = Vec::with_capacity(saes.len());
        for (i, sae) in saes.iter().enumerate() {
            let c = sae.cfg();
            let what = format!(
                "SAE {i} ({} -> {})",
                c.hook_name,
                c.hook_name_out.as_deref().unwrap_or("no hook_name_out")
            );
            let refuse = |why: String| sae_refusal(&what, why);
            let (x, y) = sae_block_points(c, i, &what)?;
            agree(&mut hooks, (x.to_string(), y.to_string()), |(x0, y0)| {
                refuse(format!(
                    "it reads `{x}` and writes `{y}` of its block, SAE 0 `{x0}` and `{y0}`: every layer must \
                     use the same points"
                ))
            })?;
            check_sae_fits(c, d_model, d_transcoder, &what)?;
            let (act, rescale) = sae_activation(c, &what)?;
            agree(&mut activation, act.clone(), |a| {
                refuse(format!(
                    "its activation is {act:?}, SAE 0's {a:?}: every layer must use the same one"
                ))
            })?;
            let (encoder, dec, bias) = sae_layer(sae, &act, rescale, (d_model, d_transcoder), &what)?;
            encoders.push(encoder);
            decoders.push(DecoderRows::Memory(dec));
            b_dec.push(bias);
        }
        let (feature_input_hook, feature_output_hook) = hooks.expect("at least one SAE");
        let activation = activation.expect("at least one SAE");
        let model_name = first
            .model_name
            .clone()
            .filter(|m| saes.iter().all(|s| s.cfg().model_name.as_ref() == Some(m)));
        let source = format!(
            "{} SAELens transcoders (blocks.*.{feature_input_hook} -> blocks.*.{feature_output_hook})",
            saes.len()
        );
        let top_k = match activation {
            Activation::TopKRelu(k) => Some(k),
            _ => None,
        };
        Ok(Transcoders {
            cfg: TranscoderConfig {
                kind: TranscoderKind::Set,
                feature_input_hook,
                feature_output_hook,
                scan: None,
                model_name,
                transcoders: Vec::new(),
                top_k,
                skip_connection: false,
            },
            d_model,
            d_transcoder,
            activation,
            encoders,
            decoders,
            b_dec,
            source,
            files: Vec::new(),
        })
    }

    /// Builds from `cfg` and per-layer files (`[layer_i]` for a set, `[W_enc_i, W_dec_i]`
    /// for a cross-layer transcoder).
    fn from_files(cfg: TranscoderConfig, files: &[Vec<PathBuf>], source: &str) -> Result<Self> {
        let n_layers = files.len();
        if n_layers == 0 {
            return Err(Error::invalid(format!("{source}: no transcoder files")));
        }
        let mut encoders = Vec::with_capacity(n_layers);
        let mut decoders = Vec::with_capacity(n_layers);
        let mut b_dec = Vec::with_capacity(n_layers);
        let mut dims: Option<(usize, usize)> = None;
        let mut jump = None;
        for (i, group) in files.iter().enumerate() {
            let enc_file = open(&group[0])?;
            let names = LayerTensors::of(cfg.kind, i);
            let (f, d) = encoder_shape(&enc_file, &names.w_enc, &group[0], i)?;
            agree(&mut dims, (f, d), |prev| Error::BadFile {
                path: group[0].clone(),
                reason: format!(
                    "layer {i}'s encoder is [{f}, {d}], layer 0's [{}, {}]: every layer must match",
                    prev.0, prev.1
                ),
            })?;
            let has_thr = enc_file.shape_of(&names.threshold).is_some();
            agree(&mut jump, has_thr, |&j| Error::BadFile {
                path: group[0].clone(),
                reason: format!("layer {i} {} a JumpReLU threshold and layer 0 {}", yes(has_thr), yes(j)),
            })?;
            encoders.push(read_encoder(cfg.kind, &enc_file, group, &names, has_thr, (f, d))?);
            let bias = read_shaped(&enc_file, &names.b_dec, &[d])?;
            finite(&bias, &names.b_dec, &group[0])?;
            b_dec.push(bias);
            decoders.push(file_decoder(cfg.kind, enc_file, group, names.dec, i, n_layers, (f, d))?);
        }
        let (d_transcoder, d_model) = dims.expect("at least one layer");
        let activation = file_activation(cfg.top_k, jump, d_transcoder, source)?;
        Ok(Transcoders {
            cfg,
            d_model,
            d_transcoder,
            activation,
            encoders,
            decoders,
            b_dec,
            source: source.to_string(),
            files: files.iter().flatten().cloned().collect(),
        })
    }

    /// The files the transcoders were read from, `config.yaml` first (from the Hugging
    /// Face cache for [`Transcoders::from_pretrained`]): what no output may replace.
    /// Empty when they were built from SAEs already loaded.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Set or cross-layer.
    pub fn kind(&self) -> TranscoderKind {
        self.cfg.kind
    }

    /// The parsed `config.yaml`.
    pub fn config(&self) -> &TranscoderConfig {
        &self.cfg
    }

    /// Layers with an encoder.
    pub fn n_layers(&self) -> usize {
        self.encoders.len()
    }

    /// Width of the residual stream the transcoders read and write.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Features per layer.
    pub fn d_transcoder(&self) -> usize {
        self.d_transcoder
    }

    /// The activation function.
    pub fn activation(&self) -> &Activation {
        &self.activation
    }

    /// Whether layer `layer` has a skip connection.
    pub fn has_skip(&self, layer: usize) -> bool {
        self.encoders[layer].skip.is_some()
    }

    /// The scan identifier (`config.yaml`'s `scan`), if any.
    pub fn scan(&self) -> Option<&str> {
        self.cfg.scan.as_deref()
    }

    /// The full name of the hook point layer `layer`'s features read (`blocks.{layer}.mlp.hook_in`).
    pub fn input_hook(&self, layer: usize) -> String {
        format!("blocks.{layer}.{}", self.cfg.feature_input_hook)
    }

    /// The full name of the hook point layer `layer`'s features write (`blocks.{layer}.mlp.hook_out`).
    pub fn output_hook(&self, layer: usize) -> String {
        format!("blocks.{layer}.{}", self.cfg.feature_output_hook)
    }

    /// How many layers a feature of `layer` writes to: 1 in a set, every layer from
    /// `layer` on in a cross-layer transcoder.
    pub fn n_out(&self, layer: usize) -> usize {
        match self.cfg.kind {
            TranscoderKind::Set => 1,
            TranscoderKind::CrossLayer => self.n_layers() - layer,
        }
    }

    /// The encoder of `layer`, `[d_transcoder, d_model]` row-major.
    pub(crate) fn w_enc(&self, layer: usize) -> &[f32] {
        &self.encoders[layer].w_enc
    }

    /// `b_dec` of output layer `layer`, `[d_model]`.
    pub(crate) fn b_dec(&self, layer: usize) -> &[f32] {
        &self.b_dec[layer]
    }

    /// The skip matrix `S` `[d_model, d_model]` of `layer` (`skip = x @ S`).
    pub(crate) fn skip(&self, layer: usize) -> Option<&[f32]> {
        self.encoders[layer].skip.as_deref()
    }

    /// Pre-activations of `layer` for `x` `[rows, d_model]` (row-major): `[rows, d_transcoder]`.
    pub fn pre_activations(&self, layer: usize, x: &[f32]) -> Vec<f32> {
        let enc = &self.encoders[layer];
        encode(&enc.w_enc, &enc.b_enc, x, self.d_model)
    }

    /// The activation function of `layer` applied to pre-activations `[rows, d_transcoder]`, in place.
    pub fn activate(&self, layer: usize, pre: &mut [f32]) {
        apply_activation(&self.activation, self.threshold(layer), pre, self.d_transcoder);
    }

    /// The JumpReLU thresholds of `layer`, `[d_transcoder]`.
    pub(crate) fn threshold(&self, layer: usize) -> Option<&[f32]> {
        self.encoders[layer].threshold.as_deref()
    }

    /// `b_enc` of `layer`, `[d_transcoder]`.
    pub(crate) fn b_enc(&self, layer: usize) -> &[f32] {
        &self.encoders[layer].b_enc
    }

    /// Decoder rows of features `features` of `layer`: `[features.len(), n_out(layer), d_model]`.
    pub fn decoder_rows(&self, layer: usize, features: &[usize]) -> Result<Vec<f32>> {
        if let Some(&f) = features.iter().find(|&&f| f >= self.d_transcoder) {
            return Err(Error::invalid(format!(
                "feature {f} of layer {layer} is out of range (the transcoders have {} per layer)",
                self.d_transcoder
            )));
        }
        match &self.decoders[layer] {
            DecoderRows::File { file, name } => {
                let rows = file.read_rows_f32(name, features)?;
                finite(&rows, name, file.path())?;
                Ok(rows)
            }
            DecoderRows::Memory(all) => {
                let row = self.n_out(layer) * self.d_model;
                let mut out = Vec::with_capacity(features.len() * row);
                for &f in features {
                    out.extend_from_slice(&all[f * row..(f + 1) * row]);
                }
                Ok(out)
            }
        }
    }
}

/// `activation` on pre-activations `[rows, f]`, in place (`threshold` `[f]` for JumpReLU:
/// `pre * (pre > threshold)`, circuit-tracer's; TopK keeps the `k` largest of each row,
/// ties to the lower index as torch.topk; TopKRelu keeps what is at or above the k-th
/// largest, through relu, as hooklens' SAELens top-k).
pub(crate) fn apply_activation(activation: &Activation, threshold: Option<&[f32]>, pre: &mut [f32], f: usize) {
    match activation {
        Activation::Relu => pre.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::JumpRelu => {
            let thr = threshold.expect("a JumpReLU layer has thresholds (checked at load)");
            for row in pre.chunks_mut(f) {
                // `pre > threshold` keeps a value. (Non-finite inputs and weights are
                // refused before any encoding, so no NaN reaches this comparison.)
                row.iter_mut().zip(thr).for_each(|(v, t)| {
                    if (*v).partial_cmp(t) != Some(std::cmp::Ordering::Greater) {
                        *v = 0.0
                    }
                });
            }
        }
        Activation::TopKRelu(k) => {
            let mut sorted: Vec<f32> = Vec::with_capacity(f);
            for row in pre.chunks_mut(f) {
                if *k < f {
                    sorted.clear();
                    sorted.extend_from_slice(row);
                    let kth = *sorted.select_nth_unstable_by(*k - 1, |a, b| b.total_cmp(a)).1;
                    row.iter_mut().for_each(|v| {
                        if *v < kth {
                            *v = 0.0
                        }
                    });
                }
                row.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        Activation::TopK(k) => {
            let mut idx: Vec<usize> = Vec::with_capacity(f);
            let mut keep = vec![false; f];
            for row in pre.chunks_mut(f) {
                idx.clear();
                idx.extend(0..f);
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                keep.iter_mut().for_each(|k| *k = false);
                idx[..*k].iter().for_each(|&i| keep[i] = true);
                row.iter_mut().zip(&keep).for_each(|(v, &kept)| {
                    if !kept {
                        *v = 0.0
                    }
                });
            }
        }
    }
}

/// `x @ W_enc.T + b_enc`: `x` `[rows, d_model]`, `w_enc` `[d_transcoder, d_model]` ->
/// `[rows, d_transcoder]`.
pub(crate) fn encode(w_enc: &[f32], b_enc: &[f32], x: &[f32], d_model: usize) -> Vec<f32> {
    use crate::ops::slice_gemm::{gemm, View};
    let (f, rows) = (b_enc.len(), x.len() / d_model);
    let mut out: Vec<f32> = (0..rows).flat_map(|_| b_enc.iter().copied()).collect();
    gemm(
        View::row_major(x, rows, d_model),
        View::row_major(w_enc, f, d_model).t(),
        1.0,
        &mut out,
        f,
    );
    out
}

/// An error naming the tensor and file when `values` holds a NaN or an infinity: a
/// NaN weight would otherwise vanish in the activation function.
fn finite(values: &[f32], name: &str, path: &Path) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::BadFile {
            path: path.to_path_buf(),
            reason: format!(
                "tensor `{name}` holds a non-finite value ({}) at element {i}",
                values[i]
            ),
        }),
        None => Ok(()),
    }
}

/// "has" or "has no".
fn yes(b: bool) -> &'static str {
    if b {
        "has"
    } else {
        "has no"
    }
}

/// `m` `[rows, cols]` transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// Per-layer files `{prefix}{i}.safetensors` for each prefix, `i` from 0 while they
/// exist; gaps and strays are errors.
fn numbered(dir: &Path, prefixes: &[&str]) -> Result<Vec<Vec<PathBuf>>> {
    let mut out = Vec::new();
    loop {
        let i = out.len();
        let group: Vec<PathBuf> = prefixes
            .iter()
            .map(|p| dir.join(format!("{p}{i}.safetensors")))
            .collect();
        let present: Vec<bool> = group.iter().map(|p| p.is_file()).collect();
        if present.iter().all(|&p| !p) {
            break;
        }
        if let Some(missing) = group.iter().zip(&present).find(|(_, &p)| !p) {
            return Err(Error::io(
                missing.0,
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing beside the other layer files"),
            ));
        }
        out.push(group);
    }
    if out.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no `{}0.safetensors`: not a transcoder folder in circuit-tracer's format",
            dir.display(),
            prefixes[0]
        )));
    }
    // A file past the first gap is a layer that would be silently dropped.
    let n = out.len();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            for p in prefixes {
                if let Some(i) = name.strip_prefix(p).and_then(|r| r.strip_suffix(".safetensors")) {
                    if i.parse::<usize>().is_ok_and(|i| i >= n) {
                        return Err(Error::invalid(format!(
                            "{}: `{name}` follows a missing layer {n}: every layer from 0 must be there",
                            dir.display()
                        )));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `blocks.{i}.rest` split into `i` and `rest`.
fn block_hook(name: &str) -> Option<(usize, &str)> {
    let (i, rest) = name.strip_prefix("blocks.")?.split_once('.')?;
    let i = i.parse().ok().filter(|_| i.bytes().all(|b| b.is_ascii_digit()))?;
    (!rest.is_empty()).then_some((i, rest))
}

/// [`finite`] for a tensor of an in-memory SAE, `what` naming the SAE.
fn finite_in(values: &[f32], name: &str, what: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(sae_refusal(
            what,
            format!(
                "tensor `{name}` holds a non-finite value ({}) at element {i}",
                values[i]
            ),
        )),
        None => Ok(()),
    }
}

/// Records `value` in `seen` the first time; after that, `mismatch(first)` when `value`
/// differs from the first one seen (every layer must agree with layer 0).
fn agree<T: PartialEq>(seen: &mut Option<T>, value: T, mismatch: impl FnOnce(&T) -> Error) -> Result<()> {
    match seen {
        None => *seen = Some(value),
        Some(first) if *first != value => return Err(mismatch(first)),
        Some(_) => {}
    }
    Ok(())
}

/// The error [`Transcoders::from_saes`] gives for the SAE `what`, saying `why`.
fn sae_refusal(what: &str, why: String) -> Error {
    Error::invalid(format!("Transcoders::from_saes: {what}: {why}"))
}

/// The points `(X, Y)` SAE `i` reads and writes (`blocks.{i}.X` -> `blocks.{i}.Y`); an
/// error unless it is a transcoder of layer `i`.
fn sae_block_points<'a>(c: &'a SaeConfig, i: usize, what: &str) -> Result<(&'a str, &'a str)> {
    let refuse = |why: String| sae_refusal(what, why);
    let Some(out_name) = c.hook_name_out.as_deref() else {
        return Err(refuse(
            "not a transcoder (no `hook_name_out`): attribution replaces each MLP with a transcoder \
             that reads one point and writes another"
                .into(),
        ));
    };
    let (Some((li, x)), Some((lo, y))) = (block_hook(&c.hook_name), block_hook(out_name)) else {
        return Err(refuse(format!(
            "its hooks must be `blocks.{i}.<point>` (input and output of layer {i})"
        )));
    };
    if li != i || lo != i {
        return Err(refuse(format!(
            "as layer {i} of the set it must read and write at `blocks.{i}.*`, not blocks.{li} -> blocks.{lo} \
             (the SAEs go in layer order, one per layer)"
        )));
    }
    Ok((x, y))
}

/// `Ok` when the SAE reads and writes the residual width with SAE 0's widths
/// (`d_model`, `d_transcoder`) and nothing at run time that is not linear or not whole.
fn check_sae_fits(c: &SaeConfig, d_model: usize, d_transcoder: usize, what: &str) -> Result<()> {
    let refuse = |why: String| sae_refusal(what, why);
    let d_out = c.output_width();
    if c.d_in != d_out {
        return Err(refuse(format!(
            "d_in {} and d_out {d_out} differ: the transcoders read and write the residual width",
            c.d_in
        )));
    }
    if (c.d_in, c.d_sae) != (d_model, d_transcoder) {
        return Err(refuse(format!(
            "d_in {} and d_sae {}, SAE 0's {d_model} and {d_transcoder}: every layer must match",
            c.d_in, c.d_sae
        )));
    }
    if c.normalize_activations != Normalization::None {
        return Err(refuse(format!(
            "normalize_activations {:?}: run-time input normalisation is not linear, which attribution \
             needs of the encoder",
            c.normalize_activations
        )));
    }
    if c.reshape_hook_z {
        return Err(refuse(
            "it reshapes hook_z heads; transcoders read a residual-width point".into(),
        ));
    }
    if let Some(h) = c.hook_head_index {
        return Err(refuse(format!("it reads one head's slice (hook_head_index {h})")));
    }
    Ok(())
}

/// The activation an SAE's architecture becomes, and whether its activations are
/// rescaled by the decoder norms.
fn sae_activation(c: &SaeConfig, what: &str) -> Result<(Activation, bool)> {
    Ok(match &c.architecture {
        Architecture::Standard => (Activation::Relu, false),
        Architecture::JumpRelu => (Activation::JumpRelu, false),
        Architecture::TopK {
            k,
            rescale_acts_by_decoder_norm,
        } => (Activation::TopKRelu(*k), *rescale_acts_by_decoder_norm),
        Architecture::Gated => {
            return Err(sae_refusal(
                what,
                format!(
                    "architecture `{}` (gated) is not supported: its gate and magnitude paths are two \
                     encoders, circuit-tracer's transcoders have one",
                    c.architecture_name
                ),
            ))
        }
    })
}

/// The tensor `t` of SAE `what` as f32 values on the CPU, flattened; an error when one
/// is not finite.
fn sae_tensor(name: &str, t: &candle_core::Tensor, what: &str) -> Result<Vec<f32>> {
    let v = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    finite_in(&v, name, what)?;
    Ok(v)
}

/// One layer of [`Transcoders::from_saes`] from the SAE's weights: its encoder, its
/// decoder rows `[d_sae, d_model]` and its `b_dec` `[d_model]`, with
/// `apply_b_dec_to_input` and the decoder-norm rescaling folded in (`(d, f)` is
/// `(d_model, d_transcoder)`).
fn sae_layer(
    sae: &Sae,
    act: &Activation,
    rescale: bool,
    (d, f): (usize, usize),
    what: &str,
) -> Result<(Encoder, Vec<f32>, Vec<f32>)> {
    let c = sae.cfg();
    let w = sae.weights();
    let refuse = |why: String| sae_refusal(what, why);
    let read = |name: &str, t: &candle_core::Tensor| sae_tensor(name, t, what);
    // SAELens's `W_enc` is `[d_in, d_sae]`: encoder row f is its column f.
    let w_enc_in = read("W_enc", &w.w_enc)?;
    let mut w_enc = transpose(&w_enc_in, d, f);
    let mut b_enc = match &w.b_enc {
        Some(b) => read("b_enc", b)?,
        None => return Err(refuse("no `b_enc`".into())),
    };
    let bias = read("b_dec", &w.b_dec)?;
    let mut dec = read("W_dec", &w.w_dec)?;
    if c.apply_b_dec_to_input {
        // pre = (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc).
        for (j, b) in b_enc.iter_mut().enumerate() {
            let row = &w_enc[j * d..(j + 1) * d];
            let dot: f64 = row.iter().zip(&bias).map(|(a, c)| *a as f64 * *c as f64).sum();
            *b = (*b as f64 - dot) as f32;
        }
    }
    let threshold = match act {
        Activation::JumpRelu => Some(sae_thresholds(w.threshold.as_ref(), what)?),
        _ => None,
    };
    if rescale {
        fold_decoder_norms(&mut w_enc, &mut b_enc, &mut dec, (d, f), what)?;
    }
    let skip = match (&w.w_skip, c.skip) {
        // `skip = x @ W_skip^T`, so `S = W_skip^T`.
        (Some(s), _) => Some(transpose(&read("W_skip", s)?, d, d)),
        (None, true) => return Err(refuse("a skip transcoder without `W_skip`".into())),
        (None, false) => None,
    };
    for (name, v) in [("W_enc", &w_enc), ("b_enc", &b_enc), ("W_dec", &dec)] {
        finite_in(v, name, what)?;
    }
    let encoder = Encoder {
        w_enc,
        b_enc,
        threshold,
        skip,
    };
    Ok((encoder, dec, bias))
}

/// A JumpReLU SAE's thresholds `[d_sae]`, which must all be `>= 0`.
fn sae_thresholds(threshold: Option<&candle_core::Tensor>, what: &str) -> Result<Vec<f32>> {
    let refuse = |why: String| sae_refusal(what, why);
    let t = match threshold {
        Some(t) => sae_tensor("threshold", t, what)?,
        None => return Err(refuse("a JumpReLU SAE without `threshold`".into())),
    };
    if let Some((j, v)) = t.iter().enumerate().find(|(_, v)| **v < 0.0) {
        return Err(refuse(format!(
            "feature {j}'s JumpReLU threshold is {v} < 0: SAELens's relu(pre) * (pre > threshold) \
             and circuit-tracer's pre * (pre > threshold) differ for negative thresholds"
        )));
    }
    Ok(t)
}

/// Folds `rescale_acts_by_decoder_norm` into the weights, in place: `w_enc` `[f, d]`,
/// `b_enc` `[f]`, `dec` `[f, d]`; an error for a zero (or non-finite) decoder row.
fn fold_decoder_norms(
    w_enc: &mut [f32],
    b_enc: &mut [f32],
    dec: &mut [f32],
    (d, f): (usize, usize),
    what: &str,
) -> Result<()> {
    // SAELens ranks and reports `pre * n_f` and decodes `acts / n_f`, with
    // `n_f = ||W_dec[f]||`: scale encoder row and bias by n_f, decoder by 1/n_f.
    for j in 0..f {
        let row = &mut dec[j * d..(j + 1) * d];
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n == 0.0 || !n.is_finite() {
            return Err(sae_refusal(
                what,
                format!("feature {j}'s decoder row has norm {n}: rescale_acts_by_decoder_norm divides by it"),
            ));
        }
        row.iter_mut().for_each(|v| *v /= n);
        w_enc[j * d..(j + 1) * d].iter_mut().for_each(|v| *v *= n);
        b_enc[j] *= n;
    }
    Ok(())
}

/// The names of one layer's tensors in circuit-tracer's files.
struct LayerTensors {
    w_enc: String,
    b_enc: String,
    b_dec: String,
    threshold: String,
    skip: String,
    dec: String,
}

impl LayerTensors {
    /// Layer `i`'s names: unnumbered in a set's per-layer file, numbered in a
    /// cross-layer transcoder's.
    fn of(kind: TranscoderKind, i: usize) -> Self {
        match kind {
            TranscoderKind::Set => LayerTensors {
                w_enc: "W_enc".to_string(),
                b_enc: "b_enc".to_string(),
                b_dec: "b_dec".to_string(),
                threshold: "activation_function.threshold".to_string(),
                skip: "W_skip".to_string(),
                dec: "W_dec".to_string(),
            },
            TranscoderKind::CrossLayer => LayerTensors {
                w_enc: format!("W_enc_{i}"),
                b_enc: format!("b_enc_{i}"),
                b_dec: format!("b_dec_{i}"),
                threshold: format!("threshold_{i}"),
                skip: format!("W_skip_{i}"),
                dec: format!("W_dec_{i}"),
            },
        }
    }
}

/// `(d_transcoder, d_model)` of layer `i`'s encoder `name` in `file` (at `path`).
fn encoder_shape(file: &SafetensorsFile, name: &str, path: &Path, i: usize) -> Result<(usize, usize)> {
    let shape = file
        .shape_of(name)
        .ok_or_else(|| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("no tensor `{name}` (the encoder of layer {i})"),
        })?
        .to_vec();
    let [f, d] = shape[..] else {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("`{name}` has shape {shape:?}, expected [d_transcoder, d_model]"),
        });
    };
    Ok((f, d))
}

/// One layer's encoder from its files (`group`, the encoder's first), checked finite:
/// `W_enc` `[f, d]`, `b_enc` `[f]`, the thresholds `[f]` when `has_thr`, and the skip
/// matrix `[d, d]` when there is one.
fn read_encoder(
    kind: TranscoderKind,
    enc_file: &SafetensorsFile,
    group: &[PathBuf],
    names: &LayerTensors,
    has_thr: bool,
    (f, d): (usize, usize),
) -> Result<Encoder> {
    let threshold = has_thr
        .then(|| read_shaped(enc_file, &names.threshold, &[f]))
        .transpose()?;
    let skip_file = match group.get(2) {
        Some(p) if kind == TranscoderKind::CrossLayer => Some(open(p)?),
        _ => None,
    };
    let skip_src = skip_file.as_ref().unwrap_or(enc_file);
    let skip = match skip_src.shape_of(&names.skip) {
        Some(_) => {
            let s = read_shaped(skip_src, &names.skip, &[d, d])?;
            Some(match kind {
                // circuit-tracer's per-layer skip is `x @ W_skip.T`.
                TranscoderKind::Set => transpose(&s, d, d),
                // ... and the cross-layer one `x @ W_skip`.
                TranscoderKind::CrossLayer => s,
            })
        }
        None => None,
    };
    let w_enc = read_shaped(enc_file, &names.w_enc, &[f, d])?;
    let b_enc = read_shaped(enc_file, &names.b_enc, &[f])?;
    for (name, values) in [(&names.w_enc, &w_enc), (&names.b_enc, &b_enc)]
        .into_iter()
        .chain(threshold.as_ref().map(|t| (&names.threshold, t)))
        .chain(skip.as_ref().map(|s| (&names.skip, s)))
    {
        finite(values, name, &group[0])?;
    }
    Ok(Encoder {
        w_enc,
        b_enc,
        threshold,
        skip,
    })
}

/// Layer `i`'s decoder `name`, read row by row later from its file (the encoder's in a
/// set, `group[1]` in a cross-layer transcoder), once its shape is checked:
/// `[f, d]`, or `[f, n_layers - i, d]` for a cross-layer transcoder.
fn file_decoder(
    kind: TranscoderKind,
    enc_file: SafetensorsFile,
    group: &[PathBuf],
    name: String,
    i: usize,
    n_layers: usize,
    (f, d): (usize, usize),
) -> Result<DecoderRows> {
    let dec_file = match kind {
        TranscoderKind::Set => enc_file,
        TranscoderKind::CrossLayer => open(&group[1])?,
    };
    let n_out = match kind {
        TranscoderKind::Set => 1,
        TranscoderKind::CrossLayer => n_layers - i,
    };
    let want: Vec<usize> = match kind {
        TranscoderKind::Set => vec![f, d],
        TranscoderKind::CrossLayer => vec![f, n_out, d],
    };
    match dec_file.shape_of(&name) {
        Some(s) if s == want.as_slice() => {}
        got => {
            return Err(Error::BadFile {
                path: dec_file.path().to_path_buf(),
                reason: format!("decoder `{name}` has shape {got:?}, expected {want:?}"),
            })
        }
    }
    Ok(DecoderRows::File { file: dec_file, name })
}

/// The activation the config (`top_k`) and the files (JumpReLU thresholds or not,
/// `jump`) imply; an error when they disagree or `k` exceeds the features.
fn file_activation(top_k: Option<usize>, jump: Option<bool>, d_transcoder: usize, source: &str) -> Result<Activation> {
    let activation = match (top_k, jump) {
        (Some(k), Some(false)) => Activation::TopK(k),
        (Some(_), _) => {
            return Err(Error::invalid(format!(
                "{source}: config.yaml asks for TopK and the files hold JumpReLU thresholds"
            )))
        }
        (None, Some(true)) => Activation::JumpRelu,
        (None, _) => Activation::Relu,
    };
    if let Activation::TopK(k) = activation {
        if k > d_transcoder {
            return Err(Error::invalid(format!(
                "{source}: top_k {k} exceeds the {d_transcoder} features per layer"
            )));
        }
    }
    Ok(activation)
}
