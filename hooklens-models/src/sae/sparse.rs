//! Feature activations stored sparsely: the `k` largest of each position, as `harvest
//! --sae` writes them.

use candle_core::{DType, Device, Tensor};
use hooklens_core::{Error, Result};

/// The `k` largest activations of each position of `acts` `[.., d_sae]`: `(indices,
/// values)`, both `[.., k]`, largest first (ties by lower index); indices are `i64`,
/// values keep `acts`' dtype. Positions with fewer than `k` nonzero features are padded
/// with index `-1` and value `0`, so a reader can drop the padding by index alone.
pub fn sparse_top_k(acts: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let dims = acts.dims();
    let Some((&d_sae, lead)) = dims.split_last() else {
        return Err(Error::invalid("sparse_top_k: activations must have a feature axis"));
    };
    if k == 0 {
        return Err(Error::invalid("sparse_top_k: k must be at least 1"));
    }
    let rows: usize = lead.iter().product();
    let values = acts
        .to_dtype(DType::F32)?
        .reshape((rows, d_sae))?
        .to_device(&Device::Cpu)?;
    let values = values.to_vec2::<f32>()?;
    let mut idx = Vec::with_capacity(rows * k);
    let mut val = Vec::with_capacity(rows * k);
    let mut order: Vec<usize> = Vec::with_capacity(d_sae);
    for row in &values {
        order.clear();
        order.extend((0..d_sae).filter(|&j| row[j] != 0.0));
        let keep = k.min(order.len());
        if keep < order.len() {
            order.select_nth_unstable_by(keep, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(keep);
        }
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        idx.extend(order.iter().map(|&j| j as i64));
        val.extend(order.iter().map(|&j| row[j]));
        idx.extend(std::iter::repeat_n(-1i64, k - keep));
        val.extend(std::iter::repeat_n(0f32, k - keep));
    }
    let mut shape = lead.to_vec();
    shape.push(k);
    let indices = Tensor::from_vec(idx, shape.as_slice(), &Device::Cpu)?;
    let values = Tensor::from_vec(val, shape.as_slice(), &Device::Cpu)?.to_dtype(acts.dtype())?;
    Ok((indices, values))
}

/// The dense `[.., d_sae]` activations of a [`sparse_top_k`] pair (indices `[.., k]`
/// `i64`, `-1` for padding; values `[.., k]`). An index outside `0..d_sae` is an error.
pub fn dense_from_sparse(indices: &Tensor, values: &Tensor, d_sae: usize) -> Result<Tensor> {
    if indices.dims() != values.dims() {
        return Err(Error::invalid(format!(
            "dense_from_sparse: indices {:?} and values {:?} differ in shape",
            indices.dims(),
            values.dims()
        )));
    }
    let dims = indices.dims();
    let Some((&k, lead)) = dims.split_last() else {
        return Err(Error::invalid("dense_from_sparse: indices must have a k axis"));
    };
    let rows: usize = lead.iter().product();
    let idx = indices.to_dtype(DType::I64)?.reshape((rows, k))?.to_vec2::<i64>()?;
    let val = values.to_dtype(DType::F32)?.reshape((rows, k))?.to_vec2::<f32>()?;
    let mut dense = vec![0f32; rows * d_sae];
    for (r, (ir, vr)) in idx.iter().zip(&val).enumerate() {
        for (&j, &v) in ir.iter().zip(vr) {
            if j == -1 {
                continue;
            }
            let j = usize::try_from(j)
                .ok()
                .filter(|&j| j < d_sae)
                .ok_or_else(|| Error::invalid(format!("dense_from_sparse: index {j} outside 0..{d_sae}")))?;
            dense[r * d_sae + j] = v;
        }
    }
    let mut shape = lead.to_vec();
    shape.push(d_sae);
    Ok(Tensor::from_vec(dense, shape.as_slice(), &Device::Cpu)?.to_dtype(values.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_largest_in_order_and_pads() {
        let acts = Tensor::new(&[[[0f32, 3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.5, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let (i, v) = sparse_top_k(&acts, 2).unwrap();
        assert_eq!(i.to_vec3::<i64>().unwrap(), [[[1, 4], [2, -1]]]);
        assert_eq!(v.to_vec3::<f32>().unwrap(), [[[3.0, 2.0], [0.5, 0.0]]]);
        let back = dense_from_sparse(&i, &v, 5).unwrap();
        assert_eq!(
            back.to_vec3::<f32>().unwrap(),
            [[[0.0, 3.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.5, 0.0, 0.0]]]
        );
        // k at least the active count: the round trip is exact.
        let (i, v) = sparse_top_k(&acts, 5).unwrap();
        assert_eq!(
            dense_from_sparse(&i, &v, 5).unwrap().to_vec3::<f32>().unwrap(),
            acts.to_vec3::<f32>().unwrap()
        );
        let bad = Tensor::new(&[[7i64]], &Device::Cpu).unwrap();
        let err = dense_from_sparse(&bad, &Tensor::new(&[[1f32]], &Device::Cpu).unwrap(), 5).unwrap_err();
        assert!(err.to_string().contains("index 7 outside 0..5"), "{err}");
    }
}
