//! `HookDict`: a model's hook points by name, in registration order.

use std::collections::HashMap;
use std::marker::PhantomData;

use crate::error::nearest_names;
use crate::{Error, HookPath, HookPoint, Hooked, Keys, NamesFilter, Result};

/// The ordered map name -> hook point of one model (TransformerLens's `hook_dict`).
/// Building it walks the model and names every point (TransformerLens's `setup()`), and
/// makes the points count their backward hooks together, as the model's (see
/// [`HookPoint::model_forward`]).
///
/// It reads as a Rust map: `dict["name"]`, [`get`](Self::get), [`keys`](Self::keys)
/// (prints as a list), [`values`](Self::values), [`iter`](Self::iter) and
/// `for (name, point) in &dict`, [`len`](Self::len), [`contains_key`](Self::contains_key).
///
/// ```
/// use hooklens::{HookPoint, Hooked, HookedModel};
///
/// #[derive(Hooked)]
/// struct Attn { hook_q: HookPoint, hook_k: HookPoint }
///
/// #[derive(Hooked)]
/// struct Model { blocks: Vec<Attn>, hook_out: HookPoint }
///
/// let model = Model {
///     blocks: vec![Attn { hook_q: HookPoint::new(), hook_k: HookPoint::new() }],
///     hook_out: HookPoint::new(),
/// };
/// let dict = model.hook_dict();
/// println!("{:?}", dict.keys()); // ["blocks.0.hook_q", "blocks.0.hook_k", "hook_out"]
/// assert_eq!(dict.len(), 3);
/// assert!(dict.contains_key("blocks.0.hook_k"));
/// assert_eq!(dict["hook_out"].id(), model.hook_out.id());
/// for (name, point) in &dict {
///     assert_eq!(&*point.name(), name);
/// }
/// ```
///
/// A point with a module spliced in (see [`crate::Splice`]), as model state or by a run
/// active on this thread, is replaced by the splice's own points, named under it.
pub struct HookDict<'m> {
    // Handles rather than borrows: a splice's points live in the splice, not the model.
    entries: Vec<(String, HookPoint)>,
    index: HashMap<String, usize>,
    _model: PhantomData<&'m ()>,
}

impl<'m> HookDict<'m> {
    /// Walks `model` and names each hook point by its path.
    pub fn build<M: Hooked + ?Sized>(model: &'m M) -> Self {
        let mut entries: Vec<(String, HookPoint)> = Vec::new();
        let mut path = HookPath::new();
        // Every point named here, spliced ones included, counts its backward hooks in
        // one count for the model (the first point's), which `grad_mode` reads.
        let mut group = None;
        model.visit_hook_points(&mut path, &mut |name, point| {
            let group = group.get_or_insert_with(|| point.bwd_group());
            point.set_name(name);
            point.join_group(group);
            match point.splice() {
                None => entries.push((name.to_string(), point.handle())),
                Some(splice) => {
                    let mut inner = HookPath::new();
                    inner.push(name);
                    splice.visit_hook_points(&mut inner, &mut |name, point| {
                        point.set_name(name);
                        point.join_group(group);
                        entries.push((name.to_string(), point.handle()));
                    });
                }
            }
        });
        let index = entries.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        HookDict {
            entries,
            index,
            _model: PhantomData,
        }
    }

    /// The number of hook points.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the model has no hook point.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hook point named `name`, if any.
    pub fn get(&self, name: &str) -> Option<&HookPoint> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Whether the model has a hook point named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Names and points in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HookPoint)> + '_ {
        self.entries.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Names in registration order (as [`HookDict::names`]; the name a Rust map uses).
    /// `{:?}` prints them as a list.
    pub fn keys(&self) -> Keys<'_, (String, HookPoint)> {
        Keys::new(&self.entries, |(n, _)| n.as_str())
    }

    /// Hook points in registration order.
    pub fn values(&self) -> impl Iterator<Item = &HookPoint> + '_ {
        self.entries.iter().map(|(_, p)| p)
    }

    /// Names in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The hook point named `name`, or an error that suggests the nearest names (or,
    /// via the model's hint, the config flag that would enable it).
    pub fn require<M: Hooked + ?Sized>(&self, model: &M, name: &str) -> Result<&HookPoint> {
        self.get(name).ok_or_else(|| self.unknown(model, name))
    }

    fn unknown<M: Hooked + ?Sized>(&self, model: &M, name: &str) -> Error {
        model.unknown_hook_hint(name).unwrap_or_else(|| Error::UnknownHook {
            name: name.to_string(),
            suggestions: nearest_names(name, self.names(), 3),
        })
    }

    /// The points a filter selects, in registration order. An exact name that does
    /// not exist, or a glob, list entry or predicate that matches nothing, is an error:
    /// a typo must not silently hook or cache nothing.
    pub fn select<M: Hooked + ?Sized>(&self, model: &M, filter: &NamesFilter) -> Result<Vec<(&str, &HookPoint)>> {
        let empty = || Error::EmptyFilter {
            filter: filter.to_string(),
        };
        match filter {
            NamesFilter::All => return Ok(self.iter().collect()),
            NamesFilter::Name(n) => {
                let p = self.require(model, n)?;
                return Ok(vec![(self.entries[self.index[n.as_str()]].0.as_str(), p)]);
            }
            NamesFilter::Names(list) => {
                for pattern in list {
                    if crate::names_filter::is_glob(pattern) {
                        if !self.names().any(|n| crate::names_filter::glob_match(pattern, n)) {
                            return Err(Error::EmptyFilter {
                                filter: format!("`{pattern}`"),
                            });
                        }
                    } else {
                        self.require(model, pattern)?;
                    }
                }
            }
            NamesFilter::Glob(_) | NamesFilter::Predicate(_) => {}
        }
        let selected: Vec<_> = self.iter().filter(|(n, _)| filter.matches(n)).collect();
        if selected.is_empty() {
            return Err(empty());
        }
        Ok(selected)
    }
}

impl std::ops::Index<&str> for HookDict<'_> {
    type Output = HookPoint;

    /// Panics when the model has no point `name`, like `HashMap`'s index; use
    /// [`HookDict::require`] for an error that suggests the nearest names.
    fn index(&self, name: &str) -> &HookPoint {
        match self.get(name) {
            Some(p) => p,
            None => panic!(
                "{}",
                Error::UnknownHook {
                    name: name.to_string(),
                    suggestions: nearest_names(name, self.names(), 3),
                }
            ),
        }
    }
}

/// One entry as stored, and as iteration hands it out.
type Entry = (String, HookPoint);
type EntryRef<'d> = (&'d str, &'d HookPoint);

impl<'d> IntoIterator for &'d HookDict<'_> {
    type Item = EntryRef<'d>;
    type IntoIter = std::iter::Map<std::slice::Iter<'d, Entry>, fn(&'d Entry) -> EntryRef<'d>>;

    fn into_iter(self) -> Self::IntoIter {
        let pair: fn(&'d Entry) -> EntryRef<'d> = |(n, p)| (n.as_str(), p);
        self.entries.iter().map(pair)
    }
}

impl std::fmt::Debug for HookDict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
