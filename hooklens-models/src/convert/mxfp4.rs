//! MXFP4 expert weights, as the published gpt-oss checkpoints store them, dequantised
//! on load exactly as Hugging Face's `convert_moe_packed_tensors`
//! (`transformers/integrations/mxfp4.py`) does.
//!
//! A weight `w` `[E, in, out]` (gpt-oss's `x @ w[e]` layout) is stored transposed and
//! packed as two `U8` tensors:
//! - `{w}_blocks` `[E, out, in / 32, 16]`: each byte holds two FP4 (E2M1) codes, the
//!   **low nibble first** (input index `2 j`), the high nibble second (`2 j + 1`);
//! - `{w}_scales` `[E, out, in / 32]`: one E8M0 exponent per block of 32 inputs, the
//!   block's values being `fp4 * 2^(scale - 127)`.
//!
//! The FP4 codes `0..16` are `±{0, 0.5, 1, 1.5, 2, 3, 4, 6}` (bit 3 the sign). Every
//! decoded value has at most two significant bits, so it is exact in f32 and bf16 alike
//! (and in f16 within f16's range): no rounding happens here.

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

use crate::loading::TensorSource;

/// Values per MXFP4 block (one scale each).
pub(crate) const BLOCK: usize = 32;

/// The FP4 (E2M1) code -> value table, as in `transformers`' `FP4_VALUES`.
pub(crate) const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// `2^(scale - 127)` for an E8M0 `scale` byte; `None` for 255, which E8M0 reserves for
/// NaN (transformers' `ldexp` would make every value of the block non-finite).
pub(crate) fn e8m0(scale: u8) -> Option<f32> {
    match scale {
        255 => None,
        // 2^-127 is below f32's normal range: the subnormal with only bit 22 set.
        0 => Some(f32::from_bits(1 << 22)),
        s => Some(f32::from_bits(u32::from(s) << 23)),
    }
}

/// Dequantises `blocks` `[experts, rows, groups, 16]` and `scales`
/// `[experts, rows, groups]` (both flattened, row-major) into f32
/// `[experts, groups * 32, rows]`: what `convert_moe_packed_tensors` returns (it
/// decodes `[experts, rows, groups * 32]` and transposes the last two axes).
///
/// Errors (lengths that do not match the shape, a scale of 255, a block whose values
/// overflow f32) are messages for the caller to prefix with the tensor's name.
pub(crate) fn dequantize(
    blocks: &[u8],
    scales: &[u8],
    experts: usize,
    rows: usize,
    groups: usize,
) -> std::result::Result<Vec<f32>, String> {
    dequantize_as(blocks, scales, experts, rows, groups, "f32", |v| {
        v.is_finite().then_some(v)
    })
}

/// [`dequantize`] into the element type `T`, `convert` giving each value in `T`, or
/// `None` when it does not fit (`what` names `T` in that error). Writing the load
/// dtype directly keeps a load's peak at the dequantised weight itself: no f32 copy
/// of it on the side (8 GiB per layer of gpt-oss-120b).
fn dequantize_as<T: Copy + Default>(
    blocks: &[u8],
    scales: &[u8],
    experts: usize,
    rows: usize,
    groups: usize,
    what: &str,
    convert: impl Fn(f32) -> Option<T>,
) -> std::result::Result<Vec<T>, String> {
    let n_scales = experts * rows * groups;
    if scales.len() != n_scales || blocks.len() != n_scales * (BLOCK / 2) {
        return Err(format!(
            "{} block bytes and {} scales do not make [{experts}, {rows}, {groups}] blocks of {BLOCK}",
            blocks.len(),
            scales.len()
        ));
    }
    let cols = groups * BLOCK;
    let mut out = vec![T::default(); experts * cols * rows];
    let mut table = [None; 16];
    for (i, (&scale, block)) in scales.iter().zip(blocks.chunks_exact(BLOCK / 2)).enumerate() {
        let (er, g) = (i / groups, i % groups);
        let (e, r) = (er / rows, er % rows);
        let where_ = || format!("block [{e}, {r}, {g}]");
        let mult = e8m0(scale).ok_or_else(|| format!("{} has scale 255, which E8M0 reserves for NaN", where_()))?;
        for (t, v) in table.iter_mut().zip(FP4_VALUES) {
            *t = convert(v * mult);
        }
        // Only large scales overflow, and only with large codes: the block is refused
        // only if it uses one.
        if table[7].is_none() {
            let big = block
                .iter()
                .flat_map(|b| [b & 0x0f, b >> 4])
                .find(|&c| table[c as usize].is_none());
            if let Some(c) = big {
                return Err(format!(
                    "{} has scale {scale} and code {c} ({} * 2^{}): beyond {what}'s range",
                    where_(),
                    FP4_VALUES[c as usize],
                    i32::from(scale) - 127
                ));
            }
        }
        let table = table.map(Option::unwrap_or_default);
        // Output `[e, k, r]` with input index `k = 32 g + 2 j (+ 1 for the high nibble)`.
        let base = e * cols * rows + g * BLOCK * rows + r;
        for (j, &b) in block.iter().enumerate() {
            out[base + 2 * j * rows] = table[(b & 0x0f) as usize];
            out[base + (2 * j + 1) * rows] = table[(b >> 4) as usize];
        }
    }
    Ok(out)
}

/// Whether `src` holds the MXFP4 form of the weight `name` (its `_blocks` or its
/// `_scales`) and not the dense tensor itself.
pub(crate) fn is_packed(src: &dyn TensorSource, name: &str) -> bool {
    !src.contains(name) && (src.contains(&format!("{name}_blocks")) || src.contains(&format!("{name}_scales")))
}

/// The expert weight `name` `[experts, inputs, outputs]`, read from its MXFP4
/// `{name}_blocks` `[experts, outputs, inputs / 32, 16]` and `{name}_scales`
/// `[experts, outputs, inputs / 32]`, in the source's load dtype on `device`. Errors
/// name the tensor: one of the pair missing, `inputs` not a multiple of 32, wrong
/// shapes or dtypes, scales out of range, values beyond f16 when loading in f16.
pub(crate) fn read_packed(
    src: &dyn TensorSource,
    name: &str,
    experts: usize,
    inputs: usize,
    outputs: usize,
    device: &Device,
) -> Result<Tensor> {
    let (blocks_name, scales_name) = (format!("{name}_blocks"), format!("{name}_scales"));
    for (have, missing) in [(&blocks_name, &scales_name), (&scales_name, &blocks_name)] {
        if src.contains(have) && !src.contains(missing) {
            return Err(Error::invalid(format!(
                "checkpoint tensor `{have}` (MXFP4) has no `{missing}` beside it"
            )));
        }
    }
    if !inputs.is_multiple_of(BLOCK) {
        return Err(Error::invalid(format!(
            "checkpoint tensor `{blocks_name}`: MXFP4 packs {BLOCK} inputs per block, but the weight has {inputs} inputs"
        )));
    }
    let groups = inputs / BLOCK;
    let blocks = src.get_u8(&blocks_name, &[experts, outputs, groups, BLOCK / 2])?;
    let scales = src.get_u8(&scales_name, &[experts, outputs, groups])?;
    let bad = |e: String| Error::invalid(format!("checkpoint tensors `{blocks_name}` / `{scales_name}`: {e}"));
    let shape = (experts, inputs, outputs);
    let cpu = &Device::Cpu;
    // Every MXFP4 value is exact in f32 and bf16, and in f16 within its range.
    let t = match src.dtype() {
        DType::BF16 => Tensor::from_vec(
            dequantize_as(&blocks, &scales, experts, outputs, groups, "bf16", |v| {
                Some(half::bf16::from_f32(v)).filter(|x| x.is_finite())
            })
            .map_err(bad)?,
            shape,
            cpu,
        )?,
        DType::F16 => Tensor::from_vec(
            dequantize_as(
                &blocks,
                &scales,
                experts,
                outputs,
                groups,
                "f16 (use bf16 or f32)",
                |v| Some(half::f16::from_f32(v)).filter(|x| x.is_finite()),
            )
            .map_err(bad)?,
            shape,
            cpu,
        )?,
        dtype => Tensor::from_vec(
            dequantize(&blocks, &scales, experts, outputs, groups).map_err(bad)?,
            shape,
            cpu,
        )?
        .to_dtype(dtype)?,
    };
    Ok(t.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fp4_code_and_scales_from_2_pow_minus_3_to_3() {
        // Hand-computed: E2M1 with bias 1; code 1 is the subnormal 0.5; bit 3 the sign.
        let want = [
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
        ];
        // Block of 32: bytes 0..8 hold codes (2 b, 2 b + 1) as (low, high); bytes
        // 8..16 hold them swapped (high, low), so both nibble positions see every code.
        let mut block = Vec::new();
        for b in 0..8u8 {
            block.push((2 * b) | ((2 * b + 1) << 4));
        }
        for b in 0..8u8 {
            block.push((2 * b + 1) | ((2 * b) << 4));
        }
        for (scale, factor) in [
            (124u8, 0.125f32),
            (125, 0.25),
            (126, 0.5),
            (127, 1.0),
            (128, 2.0),
            (129, 4.0),
            (130, 8.0),
        ] {
            assert_eq!(e8m0(scale), Some(factor));
            // One expert, one row: the output is [1, 32, 1], i.e. the block in order.
            let got = dequantize(&block, &[scale], 1, 1, 1).unwrap();
            for k in 0..16 {
                assert_eq!(got[k], want[k] * factor, "scale {scale}, input {k}");
                // The second half: low nibble `2 b + 1` first.
                let code = if k % 2 == 0 { k + 1 } else { k - 1 };
                assert_eq!(got[16 + k], want[code] * factor, "scale {scale}, input {}", 16 + k);
            }
            assert!(got[8].is_sign_negative() && got[8] == 0.0, "code 8 is -0");
        }
        assert_eq!(e8m0(0), Some(2f32.powi(-127)));
        assert_eq!(e8m0(254), Some(2f32.powi(127)));
        assert_eq!(e8m0(255), None);
    }

    #[test]
    fn output_is_transposed_to_experts_inputs_outputs() {
        // 2 experts, 3 rows (outputs), 2 groups (64 inputs): value code 2 (= 1.0)
        // everywhere, scales `2^(e + 2 r + 4 g - 8)`, so each output names its block.
        let (e, r, g) = (2, 3, 2);
        let blocks = vec![0x22u8; e * r * g * 16];
        let scales: Vec<u8> = (0..e * r * g)
            .map(|i| {
                let (er, gi) = (i / g, i % g);
                (127 + er / r + 2 * (er % r) + 4 * gi - 8) as u8
            })
            .collect();
        let out = dequantize(&blocks, &scales, e, r, g).unwrap();
        assert_eq!(out.len(), e * 64 * r);
        for ei in 0..e {
            for k in 0..64 {
                for ri in 0..r {
                    let want = 2f32.powi((ei + 2 * ri + 4 * (k / 32)) as i32 - 8);
                    assert_eq!(out[(ei * 64 + k) * r + ri], want, "[{ei}, {k}, {ri}]");
                }
            }
        }
    }

    #[test]
    fn bad_scales_and_lengths_are_errors() {
        let block = [0x77u8; 16];
        let err = dequantize(&block, &[255], 1, 1, 1).unwrap_err();
        assert!(err.contains("255") && err.contains("NaN"), "{err}");
        // 6 * 2^126 overflows; 0.5 * 2^126 does not.
        let err = dequantize(&block, &[253], 1, 1, 1).unwrap_err();
        assert!(err.contains("scale 253") && err.contains("code 7"), "{err}");
        assert_eq!(
            dequantize(&[0x11u8; 16], &[253], 1, 1, 1).unwrap()[0],
            0.5 * 2f32.powi(126)
        );
        let err = dequantize(&block, &[127, 127], 1, 1, 1).unwrap_err();
        assert!(err.contains("do not make"), "{err}");
    }

    /// transformers' own `convert_moe_packed_tensors` on random blocks and scales
    /// (`scripts/mxfp4_fixture.py`), subnormal (scale 0) and near-overflow (252) ones
    /// included.
    #[test]
    fn equals_transformers_convert_moe_packed_tensors() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/mxfp4/convert_moe_packed_tensors.safetensors");
        let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let (e, r, g, _) = t["blocks"].dims4().unwrap();
        let bytes = |name: &str| t[name].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let got = dequantize(&bytes("blocks"), &bytes("scales"), e, r, g).unwrap();
        let want = t["dequantized"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(t["dequantized"].dims(), &[e, g * BLOCK, r]);
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "element {i}: {a:e} vs transformers' {b:e}");
        }
        assert!(
            want.iter().any(|&x| x != 0.0 && x.abs() < f32::MIN_POSITIVE),
            "has subnormals"
        );
    }

    /// The memory check counts `_blocks` as the values they dequantise to (two per
    /// byte) and other u8 tensors (scales) as nothing.
    #[test]
    fn load_bytes_counts_blocks_as_their_values() {
        use crate::loading::SafetensorsFile;
        let dir = std::env::temp_dir().join(format!("hooklens-mxfp4-load-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let dev = &Device::Cpu;
        let tensors = std::collections::HashMap::from([
            (
                "w_blocks".to_string(),
                Tensor::zeros((2, 3, 1, 16), DType::U8, dev).unwrap(),
            ),
            (
                "w_scales".to_string(),
                Tensor::zeros((2, 3, 1), DType::U8, dev).unwrap(),
            ),
            ("b".to_string(), Tensor::zeros(5, DType::F32, dev).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        for (dtype, size) in [(DType::F32, 4), (DType::BF16, 2)] {
            let f = SafetensorsFile::open(&path, dev, dtype).unwrap();
            assert_eq!(f.load_bytes(), (2 * 3 * 32 + 5) * size, "{dtype:?}");
            // The packed bytes come back as they are; a float read of them is refused.
            assert_eq!(f.get_u8("w_scales", &[2, 3, 1]).unwrap(), vec![0u8; 6]);
            let err = f.get("w_blocks", &[2, 3, 1, 16]).unwrap_err().to_string();
            assert!(err.contains("w_blocks") && err.contains("U8"), "{err}");
            let err = f.get_u8("b", &[5]).unwrap_err().to_string();
            assert!(err.contains("`b`") && err.contains("expected U8"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
