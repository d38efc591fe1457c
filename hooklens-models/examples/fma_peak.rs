//! This machine's single-precision FMA peak: the most GFLOP/s its cores can do, the
//! ceiling every product in `docs/performance.md` is measured against.
//!
//! `cargo run --release -p hooklens-models --example fma_peak`
//!
//! Each thread runs chains of fused multiply-adds on registers only (no memory), enough
//! independent chains to cover the FMA latency, with the widest vectors the CPU has
//! (AVX-512, else AVX2 + FMA, else scalar), on one thread and then on every core. An FMA
//! counts two floating-point operations, as gemm rates count them.

use std::time::Instant;

/// FMAs per chain per timed call.
const ITERS: usize = 20_000_000;

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (kind, lanes) = widest();
    println!("f32 FMA peak, {kind} ({lanes} lanes), best of 5 rounds");
    println!("| threads | GFLOP/s | per thread |");
    println!("|---|---|---|");
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    for n in counts {
        let best = (0..5).map(|_| round(n)).fold(0.0f64, f64::max);
        println!("| {n} | {best:.1} | {:.1} |", best / n as f64);
    }
}

/// GFLOP/s of `n` threads each running [`chains`] at once.
fn round(n: usize) -> f64 {
    let start = Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|_| s.spawn(chains)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an FMA thread panicked"))
            .sum()
    });
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// The vector width [`chains`] uses on this CPU, and its lanes.
fn widest() -> (&'static str, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("AVX-512F", 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ("AVX2 + FMA", 8);
        }
    }
    ("scalar", 1)
}

/// Runs the FMA chains on this thread; returns the floating-point operations done.
fn chains() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: avx512f was detected just above.
            return unsafe { x86::chains_avx512() };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: avx2 and fma were detected just above.
            return unsafe { x86::chains_avx2() };
        }
    }
    chains_scalar()
}

/// Twelve independent scalar chains (the compiler keeps them apart: `mul_add` is not
/// reassociated).
fn chains_scalar() -> f64 {
    let mut acc = [0.0f32; 12];
    let (a, b) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..ITERS / 4 {
        for v in acc.iter_mut() {
            *v = v.mul_add(a, b);
        }
    }
    std::hint::black_box(acc);
    (ITERS / 4 * 12 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::ITERS;

    /// Independent accumulators: more than the FMA latency (4 cycles) times the FMA
    /// ports (2), so the ports never wait on a result.
    const CHAINS: usize = 12;

    /// # Safety
    /// The CPU has avx512f.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains_avx512() -> f64 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        (ITERS * CHAINS * 16 * 2) as f64
    }

    /// # Safety
    /// The CPU has avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains_avx2() -> f64 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        (ITERS * CHAINS * 8 * 2) as f64
    }
}
