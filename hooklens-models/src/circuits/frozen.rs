//! The model with its attention patterns and norm scales frozen at their values on one
//! prompt, and its MLP outputs held fixed: linear in the residual stream, so the direct
//! effect of a vector written at one place on a vector read at another is a dot product
//! with a gradient, and that gradient has a closed form.
//!
//! circuit-tracer gets these gradients from torch's autograd through the whole model,
//! with `detach` at the frozen points. The backward pass here is that same linear map
//! written out: per block, the MLP branch contributes nothing (its output is frozen)
//! except through a transcoder's skip connection; the attention branch is
//! `W_V`, the frozen pattern and `W_O` transposed; each norm is its gain divided by its
//! frozen scale (and centring, for a LayerNorm). Only the rows of the batch and the
//! positions up to the last target position are computed: with causal attention no
//! gradient reaches a later position.

use candle_core::{DType, Tensor};
use hooklens_core::{ActivationCache, Result};
use rayon::prelude::*;

use crate::model::{HookedTransformer, Norm, NormKind};
use crate::ops::slice_gemm::{gemm, View};

/// A norm with its scale frozen: `y = centre?(x) / scale[p] * gain (+ bias)`.
pub(crate) struct FrozenNorm {
    centre: bool,
    gain: Option<Vec<f32>>,
    /// `[n_pos]`.
    scale: Vec<f32>,
}

impl FrozenNorm {
    /// `norm` with the scale `hook_scale` recorded (`[1, pos, 1]` or `[pos, 1]`).
    fn new(norm: &Norm, scale: &Tensor) -> Result<Self> {
        Ok(FrozenNorm {
            centre: norm.kind() == NormKind::Layer,
            gain: norm.weight().map(to_vec).transpose()?,
            scale: to_vec(scale)?,
        })
    }

    /// The transpose of the frozen norm's Jacobian applied in place to `g` `[rows, n_pos', d]`
    /// (rows of `n_pos'` positions each).
    fn backward(&self, g: &mut [f32], n_pos: usize, d: usize) {
        self.backward_from(g, n_pos, d, true)
    }

    /// [`FrozenNorm::backward`] from the point before the gain when `with_gain` is false
    /// (an RMSNorm's `hook_normalized`).
    fn backward_from(&self, g: &mut [f32], n_pos: usize, d: usize, with_gain: bool) {
        g.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            let inv = 1.0 / self.scale[i % n_pos];
            if let (Some(w), true) = (&self.gain, with_gain) {
                row.iter_mut().zip(w).for_each(|(v, w)| *v *= w);
            }
            if self.centre {
                let mean = row.iter().sum::<f32>() / d as f32;
                row.iter_mut().for_each(|v| *v = (*v - mean) * inv);
            } else {
                row.iter_mut().for_each(|v| *v *= inv);
            }
        });
    }
}

/// Attention with its pattern frozen: `out = sum_h pattern_h @ (x @ W_V[g(h)]) @ W_O[h]`.
struct FrozenAttention {
    n_heads: usize,
    n_kv_heads: usize,
    d_head: usize,
    /// `[heads, n_pos, n_pos]` (query rows, key columns).
    pattern: Vec<f32>,
    /// `W_V` of the key/value heads side by side, `[d_model, n_kv_heads * d_head]`.
    w_v: Vec<f32>,
    /// `W_O` `[n_heads * d_head, d_model]`.
    w_o: Vec<f32>,
}

impl FrozenAttention {
    /// The transpose of the frozen attention's Jacobian: `g` `[rows, p, d]` -> `[rows, p, d]`.
    fn backward(&self, g: &[f32], rows: usize, p: usize, d: usize, n_pos: usize) -> Vec<f32> {
        let (h, kv, dh) = (self.n_heads, self.n_kv_heads, self.d_head);
        let group = h / kv;
        // gz = g @ W_O^T: the gradient at each head's z.
        let mut gz = vec![0.0; rows * p * h * dh];
        gemm(
            View::row_major(g, rows * p, d),
            View::row_major(&self.w_o, h * dh, d).t(),
            0.0,
            &mut gz,
            h * dh,
        );
        // gv[k] = sum over the heads of a group of pattern^T @ gz.
        let mut gv = vec![0.0; rows * p * kv * dh];
        gv.par_chunks_mut(p * kv * dh).enumerate().for_each(|(b, out)| {
            for head in 0..h {
                let g_head = head / group;
                let pat = View {
                    data: &self.pattern,
                    offset: head * n_pos * n_pos,
                    rows: p,
                    cols: p,
                    rs: n_pos,
                    cs: 1,
                }
                .t();
                let gzv = View {
                    data: &gz,
                    offset: b * p * h * dh + head * dh,
                    rows: p,
                    cols: dh,
                    rs: h * dh,
                    cs: 1,
                };
                gemm(pat, gzv, 1.0, &mut out[g_head * dh..], kv * dh);
            }
        });
        // gx = gv @ W_V^T.
        let mut gx = vec![0.0; rows * p * d];
        gemm(
            View::row_major(&gv, rows * p, kv * dh),
            View::row_major(&self.w_v, d, kv * dh).t(),
            0.0,
            &mut gx,
            d,
        );
        gx
    }
}

/// Where in each block the transcoders read, as a hook name after `blocks.L.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadPoint {
    /// `mlp.hook_in`: the MLP's input, ln2's output after its gain.
    MlpIn,
    /// `ln2.hook_normalized`: ln2's output (an RMSNorm's before its gain).
    Ln2Normalized,
    /// `hook_resid_mid` / `hook_mlp_in`: the residual stream the MLP's norm reads.
    Residual,
}

/// Where in each block the transcoders write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WritePoint {
    /// `mlp.hook_out`: the MLP's output, before a post-MLP norm.
    MlpOut,
    /// `hook_mlp_out`: what the block adds to the residual stream.
    BlockMlpOut,
}

impl ReadPoint {
    /// The point of a `feature_input_hook`, if the frozen model can read there.
    pub(crate) fn parse(hook: &str) -> Option<Self> {
        match hook {
            "mlp.hook_in" => Some(ReadPoint::MlpIn),
            "ln2.hook_normalized" => Some(ReadPoint::Ln2Normalized),
            "hook_resid_mid" | "hook_mlp_in" => Some(ReadPoint::Residual),
            _ => None,
        }
    }
}

impl WritePoint {
    /// The point of a `feature_output_hook`, if the frozen model can write there.
    pub(crate) fn parse(hook: &str) -> Option<Self> {
        match hook {
            "mlp.hook_out" => Some(WritePoint::MlpOut),
            "hook_mlp_out" => Some(WritePoint::BlockMlpOut),
            _ => None,
        }
    }
}

/// One block, frozen.
struct FrozenBlock {
    /// `None` in a block without norms before attention and the MLP (OLMo 2).
    ln1: Option<FrozenNorm>,
    ln1_post: Option<FrozenNorm>,
    ln2: Option<FrozenNorm>,
    ln2_post: Option<FrozenNorm>,
    attn: FrozenAttention,
}

/// The whole frozen model on one prompt.
pub(crate) struct FrozenModel {
    pub(crate) d_model: usize,
    read: ReadPoint,
    write: WritePoint,
    pub(crate) n_pos: usize,
    parallel: bool,
    blocks: Vec<FrozenBlock>,
    ln_final: FrozenNorm,
}

/// Where the rows of one batch inject their gradient.
pub(crate) struct Injection<'a> {
    /// Per row: the layer at whose read point the row's target reads, or `n_layers` for
    /// a target read after the final norm (a logit).
    pub(crate) layer: &'a [usize],
    /// Per row: the position read.
    pub(crate) pos: &'a [usize],
    /// Per row, `[d_model]`: the vector read there (an encoder row, a logit direction).
    pub(crate) vectors: &'a [f32],
}

/// The names of the frozen points of block `l`, and of the final norm, in a cache.
pub(crate) fn frozen_point_names(model: &HookedTransformer) -> Vec<String> {
    let mut names = Vec::new();
    for (l, b) in model.blocks.iter().enumerate() {
        if b.ln1.is_some() {
            names.push(format!("blocks.{l}.ln1.hook_scale"));
        }
        if b.ln2.is_some() {
            names.push(format!("blocks.{l}.ln2.hook_scale"));
        }
        if b.ln1_post.is_some() {
            names.push(format!("blocks.{l}.ln1_post.hook_scale"));
        }
        if b.ln2_post.is_some() {
            names.push(format!("blocks.{l}.ln2_post.hook_scale"));
        }
        names.push(format!("blocks.{l}.attn.hook_pattern"));
    }
    // A model without a final norm is refused before this is read (`check_fit`).
    if model.ln_final.is_some() {
        names.push("ln_final.hook_scale".into());
    }
    names
}

/// A tensor's values as f32.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl FrozenModel {
    /// Freezes `model` at the values `cache` recorded (the points of
    /// [`frozen_point_names`]) on a prompt of `n_pos` positions.
    pub(crate) fn new(
        model: &HookedTransformer,
        cache: &ActivationCache,
        n_pos: usize,
        (read, write): (ReadPoint, WritePoint),
    ) -> Result<Self> {
        let d = model.cfg().d_model;
        let mut blocks = Vec::with_capacity(model.blocks.len());
        for (l, b) in model.blocks.iter().enumerate() {
            let scale = |n: &str| cache.try_get(&format!("blocks.{l}.{n}.hook_scale"));
            // Any norm a block may lack (pre-norms in OLMo 2, post-norms but in Gemma 2 / 3
            // and OLMo 2).
            let post = |norm: &Option<Norm>, n: &str| -> Result<Option<FrozenNorm>> {
                match norm {
                    Some(norm) => Ok(Some(FrozenNorm::new(norm, scale(n)?)?)),
                    None => Ok(None),
                }
            };
            if b.ln2.is_none() && read == ReadPoint::Ln2Normalized {
                return Err(hooklens_core::Error::invalid(format!(
                    "transcoders read blocks.{l}.ln2.hook_normalized, but the model has no norm before its MLPs: \
                     read mlp.hook_in or hook_resid_mid instead"
                )));
            }
            let a = &b.attn;
            let (h, kv, dh) = (a.n_heads, a.n_kv_heads, a.d_head);
            let w_v = a.w_qkv.narrow(1, (h + kv) * dh, kv * dh)?;
            blocks.push(FrozenBlock {
                ln1: post(&b.ln1, "ln1")?,
                ln1_post: post(&b.ln1_post, "ln1_post")?,
                ln2: post(&b.ln2, "ln2")?,
                ln2_post: post(&b.ln2_post, "ln2_post")?,
                attn: FrozenAttention {
                    n_heads: h,
                    n_kv_heads: kv,
                    d_head: dh,
                    pattern: to_vec(cache.try_get(&format!("blocks.{l}.attn.hook_pattern"))?)?,
                    w_v: to_vec(&w_v.contiguous()?)?,
                    w_o: to_vec(&a.w_o)?,
                },
            });
        }
        Ok(FrozenModel {
            d_model: d,
            read,
            write,
            n_pos,
            parallel: model.cfg().parallel_attn_mlp,
            blocks,
            ln_final: FrozenNorm::new(
                model.ln_final.as_ref().ok_or_else(|| {
                    hooklens_core::Error::invalid(
                        "attribution needs a final norm (ln_final), and this model has none (final_norm: false)",
                    )
                })?,
                cache.try_get("ln_final.hook_scale")?,
            )?,
        })
    }

    /// Layers.
    pub(crate) fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// One backward sweep for a batch of targets: `inject` says where each row reads;
    /// `skip(l)` is the skip matrix `S` (`skip = x @ S`) of layer `l`'s transcoder, whose
    /// path stays linear. Calls `at_output(l, g)` with the gradient at block `l`'s
    /// write point (`g` `[rows, p, d_model]`, `p` the positions kept) for every layer
    /// below the highest target, top down, and returns the gradient at `hook_embed`
    /// `[rows, p, d_model]` with `p`.
    pub(crate) fn backward<'s>(
        &self,
        inject: &Injection<'_>,
        skip: &dyn Fn(usize) -> Option<&'s [f32]>,
        at_output: &mut dyn FnMut(usize, &[f32], usize),
    ) -> (Vec<f32>, usize) {
        let d = self.d_model;
        let rows = inject.layer.len();
        let p = inject.pos.iter().max().map_or(1, |m| m + 1).min(self.n_pos);
        let n_layers = self.n_layers();
        let top = inject.layer.iter().copied().max().unwrap_or(0);
        let place = |layer: usize, g: &mut Vec<f32>| {
            let mut any = false;
            for r in 0..rows {
                if inject.layer[r] == layer {
                    let at = (r * p + inject.pos[r]) * d;
                    g[at..at + d].copy_from_slice(&inject.vectors[r * d..(r + 1) * d]);
                    any = true;
                }
            }
            any
        };
        let mut g = vec![0.0f32; rows * p * d];
        if top >= n_layers {
            place(n_layers, &mut g);
            self.ln_final.backward(&mut g, p, d);
        }
        let start = top.min(n_layers - 1);
        for l in (0..=start).rev() {
            let block = &self.blocks[l];
            // The gradient at the MLP's output: through the frozen post-MLP norm.
            let mut g_out = g.clone();
            if let (Some(n), WritePoint::MlpOut) = (&block.ln2_post, self.write) {
                n.backward(&mut g_out, p, d);
            }
            if l < top || top >= n_layers {
                at_output(l, &g_out, p);
            }
            // The gradient at the MLP's input: the targets reading there, and the
            // transcoder's skip connection.
            let mut g_in = vec![0.0f32; rows * p * d];
            let mut any = place(l, &mut g_in);
            if let Some(s) = skip(l) {
                gemm(
                    View::row_major(&g_out, rows * p, d),
                    View::row_major(s, d, d).t(),
                    1.0,
                    &mut g_in,
                    d,
                );
                any = true;
            }
            if any {
                // Without ln2 the MLP reads the residual stream itself (`new` refuses
                // to read ln2's normalised output then).
                match (self.read, &block.ln2) {
                    (ReadPoint::MlpIn, Some(ln2)) => ln2.backward(&mut g_in, p, d),
                    (ReadPoint::Ln2Normalized, Some(ln2)) => ln2.backward_from(&mut g_in, p, d, ln2.centre),
                    _ => {}
                }
            }
            let attn_back = |g_at_out: &[f32]| {
                let mut a = g_at_out.to_vec();
                if let Some(n) = &block.ln1_post {
                    n.backward(&mut a, p, d);
                }
                let mut a = block.attn.backward(&a, rows, p, d, self.n_pos);
                if let Some(ln1) = &block.ln1 {
                    ln1.backward(&mut a, p, d);
                }
                a
            };
            if self.parallel {
                let a = attn_back(&g);
                g.iter_mut().zip(&g_in).zip(&a).for_each(|((v, i), a)| *v += i + a);
            } else {
                if any {
                    g.iter_mut().zip(&g_in).for_each(|(v, i)| *v += i);
                }
                let a = attn_back(&g);
                g.iter_mut().zip(&a).for_each(|(v, a)| *v += a);
            }
        }
        (g, p)
    }
}
