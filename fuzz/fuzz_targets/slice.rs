//! `Slice::from_str`: any text parses or is an error; what parses prints back to text
//! that parses to the same slice; its indices are in range for every axis length, and
//! applying it to a tensor gives the shape those indices say.
#![no_main]

use candle_core::{DType, Device, Tensor};
use hooklens_core::Slice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(slice) = text.parse::<Slice>() else {
        return;
    };
    let printed = slice.to_string();
    let again: Slice = printed
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} parsed to {slice:?}, printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, slice, "{text:?} -> {printed:?}");
    for len in 0..6usize {
        let Ok(idx) = slice.indices(len) else {
            continue;
        };
        assert!(idx.iter().all(|&i| i < len), "{slice:?} on {len}: {idx:?}");
        let t = Tensor::zeros((2, len, 3), DType::F32, &Device::Cpu).expect("a tensor");
        let out = slice
            .apply(&t, 1)
            .unwrap_or_else(|e| panic!("{slice:?} on {len}: indices ok, apply fails: {e}"));
        let expected: Vec<usize> = match slice {
            Slice::Index(_) => vec![2, 3],
            _ => vec![2, idx.len(), 3],
        };
        assert_eq!(out.dims(), expected.as_slice(), "{slice:?} on {len}");
    }
    let t = Tensor::zeros(4, DType::F32, &Device::Cpu).expect("a tensor");
    let _ = slice.apply(&t, 3);
    let _ = slice.apply(&t, -2);
});
