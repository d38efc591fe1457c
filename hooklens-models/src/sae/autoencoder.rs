//! `Sae`: a sparse autoencoder or transcoder in SAELens's format, with SAELens's hook
//! points, encode and decode.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use hooklens_core::{Error, HookPath, HookPoint, Hooked, Result};
use hooklens_derive::Hooked;

use super::config::{Architecture, Normalization, SaeConfig};
use crate::loading::{open_checkpoint_file, TensorSource};
use crate::ops;

/// The config file of an SAE folder.
pub const SAE_CFG_FILE: &str = "cfg.json";
/// The weights file of an SAE folder.
pub const SAE_WEIGHTS_FILE: &str = "sae_weights.safetensors";

/// A sparse autoencoder or transcoder, as SAELens saves and runs them: load one with
/// [`Sae::from_dir`], run it alone ([`Sae::encode`], [`Sae::decode`], [`Sae::forward`]),
/// or splice it into a model ([`SaeModel`](super::SaeModel)). Cloning is cheap and
/// shares the weights and the hook points.
///
/// Its hook points, as SAELens's (`hook_sae_input`, `hook_sae_acts_pre`,
/// `hook_sae_acts_post`, `hook_sae_output`, `hook_sae_recons`, `hook_sae_error`), are
/// named so on the SAE alone and under the point it replaces once spliced
/// (`blocks.0.hook_resid_pre.hook_sae_acts_post`).
///
/// ```
/// # fn main() -> hooklens_core::Result<()> {
/// use candle_core::{Device, Tensor};
/// use hooklens_models::sae::Sae;
/// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/saes/saes/standard");
/// let sae = Sae::from_dir(&dir, &Device::Cpu)?; // a folder: cfg.json + sae_weights.safetensors
/// let x = Tensor::randn(0f32, 1.0, (2, 5, sae.cfg().d_in), &Device::Cpu)?;
/// let acts = sae.encode(&x)?; // [2, 5, d_sae]
/// assert_eq!(acts.dims(), [2, 5, sae.cfg().d_sae]);
/// let recons = sae.decode(&acts)?; // [2, 5, d_in]
/// assert_eq!(recons.dims(), x.dims());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sae {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SaeConfig,
    w: SaeWeights,
    points: SaePoints,
}

/// The SAE's parameters (SAELens's names, `x @ W` convention).
#[derive(Clone, Debug)]
pub struct SaeWeights {
    /// `[d_in, d_sae]`.
    pub w_enc: Tensor,
    /// `[d_sae]` (absent in gated SAEs).
    pub b_enc: Option<Tensor>,
    /// `[d_sae, d_out]` (`d_out` = `d_in` for an SAE).
    pub w_dec: Tensor,
    /// `[d_out]`.
    pub b_dec: Tensor,
    /// JumpReLU thresholds `[d_sae]`.
    pub threshold: Option<Tensor>,
    /// Gated: `b_gate`, `r_mag`, `b_mag`, each `[d_sae]`.
    pub gated: Option<GatedWeights>,
    /// A skip transcoder's `W_skip` `[d_out, d_in]`.
    pub w_skip: Option<Tensor>,
}

/// The extra parameters of a gated SAE, each `[d_sae]`.
#[derive(Clone, Debug)]
pub struct GatedWeights {
    /// The gate's bias.
    pub b_gate: Tensor,
    /// Log-scales of the magnitude path's encoder columns.
    pub r_mag: Tensor,
    /// The magnitude path's bias.
    pub b_mag: Tensor,
}

/// Precomputed from the weights once, so a forward does not redo them.
struct Derived {
    /// Gated: `W_enc * exp(r_mag)` `[d_in, d_sae]`.
    w_mag: Option<Tensor>,
    /// Top-k with rescaling: `||W_dec[j]||` `[d_sae]`.
    dec_norms: Option<Tensor>,
    /// A skip transcoder's `W_skip^T` `[d_in, d_out]`, contiguous.
    w_skip_t: Option<Tensor>,
}

/// The SAE's hook points, in SAELens's registration order.
#[derive(Hooked)]
#[hooked(crate = "hooklens_core")]
struct SaePoints {
    hook_sae_input: HookPoint,
    hook_sae_acts_pre: HookPoint,
    hook_sae_acts_post: HookPoint,
    hook_sae_output: HookPoint,
    hook_sae_recons: HookPoint,
    hook_sae_error: HookPoint,
    #[hooked(skip)]
    derived: Derived,
}

/// What encoding did to the input that decoding undoes: the run-time normalisation
/// (SAELens keeps it on the module between `encode` and `decode`), and `hook_z`'s
/// head axis.
#[derive(Clone, Debug)]
pub struct InputNorm {
    scale: NormState,
    /// `hook_z`: the number of heads and `d_head` the input had.
    heads: Option<(usize, usize)>,
}

/// The run-time normalisation's state, per position.
#[derive(Clone, Debug)]
enum NormState {
    None,
    /// `constant_norm_rescale`'s factor `[.., 1]`.
    Rescale(Tensor),
    /// `layer_norm`'s mean and standard deviation, each `[.., 1]`.
    LayerNorm {
        mu: Tensor,
        std: Tensor,
    },
}

/// Whether the SAE's hook points fire (SAELens's `_disable_hooks` for the error term).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fire {
    Yes,
    No,
}

impl Sae {
    /// Loads an SAE folder: `cfg.json` (SAELens 6, or the flat configs of older
    /// versions) and `sae_weights.safetensors` (f32, f16 or bf16, kept in f32),
    /// onto `device`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "SAE folder {}: no such directory (an SAE is a folder holding {SAE_CFG_FILE} and {SAE_WEIGHTS_FILE})",
                dir.display()
            )));
        }
        Self::from_files(&dir.join(SAE_CFG_FILE), &dir.join(SAE_WEIGHTS_FILE), device)
    }

    /// Loads an SAE from its config and weights files.
    pub fn from_files(cfg: &Path, weights: &Path, device: &Device) -> Result<Self> {
        Self::from_config_and_weights(SaeConfig::from_file(cfg)?, weights, device)
    }

    /// Loads an SAE's weights file for a config already read.
    pub(crate) fn from_config_and_weights(cfg: SaeConfig, weights: &Path, device: &Device) -> Result<Self> {
        let source = open_checkpoint_file(weights, device, DType::F32)?;
        let w = read_weights(&cfg, &*source).map_err(|e| match e {
            Error::BadFile { .. } | Error::Io { .. } => e,
            other => Error::BadFile {
                path: weights.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        // A NaN or inf would vanish through relu (no feature fires) rather than fail.
        if let Err(reason) = check_finite(&w) {
            return Err(Error::BadFile {
                path: weights.to_path_buf(),
                reason,
            });
        }
        Self::new(cfg, w)
    }

    /// An SAE from a config and weights already in memory (shapes are checked; values
    /// are not: what uses them may check, as a transcoder set does).
    pub fn new(cfg: SaeConfig, w: SaeWeights) -> Result<Self> {
        check_shapes(&cfg, &w)?;
        let derived = Derived {
            w_mag: match &w.gated {
                Some(g) => Some(w.w_enc.broadcast_mul(&g.r_mag.exp()?.unsqueeze(0)?)?.contiguous()?),
                None => None,
            },
            dec_norms: match cfg.architecture {
                Architecture::TopK {
                    rescale_acts_by_decoder_norm: true,
                    ..
                } => Some(w.w_dec.sqr()?.sum(1)?.sqrt()?),
                _ => None,
            },
            w_skip_t: match &w.w_skip {
                Some(s) => Some(s.t()?.contiguous()?),
                None => None,
            },
        };
        // hook_z SAEs give back `[.., n_heads, d_head]` at the error and output points.
        let out_axis = if cfg.reshape_hook_z { Some(-3) } else { Some(-2) };
        let points = SaePoints {
            hook_sae_input: HookPoint::new().with_position_axis(Some(-2)),
            hook_sae_acts_pre: HookPoint::new().with_position_axis(Some(-2)),
            hook_sae_acts_post: HookPoint::new().with_position_axis(Some(-2)),
            hook_sae_output: HookPoint::new().with_position_axis(out_axis),
            hook_sae_recons: HookPoint::new().with_position_axis(Some(-2)),
            hook_sae_error: HookPoint::new().with_position_axis(out_axis),
            derived,
        };
        // Named from the start (`hook_sae_input`, ...): an SAE used on its own inside
        // another model's run (`sae.encode` in a hook) fires its points there, and a
        // point no hook dictionary named is an error inside a run.
        hooklens_core::HookDict::build(&points);
        Ok(Sae {
            inner: Arc::new(Inner { cfg, w, points }),
        })
    }

    /// The configuration.
    pub fn cfg(&self) -> &SaeConfig {
        &self.inner.cfg
    }

    /// The parameters.
    pub fn weights(&self) -> &SaeWeights {
        &self.inner.w
    }

    /// `W_dec` `[d_sae, d_out]`: row `f` is feature `f`'s direction at the output point.
    pub fn w_dec(&self) -> &Tensor {
        &self.inner.w.w_dec
    }

    /// The full name of one of its points once spliced: `point` (e.g.
    /// `hook_sae_acts_post`) under the hook point it replaces.
    pub fn hook_name(&self, point: &str) -> String {
        format!("{}.{point}", self.cfg().spliced_at())
    }

    /// Whether two handles are the same SAE (clones of one another).
    pub fn same_as(&self, other: &Sae) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Feature activations of `x` `[.., d_in]` (`[.., n_heads, d_head]` for a `hook_z`
    /// SAE) -> `[.., d_sae]`, firing `hook_sae_input`, `hook_sae_acts_pre` and
    /// `hook_sae_acts_post`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode_with_norm(x)?.0)
    }

    /// [`Sae::encode`], also returning what [`Sae::decode_with_norm`] needs to undo the
    /// run-time normalisation and `hook_z` flattening.
    pub fn encode_with_norm(&self, x: &Tensor) -> Result<(Tensor, InputNorm)> {
        // A forward of the SAE as a model of its own, for the thread rule and grad_mode.
        let _forward = self.points().hook_sae_input.model_forward();
        self.encode_inner(x, Fire::Yes, "the SAE's input")
    }

    /// The reconstruction from feature activations `[.., d_sae]` -> `[.., d_out]`,
    /// firing `hook_sae_recons`. SAEs that reshape `hook_z` heads or normalise their
    /// input at run time need what their encode saw: for them this is an error that
    /// says to use [`Sae::decode_with_norm`].
    pub fn decode(&self, feature_acts: &Tensor) -> Result<Tensor> {
        let cfg = self.cfg();
        if cfg.reshape_hook_z || (cfg.normalize_activations != Normalization::None && !cfg.is_transcoder()) {
            return Err(Error::invalid(format!(
                "this SAE ({}) {}: decode needs what its encode saw; use encode_with_norm and decode_with_norm, or forward",
                cfg.hook_name,
                if cfg.reshape_hook_z {
                    "reads hook_z heads"
                } else {
                    "normalises its input at run time"
                }
            )));
        }
        self.decode_with_norm(
            feature_acts,
            &InputNorm {
                scale: NormState::None,
                heads: None,
            },
        )
    }

    /// The reconstruction, undoing `norm` (from [`Sae::encode_with_norm`] of the same
    /// input): `[.., d_sae]` -> `[.., d_out]`, or `[.., n_heads, d_head]` for `hook_z`.
    pub fn decode_with_norm(&self, feature_acts: &Tensor, norm: &InputNorm) -> Result<Tensor> {
        let _forward = self.points().hook_sae_input.model_forward();
        self.decode_inner(feature_acts, norm, Fire::Yes)
    }

    /// `decode(encode(x))`, plus `x @ W_skip^T` for a skip transcoder; fires
    /// `hook_sae_output` last. `x` `[.., d_in]` (or `hook_z`'s) -> `[.., d_out]` (or
    /// `hook_z`'s).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _forward = self.points().hook_sae_input.model_forward();
        let (acts, norm) = self.encode_inner(x, Fire::Yes, "the SAE's input")?;
        let mut out = self.decode_inner(&acts, &norm, Fire::Yes)?;
        if let Some(w_skip_t) = &self.points().derived.w_skip_t {
            out = (out + ops::linear(x, w_skip_t, None)?)?;
        }
        Ok(self.points().hook_sae_output.forward(&out)?)
    }

    fn points(&self) -> &SaePoints {
        &self.inner.points
    }

    pub(crate) fn output_point(&self) -> &HookPoint {
        &self.points().hook_sae_output
    }

    pub(crate) fn error_point(&self) -> &HookPoint {
        &self.points().hook_sae_error
    }

    pub(crate) fn skip_term(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.points().derived.w_skip_t {
            Some(w) => Ok(Some(ops::linear(x, w, None)?)),
            None => Ok(None),
        }
    }

    fn fire(&self, point: &HookPoint, x: Tensor, fire: Fire) -> Result<Tensor> {
        match fire {
            Fire::Yes => Ok(point.forward(&x)?),
            Fire::No => Ok(x),
        }
    }

    /// Encodes `x`; `what` names the input in a width error (the hook point, spliced).
    pub(crate) fn encode_inner(&self, x: &Tensor, fire: Fire, what: &str) -> Result<(Tensor, InputNorm)> {
        let cfg = self.cfg();
        let w = &self.inner.w;
        let p = self.points();
        let dims = x.dims();
        let (flat, heads) = if cfg.reshape_hook_z {
            if dims.len() < 2 || dims[dims.len() - 2] * dims[dims.len() - 1] != cfg.d_in {
                return Err(width_error(
                    cfg,
                    what,
                    dims,
                    "[.., n_heads, d_head] with n_heads * d_head",
                ));
            }
            let (h, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            (x.flatten_from(dims.len() - 2)?, Some((h, d)))
        } else {
            if dims.last() != Some(&cfg.d_in) {
                return Err(width_error(cfg, what, dims, "a last dimension"));
            }
            (x.clone(), None)
        };
        let flat = if flat.dtype() == w.w_enc.dtype() {
            flat
        } else {
            flat.to_dtype(w.w_enc.dtype())?
        };
        let input = self.fire(&p.hook_sae_input, flat, fire)?;
        let (normed, scale) = normalize_in(&input, cfg.normalize_activations, cfg.d_in)?;
        let sae_in = if cfg.apply_b_dec_to_input {
            normed.broadcast_sub(&w.b_dec)?
        } else {
            normed
        };
        let acts = match &cfg.architecture {
            Architecture::Standard => {
                let pre = self.fire(
                    &p.hook_sae_acts_pre,
                    ops::linear(&sae_in, &w.w_enc, w.b_enc.as_ref())?,
                    fire,
                )?;
                pre.relu()?
            }
            Architecture::JumpRelu => {
                let pre = self.fire(
                    &p.hook_sae_acts_pre,
                    ops::linear(&sae_in, &w.w_enc, w.b_enc.as_ref())?,
                    fire,
                )?;
                let threshold = w.threshold.as_ref().expect("checked at load");
                let mask = pre.broadcast_gt(threshold)?.to_dtype(pre.dtype())?;
                (pre.relu()? * mask)?
            }
            Architecture::Gated => {
                let g = w.gated.as_ref().expect("checked at load");
                let w_mag = p.derived.w_mag.as_ref().expect("made at load");
                let gate = ops::linear(&sae_in, &w.w_enc, Some(&g.b_gate))?;
                let pre = self.fire(&p.hook_sae_acts_pre, ops::linear(&sae_in, w_mag, Some(&g.b_mag))?, fire)?;
                let open = gate.gt(0.0)?.to_dtype(pre.dtype())?;
                (pre.relu()? * open)?
            }
            Architecture::TopK { k, .. } => {
                let pre = self.fire(
                    &p.hook_sae_acts_pre,
                    ops::linear(&sae_in, &w.w_enc, w.b_enc.as_ref())?,
                    fire,
                )?;
                let ranked = match &p.derived.dec_norms {
                    Some(norms) => pre.broadcast_mul(norms)?,
                    None => pre,
                };
                top_k_relu(&ranked, *k)?
            }
        };
        let acts = self.fire(&p.hook_sae_acts_post, acts, fire)?;
        Ok((acts, InputNorm { scale, heads }))
    }

    pub(crate) fn decode_inner(&self, acts: &Tensor, norm: &InputNorm, fire: Fire) -> Result<Tensor> {
        let cfg = self.cfg();
        let w = &self.inner.w;
        if acts.dims().last() != Some(&cfg.d_sae) {
            return Err(Error::invalid(format!(
                "SAE at `{}`: feature activations must be [.., d_sae = {}], got {:?}",
                cfg.spliced_at(),
                cfg.d_sae,
                acts.dims()
            )));
        }
        let acts = match &self.points().derived.dec_norms {
            Some(norms) => acts.broadcast_div(norms)?,
            None => acts.clone(),
        };
        let recons = ops::linear(&acts, &w.w_dec, Some(&w.b_dec))?;
        let recons = self.fire(&self.points().hook_sae_recons, recons, fire)?;
        if cfg.is_transcoder() {
            return Ok(recons);
        }
        let out = normalize_out(&recons, cfg.normalize_activations, norm)?;
        Ok(match norm.heads {
            Some((h, d)) => {
                let mut dims = out.dims().to_vec();
                dims.pop();
                dims.extend([h, d]);
                out.reshape(dims)?
            }
            None => out,
        })
    }
}

impl std::fmt::Debug for Sae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.cfg();
        f.debug_struct("Sae")
            .field("architecture", &c.architecture_name)
            .field("hook_name", &c.hook_name)
            .field("d_in", &c.d_in)
            .field("d_sae", &c.d_sae)
            .finish()
    }
}

impl Hooked for Sae {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        self.inner.points.visit_hook_points(path, visitor)
    }
}

fn width_error(cfg: &SaeConfig, what: &str, dims: &[usize], expect: &str) -> Error {
    Error::invalid(format!(
        "SAE for `{}` (d_in {}) cannot read {what}: its activations have shape {dims:?}, expected {expect} of {}",
        cfg.hook_name, cfg.d_in, cfg.d_in
    ))
}

/// SAELens's run-time normalisation of the input `[.., d_in]`.
fn normalize_in(x: &Tensor, how: Normalization, d_in: usize) -> Result<(Tensor, NormState)> {
    Ok(match how {
        Normalization::None => (x.clone(), NormState::None),
        Normalization::ConstantNormRescale => {
            let coeff = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.recip()? * (d_in as f64).sqrt())?;
            (x.broadcast_mul(&coeff)?, NormState::Rescale(coeff))
        }
        Normalization::LayerNorm => {
            let mu = x.mean_keepdim(D::Minus1)?;
            let centred = x.broadcast_sub(&mu)?;
            // torch's std: N - 1 in the denominator.
            let n = d_in.max(2) as f64;
            let std = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0))?.sqrt()?;
            (
                centred.broadcast_div(&(&std + 1e-5)?)?,
                NormState::LayerNorm { mu, std },
            )
        }
    })
}

fn normalize_out(r: &Tensor, how: Normalization, norm: &InputNorm) -> Result<Tensor> {
    Ok(match (how, &norm.scale) {
        (Normalization::ConstantNormRescale, NormState::Rescale(coeff)) => r.broadcast_div(coeff)?,
        (Normalization::LayerNorm, NormState::LayerNorm { mu, std }) => r.broadcast_mul(std)?.broadcast_add(mu)?,
        (Normalization::None, _) => r.clone(),
        _ => {
            return Err(Error::invalid(
                "decode_with_norm: the InputNorm is not from this SAE's encode (its normalisation differs)",
            ))
        }
    })
}

/// `relu` of the `k` largest values of each row of `v` `[.., d_sae]`, zeros elsewhere.
fn top_k_relu(v: &Tensor, k: usize) -> Result<Tensor> {
    let d = v.dim(D::Minus1)?;
    if k >= d {
        return Ok(v.relu()?);
    }
    let v = v.contiguous()?;
    // The k-th largest value of each row: everything at or above it is kept (a tie at
    // the cut keeps both, where torch.topk would pick one arbitrarily).
    let sorted = v.detach().sort_last_dim(false)?.0;
    let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
    let keep = v.broadcast_ge(&kth)?.to_dtype(v.dtype())?;
    Ok((v.relu()? * keep)?)
}

fn read_weights(cfg: &SaeConfig, src: &dyn TensorSource) -> Result<SaeWeights> {
    let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.output_width());
    let get = |name: &str, shape: &[usize]| src.get(name, shape);
    let gated = cfg.architecture == Architecture::Gated;
    let w = SaeWeights {
        w_enc: get("W_enc", &[d_in, d_sae])?,
        b_enc: if gated { None } else { Some(get("b_enc", &[d_sae])?) },
        w_dec: get("W_dec", &[d_sae, d_out])?,
        b_dec: get("b_dec", &[d_out])?,
        threshold: if cfg.architecture == Architecture::JumpRelu {
            Some(get("threshold", &[d_sae])?)
        } else {
            None
        },
        gated: if gated {
            Some(GatedWeights {
                b_gate: get("b_gate", &[d_sae])?,
                r_mag: get("r_mag", &[d_sae])?,
                b_mag: get("b_mag", &[d_sae])?,
            })
        } else {
            None
        },
        w_skip: if cfg.skip {
            Some(get("W_skip", &[d_out, d_in])?)
        } else {
            None
        },
    };
    if src.contains("scaling_factor") {
        // SAELens < 6 saved an all-ones `scaling_factor` and drops it; any other value
        // would change the decoder, which SAELens 6 does not do either.
        let s = src.get("scaling_factor", &[cfg.d_sae])?;
        let all_ones = s.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v == 1.0);
        if !all_ones {
            return Err(Error::invalid(
                "`scaling_factor` is not all ones: such legacy SAEs are not supported (SAELens 6 drops only all-ones ones)",
            ));
        }
    }
    Ok(w)
}

/// The SAE's parameters with their SAELens names.
fn named(w: &SaeWeights) -> Vec<(&'static str, &Tensor)> {
    let mut all = vec![("W_enc", &w.w_enc), ("W_dec", &w.w_dec), ("b_dec", &w.b_dec)];
    if let Some(b) = &w.b_enc {
        all.push(("b_enc", b));
    }
    if let Some(t) = &w.threshold {
        all.push(("threshold", t));
    }
    if let Some(g) = &w.gated {
        all.extend([("b_gate", &g.b_gate), ("r_mag", &g.r_mag), ("b_mag", &g.b_mag)]);
    }
    if let Some(s) = &w.w_skip {
        all.push(("W_skip", s));
    }
    all
}

/// Whether every parameter is finite; else which one is not, and where.
pub(super) fn check_finite(w: &SaeWeights) -> std::result::Result<(), String> {
    for (name, t) in named(w) {
        let values = t
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor `{name}` cannot be read: {e}"))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "tensor `{name}` holds a non-finite value ({}) at element {i}: the SAE's weights must be finite",
                values[i]
            ));
        }
    }
    Ok(())
}

fn check_shapes(cfg: &SaeConfig, w: &SaeWeights) -> Result<()> {
    let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.output_width());
    let mut want: Vec<(&str, &Tensor, Vec<usize>)> = vec![
        ("W_enc", &w.w_enc, vec![d_in, d_sae]),
        ("W_dec", &w.w_dec, vec![d_sae, d_out]),
        ("b_dec", &w.b_dec, vec![d_out]),
    ];
    if let Some(b) = &w.b_enc {
        want.push(("b_enc", b, vec![d_sae]));
    }
    if let Some(t) = &w.threshold {
        want.push(("threshold", t, vec![d_sae]));
    }
    if let Some(g) = &w.gated {
        want.extend([
            ("b_gate", &g.b_gate, vec![d_sae]),
            ("r_mag", &g.r_mag, vec![d_sae]),
            ("b_mag", &g.b_mag, vec![d_sae]),
        ]);
    }
    if let Some(s) = &w.w_skip {
        want.push(("W_skip", s, vec![d_out, d_in]));
    }
    for (name, t, shape) in want {
        if t.dims() != shape.as_slice() {
            return Err(Error::invalid(format!(
                "SAE parameter `{name}` has shape {:?}, but the config (d_in {d_in}, d_sae {d_sae}, d_out {d_out}) needs {shape:?}",
                t.dims()
            )));
        }
    }
    let missing = |what: &str| Error::invalid(format!("a {} SAE needs `{what}`", cfg.architecture_name));
    match cfg.architecture {
        Architecture::Gated if w.gated.is_none() => return Err(missing("b_gate, r_mag, b_mag")),
        Architecture::JumpRelu if w.threshold.is_none() => return Err(missing("threshold")),
        Architecture::Standard | Architecture::JumpRelu | Architecture::TopK { .. } if w.b_enc.is_none() => {
            return Err(missing("b_enc"))
        }
        _ => {}
    }
    if cfg.skip && w.w_skip.is_none() {
        return Err(missing("W_skip"));
    }
    Ok(())
}
