//! Checks on the lowered input that attribute parsing alone cannot make: the kind of
//! item, key combinations, and the names the fields will give their hook points.

use std::collections::{HashMap, HashSet};

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{GenericParam, Generics, Ident, Type, TypeParamBound, WherePredicate};

use crate::ast::{Body, Field, Input};

/// Accumulates errors so that a derive reports every mistake in one compile
/// instead of one per edit-compile cycle.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// Records one more error.
    pub fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    /// All recorded errors as one, or `Ok` if there were none.
    pub fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Validates `input`, recording every problem found in `errors`.
pub fn validate(input: &Input, errors: &mut Errors) {
    match &input.body {
        Body::Struct(fields) => {
            validate_fields(fields, errors);
            validate_generic_fields(input.generics, fields, errors);
        }
        Body::Enum(token) => errors.push(syn::Error::new(
            token.span(),
            "Hooked can only be derived for structs: an enum's variants do not share a fixed set of hook points",
        )),
        Body::Union(token) => errors.push(syn::Error::new(
            token.span(),
            "Hooked can only be derived for structs: a union's fields cannot be walked safely",
        )),
    }
}

fn validate_fields(fields: &[Field], errors: &mut Errors) {
    for field in fields {
        if field.attrs.skip.is_some() {
            // Both orders of writing the pair point at the key that has no effect.
            if let Some(lit) = &field.attrs.rename {
                errors.push(syn::Error::new(
                    lit.span(),
                    "`rename` has no effect with `skip`: a skipped field has no hook points to name",
                ));
            }
            if let Some(span) = field.attrs.module {
                errors.push(syn::Error::new(
                    span,
                    "`module` has no effect with `skip`: a skipped field is not walked",
                ));
            }
            if let Some(axis) = &field.attrs.position_axis {
                errors.push(syn::Error::new(
                    axis.span,
                    "`position_axis` has no effect with `skip`: a skipped field has no hook points",
                ));
            }
        }
        if let Some(lit) = &field.attrs.rename {
            if let Some(problem) = rename_problem(&field.name) {
                errors.push(syn::Error::new(lit.span(), problem));
            }
        }
    }

    // Skipped fields contribute no segment, so they can share a name with anything.
    let mut seen: HashMap<&str, &Field> = HashMap::new();
    for field in fields.iter().filter(|f| f.attrs.skip.is_none()) {
        if let Some(first) = seen.get(field.name.as_str()) {
            errors.push(syn::Error::new(
                field.name_span(),
                format!(
                    "two hook points/modules named `{}` (the first is field `{}`); rename or skip one of them",
                    field.name,
                    member_name(first)
                ),
            ));
        } else {
            seen.insert(&field.name, field);
        }
    }
}

/// A field whose type involves a type parameter with no `Hooked` bound is walked
/// through the probe, which cannot see the parameter's impls: it would be skipped even
/// when the parameter is a hooked module, and its hook points lost without a word.
/// Such a field must say which it is (`module` or `skip`).
fn validate_generic_fields(generics: &Generics, fields: &[Field], errors: &mut Errors) {
    let unbounded = unbounded_type_params(generics);
    if unbounded.is_empty() {
        return;
    }
    for field in fields {
        if field.attrs.skip.is_some() || field.attrs.module.is_some() || is_phantom(field.ty) {
            continue;
        }
        let mut found = Vec::new();
        mentioned(field.ty.to_token_stream(), &unbounded, &mut found);
        let Some(param) = found.first() else { continue };
        let ty = field
            .ty
            .to_token_stream()
            .to_string()
            .replace(" < ", "<")
            .replace(" >", ">");
        errors.push(syn::Error::new(
            field.ty.span(),
            format!(
                "field `{}` has type `{ty}`, and `{param}` has no `Hooked` bound: the derive cannot tell \
                 whether it holds hook points, and would skip them silently; write `#[hooked(module)]` to \
                 walk it (the impl then requires `{ty}: Hooked`) or `#[hooked(skip)]` if it holds none",
                member_name(field)
            ),
        ));
    }
}

/// The struct's type parameters that are not bounded by a trait named `Hooked`
/// (inline or in the where clause). A bound through another trait that has `Hooked`
/// as a supertrait cannot be seen from here; such a field takes `module`.
fn unbounded_type_params(generics: &Generics) -> Vec<Ident> {
    let is_hooked = |b: &TypeParamBound| match b {
        TypeParamBound::Trait(t) => t.path.segments.last().is_some_and(|s| s.ident == "Hooked"),
        _ => false,
    };
    let mut bounded: HashSet<Ident> = HashSet::new();
    for param in &generics.params {
        if let GenericParam::Type(p) = param {
            if p.bounds.iter().any(is_hooked) {
                bounded.insert(p.ident.clone());
            }
        }
    }
    for predicate in generics.where_clause.iter().flat_map(|w| &w.predicates) {
        if let WherePredicate::Type(p) = predicate {
            if let Type::Path(tp) = &p.bounded_ty {
                if let (None, Some(ident)) = (&tp.qself, tp.path.get_ident()) {
                    if p.bounds.iter().any(is_hooked) {
                        bounded.insert(ident.clone());
                    }
                }
            }
        }
    }
    generics
        .type_params()
        .map(|p| p.ident.clone())
        .filter(|i| !bounded.contains(i))
        .collect()
}

/// `PhantomData<T>` holds nothing, whatever `T` is.
fn is_phantom(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) => tp.path.segments.last().is_some_and(|s| s.ident == "PhantomData"),
        _ => false,
    }
}

/// The parameters among `params` that `tokens` names, in order of appearance.
/// Token-level, as `expand::mentions_any`: it sees into macro types too.
fn mentioned(tokens: TokenStream, params: &[Ident], out: &mut Vec<Ident>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(ident) => {
                if params.contains(&ident) && !out.contains(&ident) {
                    out.push(ident);
                }
            }
            TokenTree::Group(group) => mentioned(group.stream(), params, out),
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}

/// Why `name` cannot be a path segment, if it cannot. Hook names are looked up by
/// splitting on '.', and TransformerLens names never contain spaces.
fn rename_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a hook path segment cannot be empty".to_owned())
    } else if name.contains('.') {
        Some(format!(
            "`{name}` contains '.', which separates hook path segments; rename gives a single segment"
        ))
    } else if name.chars().any(char::is_whitespace) {
        Some(format!(
            "`{name}` contains whitespace, which a hook path segment cannot"
        ))
    } else {
        None
    }
}

fn member_name(field: &Field) -> String {
    match &field.member {
        syn::Member::Named(ident) => ident.to_string(),
        syn::Member::Unnamed(index) => index.index.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::rename_problem;

    #[test]
    fn renames_must_be_one_clean_segment() {
        assert_eq!(rename_problem("hook_q"), None);
        assert_eq!(rename_problem("0"), None);
        assert!(rename_problem("").is_some());
        assert!(rename_problem("a.b").is_some());
        assert!(rename_problem("a b").is_some());
        assert!(rename_problem("a\tb").is_some());
    }
}
