//! circuit-tracer's own check of an attribution graph (its tests
//! `verify_token_and_error_edges` / `verify_feature_edges`), done through the real
//! model's forward with hooks, on synthetic checkpoints of every family: with every
//! attention pattern and norm scale replaced by its value on the clean run and every
//! MLP output (at the transcoders' write point: `blocks.L.mlp.hook_out`, or the block's
//! `hook_mlp_out` after Gemma 2's post-MLP norm) replaced by its clean value plus one
//! source node's vector (a feature's decoder vectors, an error, a token embedding at
//! `hook_embed`), the change of every selected feature's pre-activation (read at the
//! transcoders' read point: `mlp.hook_in`, `ln2.hook_normalized`, `hook_resid_mid` or
//! `hook_mlp_in`) and of every demeaned target logit must be that source's column of
//! the adjacency matrix. With a skip connection the skip path stays live, as in
//! circuit-tracer's replacement MLP: it reads the read point of the same run.
//!
//! Random transcoders in circuit-tracer's on-disk format are made for each checkpoint,
//! scaled to its activations at the read and write points as
//! `testdata/circuits/README.md` describes: a
//! per-layer set (ReLU), the same with skip connections (`W_skip`), and a cross-layer
//! transcoder (JumpReLU, `W_enc_{i}` / `W_dec_{i}.safetensors`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, IndexOp, Tensor};
use common::variant;
use hooklens_core::__internal::save_safetensors;
use hooklens_core::{CacheOptions, HookSet, HookedModel, NamesFilter, Result};
use hooklens_models::circuits::{attribute, replacement_run, AttributionOptions, Graph, ReplacementRun, Transcoders};
use hooklens_models::convert::{synthetic_checkpoint, write_checkpoint};
use hooklens_models::model::{NormKind, SeededRng};
use hooklens_models::{HookedTransformer, LoadOptions};
use hooklens_testutil::TempDir;
use serde_json::json;

/// Features per layer.
const F: usize = 40;
/// Prompt length.
const N_POS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Per-layer transcoders, ReLU.
    Set,
    /// Per-layer transcoders with a skip connection `x @ W_skip.T`.
    Skip,
    /// A cross-layer transcoder, JumpReLU.
    Clt,
}

/// The random transcoders of one case, as written to disk.
struct Tc {
    kind: Kind,
    d: usize,
    n_layers: usize,
    /// Per layer `[F, d]`.
    w_enc: Vec<Vec<f32>>,
    /// Per layer `[F]`.
    b_enc: Vec<Vec<f32>>,
    /// JumpReLU thresholds per layer `[F]` (cross-layer only).
    threshold: Option<Vec<Vec<f32>>>,
    /// Per layer `[F, n_out(l), d]`.
    w_dec: Vec<Vec<f32>>,
    /// Per output layer `[d]`.
    b_dec: Vec<Vec<f32>>,
    /// Per layer the matrix `S` `[d, d]` with `skip(x) = x @ S`.
    skip: Option<Vec<Vec<f32>>>,
}

impl Tc {
    fn n_out(&self, l: usize) -> usize {
        match self.kind {
            Kind::Clt => self.n_layers - l,
            _ => 1,
        }
    }

    /// Feature `f`'s activation from its pre-activation.
    fn act(&self, l: usize, f: usize, pre: f32) -> f32 {
        match &self.threshold {
            Some(t) => {
                if pre > t[l][f] {
                    pre
                } else {
                    0.0
                }
            }
            None => pre.max(0.0),
        }
    }

    /// Pre-activations of layer `l` at one position `x` `[d]`.
    fn pre(&self, l: usize, x: &[f32]) -> Vec<f32> {
        (0..F)
            .map(|f| dot(&self.w_enc[l][f * self.d..(f + 1) * self.d], x) as f32 + self.b_enc[l][f])
            .collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt() as f32
}

fn normals(rng: &mut SeededRng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * std).collect()
}

fn save(path: &Path, tensors: &[(&str, Vec<f32>, Vec<usize>)]) {
    let ts: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, v, s)| (*k, Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap()))
        .collect();
    save_safetensors(path, ts.iter().map(|(k, t)| (*k, t)).collect(), HashMap::new()).unwrap();
}

/// Random transcoders of `kind` for inputs `x[l]` and outputs `y[l]` (`[N_POS, d]`
/// each, the clean activations at the read and write points), written into `dir` in
/// circuit-tracer's format, with `hooks` (read, write) as the config's
/// `feature_input_hook` / `feature_output_hook`. Encoder rows are `N(0,1) / (sqrt(d) * rms(x))`, biases put
/// about 15% of the features above their threshold at each position, and every
/// pre-activation of the prompt is kept clear of the threshold, so that rounding cannot
/// change which features are active.
fn make_transcoders(
    dir: &Path,
    kind: Kind,
    hooks: (&str, &str),
    d: usize,
    x: &[Vec<f32>],
    y: &[Vec<f32>],
    seed: u64,
) -> Tc {
    let n_layers = x.len();
    let mut rng = SeededRng::new(seed);
    let mut tc = Tc {
        kind,
        d,
        n_layers,
        w_enc: Vec::new(),
        b_enc: Vec::new(),
        threshold: (kind == Kind::Clt).then(Vec::new),
        w_dec: Vec::new(),
        b_dec: Vec::new(),
        skip: (kind == Kind::Skip).then(Vec::new),
    };
    for l in 0..n_layers {
        let body = &x[l][d..];
        let (in_rms, out_rms) = (rms(body), rms(&y[l][d..]));
        let w = normals(&mut rng, F * d, 1.0 / ((d as f32).sqrt() * in_rms));
        let mut pre: Vec<f32> = (1..N_POS)
            .flat_map(|p| {
                let xp = &x[l][p * d..(p + 1) * d];
                (0..F)
                    .map(|f| dot(&w[f * d..(f + 1) * d], xp) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let spread = rms(&pre);
        pre.sort_by(f32::total_cmp);
        let cut = pre[pre.len() * 85 / 100];
        let thr: Vec<f32> = match kind {
            Kind::Clt => (0..F).map(|_| 0.1 * spread * rng.uniform() as f32).collect(),
            _ => vec![0.0; F],
        };
        let mut b: Vec<f32> = (0..F)
            .map(|f| thr[f] - cut + 0.2 * spread * rng.normal() as f32)
            .collect();
        let margin = 0.02 * spread;
        for f in 0..F {
            for _ in 0..20 {
                let near = (1..N_POS).any(|p| {
                    let v = dot(&w[f * d..(f + 1) * d], &x[l][p * d..(p + 1) * d]) as f32 + b[f];
                    (v - thr[f]).abs() < margin
                });
                if !near {
                    break;
                }
                b[f] += 3.0 * margin;
            }
        }
        tc.w_enc.push(w);
        tc.b_enc.push(b);
        if let Some(t) = &mut tc.threshold {
            t.push(thr);
        }
        let n_out = tc.n_out(l);
        let mut dec = Vec::with_capacity(F * n_out * d);
        for _ in 0..F {
            for o in 0..n_out {
                let scale = 0.3 * rms(&y[l + o][d..]) / (F as f32 * 0.15).sqrt() / spread.max(1e-6);
                dec.extend(normals(&mut rng, d, scale));
            }
        }
        tc.w_dec.push(dec);
        tc.b_dec.push(normals(&mut rng, d, 0.1 * out_rms));
        if let Some(s) = &mut tc.skip {
            // circuit-tracer's skip is `x @ W_skip.T`: S is W_skip transposed.
            let w_skip = normals(&mut rng, d * d, 0.5 * out_rms / (in_rms * (d as f32).sqrt()));
            let mut t = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    t[j * d + i] = w_skip[i * d + j];
                }
            }
            s.push(t);
        }
    }
    // The files.
    std::fs::create_dir_all(dir).unwrap();
    let model_kind = match kind {
        Kind::Clt => "cross_layer_transcoder",
        _ => "transcoder_set",
    };
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "model_kind: {model_kind}\nfeature_input_hook: {}\nfeature_output_hook: {}\nscan: synthetic\n",
            hooks.0, hooks.1
        ),
    )
    .unwrap();
    for l in 0..n_layers {
        match kind {
            Kind::Set | Kind::Skip => {
                let mut ts = vec![
                    ("W_enc", tc.w_enc[l].clone(), vec![F, d]),
                    ("W_dec", tc.w_dec[l].clone(), vec![F, d]),
                    ("b_enc", tc.b_enc[l].clone(), vec![F]),
                    ("b_dec", tc.b_dec[l].clone(), vec![d]),
                ];
                if let Some(s) = &tc.skip {
                    // Back to W_skip = S.T.
                    let mut w_skip = vec![0.0; d * d];
                    for i in 0..d {
                        for j in 0..d {
                            w_skip[i * d + j] = s[l][j * d + i];
                        }
                    }
                    ts.push(("W_skip", w_skip, vec![d, d]));
                }
                save(&dir.join(format!("layer_{l}.safetensors")), &ts);
            }
            Kind::Clt => {
                let (we, be, bd, th, wd) = (
                    format!("W_enc_{l}"),
                    format!("b_enc_{l}"),
                    format!("b_dec_{l}"),
                    format!("threshold_{l}"),
                    format!("W_dec_{l}"),
                );
                save(
                    &dir.join(format!("W_enc_{l}.safetensors")),
                    &[
                        (we.as_str(), tc.w_enc[l].clone(), vec![F, d]),
                        (be.as_str(), tc.b_enc[l].clone(), vec![F]),
                        (bd.as_str(), tc.b_dec[l].clone(), vec![d]),
                        (th.as_str(), tc.threshold.as_ref().unwrap()[l].clone(), vec![F]),
                    ],
                );
                save(
                    &dir.join(format!("W_dec_{l}.safetensors")),
                    &[(wd.as_str(), tc.w_dec[l].clone(), vec![F, n_layers - l, d])],
                );
            }
        }
    }
    tc
}

/// The clean run's activations by name, shared by the hooks.
type Clean = Arc<HashMap<String, Tensor>>;

/// A run of the frozen model: every attention pattern and norm scale and every MLP
/// output (at the write point `points.1`) replaced by its clean value, plus
/// `out_delta[l]` `[1, N_POS, d]` at layer `l`'s write point, the skip path's change
/// (from the read point `points.0` of this run) where the transcoders have one, and
/// `embed_delta` at `hook_embed`. Returns the activations at the read point per layer
/// `[N_POS, d]`, the final norm's output at the last position (after its gain) `[d]`,
/// and the logits.
fn frozen_run(
    model: &HookedTransformer,
    tokens: &Tensor,
    clean: &Clean,
    points: (&str, &str),
    skip: Option<&Vec<Tensor>>,
    out_delta: HashMap<usize, Tensor>,
    embed_delta: Option<Tensor>,
) -> Result<(Vec<Vec<f32>>, Vec<f32>, Tensor)> {
    let n_layers = model.cfg().n_layers;
    let (read, write) = points;
    let frozen = clean.clone();
    let mut hooks = HookSet::new().fwd(
        NamesFilter::predicate(|n| n.ends_with("hook_scale") || n.ends_with("attn.hook_pattern")),
        move |_x, hp| Ok(Some(frozen[&*hp.name()].clone())),
    );
    let seen: Arc<Mutex<HashMap<usize, Tensor>>> = Arc::default();
    let record = seen.clone();
    hooks = hooks.fwd(format!("blocks.*.{read}"), move |x, hp| {
        record.lock().unwrap().insert(hp.layer()?, x.clone());
        Ok(None)
    });
    let base = clean.clone();
    let skip = skip.cloned();
    let read_owned = read.to_string();
    let read_name = move |l: usize| format!("blocks.{l}.{read_owned}");
    hooks = hooks.fwd(format!("blocks.*.{write}"), move |_x, hp| {
        let l = hp.layer()?;
        let mut out = base[&*hp.name()].clone();
        if let Some(dl) = out_delta.get(&l) {
            out = (out + dl)?;
        }
        if let Some(s) = &skip {
            let x = seen.lock().unwrap()[&l].clone();
            let dx = (x - &base[&read_name(l)])?;
            out = (out + dx.squeeze(0)?.matmul(&s[l])?.unsqueeze(0)?)?;
        }
        Ok(Some(out))
    });
    if let Some(e) = embed_delta {
        hooks = hooks.fwd("hook_embed", move |x, _hp| Ok(Some((x + &e)?)));
    }
    let mut names: Vec<String> = (0..n_layers).map(|l| format!("blocks.{l}.{read}")).collect();
    names.push("ln_final.hook_normalized".into());
    let (logits, cache) =
        model.run_with_cache_and_hooks(CacheOptions::new().names(names), hooks, |m| m.forward(tokens))?;
    let ins = (0..n_layers)
        .map(|l| to_vec(&cache[&format!("blocks.{l}.{read}")]))
        .collect();
    let mut y = to_vec(&cache["ln_final.hook_normalized"].i((0, N_POS - 1))?);
    // An RMSNorm's `hook_normalized` is before its gain.
    let ln_final = model.ln_final.as_ref().expect("these models have a final norm");
    if ln_final.kind() == NormKind::Rms {
        if let Some(w) = ln_final.weight() {
            y.iter_mut().zip(to_vec(w)).for_each(|(v, w)| *v *= w);
        }
    }
    Ok((ins, y, logits))
}

/// Where a feature row reads: layer, position, encoder row.
type FeatureRead = (usize, usize, Vec<f32>);

/// What each target node reads: the feature rows' encoder rows where they read, then
/// the demeaned unembedding directions of the logit rows.
fn target_reads(model: &HookedTransformer, tc: &Tc, graph: &Graph) -> (Vec<FeatureRead>, Vec<Vec<f32>>) {
    let d = tc.d;
    let a = &graph.active_features;
    let feats = graph
        .selected_features
        .iter()
        .map(|&i| {
            let (l, p, f) = (a.layer[i], a.pos[i], a.feature[i]);
            (l, p, tc.w_enc[l][f * d..(f + 1) * d].to_vec())
        })
        .collect();
    let w_u = model.w_u().unwrap();
    let v = w_u.dim(1).unwrap();
    let w_u = to_vec(&w_u);
    let logits = graph
        .logit_targets
        .iter()
        .map(|t| {
            (0..d)
                .map(|i| {
                    let row = &w_u[i * v..(i + 1) * v];
                    let mean = row.iter().map(|&x| x as f64).sum::<f64>() / v as f64;
                    (row[t.vocab_idx] as f64 - mean) as f32
                })
                .collect()
        })
        .collect();
    (feats, logits)
}

/// The transcoders' read and write points as their config.yaml names them (after
/// `blocks.L.`).
const MLP_IN_OUT: (&str, &str) = ("mlp.hook_in", "mlp.hook_out");

struct Case {
    name: &'static str,
    config: String,
    kind: Kind,
    seed: u64,
    /// `feature_input_hook`, `feature_output_hook`.
    points: (&'static str, &'static str),
}

impl Case {
    /// The case with transcoders reading at `read` and writing at `write`.
    fn at(self, read: &'static str, write: &'static str) -> Case {
        Case {
            points: (read, write),
            ..self
        }
    }
}

fn cases() -> Vec<Case> {
    let case = |name, config, kind, seed| Case {
        name,
        config,
        kind,
        seed,
        points: MLP_IN_OUT,
    };
    vec![
        case(
            "gpt2: LayerNorm with biases, learned positions",
            variant("tiny-gpt2", json!({"n_embd": 48, "n_layer": 3, "n_head": 4})),
            Kind::Set,
            1,
        ),
        case(
            "gpt2: skip connections through LayerNorm",
            variant("tiny-gpt2", json!({"n_embd": 32, "n_layer": 2, "n_head": 4})),
            Kind::Skip,
            2,
        ),
        case(
            "neox: parallel blocks, partial rotary",
            variant(
                "neox",
                json!({"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96, "num_hidden_layers": 3}),
            ),
            Kind::Set,
            3,
        ),
        case(
            "neox: parallel blocks, cross-layer transcoder",
            variant(
                "neox",
                json!({"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96, "num_hidden_layers": 3}),
            ),
            Kind::Clt,
            4,
        ),
        case(
            "neox: parallel blocks, skip connections",
            variant(
                "neox",
                json!({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}),
            ),
            Kind::Skip,
            5,
        ),
        case(
            "qwen3: q/k norms, 4 heads over 2 kv heads",
            variant(
                "qwen3",
                json!({"hidden_size": 48, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "intermediate_size": 96}),
            ),
            Kind::Set,
            6,
        ),
        case(
            "gemma2: post norms, soft-caps, window 3, 3 layers",
            variant(
                "gemma2",
                json!({"sliding_window": 3, "num_hidden_layers": 3, "hidden_size": 48}),
            ),
            Kind::Set,
            7,
        ),
        case(
            "gemma2: skip connections through the post-MLP norm",
            variant("gemma2", json!({"hidden_size": 48})),
            Kind::Skip,
            8,
        ),
        case(
            "gemma2: cross-layer transcoder",
            variant(
                "gemma2",
                json!({"sliding_window": 3, "num_hidden_layers": 3, "hidden_size": 48}),
            ),
            Kind::Clt,
            9,
        ),
        case(
            "mistral: multi-query, window 3",
            variant(
                "mistral",
                json!({"hidden_size": 48, "num_key_value_heads": 1, "sliding_window": 3}),
            ),
            Kind::Set,
            10,
        ),
        case(
            "llama: 6 heads over 2 kv heads, cross-layer transcoder",
            variant(
                "llama",
                json!({"hidden_size": 48, "head_dim": 8, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "intermediate_size": 80, "num_hidden_layers": 3}),
            ),
            Kind::Clt,
            11,
        ),
        case(
            "phi3: fused projections, half rotary, skip connections",
            variant("phi3", json!({"hidden_size": 48, "partial_rotary_factor": 0.5})),
            Kind::Skip,
            12,
        ),
        case(
            "qwen2: attention biases",
            variant("qwen2", json!({"hidden_size": 48, "tie_word_embeddings": false})),
            Kind::Set,
            13,
        ),
        case(
            "gemma: multi-query, scaled embedding",
            variant("gemma", json!({"hidden_size": 48})),
            Kind::Set,
            14,
        ),
        // Other read and write points.
        case(
            "llama: ln2.hook_normalized (before the RMS gain) -> mlp.hook_out",
            variant(
                "llama",
                json!({"hidden_size": 48, "head_dim": 8, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "intermediate_size": 80, "num_hidden_layers": 3}),
            ),
            Kind::Set,
            15,
        )
        .at("ln2.hook_normalized", "mlp.hook_out"),
        case(
            "qwen3: ln2.hook_normalized -> mlp.hook_out, skip connections",
            variant(
                "qwen3",
                json!({"hidden_size": 48, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "intermediate_size": 96}),
            ),
            Kind::Skip,
            16,
        )
        .at("ln2.hook_normalized", "mlp.hook_out"),
        case(
            "gemma2: mlp.hook_in -> hook_mlp_out (after the post-MLP norm)",
            variant(
                "gemma2",
                json!({"sliding_window": 3, "num_hidden_layers": 3, "hidden_size": 48}),
            ),
            Kind::Set,
            17,
        )
        .at("mlp.hook_in", "hook_mlp_out"),
        case(
            "gemma2: hook_resid_mid -> hook_mlp_out, cross-layer transcoder",
            variant(
                "gemma2",
                json!({"sliding_window": 3, "num_hidden_layers": 3, "hidden_size": 48}),
            ),
            Kind::Clt,
            18,
        )
        .at("hook_resid_mid", "hook_mlp_out"),
        case(
            "gpt2: ln2.hook_normalized -> hook_mlp_out, skip connections",
            variant("tiny-gpt2", json!({"n_embd": 32, "n_layer": 2, "n_head": 4})),
            Kind::Skip,
            19,
        )
        .at("ln2.hook_normalized", "hook_mlp_out"),
        case(
            "neox: parallel blocks, hook_mlp_in -> mlp.hook_out",
            variant(
                "neox",
                json!({"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96, "num_hidden_layers": 3}),
            ),
            Kind::Set,
            20,
        )
        .at("hook_mlp_in", "mlp.hook_out"),
        case(
            "bloom: embedding LayerNorm, ALiBi with 6 heads",
            variant("bloom", json!({"hidden_size": 48, "n_head": 6})),
            Kind::Set,
            21,
        ),
        case(
            "gptj: parallel block with one norm, adjacent rotary pairs, b_U, skip connections",
            variant("gptj", json!({"n_embd": 48, "n_head": 6, "rotary_dim": 6})),
            Kind::Skip,
            22,
        ),
        case(
            "gpt_neo: unscaled attention, local window 3, cross-layer transcoder",
            variant(
                "gpt_neo",
                json!({"window_size": 3, "attention_layers": ["local", "global", "local"], "attention_types": null,
                       "num_layers": 3, "hidden_size": 48, "num_heads": 3}),
            ),
            Kind::Clt,
            23,
        ),
        case(
            "phi: qk_layernorm, 6 heads over 2 kv heads",
            variant(
                "phi",
                json!({"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
                       "partial_rotary_factor": 0.5, "qk_layernorm": true}),
            ),
            Kind::Set,
            24,
        ),
        case(
            "opt: learned positions offset by 2, relu",
            variant(
                "opt",
                json!({"hidden_size": 48, "word_embed_proj_dim": 48, "num_attention_heads": 6}),
            ),
            Kind::Set,
            25,
        ),
        case(
            "gemma3: q/k norms, local and global rotary bases, skip connections through the post-MLP norm",
            variant("gemma3", json!({"hidden_size": 48})),
            Kind::Skip,
            26,
        ),
        case(
            "gemma3: mlp.hook_in -> hook_mlp_out (after the post-MLP norm), cross-layer transcoder",
            variant("gemma3", json!({"hidden_size": 48})),
            Kind::Clt,
            27,
        )
        .at("mlp.hook_in", "hook_mlp_out"),
        case(
            "olmo2: no pre-norms (mlp.hook_in is hook_resid_mid), q/k norms over the projection",
            variant("olmo2", json!({"hidden_size": 48})),
            Kind::Set,
            28,
        ),
        case(
            "olmo2: hook_resid_mid -> hook_mlp_out (after the post-MLP norm), skip connections",
            variant("olmo2", json!({"hidden_size": 48})),
            Kind::Skip,
            29,
        )
        .at("hook_resid_mid", "hook_mlp_out"),
        case(
            "mixtral: the whole mixture of experts replaced, mlp.hook_in -> mlp.hook_out",
            variant("mixtral", json!({"hidden_size": 48})),
            Kind::Set,
            30,
        ),
        case(
            "qwen3_moe: ln2.hook_normalized -> mlp.hook_out, cross-layer transcoder",
            variant("qwen3_moe", json!({"hidden_size": 48})),
            Kind::Clt,
            31,
        )
        .at("ln2.hook_normalized", "mlp.hook_out"),
        case(
            "olmoe: q/k norms over the projection, skip connections",
            variant("olmoe", json!({"hidden_size": 48})),
            Kind::Skip,
            32,
        ),
        case(
            "gpt_oss: attention sinks, YaRN rotary, biased experts",
            variant("gpt_oss", json!({"hidden_size": 48})),
            Kind::Set,
            33,
        ),
        case(
            "gpt_oss: hook_resid_mid -> hook_mlp_out, cross-layer transcoder",
            variant("gpt_oss", json!({"hidden_size": 48})),
            Kind::Clt,
            34,
        )
        .at("hook_resid_mid", "hook_mlp_out"),
    ]
}

/// Runs one case; returns the largest deviation relative to its column's largest entry,
/// with the nodes' vectors as they are and times 64.
fn check(case: &Case) -> Result<[f64; 2]> {
    let name = case.name;
    let root = TempDir::new("circuits-freeze");
    let weights = synthetic_checkpoint(&case.config, case.seed)?;
    write_checkpoint(root.join("model"), &case.config, &weights, DType::F32, 1)?;
    let mut model = HookedTransformer::from_dir(root.join("model"), &LoadOptions::no_processing())?;
    let (read, write) = case.points;
    if read == "hook_mlp_in" {
        model.set_use_hook_mlp_in(true);
    }
    let model = model;
    let (n_layers, d, vocab) = (model.cfg().n_layers, model.cfg().d_model, model.cfg().d_vocab);
    let ids: Vec<u32> = (0..N_POS)
        .map(|i| ((i as u64 * 7919 + case.seed * 104_729 + 13) % vocab as u64) as u32)
        .collect();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;

    // The clean run.
    let (clean_logits, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&t))?;
    let clean: Clean = Arc::new(cache.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    let layer_vecs = |hook: &str| -> Vec<Vec<f32>> {
        (0..n_layers)
            .map(|l| to_vec(&clean[&format!("blocks.{l}.{hook}")]))
            .collect()
    };
    let (x_clean, y_clean) = (layer_vecs(read), layer_vecs(write));
    let tc = make_transcoders(
        &root.join("tc"),
        case.kind,
        case.points,
        d,
        &x_clean,
        &y_clean,
        1000 + case.seed,
    );
    let transcoders = Transcoders::from_dir(root.join("tc"))?;
    let run: ReplacementRun = replacement_run(&model, &transcoders, &ids)?;
    let graph = attribute(
        &model,
        &transcoders,
        &ids,
        &AttributionOptions::new().salient(3, 0.95).batch_size(7),
    )?;

    // The active features are this encoder's, with its activations, and the error
    // vectors are the MLP outputs minus this decoder's reconstruction.
    let a = &graph.active_features;
    assert_eq!(a, &run.active, "{name}");
    let mut n_active = 0;
    let mut recon: Vec<Vec<f32>> = (0..n_layers).map(|l| tc.b_dec[l].repeat(N_POS)).collect();
    for l in 0..n_layers {
        for p in 1..N_POS {
            let pre = tc.pre(l, &x_clean[l][p * d..(p + 1) * d]);
            for (f, &v) in pre.iter().enumerate() {
                let act = tc.act(l, f, v);
                if act == 0.0 {
                    continue;
                }
                let i = n_active;
                n_active += 1;
                assert_eq!(
                    (a.layer[i], a.pos[i], a.feature[i]),
                    (l, p, f),
                    "{name}: active feature {i}"
                );
                assert!(
                    (a.value[i] - act).abs() <= 1e-5 * act.abs().max(1.0),
                    "{name}: activation {i}"
                );
                let n_out = tc.n_out(l);
                for o in 0..n_out {
                    let row = &tc.w_dec[l][(f * n_out + o) * d..(f * n_out + o + 1) * d];
                    let dst = &mut recon[l + o][p * d..(p + 1) * d];
                    dst.iter_mut().zip(row).for_each(|(r, w)| *r += act * w);
                }
            }
        }
        if let Some(s) = &tc.skip {
            for p in 0..N_POS {
                let xp = &x_clean[l][p * d..(p + 1) * d];
                for j in 0..d {
                    recon[l][p * d + j] += (0..d).map(|i| xp[i] * s[l][i * d + j]).sum::<f32>();
                }
            }
        }
    }
    assert_eq!(n_active, a.len(), "{name}: active features");
    let per_layer: Vec<usize> = (0..n_layers)
        .map(|l| a.layer.iter().filter(|&&x| x == l).count())
        .collect();
    let active_per_pos = n_active as f64 / (n_layers * (N_POS - 1)) as f64 / F as f64;
    assert!(
        per_layer.iter().all(|&n| n > 0) && (0.03..0.4).contains(&active_per_pos),
        "{name}: {per_layer:?} active per layer, {active_per_pos} of the features"
    );
    let mut error: Vec<Vec<f32>> = (0..n_layers)
        .map(|l| y_clean[l].iter().zip(&recon[l]).map(|(y, r)| y - r).collect())
        .collect();
    for e in &mut error {
        e[..d].iter_mut().for_each(|v| *v = 0.0);
    }
    let got_error = &run.error;
    let err_scale = error.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    for l in 0..n_layers {
        for (i, (g, w)) in got_error[l * N_POS * d..(l + 1) * N_POS * d]
            .iter()
            .zip(&error[l])
            .enumerate()
        {
            assert!((g - w).abs() <= 1e-5 * err_scale, "{name}: error {l} {i}: {g} vs {w}");
        }
    }

    // Freezing alone leaves the run as it was.
    let skip: Option<Vec<Tensor>> = tc.skip.as_ref().map(|s| {
        s.iter()
            .map(|m| Tensor::from_vec(m.clone(), (d, d), &Device::Cpu).unwrap())
            .collect()
    });
    let (x_base, y_base, logits) = frozen_run(&model, &t, &clean, case.points, skip.as_ref(), HashMap::new(), None)?;
    let diff = (logits - &clean_logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = clean_logits.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff <= 1e-6 * scale, "{name}: the frozen run's logits moved by {diff}");
    for l in 0..n_layers {
        assert_eq!(x_base[l], x_clean[l], "{name}: the frozen run's {read} {l}");
    }

    // The sources: features spread over the list, errors, tokens (BOS included).
    let (feat_reads, logit_reads) = target_reads(&model, &tc, &graph);
    let n_feat = graph.n_features();
    let delta = |l: usize, p: usize, v: &[f32]| -> (usize, Tensor) {
        let mut buf = vec![0.0f32; N_POS * d];
        buf[p * d..(p + 1) * d].copy_from_slice(v);
        (l, Tensor::from_vec(buf, (1, N_POS, d), &Device::Cpu).unwrap())
    };
    type Source = (usize, String, HashMap<usize, Tensor>, Option<Tensor>);
    let mut sources: Vec<Source> = Vec::new();
    // Only nodes with a path to a target: a last-layer feature at an earlier position
    // reaches nothing.
    let reaches = |l: usize, p: usize| l + 1 < n_layers || p == N_POS - 1;
    let mut eligible: Vec<usize> = (0..n_feat)
        .filter(|&j| {
            let i = graph.selected_features[j];
            reaches(a.layer[i], a.pos[i])
        })
        .collect();
    assert!(
        eligible.len() >= 5,
        "{name}: {} features reach a target",
        eligible.len()
    );
    let mut picked: Vec<usize> = (0..5).map(|k| eligible[k * (eligible.len() - 1) / 4]).collect();
    // One of the last position, where a feature reaches the logits directly.
    eligible.retain(|&j| a.pos[graph.selected_features[j]] == N_POS - 1);
    if let Some(&j) = eligible.get(eligible.len() / 2) {
        if !picked.contains(&j) {
            picked[2] = j;
        }
    }
    for node in picked {
        let i = graph.selected_features[node];
        let (l, p, f, act) = (a.layer[i], a.pos[i], a.feature[i], a.value[i]);
        let n_out = tc.n_out(l);
        let outs = (0..n_out)
            .map(|o| {
                let row: Vec<f32> = tc.w_dec[l][(f * n_out + o) * d..(f * n_out + o + 1) * d]
                    .iter()
                    .map(|w| w * act)
                    .collect();
                delta(l + o, p, &row)
            })
            .collect();
        sources.push((node, format!("feature {f} of layer {l} at {p}"), outs, None));
    }
    for (l, p) in [(0, 1), (n_layers - 2, N_POS / 2), (n_layers - 1, N_POS - 1)] {
        let e = &error[l][p * d..(p + 1) * d];
        sources.push((
            graph.error_node(l, p),
            format!("error of layer {l} at {p}"),
            HashMap::from([delta(l, p, e)]),
            None,
        ));
    }
    for p in [0, N_POS / 2, N_POS - 1] {
        let e = clean["hook_embed"].i((0, p))?;
        let (_, embed) = delta(0, p, &to_vec(&e));
        sources.push((
            graph.token_node(p),
            format!("token at {p}"),
            HashMap::new(),
            Some(embed),
        ));
    }

    // Each source's column against the frozen model's response.
    // circuit-tracer's check adds the node's vector itself (tolerance 1e-4 of the
    // column's largest entry: subtracting the clean run loses the digits of the targets'
    // own size); the same vector times 64 (exact in floats; the frozen model is affine)
    // leaves that rounding 64 times smaller, and the tolerance is 1e-5.
    // The rounding of a target's own value in either run, which the subtraction keeps:
    // a few units in the last place of each term of its dot product.
    let mut floor: Vec<f64> = feat_reads
        .iter()
        .map(|(l, p, enc)| {
            1e-6 * enc
                .iter()
                .zip(&x_clean[*l][p * d..(p + 1) * d])
                .map(|(e, x)| (e * x).abs() as f64)
                .sum::<f64>()
        })
        .collect();
    floor.extend(
        logit_reads
            .iter()
            .map(|v| 1e-6 * v.iter().zip(&y_base).map(|(e, x)| (e * x).abs() as f64).sum::<f64>()),
    );
    let mut worst = [0f64; 2];
    for (node, what, outs, embed) in sources {
        let rows: Vec<usize> = (0..n_feat)
            .chain((0..logit_reads.len()).map(|k| graph.logit_node(k)))
            .collect();
        let want: Vec<f64> = rows.iter().map(|&r| graph.edge(r, node).unwrap() as f64).collect();
        let top = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(top > 0.0, "{name}: {what}: an empty column");
        for (run_i, (k, tol)) in [(1.0, 1e-4), (64.0, 1e-5)].into_iter().enumerate() {
            let outs = outs.iter().map(|(l, v)| Ok((*l, (v * k)?))).collect::<Result<_>>()?;
            let embed = embed.as_ref().map(|e| e * k).transpose()?;
            let (x, y, _) = frozen_run(&model, &t, &clean, case.points, skip.as_ref(), outs, embed)?;
            let mut got = Vec::with_capacity(rows.len());
            for (l, p, enc) in &feat_reads {
                let dx: Vec<f32> = (0..d).map(|j| x[*l][p * d + j] - x_clean[*l][p * d + j]).collect();
                got.push(dot(enc, &dx) / k);
            }
            let dy: Vec<f32> = y.iter().zip(&y_base).map(|(a, b)| a - b).collect();
            for v in &logit_reads {
                got.push(dot(v, &dy) / k);
            }
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                let dev = (g - w).abs();
                let allowed = tol * top + floor[r] / k;
                worst[run_i] = worst[run_i].max(dev / allowed);
                assert!(
                    dev <= allowed,
                    "{name}: {what} (times {k}) -> row {} (of {n_feat} features and {} logits): frozen model {g}, \
                     graph {w}, column max {top}",
                    rows[r],
                    logit_reads.len()
                );
            }
        }
        // Nothing reaches an error or a token node.
        for r in n_feat..graph.logit_node(0) {
            assert_eq!(graph.edge(r, node).unwrap(), 0.0, "{name}: {what} -> row {r}");
        }
    }
    Ok(worst)
}

#[test]
fn graph_columns_are_the_frozen_models_response_on_every_family() {
    let mut report = Vec::new();
    for case in cases() {
        let worst = check(&case).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        report.push(format!("{}: {:.1e}, {:.1e}", case.name, worst[0], worst[1]));
    }
    eprintln!(
        "largest deviation / column max (vectors as they are, times 64):\n  {}",
        report.join("\n  ")
    );
}

/// Transcoders reading or writing where the frozen model passes no gradient: an error
/// that names the point, from `attribute` (and `replacement_run`).
#[test]
fn unsupported_read_or_write_points_are_refused_by_name() {
    let config = variant("tiny-gpt2", json!({"n_embd": 32, "n_layer": 2, "n_head": 4}));
    let root = TempDir::new("circuits-freeze-points");
    let weights = synthetic_checkpoint(&config, 21).unwrap();
    write_checkpoint(root.join("model"), &config, &weights, DType::F32, 1).unwrap();
    let model = HookedTransformer::from_dir(root.join("model"), &LoadOptions::no_processing()).unwrap();
    let (n_layers, d) = (model.cfg().n_layers, model.cfg().d_model);
    let ids: Vec<u32> = (0..N_POS as u32).map(|i| i * 3 + 1).collect();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&t)).unwrap();
    let layer_vecs = |hook: &str| -> Vec<Vec<f32>> {
        (0..n_layers)
            .map(|l| to_vec(&cache[&format!("blocks.{l}.{hook}")]))
            .collect()
    };
    let (x, y) = (layer_vecs("mlp.hook_in"), layer_vecs("mlp.hook_out"));
    for (i, (hooks, bad)) in [
        (("attn.hook_z", "mlp.hook_out"), "attn.hook_z"),
        (("mlp.hook_in", "hook_resid_post"), "hook_resid_post"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = root.join(format!("tc{i}"));
        make_transcoders(&dir, Kind::Set, hooks, d, &x, &y, 2000 + i as u64);
        let transcoders = Transcoders::from_dir(&dir).unwrap();
        let e = attribute(&model, &transcoders, &ids, &AttributionOptions::new())
            .err()
            .unwrap_or_else(|| panic!("{hooks:?}: attribute succeeded"))
            .to_string();
        assert!(e.contains(bad), "{hooks:?}: {e}");
        let e = replacement_run(&model, &transcoders, &ids)
            .err()
            .unwrap_or_else(|| panic!("{hooks:?}: replacement_run succeeded"))
            .to_string();
        assert!(e.contains(bad), "{hooks:?}: {e}");
    }
}

/// OLMo 2 has no norm before its MLPs: transcoders reading `ln2.hook_normalized` are
/// an error that names the point and says what to read instead, from `attribute` and
/// `replacement_run` (the same transcoders at `mlp.hook_in` work: see the cases above).
#[test]
fn ln2_reads_are_refused_on_a_model_without_pre_norms() {
    let config = variant("olmo2", json!({"hidden_size": 48}));
    let root = TempDir::new("circuits-freeze-olmo2-ln2");
    let weights = synthetic_checkpoint(&config, 41).unwrap();
    write_checkpoint(root.join("model"), &config, &weights, DType::F32, 1).unwrap();
    let model = HookedTransformer::from_dir(root.join("model"), &LoadOptions::no_processing()).unwrap();
    assert!(model.blocks.iter().all(|b| b.ln2.is_none()), "OLMo 2 has no ln2");
    let (n_layers, d) = (model.cfg().n_layers, model.cfg().d_model);
    let ids: Vec<u32> = (0..N_POS as u32).map(|i| i * 5 + 2).collect();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (_, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&t)).unwrap();
    let layer_vecs = |hook: &str| -> Vec<Vec<f32>> {
        (0..n_layers)
            .map(|l| to_vec(&cache[&format!("blocks.{l}.{hook}")]))
            .collect()
    };
    let (x, y) = (layer_vecs("mlp.hook_in"), layer_vecs("mlp.hook_out"));
    let dir = root.join("tc");
    make_transcoders(
        &dir,
        Kind::Set,
        ("ln2.hook_normalized", "mlp.hook_out"),
        d,
        &x,
        &y,
        2100,
    );
    let transcoders = Transcoders::from_dir(&dir).unwrap();
    let e = attribute(&model, &transcoders, &ids, &AttributionOptions::new())
        .err()
        .unwrap_or_else(|| panic!("attribute succeeded"))
        .to_string();
    assert!(
        e.contains("ln2.hook_normalized")
            && e.contains("no norm before its MLPs")
            && e.contains(model.cfg().original_architecture.as_str()),
        "attribute: {e}"
    );
    let e = replacement_run(&model, &transcoders, &ids)
        .err()
        .unwrap_or_else(|| panic!("replacement_run succeeded"))
        .to_string();
    assert!(
        e.contains("ln2.hook_normalized") && e.contains("no norm before its MLPs"),
        "replacement_run: {e}"
    );
}
