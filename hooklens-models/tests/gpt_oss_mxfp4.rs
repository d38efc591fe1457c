//! gpt-oss checkpoints whose experts are stored in MXFP4 (`*_blocks` / `*_scales`, as
//! the published openai/gpt-oss checkpoints are): the reference checkpoint's expert
//! weights are quantised here (the encoder below), and the packed checkpoint must load
//! into exactly the model its dequantised dense weights make.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, TempDir};
use hooklens_models::convert::write_checkpoint;
use hooklens_models::{HookedTransformer, LoadOptions};

/// The FP4 (E2M1) values of the codes 0..16 (bit 3 the sign).
const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/gpt_oss/model")
}

/// A weight `w` `[E, in, out]` quantised to MXFP4: `(blocks [E, out, in/32, 16],
/// scales [E, out, in/32], dequantised [E, in, out])`. Each block of 32 inputs gets
/// the scale `2^(floor(log2 max|v|) - 2)` (so its largest value maps into [4, 8) and
/// rounds to at most 6), and each value the nearest FP4 code; the low nibble holds the
/// even input. The dequantised weight is what the packed one must load as.
fn quantise(w: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (e, n_in, n_out) = w.dims3().unwrap();
    let v = w.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
    let groups = n_in / 32;
    let mut blocks = Vec::with_capacity(e * n_out * groups * 16);
    let mut scales = Vec::with_capacity(e * n_out * groups);
    let mut deq = vec![0f32; e * n_in * n_out];
    for (x, ve) in v.iter().enumerate() {
        for r in 0..n_out {
            for g in 0..groups {
                let vals: Vec<f32> = (0..32).map(|k| ve[32 * g + k][r]).collect();
                let amax = vals.iter().fold(0f32, |m, x| m.max(x.abs()));
                let exp = if amax > 0.0 { amax.log2().floor() as i32 - 2 } else { 0 };
                scales.push((exp + 127) as u8);
                let unit = 2f32.powi(exp);
                let codes: Vec<u8> = vals
                    .iter()
                    .map(|&x| {
                        (0..16u8)
                            .min_by(|&a, &b| {
                                let (da, db) = ((FP4[a as usize] - x / unit).abs(), (FP4[b as usize] - x / unit).abs());
                                da.partial_cmp(&db).unwrap()
                            })
                            .unwrap()
                    })
                    .collect();
                for (k, &c) in codes.iter().enumerate() {
                    deq[(x * n_in + 32 * g + k) * n_out + r] = FP4[c as usize] * unit;
                }
                blocks.extend(codes.chunks(2).map(|p| p[0] | (p[1] << 4)));
            }
        }
    }
    let dev = &Device::Cpu;
    (
        Tensor::from_vec(blocks, (e, n_out, groups, 16), dev).unwrap(),
        Tensor::from_vec(scales, (e, n_out, groups), dev).unwrap(),
        Tensor::from_vec(deq, (e, n_in, n_out), dev).unwrap(),
    )
}

/// The reference config with an MXFP4 `quantization_config` of `method`.
fn config(method: &str) -> String {
    let text = std::fs::read_to_string(reference_dir().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["quantization_config"] = serde_json::json!({
        "quant_method": method,
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
    });
    cfg.to_string()
}

/// The reference weights with every expert weight dequantised (`dense`) and packed
/// (`packed`: `_blocks` / `_scales` in its place).
fn checkpoints() -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let weights = hooklens_testutil::load_tensors(reference_dir().join("model.safetensors"));
    let (mut dense, mut packed) = (weights.clone(), weights.clone());
    let mut n = 0;
    for (k, t) in &weights {
        if k.ends_with(".mlp.experts.gate_up_proj") || k.ends_with(".mlp.experts.down_proj") {
            let (blocks, scales, deq) = quantise(t);
            // The quantisation changed the weight (else this test would not tell the
            // packed path from a dense one), each value by at most a quarter of its
            // block's largest (2 units of at least 4: the clamp from (6, 8) to 6).
            let diff = max_abs_diff(&deq, t);
            let amax = t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff > 0.0 && diff <= 0.25 * amax, "{k}: {diff} (largest {amax})");
            dense.insert(k.clone(), deq);
            packed.remove(k);
            packed.insert(format!("{k}_blocks"), blocks);
            packed.insert(format!("{k}_scales"), scales);
            n += 1;
        }
    }
    assert_eq!(n, 4, "two layers of gate_up_proj and down_proj");
    (dense, packed)
}

/// Writes `tensors` (U8 kept as U8) and `config` to `dir` as one safetensors file.
fn write_packed(dir: &Path, config: &str, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn load(dir: &Path, opts: &LoadOptions) -> HookedTransformer {
    HookedTransformer::from_dir(dir, opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn tokens() -> Tensor {
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7919 + 13) % 512).collect();
    Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap()
}

#[test]
fn mxfp4_experts_load_as_their_dequantised_dense_weights() {
    let (dense, packed) = checkpoints();
    let root = TempDir::new("gpt-oss-mxfp4");
    let plain = std::fs::read_to_string(reference_dir().join("config.json")).unwrap();
    write_checkpoint(root.join("dense"), &plain, &dense, DType::F32, 1).unwrap();
    write_packed(&root.join("packed"), &config("mxfp4"), &packed);
    // Sharded: the packed tensors in the second shard.
    let sharded = root.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("config.json"), config("mxfp4")).unwrap();
    let (u8s, floats): (HashMap<_, _>, HashMap<_, _>) =
        packed.clone().into_iter().partition(|(_, t)| t.dtype() == DType::U8);
    assert_eq!(u8s.len(), 8);
    let mut map = serde_json::Map::new();
    for (file, part) in [("a.safetensors", &floats), ("b.safetensors", &u8s)] {
        candle_core::safetensors::save(part, sharded.join(file)).unwrap();
        for k in part.keys() {
            map.insert(k.clone(), file.into());
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();

    let tokens = tokens();
    for opts in [LoadOptions::no_processing(), LoadOptions::default()] {
        let want = load(&root.join("dense"), &opts).forward(&tokens).unwrap();
        // Every tensor was read (the default load refuses unread ones).
        let got = load(&root.join("packed"), &opts).forward(&tokens).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "packed vs dense");
        let got = load(&sharded, &opts).forward(&tokens).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "sharded packed vs dense");
    }
    // The weights themselves, in each load dtype (every MXFP4 value is exact in f32
    // and bf16, and these in f16 too).
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let opts = LoadOptions::no_processing().with_dtype(dtype);
        let a: HashMap<String, Tensor> = load(&root.join("dense"), &opts)
            .state_dict()
            .unwrap()
            .into_iter()
            .collect();
        let b: HashMap<String, Tensor> = load(&root.join("packed"), &opts)
            .state_dict()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(a.len(), b.len());
        for (k, t) in &a {
            assert_eq!(b[k].dtype(), dtype, "{k}");
            assert_eq!(max_abs_diff(&b[k], t), 0.0, "{k} in {dtype:?}");
        }
    }
}

#[test]
fn bad_mxfp4_checkpoints_are_errors_naming_the_tensor() {
    let (_, packed) = checkpoints();
    let root = TempDir::new("gpt-oss-mxfp4-bad");
    let opts = LoadOptions::no_processing();
    let err = |name: &str, config: &str, tensors: &HashMap<String, Tensor>| -> String {
        let dir = root.join(name);
        write_packed(&dir, config, tensors);
        match HookedTransformer::from_dir(&dir, &opts) {
            Ok(_) => panic!("{name}: loaded"),
            Err(e) => e.to_string(),
        }
    };
    let blocks = "model.layers.1.mlp.experts.down_proj_blocks";
    let scales = "model.layers.1.mlp.experts.down_proj_scales";

    let mut t = packed.clone();
    t.remove(scales);
    let e = err("no-scales", &config("mxfp4"), &t);
    assert!(e.contains(blocks) && e.contains(scales), "{e}");

    let mut t = packed.clone();
    let s = t[scales].clone();
    t.insert(scales.into(), s.narrow(1, 0, 10).unwrap());
    let e = err("short-scales", &config("mxfp4"), &t);
    assert!(e.contains(scales) && e.contains("shape"), "{e}");

    let mut t = packed.clone();
    t.insert(scales.into(), t[scales].to_dtype(DType::F32).unwrap());
    let e = err("float-scales", &config("mxfp4"), &t);
    assert!(e.contains(scales) && e.contains("U8"), "{e}");

    let mut t = packed.clone();
    t.insert(
        scales.into(),
        Tensor::full(255u8, t[scales].shape(), &Device::Cpu).unwrap(),
    );
    let e = err("nan-scales", &config("mxfp4"), &t);
    assert!(e.contains(blocks) && e.contains("255"), "{e}");

    // 6 * 2^16 is beyond f16: refused in f16, read in f32.
    let mut t = packed.clone();
    t.insert(
        scales.into(),
        Tensor::full(143u8, t[scales].shape(), &Device::Cpu).unwrap(),
    );
    let dir = root.join("beyond-f16");
    write_packed(&dir, &config("mxfp4"), &t);
    HookedTransformer::from_dir(&dir, &opts).unwrap();
    let e = HookedTransformer::from_dir(&dir, &opts.clone().with_dtype(DType::F16))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(blocks) && e.contains("f16") && e.contains("scale 143"),
        "{e}"
    );

    let e = err("gptq", &config("gptq"), &packed);
    assert!(e.contains("quant_method") && e.contains("gptq"), "{e}");
}
