//! End-to-end checks of the trainer: it learns truly sparse data, is deterministic,
//! resumes exactly, and writes a folder `Sae::from_dir` loads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hooklens_testutil::{max_abs_diff, TempDir};

use super::rng::Rng;
use super::*;
use crate::sae::Sae;

/// `rows` activations, each a sum of 1 to 3 of `n_dirs` random unit directions in
/// `d` dimensions with coefficients in [1, 2): a dictionary an SAE can recover.
fn sparse_data(rows: usize, d: usize, n_dirs: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let dirs: Vec<Vec<f32>> = (0..n_dirs)
        .map(|_| {
            let v: Vec<f32> = (0..d).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect()
        })
        .collect();
    let mut out = vec![0f32; rows * d];
    for row in out.chunks_mut(d) {
        for _ in 0..1 + rng.below(3) {
            let dir = &dirs[rng.below(n_dirs)];
            let c = (1.0 + rng.uniform()) as f32;
            for (o, v) in row.iter_mut().zip(dir) {
                *o += c * v;
            }
        }
    }
    out
}

/// Writes `data` (`d` wide) as two harvest shards of hook `h` in `dir`.
fn write_harvest(dir: &Path, data: &[f32], d: usize) {
    let rows = data.len() / d;
    let half = rows / 2;
    for (i, part) in [&data[..half * d], &data[half * d..]].into_iter().enumerate() {
        let n = part.len() / d;
        let t = Tensor::from_vec(part.to_vec(), (n / 4, 4, d), &Device::Cpu).unwrap();
        let tokens = Tensor::zeros((n / 4, 4), DType::I64, &Device::Cpu).unwrap();
        let map: HashMap<String, Tensor> = [("h".to_string(), t), ("tokens".to_string(), tokens)].into();
        candle_core::safetensors::save(&map, dir.join(format!("00000-of-00001-shard-{i:06}.safetensors"))).unwrap();
    }
}

fn opts(arch: TrainArchitecture) -> TrainOptions {
    TrainOptions {
        k: 3,
        lr: 1e-2,
        l1_coefficient: 1e-3,
        l0_coefficient: 1e-3,
        training_tokens: 256 * 300,
        train_batch_size_tokens: 256,
        n_batches_in_buffer: 4,
        dead_feature_window: 50,
        feature_sampling_window: 100,
        metrics_every_steps: 50,
        ..TrainOptions::new(arch, 48)
    }
}

fn weights(dir: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(dir.join(crate::sae::SAE_WEIGHTS_FILE), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn run(src: &HarvestActivations, o: &TrainOptions, out: &Path) -> TrainReport {
    train(src, o, out, &mut |_| {}).unwrap()
}

#[test]
fn topk_and_batchtopk_learn_sparse_data() {
    let tmp = TempDir::new("train-topk");
    write_harvest(&tmp.0, &sparse_data(4096, 16, 24, 1), 16);
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    for arch in [
        TrainArchitecture::TopK,
        TrainArchitecture::BatchTopK,
        TrainArchitecture::MatryoshkaBatchTopK,
    ] {
        let out = tmp.path(arch.name());
        let o = TrainOptions {
            matryoshka_widths: if arch == TrainArchitecture::MatryoshkaBatchTopK {
                vec![8, 24]
            } else {
                Vec::new()
            },
            ..opts(arch)
        };
        let report = run(&src, &o, &out);
        let m = report.last_metrics.unwrap();
        assert!(m.explained_variance > 0.9, "{arch:?}: {m}");
        // TopK: exactly k per token; BatchTopK: k * batch in the batch, k on average.
        assert!((m.l0 - 3.0).abs() < 1e-6, "{arch:?}: {m}");
        assert_eq!(report.tokens, 256 * 300);
        if arch.is_batch_topk() {
            // Saved as JumpReLU: the threshold keeps about k features per token.
            let sae = Sae::from_dir(&out, &Device::Cpu).unwrap();
            assert_eq!(sae.cfg().architecture, crate::sae::Architecture::JumpRelu);
            let x = src.batches(256, 4, 9).next_batch().unwrap();
            let l0 = super::architecture::l0(&sae.encode(&x).unwrap()).unwrap();
            assert!((1.5..6.0).contains(&l0), "{l0}");
        }
    }
}

#[test]
fn standard_loss_decreases() {
    let tmp = TempDir::new("train-standard");
    write_harvest(&tmp.0, &sparse_data(4096, 16, 24, 2), 16);
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    let o = TrainOptions {
        training_tokens: 256 * 200,
        l1_warm_up_steps: 20,
        ..opts(TrainArchitecture::Standard)
    };
    let mut seen = Vec::new();
    train(&src, &o, &tmp.path("out"), &mut |e| {
        if let TrainEvent::Metrics(m) = e {
            seen.push(m.clone());
        }
    })
    .unwrap();
    let lines = std::fs::read_to_string(tmp.path("out").join(METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), seen.len());
    let (first, last) = (&seen[0], seen.last().unwrap());
    assert!(
        last.mse_loss + last.aux_loss < 0.5 * (first.mse_loss + first.aux_loss),
        "{first}\n{last}"
    );
    assert!(last.explained_variance > 0.8, "{last}");
    assert_eq!(last.l1_coefficient, Some(1e-3));
}

#[test]
fn jumprelu_learns_sparse_data_and_saves_its_thresholds() {
    let tmp = TempDir::new("train-jumprelu");
    write_harvest(&tmp.0, &sparse_data(4096, 16, 24, 6), 16);
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    for mode in [JumpReluSparsityLoss::Step, JumpReluSparsityLoss::Tanh] {
        let o = TrainOptions {
            jumprelu_sparsity_loss_mode: mode,
            l0_coefficient: 3e-2,
            jumprelu_init_threshold: 0.1,
            ..opts(TrainArchitecture::JumpRelu)
        };
        let out = tmp.path(mode.name());
        let mut seen = Vec::new();
        train(&src, &o, &out, &mut |e| {
            if let TrainEvent::Metrics(m) = e {
                seen.push(m.clone());
            }
        })
        .unwrap();
        let (first, last) = (&seen[0], seen.last().unwrap());
        assert!(last.explained_variance > 0.8, "{mode:?}: {last}");
        assert!(last.mse_loss < 0.5 * first.mse_loss, "{mode:?}: {first}\n{last}");
        assert!(last.l0 < 0.5 * 48.0, "{mode:?}: {last}");
        assert_eq!(last.l0_coefficient, Some(3e-2));
        let sae = Sae::from_dir(&out, &Device::Cpu).unwrap();
        assert_eq!(sae.cfg().architecture, crate::sae::Architecture::JumpRelu);
        let w = weights(&out);
        // Thresholds moved from their start, one per feature, none negative.
        let t = &w["threshold"];
        assert_eq!(t.len(), 48);
        assert!(t.iter().any(|&v| (v - 0.1).abs() > 1e-3), "{t:?}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(crate::sae::SAE_CFG_FILE)).unwrap()).unwrap();
        assert_eq!(cfg["architecture"], "jumprelu");
        assert_eq!(
            cfg["metadata"]["training_architecture_details"]["jumprelu_sparsity_loss_mode"],
            mode.name()
        );
    }
}

#[test]
fn same_seed_same_weights_and_resume_is_exact() {
    let tmp = TempDir::new("train-resume");
    write_harvest(&tmp.0, &sparse_data(2048, 16, 24, 3), 16);
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    for arch in [
        TrainArchitecture::TopK,
        TrainArchitecture::Standard,
        TrainArchitecture::BatchTopK,
        TrainArchitecture::JumpRelu,
        TrainArchitecture::MatryoshkaBatchTopK,
    ] {
        let full = TrainOptions {
            matryoshka_widths: if arch == TrainArchitecture::MatryoshkaBatchTopK {
                vec![6, 20, 48]
            } else {
                Vec::new()
            },
            training_tokens: 256 * 40,
            normalize_activations: NormalizeActivations::ExpectedAverageOnlyIn,
            n_batches_for_norm_estimate: 4,
            l1_warm_up_steps: 10,
            l0_warm_up_steps: 10,
            pre_act_loss_coefficient: Some(1e-3),
            lr_warm_up_steps: 5,
            lr_decay_steps: 10,
            dead_feature_window: 5,
            feature_sampling_window: 15,
            metrics_every_steps: 7,
            ..opts(arch)
        };
        let a = tmp.path(&format!("{}-a", arch.name()));
        let b = tmp.path(&format!("{}-b", arch.name()));
        let c = tmp.path(&format!("{}-c", arch.name()));
        run(&src, &full, &a);
        run(&src, &full, &b);
        assert_eq!(weights(&a), weights(&b), "{arch:?}: two runs with one seed differ");

        // Stop after 20 steps (a run that is killed leaves its checkpoints); resume.
        let checkpointed = TrainOptions {
            checkpoint_every_tokens: Some(256 * 20),
            ..full.clone()
        };
        let mut steps = 0;
        let stopped = train(&src, &checkpointed, &c, &mut |e| {
            if let TrainEvent::Checkpoint(_) = e {
                steps += 1;
            }
        });
        assert!(stopped.is_ok() && steps == 2);
        // Remove the final checkpoint so only the one at 20 steps is left, as if the run
        // had died there.
        std::fs::remove_dir_all(c.join("checkpoints").join((256 * 40).to_string())).unwrap();
        // A checkpoint half written when the run died is removed on resuming.
        std::fs::create_dir_all(c.join("checkpoints").join(".10240.tmp-1")).unwrap();
        let resumed = run(&src, &full, &c);
        assert_eq!(resumed.resumed_from, Some(256 * 20));
        assert!(!c.join("checkpoints").join(".10240.tmp-1").exists());
        assert_eq!(weights(&a), weights(&c), "{arch:?}: resumed run differs");
        let metrics = |d: &Path| std::fs::read_to_string(d.join(METRICS_FILE)).unwrap();
        assert_eq!(metrics(&a), metrics(&c), "{arch:?}: resumed run's metrics differ");
        assert_eq!(metrics(&a).lines().count(), 6);

        let other = TrainOptions { lr: 2e-2, ..full };
        let err = train(&src, &other, &c, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("lr: checkpoint 0.01, now 0.02"), "{err}");
    }
    let seeds = |seed| {
        let o = TrainOptions {
            training_tokens: 256 * 5,
            seed,
            ..opts(TrainArchitecture::TopK)
        };
        let out = tmp.path(&format!("seed-{seed}"));
        run(&src, &o, &out);
        weights(&out)
    };
    assert_ne!(seeds(1), seeds(2));
}

#[test]
fn saved_folder_loads_and_encodes_as_the_trainer() {
    let tmp = TempDir::new("train-load");
    let data = sparse_data(1024, 16, 24, 4);
    write_harvest(&tmp.0, &data, 16);
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    let x = Tensor::from_vec(data[..64 * 16].to_vec(), (64, 16), &Device::Cpu).unwrap();
    for (arch, norm) in [
        (TrainArchitecture::Standard, NormalizeActivations::None),
        (TrainArchitecture::TopK, NormalizeActivations::None),
        (TrainArchitecture::TopK, NormalizeActivations::ExpectedAverageOnlyIn),
        (TrainArchitecture::Standard, NormalizeActivations::ExpectedAverageOnlyIn),
        (TrainArchitecture::BatchTopK, NormalizeActivations::None),
        (
            TrainArchitecture::BatchTopK,
            NormalizeActivations::ExpectedAverageOnlyIn,
        ),
        (TrainArchitecture::JumpRelu, NormalizeActivations::None),
        (TrainArchitecture::JumpRelu, NormalizeActivations::ExpectedAverageOnlyIn),
    ] {
        let o = TrainOptions {
            training_tokens: 256 * 20,
            normalize_activations: norm,
            n_batches_for_norm_estimate: 2,
            ..opts(arch)
        };
        let mut trainer = SaeTrainer::new(o.clone(), 16, "h").unwrap();
        if norm != NormalizeActivations::None {
            trainer.set_scaling_factor(0.37).unwrap();
        }
        let mut batches = src.batches(256, 4, 0);
        for _ in 0..20 {
            trainer.step(&batches.next_batch().unwrap()).unwrap();
        }
        let out = tmp.path(&format!("{}-{}", arch.name(), norm.name()));
        trainer.save_sae(&out).unwrap();
        let sae = Sae::from_dir(&out, &Device::Cpu).unwrap();
        assert_eq!(sae.cfg().hook_name, "h");
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let d = max_abs_diff(a, b);
            let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                d <= 1e-4 * s.max(1.0),
                "{arch:?} {norm:?} {what}: differ by {d} (scale {s})"
            );
        };
        let acts = trainer.encode(&x).unwrap();
        close(&sae.encode(&x).unwrap(), &acts, "encode");
        close(&sae.decode(&acts).unwrap(), &trainer.decode(&acts).unwrap(), "decode");
        let sparsity = candle_core::safetensors::load(out.join(SPARSITY_FILE), &Device::Cpu).unwrap();
        assert_eq!(sparsity["sparsity"].dims(), &[48]);
    }
}

#[test]
fn bad_inputs_are_errors_before_training() {
    let tmp = TempDir::new("train-bad");
    write_harvest(&tmp.0, &sparse_data(64, 16, 4, 5), 16);
    let err = HarvestActivations::open(&tmp.0, "blocks.0.hook_resid_post")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no activations for hook `blocks.0.hook_resid_post`"),
        "{err}"
    );
    let src = HarvestActivations::open(&tmp.0, "h").unwrap();
    let bad = TrainOptions {
        k: 49,
        ..opts(TrainArchitecture::TopK)
    };
    let err = train(&src, &bad, &tmp.path("out"), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("k is 49"), "{err}");
    assert!(!tmp.path("out").exists());
}

/// Writes a harvest with two hooks, `in` (`data`, `d` wide) and `out` (`data` mapped by a
/// fixed random `[d, d_out]` matrix), in two shards.
fn write_pair_harvest(dir: &Path, data: &[f32], d: usize, d_out: usize) {
    let rows = data.len() / d;
    let mut rng = Rng::new(77);
    let m: Vec<f32> = (0..d * d_out).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
    let m = Tensor::from_vec(m, (d, d_out), &Device::Cpu).unwrap();
    let half = rows / 2;
    for (i, part) in [&data[..half * d], &data[half * d..]].into_iter().enumerate() {
        let n = part.len() / d;
        let x = Tensor::from_vec(part.to_vec(), (n, d), &Device::Cpu).unwrap();
        let y = x.matmul(&m).unwrap().relu().unwrap();
        let map: HashMap<String, Tensor> = [
            ("in".to_string(), x.reshape((n / 4, 4, d)).unwrap()),
            ("out".to_string(), y.reshape((n / 4, 4, d_out)).unwrap()),
            (
                "tokens".to_string(),
                Tensor::zeros((n / 4, 4), DType::I64, &Device::Cpu).unwrap(),
            ),
        ]
        .into();
        candle_core::safetensors::save(&map, dir.join(format!("00000-of-00001-shard-{i:06}.safetensors"))).unwrap();
    }
}

#[test]
fn transcoders_learn_a_map_and_save_as_saelens_transcoders() {
    let tmp = TempDir::new("train-transcoder");
    let data = sparse_data(4096, 16, 24, 8);
    write_pair_harvest(&tmp.0, &data, 16, 12);
    let src = HarvestActivations::open_transcoder(&tmp.0, "in", "out").unwrap();
    assert_eq!(src.hook_out(), Some(("out", 12)));
    let x = Tensor::from_vec(data[..64 * 16].to_vec(), (64, 16), &Device::Cpu).unwrap();
    for (arch, name) in [
        (TrainArchitecture::Standard, "transcoder"),
        (TrainArchitecture::JumpRelu, "jumprelu_transcoder"),
    ] {
        let o = TrainOptions {
            l0_coefficient: 1e-3,
            ..opts(arch)
        };
        let out = tmp.path(name);
        let report = run(&src, &o, &out);
        let m = report.last_metrics.unwrap();
        assert!(m.explained_variance > 0.8, "{arch:?}: {m}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(crate::sae::SAE_CFG_FILE)).unwrap()).unwrap();
        assert_eq!(cfg["architecture"], name);
        assert_eq!(cfg["d_out"], 12);
        assert_eq!(cfg["apply_b_dec_to_input"], false);
        assert_eq!(cfg["metadata"]["hook_name_out"], "out");
        let sae = Sae::from_dir(&out, &Device::Cpu).unwrap();
        assert!(sae.cfg().is_transcoder());
        assert_eq!(sae.cfg().d_out, Some(12));
        // The loaded transcoder encodes and decodes as the trainer does: rebuild the
        // trainer from the last checkpoint.
        let ckpt = out.join("checkpoints").join((256 * 300).to_string());
        let trainer = super::checkpoint::load(&ckpt, &o, "in", 16, Some(("out", 12))).unwrap();
        let acts = trainer.encode(&x).unwrap();
        let d = max_abs_diff(&sae.encode(&x).unwrap(), &acts);
        assert!(d < 1e-4, "{arch:?}: encode differs by {d}");
        assert_eq!(sae.decode(&acts).unwrap().dims(), &[64, 12]);
        assert_eq!(trainer.decode(&acts).unwrap().dims(), &[64, 12]);
    }
    // Resuming a transcoder run continues exactly; an SAE run cannot resume it.
    let full = TrainOptions {
        training_tokens: 256 * 20,
        ..opts(TrainArchitecture::Standard)
    };
    let a = tmp.path("resume-a");
    let c = tmp.path("resume-c");
    run(&src, &full, &a);
    let checkpointed = TrainOptions {
        checkpoint_every_tokens: Some(256 * 10),
        ..full.clone()
    };
    run(&src, &checkpointed, &c);
    std::fs::remove_dir_all(c.join("checkpoints").join((256 * 20).to_string())).unwrap();
    assert_eq!(run(&src, &full, &c).resumed_from, Some(256 * 10));
    assert_eq!(weights(&a), weights(&c));
    let sae_src = HarvestActivations::open(&tmp.0, "in").unwrap();
    let err = train(&sae_src, &full, &c, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("hook_out: checkpoint \"out\""), "{err}");

    // Bad settings: a missing output hook, an architecture without a transcoder format,
    // normalisation.
    let err = HarvestActivations::open_transcoder(&tmp.0, "in", "nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no activations for hook `nope`"), "{err}");
    let err = HarvestActivations::open_transcoder(&tmp.0, "in", "in")
        .unwrap_err()
        .to_string();
    assert!(err.contains("both `in`"), "{err}");
    let err = SaeTrainer::new_transcoder(opts(TrainArchitecture::TopK), 16, "in", 12, "out")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not topk"), "{err}");
    let norm = TrainOptions {
        normalize_activations: NormalizeActivations::ExpectedAverageOnlyIn,
        ..opts(TrainArchitecture::Standard)
    };
    let err = SaeTrainer::new_transcoder(norm, 16, "in", 12, "out")
        .unwrap_err()
        .to_string();
    assert!(err.contains("normalize_activations must be none"), "{err}");
}

/// A corpus of `lines` lines of 12 words each from a small vocabulary, at `path`.
fn write_corpus(path: &Path, lines: usize) {
    let words = [
        "when", "the", "cat", "sat", "on", "a", "mat", "it", "was", "happy", "and", "then", "left",
    ];
    let mut rng = Rng::new(7);
    let text: String = (0..lines)
        .map(|_| {
            let line: Vec<&str> = (0..12).map(|_| words[rng.below(words.len())]).collect();
            line.join(" ") + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn model_source(corpus: &Path, hook_out: Option<&str>) -> ModelActivations {
    let model = crate::HookedTransformer::builtin().unwrap();
    let hook = if hook_out.is_some() {
        "blocks.0.hook_resid_mid"
    } else {
        "blocks.0.hook_resid_post"
    };
    ModelActivations::new(model, crate::corpus::Corpus::new(corpus), hook, hook_out, Some(16), 4).unwrap()
}

#[test]
fn a_model_source_serves_the_rows_shards_of_its_activations_would() {
    let tmp = TempDir::new("train-model-rows");
    write_corpus(&tmp.path("corpus.txt"), 10);
    for hook_out in [None, Some("blocks.0.hook_mlp_out")] {
        let src = model_source(&tmp.path("corpus.txt"), hook_out);
        // Every sequence of the corpus, its activations written as one shard.
        let mut seqs = src.sequences().unwrap();
        let mut tokens = Vec::new();
        while let Some(s) = seqs.next_sequence().unwrap() {
            tokens.extend(s);
        }
        let n = tokens.len() / 16;
        assert!(n > 4, "{n} sequences");
        let all = Tensor::from_vec(tokens, (n, 16), &Device::Cpu).unwrap();
        let model = src.model();
        let names: Vec<String> = [Some(src.hook()), hook_out]
            .into_iter()
            .flatten()
            .map(String::from)
            .collect();
        let (_, cache) = hooklens_core::HookedModel::run_with_cache(
            model,
            hooklens_core::CacheOptions::new().names(hooklens_core::NamesFilter::Names(names.clone())),
            |m| m.forward(&all),
        )
        .unwrap();
        let dir = tmp.path(&format!("shards-{}", hook_out.is_some()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut map: HashMap<String, Tensor> = names.iter().map(|n| (n.clone(), cache[n.as_str()].clone())).collect();
        map.insert("tokens".into(), all.to_dtype(DType::I64).unwrap());
        candle_core::safetensors::save(&map, dir.join("00000-of-00001-shard-000000.safetensors")).unwrap();
        let shards = match hook_out {
            Some(h) => HarvestActivations::open_transcoder(&dir, src.hook(), h).unwrap(),
            None => HarvestActivations::open(&dir, src.hook()).unwrap(),
        };
        assert_eq!(shards.d_in(), src.d_in());
        assert_eq!(shards.hook_out(), src.hook_out());
        // Served through the same buffer, over several passes of the corpus.
        let mut a = shards.batches(64, 4, 5);
        let mut b = ActivationSource::from(&src).batches(64, 4, 5).unwrap();
        let passes = 3 * n * 16 / 64;
        for i in 0..passes {
            let (x, y) = (a.next_batch().unwrap(), b.next_batch().unwrap());
            let gap = max_abs_diff(&x, &y);
            assert!(gap < 1e-4, "batch {i}: {gap}");
        }
        assert_eq!(b.tokens_per_pass(), Some((n * 16) as u64));
    }
    let corpus = crate::corpus::Corpus::new(tmp.path("corpus.txt"));
    let model = || crate::HookedTransformer::builtin().unwrap();
    let err = |hook: &str, ctx| {
        ModelActivations::new(model(), corpus.clone(), hook, None, ctx, 4)
            .unwrap_err()
            .to_string()
    };
    let e = err("blocks.0.hook_resid_pots", Some(16));
    assert!(
        e.contains("not a hook point") && e.contains("blocks.0.hook_resid_post"),
        "{e}"
    );
    let e = err("blocks.0.hook_resid_post", Some(1));
    assert!(e.contains("context size 1 must be between 2"), "{e}");
    std::fs::write(tmp.path("short.txt"), "the cat\n").unwrap();
    let e = ModelActivations::new(
        model(),
        crate::corpus::Corpus::new(tmp.path("short.txt")),
        "blocks.0.hook_resid_post",
        None,
        Some(16),
        4,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not one sequence of 16"), "{e}");
}

#[test]
fn training_from_a_model_resumes_exactly_and_measures_ce_loss_recovered() {
    let tmp = TempDir::new("train-model");
    write_corpus(&tmp.path("corpus.txt"), 10);
    let src = model_source(&tmp.path("corpus.txt"), None);
    let full = TrainOptions {
        k: 8,
        lr: 1e-3,
        training_tokens: 64 * 30,
        train_batch_size_tokens: 64,
        n_batches_in_buffer: 4,
        metrics_every_steps: 10,
        ..TrainOptions::new(TrainArchitecture::TopK, 64)
    };
    let (a, c) = (tmp.path("a"), tmp.path("c"));
    let mut restarts = 0;
    let mut scores = Vec::new();
    train(&src, &full, &a, &mut |e| match e {
        TrainEvent::CorpusRestarted { tokens_per_pass } => {
            restarts += 1;
            assert!(tokens_per_pass > 0 && tokens_per_pass % 16 == 0);
        }
        TrainEvent::Metrics(m) => scores.push(m.ce_loss.unwrap()),
        _ => {}
    })
    .unwrap();
    assert_eq!(restarts, 1, "said once");
    assert_eq!(scores.len(), 3);
    for ce in &scores {
        assert!(ce.zero_ablation > ce.clean, "{ce:?}");
        assert!(ce.score().is_finite(), "{ce:?}");
    }
    // The SAE learns: it recovers more of the loss at the end than at the start.
    assert!(scores[2].score() > scores[0].score(), "{scores:?}");
    let metrics = |d: &Path| std::fs::read_to_string(d.join(METRICS_FILE)).unwrap();
    assert!(metrics(&a).contains("\"ce_loss_score\":"), "{}", metrics(&a));
    let html = std::fs::read_to_string(a.join(METRICS_HTML_FILE)).unwrap();
    assert_eq!(html.matches("<svg").count(), 5);

    let checkpointed = TrainOptions {
        checkpoint_every_tokens: Some(64 * 15),
        ..full.clone()
    };
    train(&src, &checkpointed, &c, &mut |_| {}).unwrap();
    std::fs::remove_dir_all(c.join("checkpoints").join((64 * 30).to_string())).unwrap();
    let resumed = train(&src, &full, &c, &mut |_| {}).unwrap();
    assert_eq!(resumed.resumed_from, Some(64 * 15));
    assert_eq!(weights(&a), weights(&c), "resumed run differs");
    assert_eq!(metrics(&a), metrics(&c), "resumed run's metrics differ");
}
