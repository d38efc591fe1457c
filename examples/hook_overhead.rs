//! What an idle HookPoint costs: the forward of a model full of hook points with no
//! hook attached, against the same model without them, measured in one run.
//!
//! `cargo run --release --example hook_overhead`
//!
//! The two models do identical tensor work (a residual stack of `[batch*pos, d] x
//! [d, 4d]` MLPs); one passes every intermediate through a HookPoint (eight per
//! layer, as many as a GPT-2 block has). Runs alternate between the two so that
//! clock drift hits both alike; the figure is the ratio of medians.

use std::time::{Duration, Instant};

use hooklens::candle_core::{Device, Tensor};
use hooklens::{HookPoint, Hooked, HookedModel};

#[derive(Hooked)]
struct Layer {
    hooks: [HookPoint; 8],
    w_in: Tensor,
    w_out: Tensor,
}

#[derive(Hooked)]
struct Model {
    blocks: Vec<Layer>,
}

impl Model {
    fn new(n_layers: usize, d: usize) -> hooklens::candle_core::Result<Self> {
        let dev = Device::Cpu;
        let blocks = (0..n_layers)
            .map(|_| {
                Ok(Layer {
                    hooks: std::array::from_fn(|_| HookPoint::new()),
                    w_in: (Tensor::randn(0f32, 1.0, (d, 4 * d), &dev)? * 0.02)?,
                    w_out: (Tensor::randn(0f32, 1.0, (4 * d, d), &dev)? * 0.02)?,
                })
            })
            .collect::<hooklens::candle_core::Result<_>>()?;
        Ok(Model { blocks })
    }

    /// `[rows, d]` -> `[rows, d]`; with `hooked`, every intermediate goes through a hook point.
    fn forward(&self, x: &Tensor, hooked: bool) -> hooklens::candle_core::Result<Tensor> {
        let hp = |p: &HookPoint, t: Tensor| if hooked { p.forward(&t) } else { Ok(t) };
        let mut resid = x.clone();
        for l in &self.blocks {
            let h = &l.hooks;
            resid = hp(&h[0], resid)?;
            let pre = hp(&h[1], resid.matmul(&l.w_in)?)?;
            let pre = hp(&h[2], pre)?;
            let post = hp(&h[3], pre.gelu()?)?;
            let post = hp(&h[4], post)?;
            let out = hp(&h[5], post.matmul(&l.w_out)?)?;
            let out = hp(&h[6], out)?;
            resid = hp(&h[7], (resid + out)?)?;
        }
        Ok(resid)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> hooklens::Result<()> {
    let (n_layers, d, rows) = (12, 256, 64);
    let model = Model::new(n_layers, d)?;
    let n_points = model.hook_dict().len();
    let x = Tensor::randn(0f32, 1.0, (rows, d), &Device::Cpu)?;
    for _ in 0..5 {
        model.forward(&x, true)?;
        model.forward(&x, false)?;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        model.forward(&x, true)?;
        with.push(t.elapsed());
        let t = Instant::now();
        model.forward(&x, false)?;
        without.push(t.elapsed());
    }
    let (w, wo) = (median(with), median(without));

    // The idle cost of one call, alone.
    let p = HookPoint::new();
    let calls = 1_000_000;
    let t = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(p.forward(std::hint::black_box(&x))?);
    }
    let per_call = t.elapsed().as_nanos() as f64 / calls as f64;

    println!("model: {n_layers} layers, d={d}, {rows} rows, {n_points} hook points, none attached");
    println!(
        "forward with hook points:    {:>9.3} ms (median of 200)",
        w.as_secs_f64() * 1e3
    );
    println!(
        "forward without hook points: {:>9.3} ms (median of 200)",
        wo.as_secs_f64() * 1e3
    );
    println!("ratio: {:.4}", w.as_secs_f64() / wo.as_secs_f64());
    println!("one idle HookPoint::forward: {per_call:.1} ns");
    Ok(())
}
