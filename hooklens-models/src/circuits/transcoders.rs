//! Transcoders in circuit-tracer's on-disk formats: a per-layer set
//! (`layer_{i}.safetensors`) or a cross-layer transcoder (`W_enc_{i}` /
//! `W_dec_{i}.safetensors`), with ReLU, JumpReLU (thresholds) or TopK activations and
//! optional skip connections.
//!
//! Encoders are read whole (every position of every layer is encoded); decoders are
//! read row by row from their files when a feature is active, never all at once: a
//! cross-layer transcoder's decoders hold one vector per later layer and are the bulk
//! of its size.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use hooklens_core::{Error, Result};

use super::transcoder_config::{TranscoderConfig, TranscoderKind};
use crate::loading::SafetensorsFile;

/// The sparsifying nonlinearity of the features.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// `max(pre, 0)`.
    Relu,
    /// `pre * (pre > threshold)`, one threshold per feature (per layer).
    JumpRelu,
    /// The `k` largest pre-activations of each position are kept, the rest zeroed.
    TopK(usize),
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

/// Where one layer's decoder rows come from: a safetensors file, read row by row.
struct DecoderRows {
    file: SafetensorsFile,
    name: String,
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
                    }
                }
                groups
            }
        };
        Self::from_files(cfg, &files, &dir.display().to_string())
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
                    vec![
                        in_repo(&format!("W_enc_{i}.safetensors")),
                        in_repo(&format!("W_dec_{i}.safetensors")),
                    ]
                })
                .collect(),
        };
        let flat: Vec<String> = names.iter().flatten().cloned().collect();
        let mut paths = repo_files(repo, &flat, hub, &what)?.into_iter();
        let files: Vec<Vec<PathBuf>> = names
            .iter()
            .map(|group| group.iter().map(|_| paths.next().expect("one path per name")).collect())
            .collect();
        Self::from_files(cfg, &files, repo)
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
            let (w_name, b_enc_name, b_dec_name, thr_name, skip_name, dec_name) = match cfg.kind {
                TranscoderKind::Set => (
                    "W_enc".to_string(),
                    "b_enc".to_string(),
                    "b_dec".to_string(),
                    "activation_function.threshold".to_string(),
                    "W_skip".to_string(),
                    "W_dec".to_string(),
                ),
                TranscoderKind::CrossLayer => (
                    format!("W_enc_{i}"),
                    format!("b_enc_{i}"),
                    format!("b_dec_{i}"),
                    format!("threshold_{i}"),
                    format!("W_skip_{i}"),
                    format!("W_dec_{i}"),
                ),
            };
            let shape = enc_file
                .shape_of(&w_name)
                .ok_or_else(|| Error::BadFile {
                    path: group[0].clone(),
                    reason: format!("no tensor `{w_name}` (the encoder of layer {i})"),
                })?
                .to_vec();
            let [f, d] = shape[..] else {
                return Err(Error::BadFile {
                    path: group[0].clone(),
                    reason: format!("`{w_name}` has shape {shape:?}, expected [d_transcoder, d_model]"),
                });
            };
            match dims {
                None => dims = Some((f, d)),
                Some(prev) if prev != (f, d) => {
                    return Err(Error::BadFile {
                        path: group[0].clone(),
                        reason: format!(
                            "layer {i}'s encoder is [{f}, {d}], layer 0's [{}, {}]: every layer must match",
                            prev.0, prev.1
                        ),
                    })
                }
                Some(_) => {}
            }
            let has_thr = enc_file.shape_of(&thr_name).is_some();
            match jump {
                None => jump = Some(has_thr),
                Some(j) if j != has_thr => {
                    return Err(Error::BadFile {
                        path: group[0].clone(),
                        reason: format!("layer {i} {} a JumpReLU threshold and layer 0 {}", yes(has_thr), yes(j)),
                    })
                }
                Some(_) => {}
            }
            let threshold = has_thr.then(|| read_shaped(&enc_file, &thr_name, &[f])).transpose()?;
            let skip_file = match group.get(2) {
                Some(p) if cfg.kind == TranscoderKind::CrossLayer => Some(open(p)?),
                _ => None,
            };
            let skip_src = skip_file.as_ref().unwrap_or(&enc_file);
            let skip = match skip_src.shape_of(&skip_name) {
                Some(_) => {
                    let s = read_shaped(skip_src, &skip_name, &[d, d])?;
                    Some(match cfg.kind {
                        // circuit-tracer's per-layer skip is `x @ W_skip.T`.
                        TranscoderKind::Set => transpose(&s, d, d),
                        // ... and the cross-layer one `x @ W_skip`.
                        TranscoderKind::CrossLayer => s,
                    })
                }
                None => None,
            };
            let w_enc = read_shaped(&enc_file, &w_name, &[f, d])?;
            let b_enc = read_shaped(&enc_file, &b_enc_name, &[f])?;
            for (name, values) in [(&w_name, &w_enc), (&b_enc_name, &b_enc)]
                .into_iter()
                .chain(threshold.as_ref().map(|t| (&thr_name, t)))
                .chain(skip.as_ref().map(|s| (&skip_name, s)))
            {
                finite(values, name, &group[0])?;
            }
            encoders.push(Encoder {
                w_enc,
                b_enc,
                threshold,
                skip,
            });
            let bias = read_shaped(&enc_file, &b_dec_name, &[d])?;
            finite(&bias, &b_dec_name, &group[0])?;
            b_dec.push(bias);
            let dec_file = match cfg.kind {
                TranscoderKind::Set => enc_file,
                TranscoderKind::CrossLayer => open(&group[1])?,
            };
            let n_out = match cfg.kind {
                TranscoderKind::Set => 1,
                TranscoderKind::CrossLayer => n_layers - i,
            };
            let want: Vec<usize> = match cfg.kind {
                TranscoderKind::Set => vec![f, d],
                TranscoderKind::CrossLayer => vec![f, n_out, d],
            };
            match dec_file.shape_of(&dec_name) {
                Some(s) if s == want.as_slice() => {}
                got => {
                    return Err(Error::BadFile {
                        path: dec_file.path().to_path_buf(),
                        reason: format!("decoder `{dec_name}` has shape {got:?}, expected {want:?}"),
                    })
                }
            }
            decoders.push(DecoderRows {
                file: dec_file,
                name: dec_name,
            });
        }
        let (d_transcoder, d_model) = dims.expect("at least one layer");
        let activation = match (cfg.top_k, jump) {
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
        Ok(Transcoders {
            cfg,
            d_model,
            d_transcoder,
            activation,
            encoders,
            decoders,
            b_dec,
            source: source.to_string(),
        })
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
        let (d, f) = (self.d_model, self.d_transcoder);
        let rows = x.len() / d;
        let enc = &self.encoders[layer];
        let mut out: Vec<f32> = (0..rows).flat_map(|_| enc.b_enc.iter().copied()).collect();
        use crate::ops::slice_gemm::{gemm, View};
        gemm(
            View::row_major(x, rows, d),
            View::row_major(&enc.w_enc, f, d).t(),
            1.0,
            &mut out,
            f,
        );
        out
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
        let d = &self.decoders[layer];
        if let Some(&f) = features.iter().find(|&&f| f >= self.d_transcoder) {
            return Err(Error::invalid(format!(
                "feature {f} of layer {layer} is out of range (the transcoders have {} per layer)",
                self.d_transcoder
            )));
        }
        let rows = d.file.read_rows_f32(&d.name, features)?;
        finite(&rows, &d.name, d.file.path())?;
        Ok(rows)
    }
}

/// `activation` on pre-activations `[rows, f]`, in place (`threshold` `[f]` for JumpReLU:
/// `pre * (pre > threshold)`, circuit-tracer's; TopK keeps the `k` largest of each row,
/// ties to the lower index as torch.topk).
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
