//! The `Hooked` trait: a module that knows where its hook points are.
//!
//! `#[derive(Hooked)]` implements it for model structs. Containers of hooked modules
//! (`Vec`, arrays, `Option`, `Box`, `Arc`) are hooked too, so a `Vec<Block>` field
//! names its points `blocks.0.…`, `blocks.1.…`, and an `Option` adds no segment.

use std::sync::Arc;

use crate::HookPoint;

/// A module whose hook points can be walked in registration order, each with its
/// full path. This is all a model needs to get the whole TransformerLens hook API
/// (see [`crate::HookedModel`], implemented for every `Hooked` type).
pub trait Hooked {
    /// Calls `visitor(name, point)` for every hook point under `self`, in the order
    /// TransformerLens would register them (field order), with `path` as the prefix.
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint));

    /// Why `name` is not a hook point of this model, when the model knows better than
    /// "unknown" (e.g. a point switched off by a config flag). `None` by default.
    fn unknown_hook_hint(&self, name: &str) -> Option<crate::Error> {
        let _ = name;
        None
    }
}

/// The dotted path of the module being walked (`blocks.3.attn`), built segment by
/// segment without reallocating.
#[derive(Debug, Default, Clone)]
pub struct HookPath {
    path: String,
    marks: Vec<usize>,
}

impl HookPath {
    /// An empty path: the model's root.
    pub fn new() -> Self {
        Self::default()
    }

    /// Descends into `segment` (a field name or an index).
    pub fn push(&mut self, segment: &str) {
        self.marks.push(self.path.len());
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(segment);
    }

    /// Descends into index `i` of a sequence.
    pub fn push_index(&mut self, i: usize) {
        use std::fmt::Write;
        self.marks.push(self.path.len());
        if !self.path.is_empty() {
            self.path.push('.');
        }
        let _ = write!(self.path, "{i}");
    }

    /// Returns to the parent module.
    pub fn pop(&mut self) {
        if let Some(len) = self.marks.pop() {
            self.path.truncate(len);
        }
    }

    /// The current path.
    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl Hooked for HookPoint {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        visitor(path.as_str(), self);
    }
}

impl<T: Hooked> Hooked for Vec<T> {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        self.as_slice().visit_hook_points(path, visitor)
    }
}

impl<T: Hooked> Hooked for [T] {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        for (i, item) in self.iter().enumerate() {
            path.push_index(i);
            item.visit_hook_points(path, visitor);
            path.pop();
        }
    }
}

impl<T: Hooked, const N: usize> Hooked for [T; N] {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        self.as_slice().visit_hook_points(path, visitor)
    }
}

impl<T: Hooked> Hooked for Option<T> {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        if let Some(inner) = self {
            inner.visit_hook_points(path, visitor);
        }
    }
}

impl<T: Hooked + ?Sized> Hooked for Box<T> {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        (**self).visit_hook_points(path, visitor)
    }

    fn unknown_hook_hint(&self, name: &str) -> Option<crate::Error> {
        (**self).unknown_hook_hint(name)
    }
}

impl<T: Hooked + ?Sized> Hooked for Arc<T> {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        (**self).visit_hook_points(path, visitor)
    }

    fn unknown_hook_hint(&self, name: &str) -> Option<crate::Error> {
        (**self).unknown_hook_hint(name)
    }
}

impl<T: Hooked + ?Sized> Hooked for &T {
    fn visit_hook_points<'a>(&'a self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
        (**self).visit_hook_points(path, visitor)
    }

    fn unknown_hook_hint(&self, name: &str) -> Option<crate::Error> {
        (**self).unknown_hook_hint(name)
    }
}

/// Support for the code `#[derive(Hooked)]` generates. Not public API.
#[doc(hidden)]
pub mod probe {
    use super::{HookPath, Hooked};
    use crate::HookPoint;

    /// Wraps a field so that method resolution can pick "walk it" when its type is
    /// `Hooked` and "skip it" otherwise (autoref specialisation), which is how the
    /// derive ignores `Linear`, `LayerNorm` or config fields without annotations.
    pub struct Probe<'a, T: ?Sized>(pub &'a T);

    /// Chosen when the field's type is `Hooked`.
    pub trait ProbeHooked<'a> {
        /// Walks the field.
        fn __hooklens_visit(&self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint));
    }

    impl<'a, T: Hooked + ?Sized> ProbeHooked<'a> for Probe<'a, T> {
        fn __hooklens_visit(&self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint)) {
            self.0.visit_hook_points(path, visitor)
        }
    }

    /// Chosen for every other field: nothing to walk.
    pub trait ProbeOther<'a> {
        /// Does nothing.
        fn __hooklens_visit(&self, path: &mut HookPath, visitor: &mut dyn FnMut(&str, &'a HookPoint));
    }

    impl<'a, T: ?Sized> ProbeOther<'a> for &Probe<'a, T> {
        fn __hooklens_visit(&self, _path: &mut HookPath, _visitor: &mut dyn FnMut(&str, &'a HookPoint)) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_pushes_and_pops() {
        let mut p = HookPath::new();
        p.push("blocks");
        p.push_index(3);
        p.push("attn");
        assert_eq!(p.as_str(), "blocks.3.attn");
        p.pop();
        p.pop();
        assert_eq!(p.as_str(), "blocks");
        p.pop();
        assert_eq!(p.as_str(), "");
    }

    #[test]
    fn containers_name_by_index_and_option_adds_nothing() {
        let v = vec![HookPoint::new(), HookPoint::new()];
        let o = Some(HookPoint::new());
        let mut names = Vec::new();
        let mut path = HookPath::new();
        path.push("v");
        v.visit_hook_points(&mut path, &mut |n, _| names.push(n.to_string()));
        path.pop();
        path.push("o");
        o.visit_hook_points(&mut path, &mut |n, _| names.push(n.to_string()));
        assert_eq!(names, ["v.0", "v.1", "o"]);
    }
}
