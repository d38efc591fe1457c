//! `Keys`: the names of a hooklens map, as an iterator that also prints itself.

/// The names of an [`ActivationCache`](crate::ActivationCache) or a
/// [`HookDict`](crate::HookDict), in order. Besides iterating, it prints as the list
/// of names, so `println!("{:?}", cache.keys())` shows them, as a Rust map's keys do.
///
/// ```
/// use hooklens::candle_core::{Device, Tensor};
/// use hooklens::ActivationCache;
///
/// let mut cache = ActivationCache::new(true);
/// cache.insert("hook_embed", Tensor::zeros((1, 2), hooklens::candle_core::DType::F32, &Device::Cpu)?);
/// cache.insert("blocks.0.hook_resid_pre", Tensor::zeros((1, 2), hooklens::candle_core::DType::F32, &Device::Cpu)?);
/// assert_eq!(format!("{:?}", cache.keys()), r#"["hook_embed", "blocks.0.hook_resid_pre"]"#);
/// assert_eq!(cache.keys().rev().next(), Some("blocks.0.hook_resid_pre"));
/// # Ok::<(), hooklens::Error>(())
/// ```
pub struct Keys<'a, T> {
    iter: std::slice::Iter<'a, T>,
    name: fn(&'a T) -> &'a str,
}

impl<'a, T> Keys<'a, T> {
    /// The names of `entries`, each read by `name`.
    pub(crate) fn new(entries: &'a [T], name: fn(&'a T) -> &'a str) -> Self {
        Keys {
            iter: entries.iter(),
            name,
        }
    }
}

impl<'a, T> Iterator for Keys<'a, T> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.iter.next().map(self.name)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
}

impl<T> DoubleEndedIterator for Keys<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.iter.next_back().map(self.name)
    }
}

impl<T> ExactSizeIterator for Keys<'_, T> {}

impl<T> std::iter::FusedIterator for Keys<'_, T> {}

// By hand: derived, both would require `T: Clone` / `T: Debug`, which the entries need not be.
impl<T> Clone for Keys<'_, T> {
    fn clone(&self) -> Self {
        Keys {
            iter: self.iter.clone(),
            name: self.name,
        }
    }
}

impl<T> std::fmt::Debug for Keys<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}
