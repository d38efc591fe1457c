//! Weight processing as TransformerLens's `load_and_process_state_dict` does it, for
//! every family.
//!
//! Each step leaves the model's log-probabilities unchanged (up to float rounding).
//! For LayerNorm models:
//! - `fold_ln`: LayerNorm gains and biases are folded into the weights that read the
//!   normalised stream (`W_Q/K/V`, `W_in`, `W_U`), whose input dimension is then
//!   centred; the LayerNorms become `LNPre` (no parameters).
//! - `center_writing_weights`: every weight writing to the residual stream (`W_E`,
//!   `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`) gets its `d_model` mean removed, since
//!   every reader goes through a LayerNorm that removes it anyway.
//! - `center_unembed`: `W_U` and `b_U` lose their mean over the vocabulary (softmax is
//!   shift-invariant).
//! - `fold_value_biases`: `b_V` is moved into `b_O` (patterns sum to 1).
//!
//! For RMSNorm models, as TransformerLens: `fold_ln` folds only the gains (into
//! `W_Q/K/V`, `W_gate` / `W_in` and `W_U`; norms become `RMSPre`), nothing is centred
//! (`center_writing_weights` is skipped), and norms after attention or the MLP and
//! per-head q/k norms keep their gains. `center_unembed` is skipped where the logits
//! are soft-capped (the cap is not shift-invariant).
//!
//! Mixture-of-experts models (`num_experts`) keep their norms, as TransformerLens
//! ("the layer norm weights can't be folded" into experts behind a router, which reads
//! the normalised stream too): `fold_ln` is skipped and the norms stay `RMS` with their
//! gains, so the default processing of Mixtral, Qwen3-MoE or OLMoE only centres the
//! unembedding, which changes the logits and not the log-probs (TransformerLens's
//! `from_pretrained(.., fold_ln=False)`; its default would drop the gains instead).
//!
//! Post-LN models (`normalization_after_residual`, OPT-350m) keep their norms too: each
//! sits on the residual stream itself (its output is the residual that later layers add
//! to), so its gain and bias are not a linear map into one reader that could absorb
//! them, and `fold_ln` is skipped (the norms stay `LN` with their parameters).
//! `center_writing_weights` is skipped as well, for them and for any model without a
//! final norm (`final_norm: false`): removing the mean of what is written to the
//! residual stream changes nothing only where every reader of it is a LayerNorm, and
//! there block 0's attention reads the embedding as it is (post-LN) or the unembedding
//! reads the last residual as it is. `center_unembed` (softmax is shift-invariant) and
//! `fold_value_biases` (a pattern row sums to 1, wherever the norms are) still apply,
//! so the default processing of such a model centres the unembedding and moves `b_V`
//! into `b_O`; its log-probabilities stay.
//!
//! `W_U` is not rewritten: the folded gain, the means removed and the mean centring
//! took out of the tied `W_E` are kept as factors of it (see [`super::Unembed`]), so a
//! processed model holds no second `[d_model, d_vocab]` matrix.
//!
//! In the model's layout `W_Q/K/V` are the columns of `[d_model, (n_heads + 2 n_kv) *
//! d_head]`, so a mean over TransformerLens's `d_model` axis is a mean over rows here.

use candle_core::{CpuStorage, CustomOp2, DType, InplaceOp1, Layout, Shape, Tensor, D};
use hooklens_core::Result;
use serde::{Deserialize, Serialize};

use crate::config::{NormalizationType, TransformerConfig};
use crate::ops::kernels::{constant_cpu_f32, contiguous_f32};
use crate::params::TransformerWeights;

/// Which processing steps to apply at load time (TransformerLens's `from_pretrained`
/// arguments). The default applies all four, as `from_pretrained` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessingOptions {
    /// Fold LayerNorm parameters into the following weights (LNs become LNPre).
    /// Skipped for mixture-of-experts models, as TransformerLens does, and for post-LN
    /// models (OPT-350m), whose norms are on the residual stream: their norms keep
    /// their gains.
    pub fold_ln: bool,
    /// Remove the `d_model` mean of the weights that write to the residual stream.
    /// Skipped for RMSNorm, post-LN and final-norm-free models (see the module
    /// documentation).
    pub center_writing_weights: bool,
    /// Remove the vocabulary mean of `W_U` and `b_U`.
    pub center_unembed: bool,
    /// Fold `b_V` into `b_O`.
    pub fold_value_biases: bool,
}

impl Default for ProcessingOptions {
    fn default() -> Self {
        ProcessingOptions {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl ProcessingOptions {
    /// No processing: TransformerLens's `from_pretrained_no_processing`.
    pub fn none() -> Self {
        ProcessingOptions {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
        }
    }
}

/// `f` computed in f32 on half-precision weights (one tensor at a time, so a
/// half-precision model never holds an f32 copy of itself), in the weight's own
/// dtype otherwise; the result has `w`'s dtype.
fn in_f32(w: &Tensor, f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
    let dtype = w.dtype();
    match dtype {
        DType::F16 | DType::BF16 => f(&w.to_dtype(DType::F32)?)?.to_dtype(dtype),
        _ => f(w),
    }
}

/// `bias + v @ w` for `v` `[in]`, `w` `[in, out]`, `bias` `[out]`.
fn add_vec_mat(bias: &Tensor, v: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    in_f32(bias, |bias| {
        let dtype = bias.dtype();
        bias + v
            .to_dtype(dtype)?
            .unsqueeze(0)?
            .matmul(&w.to_dtype(dtype)?)?
            .squeeze(0)?
    })
}

/// `w * g[:, None]`, then the mean over rows removed: a weight `[in, out]` reading from
/// a LayerNorm with gain `g` `[in]`. On the CPU in f32 this writes one new tensor and
/// nothing else (the generic ops hold two of them at once).
fn fold_gain_and_center(w: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    if constant_cpu_f32(w) && constant_cpu_f32(g) && w.rank() == 2 {
        return w.apply_op2_no_bwd(&g.contiguous()?, &FoldGainCenter);
    }
    in_f32(w, |w| {
        let w = w.broadcast_mul(&g.to_dtype(w.dtype())?.unsqueeze(1)?)?;
        w.broadcast_sub(&w.mean_keepdim(0)?)
    })
}

/// Removes the mean over the last axis. With `in_place` (the caller owns `w`'s storage
/// and nothing else views it), on the CPU in f32, `w` is edited where it is, which
/// spares a second copy of the embedding or unembedding.
fn center_last(w: &Tensor, in_place: bool) -> candle_core::Result<Tensor> {
    if in_place && constant_cpu_f32(w) && w.is_contiguous() && w.rank() >= 1 {
        w.inplace_op1(&CenterRowsInPlace)?;
        return Ok(w.clone());
    }
    in_f32(w, |w| w.broadcast_sub(&w.mean_keepdim(D::Minus1)?))
}

/// `w * g[:, None] - mean_rows(w * g[:, None])` for a 2-D `w` of any strides, into one
/// new contiguous tensor.
struct FoldGainCenter;

impl CustomOp2 for FoldGainCenter {
    fn name(&self) -> &'static str {
        "hooklens-fold-gain-center"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n_in, n_out) = l1.shape().dims2()?;
        let g = contiguous_f32(s2, l2, "LayerNorm gain")?;
        if g.len() != n_in {
            candle_core::bail!("fold: gain of {} values for a weight of {n_in} rows", g.len())
        }
        let w = s1.as_slice::<f32>()?;
        let (off, st0, st1) = (l1.start_offset(), l1.stride()[0], l1.stride()[1]);
        let mut out = vec![0f32; n_in * n_out];
        // Square tiles, so that a transposed source is read a cache line at a time.
        const T: usize = 64;
        for i0 in (0..n_in).step_by(T) {
            for c0 in (0..n_out).step_by(T) {
                for i in i0..(i0 + T).min(n_in) {
                    let row = &mut out[i * n_out..(i + 1) * n_out];
                    for (c, o) in row.iter_mut().enumerate().take((c0 + T).min(n_out)).skip(c0) {
                        *o = w[off + i * st0 + c * st1] * g[i];
                    }
                }
            }
        }
        // Column means in f64 (sums of up to thousands of rows).
        let mut mean = vec![0f64; n_out];
        for row in out.chunks_exact(n_out) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += f64::from(x));
        }
        let mean: Vec<f32> = mean.iter().map(|m| (m / n_in as f64) as f32).collect();
        for row in out.chunks_exact_mut(n_out) {
            row.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m);
        }
        Ok((CpuStorage::F32(out), Shape::from((n_in, n_out))))
    }
}

/// Removes each row's mean (over the last axis) of a contiguous f32 tensor, in place.
struct CenterRowsInPlace;

impl InplaceOp1 for CenterRowsInPlace {
    fn name(&self) -> &'static str {
        "hooklens-center-rows"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = *l.dims().last().unwrap_or(&1);
        let (a, b) = match l.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("center: the tensor must be contiguous"),
        };
        let data = match s {
            CpuStorage::F32(v) => &mut v[a..b],
            _ => candle_core::bail!("center: the tensor must be f32"),
        };
        if n == 0 {
            return Ok(());
        }
        for row in data.chunks_exact_mut(n) {
            let mean = (row.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64) as f32;
            row.iter_mut().for_each(|x| *x -= mean);
        }
        Ok(())
    }
}

/// The unembedding base's columns `[d_vocab, d_model]` (`w_u` `[d_model, d_vocab]`
/// transposed, as stored) in blocks of rows converted to f32: what the two sums below
/// read, with no copy of the whole matrix (a half-precision product would make one).
fn for_vocab_blocks(w_u: &Tensor, mut f: impl FnMut(Tensor) -> candle_core::Result<()>) -> candle_core::Result<()> {
    let rows = w_u.t()?;
    let n = rows.dim(0)?;
    const BLOCK: usize = 4096;
    for start in (0..n).step_by(BLOCK) {
        f(rows.narrow(0, start, BLOCK.min(n - start))?.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// `sum_v W_U[:, v]`: `w_u` `[d_model, d_vocab]` -> `[d_model]`, f32. As products with
/// ones: a reduction over the strided axis of a transposed `W_E` is candle's slow path.
fn unembed_vocab_sum(w_u: &Tensor) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for_vocab_blocks(w_u, |block| {
        let ones = Tensor::ones((1, block.dim(0)?), DType::F32, block.device())?;
        let s = ones.matmul(&block)?.squeeze(0)?;
        acc = Some(match acc.take() {
            Some(a) => (a + s)?,
            None => s,
        });
        Ok(())
    })?;
    acc.ok_or_else(|| candle_core::Error::Msg("an empty vocabulary".into()))
}

/// `g @ W_U`: `w_u` `[d_model, d_vocab]`, `g` `[d_model]` -> `[d_vocab]`, f32.
fn unembed_rows_times(w_u: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    let g = g.to_dtype(DType::F32)?.unsqueeze(1)?;
    let mut parts = Vec::new();
    for_vocab_blocks(w_u, |block| {
        parts.push(block.matmul(&g)?.squeeze(1)?);
        Ok(())
    })?;
    Tensor::cat(&parts, 0)
}

/// `w * g[:, None]`: a weight `[in, out]` reading from an RMSNorm with gain `g` `[in]`.
fn fold_gain(w: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    in_f32(w, |w| w.broadcast_mul(&g.to_dtype(w.dtype())?.unsqueeze(1)?))
}

/// Applies `opts` to `w` in place, in TransformerLens's order, and updates `cfg`
/// (`normalization_type` becomes `LNPre` / `RMSPre` after `fold_ln`).
pub(crate) fn process(w: &mut TransformerWeights, cfg: &mut TransformerConfig, opts: &ProcessingOptions) -> Result<()> {
    // An MoE's router and experts all read ln2's output: folding the gain into each
    // is possible, but TransformerLens does not, and neither do we (see the module
    // documentation).
    // A post-LN model's norms are on the residual stream itself: nothing reads their
    // output alone, so there is nowhere to fold them (see the module documentation).
    if opts.fold_ln
        && cfg.normalization_type.has_params()
        && cfg.num_experts.is_none()
        && !cfg.normalization_after_residual
    {
        fold_layer_norms(w, cfg)?;
    }
    // Only a LayerNorm removes the mean that centring takes out, and only where every
    // reader of the residual stream is one: not in a post-LN block's attention, nor in
    // an unembedding without a final norm.
    let every_reader_normalised = !cfg.normalization_after_residual && cfg.final_norm;
    if opts.center_writing_weights && !cfg.normalization_type.is_rms() && every_reader_normalised {
        center_writing_weights(w)?;
    }
    if opts.center_unembed && cfg.output_logits_soft_cap.is_none() {
        center_unembed(w)?;
    }
    // With attention sinks a pattern row sums to less than 1: b_V does not reach the
    // output whole, and stays where it is.
    if opts.fold_value_biases && w.attn_sinks.is_empty() {
        fold_value_biases(w, cfg)?;
    }
    Ok(())
}

/// The `fold_ln` step: folds every norm's gain (and a LayerNorm's bias) into
/// the weights that read its output, and turns the norms into `LNPre` / `RMSPre`.
fn fold_layer_norms(w: &mut TransformerWeights, cfg: &mut TransformerConfig) -> Result<()> {
    // One fold for both norms, as TransformerLens's `fold_layer_norm`: a LayerNorm's
    // bias goes through the weights and their input dimension is centred; an
    // RMSNorm has neither bias nor centring, only its gain.
    let layer_norm = cfg.normalization_type == NormalizationType::LN;
    let fold = |w: &Tensor, g: &Tensor| {
        if layer_norm {
            fold_gain_and_center(w, g)
        } else {
            fold_gain(w, g)
        }
    };
    for l in &mut w.layers {
        if let Some((g, b)) = l.ln1.take() {
            // Biases first: they are folded through the unscaled weights.
            if let Some(b) = b {
                l.b_qkv = add_vec_mat(&l.b_qkv, &b, &l.w_qkv)?;
            }
            l.w_qkv = fold(&l.w_qkv, &g)?;
        }
        if let Some((g, b)) = l.ln2.take() {
            if let Some(b) = b {
                l.b_in = add_vec_mat(&l.b_in, &b, &l.w_in)?;
            }
            l.w_in = fold(&l.w_in, &g)?;
            if let Some(w_gate) = &l.w_gate {
                l.w_gate = Some(fold(w_gate, &g)?);
            }
        }
    }
    if let Some((g, b)) = w.ln_final.take() {
        // W_U is still the base here (fold_ln is the first step), so its products
        // are the base's. The fold itself stays a factor: no new [d_model, d_vocab].
        if let Some(b) = b {
            w.b_u = add_vec_mat(&w.b_u, &b, &w.w_u)?;
        }
        if layer_norm {
            let d = w.w_u.dim(0)? as f64;
            let input_center = (unembed_rows_times(&w.w_u, &g)? / d)?.to_dtype(g.dtype())?;
            w.unembed_factors.input_center = Some(input_center);
        }
        w.unembed_factors.gain = Some(g);
    }
    cfg.normalization_type = if layer_norm {
        NormalizationType::LNPre
    } else {
        NormalizationType::RMSPre
    };
    Ok(())
}

/// The `center_writing_weights` step: removes the `d_model` mean of every
/// weight and bias that writes to the residual stream.
fn center_writing_weights(w: &mut TransformerWeights) -> Result<()> {
    // In place only where the storage is ours alone: `exclusive` weights came from a
    // file into fresh buffers.
    let own = w.exclusive;
    if w.tied {
        // W_U's base is W_E: what centring takes out of each row of W_E is given
        // back to W_U as a factor, and the base follows W_E wherever it now is.
        w.unembed_factors.base_shift = Some(w.w_e.mean(1)?);
    }
    w.w_e = center_last(&w.w_e, own)?;
    if w.tied {
        w.w_u = w.w_e.t()?;
    }
    if let Some(w_pos) = &w.w_pos {
        w.w_pos = Some(center_last(w_pos, own)?);
    }
    for l in &mut w.layers {
        l.w_o = center_last(&l.w_o, own)?;
        l.b_o = center_last(&l.b_o, own)?;
        l.w_out = center_last(&l.w_out, own)?;
        l.b_out = center_last(&l.b_out, own)?;
    }
    Ok(())
}

/// The `center_unembed` step: records `W_U`'s mean over the vocabulary as its
/// `vocab_center` factor and centres `b_U`.
fn center_unembed(w: &mut TransformerWeights) -> Result<()> {
    // The mean over the vocabulary of each row of W_U, from its factors:
    // gain * (mean(base) + mean(base_shift)) - mean(input_center).
    let f = &w.unembed_factors;
    let n_vocab = w.w_u.dim(1)?;
    let mut mean = (unembed_vocab_sum(&w.w_u)? / n_vocab as f64)?.to_dtype(w.w_u.dtype())?;
    if let Some(m) = &f.base_shift {
        mean = mean.broadcast_add(&m.mean_all()?)?;
    }
    if let Some(g) = &f.gain {
        mean = (mean * g)?;
    }
    if let Some(k) = &f.input_center {
        mean = mean.broadcast_sub(&k.mean_all()?)?;
    }
    w.unembed_factors.vocab_center = Some(mean);
    // `b_U` is small, and may be the zeros every load starts from.
    w.b_u = center_last(&w.b_u, false)?;
    Ok(())
}

/// The `fold_value_biases` step: moves each layer's `b_V` into `b_O` through
/// `W_O`, leaving zeros in `b_V`.
fn fold_value_biases(w: &mut TransformerWeights, cfg: &TransformerConfig) -> Result<()> {
    let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads(), cfg.d_head);
    let (q_len, v_start, v_len) = (h * dh, (h + kv) * dh, kv * dh);
    for l in &mut w.layers {
        let b_v = l.b_qkv.narrow(0, v_start, v_len)?;
        // Each key/value head's bias reaches the output through every query head of
        // its group.
        let group = h / kv;
        let b_v_heads = b_v
            .reshape((kv, 1, dh))?
            .broadcast_as((kv, group, dh))?
            .contiguous()?
            .reshape(q_len)?;
        l.b_o = add_vec_mat(&l.b_o, &b_v_heads, &l.w_o)?;
        l.b_qkv = Tensor::cat(&[&l.b_qkv.narrow(0, 0, v_start)?, &b_v.zeros_like()?], 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HookedTransformer, LoadOptions};
    use candle_core::{DType, Device};

    /// Loading from a file processes in place; from a `VarBuilder` (whose tensors the
    /// caller still holds) it must not. Both must give the same model, for every
    /// combination of steps (W_U is still a view of W_E when fold_ln is off).
    #[test]
    fn in_place_processing_equals_copying_processing() {
        use crate::config::TransformerConfig;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2/model");
        let path = format!("{dir}/model.safetensors");
        let cfg = TransformerConfig::from_hf_json(format!("{dir}/config.json")).unwrap();
        let tokens = Tensor::new(&[[5u32, 17, 301, 42, 7]], &Device::Cpu).unwrap();
        for bits in 0..16u8 {
            let opts = ProcessingOptions {
                fold_ln: bits & 1 != 0,
                center_writing_weights: bits & 2 != 0,
                center_unembed: bits & 4 != 0,
                fold_value_biases: bits & 8 != 0,
            };
            let from_file = HookedTransformer::from_dir(dir, &LoadOptions::default().with_processing(opts)).unwrap();
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let before: Vec<(String, Tensor)> = tensors.iter().map(|(k, v)| (k.clone(), v.copy().unwrap())).collect();
            let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
            let from_vb = HookedTransformer::load_with(vb, &cfg, &opts).unwrap();
            let a = from_file.forward(&tokens).unwrap();
            let b = from_vb.forward(&tokens).unwrap();
            let d = hooklens_testutil::max_abs_diff(&a, &b);
            assert!(d < 1e-5, "{opts:?}: {d}");
            // The caller's tensors are untouched.
            for (k, v) in before {
                assert_eq!(hooklens_testutil::max_abs_diff(&tensors[&k], &v), 0.0, "{k} changed");
            }
        }
    }
}
