//! Timing helpers the benchmarks share (included with `#[path]`, not an example).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use hooklens::{HookedTransformer, LoadOptions};

pub fn median(v: Vec<Duration>) -> f64 {
    median_f64(v.into_iter().map(|d| d.as_secs_f64()).collect())
}

/// Runs `f` `warm` times, then `n` times; the median in seconds.
pub fn time<T>(warm: usize, n: usize, mut f: impl FnMut() -> hooklens::Result<T>) -> hooklens::Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(f()?);
        v.push(t.elapsed());
    }
    Ok(median(v))
}

/// Runs each of `fs` once per round, `1 + n` rounds (the first is a warm-up), in
/// turn, so that a change of load on a shared machine hits all of them alike; the
/// seconds of each, round by round.
pub fn time_rounds(n: usize, fs: &mut [&mut dyn FnMut() -> hooklens::Result<()>]) -> hooklens::Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(n); fs.len()];
    for round in 0..=n {
        for (f, v) in fs.iter_mut().zip(&mut times) {
            let t = Instant::now();
            f()?;
            if round > 0 {
                v.push(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times)
}

/// The median seconds of each of `fs`, timed as [`time_rounds`] does.
pub fn time_interleaved(n: usize, fs: &mut [&mut dyn FnMut() -> hooklens::Result<()>]) -> hooklens::Result<Vec<f64>> {
    Ok(time_rounds(n, fs)?.into_iter().map(median_f64).collect())
}

pub fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `b / a` as the median of the ratios of the same round: this machine's speed
/// drifts by 10-20% within a minute (other tenants), which a ratio of two medians
/// taken over different rounds carries into the result, and a paired one mostly not.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    median_f64(a.iter().zip(b).map(|(a, b)| b / a).collect())
}

/// Seconds to read every element of `tensors` once, on all threads: the memory
/// bandwidth that bounds a decoding step, which reads every weight once.
pub fn stream_once(tensors: &[Tensor], threads: usize) -> hooklens::Result<f64> {
    let mut guards = Vec::new();
    for t in tensors {
        guards.push(t.storage_and_layout());
    }
    let slices: Vec<&[f32]> = guards
        .iter()
        .map(|(s, l)| match &**s {
            candle_core::Storage::Cpu(c) => {
                let (a, b) = l.contiguous_offsets().expect("contiguous weights");
                Ok(&c.as_slice::<f32>()?[a..b])
            }
            _ => Err(hooklens::Error::invalid("CPU tensors only")),
        })
        .collect::<hooklens::Result<_>>()?;
    let t = Instant::now();
    let total: f32 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let slices = &slices;
                s.spawn(move || {
                    let mut acc = [0f32; 16];
                    for x in slices.iter() {
                        let per = x.len().div_ceil(threads);
                        for c in x.chunks(per).nth(i).unwrap_or(&[]).chunks_exact(16) {
                            for k in 0..16 {
                                acc[k] += c[k];
                            }
                        }
                    }
                    acc.iter().sum::<f32>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(total);
    Ok(secs)
}

pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child side of a loading measurement: with `--load DIR` in `args` (and
/// `--processed` for the default processing, `--bf16` for a bf16 model), loads `DIR`,
/// prints its seconds and this process's peak resident KiB, and returns `true`;
/// `false` when `args` asks for no load.
pub fn load_child(args: &[String]) -> hooklens::Result<bool> {
    let Some(i) = args.iter().position(|a| a == "--load") else {
        return Ok(false);
    };
    let dir = args
        .get(i + 1)
        .ok_or_else(|| hooklens::Error::invalid("--load needs a model folder"))?;
    let opts = if args.iter().any(|a| a == "--processed") {
        LoadOptions::default()
    } else {
        LoadOptions::no_processing()
    };
    let dtype = if args.iter().any(|a| a == "--bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let t = Instant::now();
    let model = HookedTransformer::from_dir(dir, &opts.with_dtype(dtype))?;
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&model);
    println!("{secs} {}", peak_rss_kib().unwrap_or(0));
    Ok(true)
}

/// The parent side: runs this program again as a [`load_child`] of `dir` with the
/// flags `extra`; its seconds and peak resident KiB (NaN where it printed none).
pub fn child_load(dir: &std::path::Path, extra: &[&str]) -> hooklens::Result<(f64, f64)> {
    let exe = std::env::current_exe().map_err(|e| hooklens::Error::io("current_exe", e))?;
    let out = std::process::Command::new(exe)
        .arg("--load")
        .arg(dir)
        .args(extra)
        .output()
        .map_err(|e| hooklens::Error::io(dir, e))?;
    if !out.status.success() {
        return Err(hooklens::Error::invalid(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let kib = parts.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    Ok((secs, kib))
}
