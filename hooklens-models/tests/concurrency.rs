//! One GPT-2 shared by 8 threads (issue 6): each thread runs 200 forwards with its own
//! per-run hooks and caches. Every result equals the same run done alone, bit for bit,
//! and no cache holds another thread's activation; permanent hooks added from one
//! thread are seen by all. Cache files saved from many threads at once are each whole.

mod common;

use std::sync::{Arc, Barrier};

use candle_core::{Device, Tensor};
use common::*;
use hooklens_core::{ActivationCache, CacheOptions, Direction, HookPoint, HookSet, HookedModel, RemoveOptions};
use hooklens_models::HookedTransformer;

const THREADS: usize = 8;
const RUNS: usize = 200;

/// Thread `t`'s hooks: its own mark added to the embedding (so every downstream
/// activation is its own), and on odd threads head `t % 4` of layer 1 zeroed.
fn hooks_of(t: usize) -> HookSet {
    let mark = 0.01 * (t as f64 + 1.0);
    let mut hooks = HookSet::new().fwd("hook_embed", move |x: &Tensor, _: &HookPoint| Ok(Some((x + mark)?)));
    if t % 2 == 1 {
        let head = t % 4;
        hooks = hooks.fwd("blocks.1.attn.hook_z", move |z: &Tensor, _: &HookPoint| {
            let (b, p, _, d) = z.dims4()?;
            let zero = Tensor::zeros((b, p, 1, d), z.dtype(), z.device())?;
            Ok(Some(z.slice_assign(&[0..b, 0..p, head..head + 1, 0..d], &zero)?))
        });
    }
    hooks
}

/// Thread `t`'s input: the fixture's tokens, shortened to a length of its own on odd
/// runs, so shapes differ between threads too.
fn input_of(t: usize, run: usize) -> Tensor {
    let toks = tokens();
    if run.is_multiple_of(2) {
        toks
    } else {
        toks.narrow(1, 0, 3 + t % 7).unwrap()
    }
}

type Run = (Tensor, Vec<(String, Tensor)>);

fn run_once(model: &HookedTransformer, t: usize, run: usize) -> Run {
    let input = input_of(t, run);
    let (logits, cache) = model
        .run_with_cache_and_hooks(
            CacheOptions::new().names(["hook_embed", "blocks.*.attn.hook_z", "blocks.1.hook_resid_post"]),
            hooks_of(t),
            |m| m.forward(&input),
        )
        .unwrap();
    (logits, cache.iter().map(|(n, x)| (n.to_string(), x.clone())).collect())
}

fn assert_same(got: &Run, want: &Run, what: &str) {
    assert_eq!(
        max_abs_diff(&got.0, &want.0),
        0.0,
        "{what}: logits differ from the run alone"
    );
    let names = |r: &Run| r.1.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: the cache holds other entries");
    for ((name, a), (_, b)) in got.1.iter().zip(&want.1) {
        assert_eq!(a.dims(), b.dims(), "{what}: {name}");
        assert_eq!(max_abs_diff(a, b), 0.0, "{what}: {name} holds another run's activation");
    }
}

#[test]
fn eight_threads_with_their_own_hooks_and_caches_each_get_their_run_alone() {
    let start = std::time::Instant::now();
    let model = Arc::new(processed_model());
    // Each thread's two runs (full and shortened input), done alone first.
    let alone: Vec<[Run; 2]> = (0..THREADS)
        .map(|t| [run_once(&model, t, 0), run_once(&model, t, 1)])
        .collect();
    // Different marks make different activations: a mix-up cannot go unnoticed.
    assert!(max_abs_diff(&alone[0][0].0, &alone[1][0].0) > 0.0);
    let alone = Arc::new(alone);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (model, alone, barrier) = (model.clone(), alone.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for run in 0..RUNS {
                    let got = run_once(&model, t, run);
                    assert_same(&got, &alone[t][run % 2], &format!("thread {t}, run {run}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(model.list_hooks().is_empty(), "per-run hooks attach nothing");
    eprintln!(
        "{} runs on {THREADS} threads in {:.2?}",
        THREADS * RUNS + 2 * THREADS,
        start.elapsed()
    );
}

#[test]
fn permanent_hooks_added_from_one_thread_are_seen_by_all() {
    let model = Arc::new(raw_model());
    let toks = tokens();
    let plain = model.forward(&toks).unwrap();
    // Thread 0 adds a permanent ablation; the others then see it, in plain forwards and
    // in their own cached runs with their own hooks on top.
    {
        let model = model.clone();
        std::thread::spawn(move || {
            model
                .add_perma_hook(
                    "blocks.0.hook_mlp_out",
                    |x: &Tensor, _: &HookPoint| Ok(Some(x.zeros_like()?)),
                    Direction::Fwd,
                )
                .unwrap()
        })
        .join()
        .unwrap();
    }
    let ablated = model.forward(&toks).unwrap();
    assert!(max_abs_diff(&plain, &ablated) > 0.0);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (model, toks, ablated, barrier) = (model.clone(), toks.clone(), ablated.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..20 {
                    assert_eq!(
                        max_abs_diff(&model.forward(&toks).unwrap(), &ablated),
                        0.0,
                        "thread {t}"
                    );
                    let (_, cache) = model
                        .run_with_cache(CacheOptions::new().names("blocks.0.hook_mlp_out"), |m| m.forward(&toks))
                        .unwrap();
                    let seen = cache["blocks.0.hook_mlp_out"].abs().unwrap().max_all().unwrap();
                    assert_eq!(
                        seen.to_scalar::<f32>().unwrap(),
                        0.0,
                        "thread {t} caches the ablated value"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Removed from yet another thread: all see the plain model again.
    {
        let model = model.clone();
        std::thread::spawn(move || {
            assert_eq!(model.remove_all_hook_fns(RemoveOptions::new().including_permanent()), 1)
        })
        .join()
        .unwrap();
    }
    assert_eq!(max_abs_diff(&model.forward(&toks).unwrap(), &plain), 0.0);
}

/// Eight threads saving different caches to one path at the same time: whichever
/// rename lands last wins, and the file is exactly one thread's cache, never a mix or
/// a half-written one (each writer has its own temporary name).
#[test]
fn caches_saved_to_one_path_from_many_threads_are_each_whole() {
    let model = Arc::new(raw_model());
    let dir = TempDir::new("concurrent-saves");
    let path = Arc::new(dir.join("cache.safetensors"));
    let caches: Vec<ActivationCache> = (0..THREADS)
        .map(|t| {
            let input = input_of(t, 0);
            model
                .run_with_cache_and_hooks(CacheOptions::new(), hooks_of(t), |m| m.forward(&input))
                .unwrap()
                .1
        })
        .collect();
    let caches = Arc::new(caches);
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (caches, path, barrier) = (caches.clone(), path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    caches[t].save(&*path).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let back = ActivationCache::load(&*path, &Device::Cpu).unwrap();
        let embed = &back["hook_embed"];
        let writer = (0..THREADS)
            .find(|&t| max_abs_diff(&caches[t]["hook_embed"], embed) == 0.0)
            .unwrap_or_else(|| panic!("round {round}: the file is no thread's cache"));
        for (name, t) in caches[writer].iter() {
            assert_eq!(
                max_abs_diff(t, &back[name]),
                0.0,
                "round {round}: {name} is not thread {writer}'s"
            );
        }
        let left = std::fs::read_dir(&*dir).unwrap().count();
        assert_eq!(left, 1, "round {round}: temporary files left behind");
    }
}
