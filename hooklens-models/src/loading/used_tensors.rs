//! Which tensors of a checkpoint a load read, so that a checkpoint holding more than
//! the config describes (a config with fewer layers than the weights, say) is an error
//! naming the tensors left over rather than a model silently missing them.

use std::cell::RefCell;
use std::collections::BTreeSet;

use candle_core::{DType, Tensor};
use hooklens_core::{Error, Result};

use super::TensorSource;

/// Buffers and copies that checkpoints carry but no model reads: GPT-2's causal-mask
/// buffers, rotary frequency tables, and the unembedding of a tied model (a copy of
/// the embedding).
const NEVER_READ: [&str; 4] = [
    ".attn.bias",
    ".attn.masked_bias",
    "rotary_emb.inv_freq",
    "lm_head.weight",
];

/// A [`TensorSource`] that remembers the names read from it.
pub(crate) struct UsedTensors<'a> {
    src: &'a dyn TensorSource,
    used: RefCell<BTreeSet<String>>,
    /// Prefixes of tensors the family declared no part of the model (`allow_unread`).
    unread_ok: RefCell<Vec<String>>,
}

impl<'a> UsedTensors<'a> {
    pub(crate) fn new(src: &'a dyn TensorSource) -> Self {
        UsedTensors {
            src,
            used: RefCell::default(),
            unread_ok: RefCell::default(),
        }
    }

    /// An error naming the tensors of the source that were never read (up to five, and
    /// how many more), unless `allow`; sources that cannot list their tensors pass.
    pub(crate) fn check_all_used(&self, origin: &str, allow: bool) -> Result<()> {
        if allow {
            return Ok(());
        }
        let used = self.used.borrow();
        let unread_ok = self.unread_ok.borrow();
        let unused: Vec<String> = self
            .src
            .names()
            .into_iter()
            .filter(|n| {
                !used.contains(n)
                    && !NEVER_READ.iter().any(|s| n.ends_with(s))
                    && !unread_ok.iter().any(|p| n.starts_with(p.as_str()))
            })
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
        let more = match unused.len() - shown.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        Err(Error::invalid(format!(
            "{origin}: the checkpoint holds tensors the model does not use: `{}`{more} (does config.json \
             describe this checkpoint, its number of layers for one? LoadOptions::allow_unused_tensors \
             loads it anyway)",
            shown.join("`, `")
        )))
    }
}

impl TensorSource for UsedTensors<'_> {
    fn contains(&self, name: &str) -> bool {
        self.src.contains(name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.used.borrow_mut().insert(name.to_string());
        self.src.get(name, shape)
    }

    fn get_u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        self.used.borrow_mut().insert(name.to_string());
        self.src.get_u8(name, shape)
    }

    fn dtype(&self) -> DType {
        self.src.dtype()
    }

    fn fresh(&self) -> bool {
        self.src.fresh()
    }

    fn names(&self) -> Vec<String> {
        self.src.names()
    }

    fn allow_unread(&self, prefix: &str) {
        self.unread_ok.borrow_mut().push(prefix.to_string());
    }
}
