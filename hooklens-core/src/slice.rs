//! `Slice`: TransformerLens's `Slice`, for `pos_slice` and batch slices.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// A selection along one axis, with Python's semantics: negative indices count from
/// the end, ranges are clamped, an `Index` drops the axis (as `tensor[..., i]` does).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Slice {
    /// Everything.
    #[default]
    All,
    /// One position; the axis is removed.
    Index(isize),
    /// `start:stop:step`, each bound optional.
    Range {
        /// First index (default 0).
        start: Option<isize>,
        /// One past the last index (default the length).
        stop: Option<isize>,
        /// Stride, at least 1.
        step: usize,
    },
    /// Explicit positions, in this order.
    Indices(Vec<isize>),
}

impl Slice {
    /// `start..stop` with step 1.
    pub fn range(start: Option<isize>, stop: Option<isize>) -> Self {
        Slice::Range { start, stop, step: 1 }
    }

    /// The positions selected out of `len`, or an error when an index is out of range.
    pub fn indices(&self, len: usize) -> Result<Vec<usize>> {
        let n = len as isize;
        let fix = |i: isize| -> Result<usize> {
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                Err(Error::Slice {
                    slice: self.to_string(),
                    reason: format!("index {i} is out of range for an axis of length {len}"),
                })
            } else {
                Ok(j as usize)
            }
        };
        match self {
            Slice::All => Ok((0..len).collect()),
            Slice::Index(i) => Ok(vec![fix(*i)?]),
            Slice::Indices(v) => v.iter().map(|&i| fix(i)).collect(),
            Slice::Range { start, stop, step } => {
                if *step == 0 {
                    return Err(Error::Slice {
                        slice: self.to_string(),
                        reason: "step must be at least 1".into(),
                    });
                }
                let clamp = |i: isize| -> usize { (if i < 0 { i + n } else { i }).clamp(0, n) as usize };
                let a = start.map_or(0, clamp);
                let b = stop.map_or(len, clamp);
                Ok((a..b.max(a)).step_by(*step).collect())
            }
        }
    }

    /// Applies the slice to `t` along `dim` (negative counts from the end).
    /// Shape `[.., len, ..]` -> `[.., k, ..]`, or the axis removed for an `Index`.
    pub fn apply(&self, t: &Tensor, dim: isize) -> Result<Tensor> {
        let rank = t.rank() as isize;
        let d = if dim < 0 { dim + rank } else { dim };
        if d < 0 || d >= rank {
            return Err(Error::Slice {
                slice: self.to_string(),
                reason: format!("axis {dim} does not exist in a tensor of shape {:?}", t.shape()),
            });
        }
        let d = d as usize;
        let len = t.dim(d)?;
        let idx = self.indices(len)?;
        Ok(match self {
            Slice::All => t.clone(),
            Slice::Index(_) => t.narrow(d, idx[0], 1)?.squeeze(d)?,
            Slice::Range { step: 1, .. } => {
                let start = idx.first().copied().unwrap_or(0);
                t.narrow(d, start, idx.len())?
            }
            _ => {
                let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.to_device(t.device())?;
                // candle's index_select needs a contiguous source; a slice of a slice is not.
                t.contiguous()?.index_select(&ids, d)?
            }
        })
    }
}

impl From<isize> for Slice {
    fn from(i: isize) -> Self {
        Slice::Index(i)
    }
}

impl From<i32> for Slice {
    fn from(i: i32) -> Self {
        Slice::Index(i as isize)
    }
}

impl From<std::ops::Range<isize>> for Slice {
    fn from(r: std::ops::Range<isize>) -> Self {
        Slice::range(Some(r.start), Some(r.end))
    }
}

impl From<Vec<isize>> for Slice {
    fn from(v: Vec<isize>) -> Self {
        Slice::Indices(v)
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |o: &Option<isize>| o.map(|v| v.to_string()).unwrap_or_default();
        match self {
            Slice::All => f.write_str(":"),
            Slice::Index(i) => write!(f, "{i}"),
            Slice::Range { start, stop, step } if *step == 1 => write!(f, "{}:{}", opt(start), opt(stop)),
            Slice::Range { start, stop, step } => write!(f, "{}:{}:{}", opt(start), opt(stop), step),
            Slice::Indices(v) => {
                let parts: Vec<String> = v.iter().map(|i| i.to_string()).collect();
                write!(f, "[{}]", parts.join(","))
            }
        }
    }
}

impl FromStr for Slice {
    type Err = Error;

    /// Parses `5`, `-1`, `:`, `2:8`, `::2`, `-4:`, `[1,3,5]` or `1,3,5`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Slice {
            slice: s.to_string(),
            reason: reason.to_string(),
        };
        let int = |t: &str| -> Result<isize> {
            t.trim()
                .parse::<isize>()
                .map_err(|_| bad(&format!("`{}` is not an integer", t.trim())))
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty slice"));
        }
        if let Some(inner) = t.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| bad("missing `]`"))?;
            if inner.trim().is_empty() {
                return Ok(Slice::Indices(Vec::new()));
            }
            return Ok(Slice::Indices(inner.split(',').map(int).collect::<Result<_>>()?));
        }
        if t.contains(',') {
            return Ok(Slice::Indices(t.split(',').map(int).collect::<Result<_>>()?));
        }
        if t.contains(':') {
            let parts: Vec<&str> = t.split(':').collect();
            if parts.len() > 3 {
                return Err(bad("at most two `:`"));
            }
            let bound = |p: &str| -> Result<Option<isize>> {
                if p.trim().is_empty() {
                    Ok(None)
                } else {
                    int(p).map(Some)
                }
            };
            let step = match parts.get(2) {
                Some(p) if !p.trim().is_empty() => {
                    let v = int(p)?;
                    if v < 1 {
                        return Err(bad("step must be at least 1"));
                    }
                    v as usize
                }
                _ => 1,
            };
            let (start, stop) = (bound(parts[0])?, bound(parts[1])?);
            if start.is_none() && stop.is_none() && step == 1 {
                return Ok(Slice::All);
            }
            return Ok(Slice::Range { start, stop, step });
        }
        Ok(Slice::Index(int(t)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in ["5", "-1", ":", "2:8", "::2", "-4:", "[1,3,5]", ":3"] {
            let parsed: Slice = s.parse().unwrap();
            let again: Slice = parsed.to_string().parse().unwrap();
            assert_eq!(parsed, again, "{s}");
        }
        assert_eq!("1,2".parse::<Slice>().unwrap(), Slice::Indices(vec![1, 2]));
        assert!("1:2:0".parse::<Slice>().is_err());
        assert!("a".parse::<Slice>().is_err());
        assert!("1:2:3:4".parse::<Slice>().is_err());
        assert!("".parse::<Slice>().is_err());
    }

    #[test]
    fn indices_follow_python() {
        assert_eq!(Slice::Index(-1).indices(5).unwrap(), vec![4]);
        assert_eq!(Slice::range(Some(-3), None).indices(5).unwrap(), vec![2, 3, 4]);
        assert_eq!(Slice::range(Some(4), Some(2)).indices(5).unwrap(), Vec::<usize>::new());
        assert_eq!(Slice::range(None, Some(100)).indices(3).unwrap(), vec![0, 1, 2]);
        let stepped = Slice::Range {
            start: None,
            stop: None,
            step: 2,
        };
        assert_eq!(stepped.indices(5).unwrap(), vec![0, 2, 4]);
        assert!(Slice::Index(5).indices(5).is_err());
        assert!(Slice::Indices(vec![0, -6]).indices(5).is_err());
    }

    #[test]
    fn apply_selects_and_drops_axes() {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let last = Slice::Index(-1).apply(&t, -2).unwrap();
        assert_eq!(last.dims(), &[2, 4]);
        assert_eq!(last.to_vec2::<f32>().unwrap()[0], vec![8., 9., 10., 11.]);
        let picked = Slice::Indices(vec![2, 0]).apply(&t, -2).unwrap();
        assert_eq!(picked.dims(), &[2, 2, 4]);
        assert_eq!(picked.to_vec3::<f32>().unwrap()[1][1], vec![12., 13., 14., 15.]);
        assert!(Slice::Index(0)
            .apply(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(), -2)
            .is_err());
    }
}
