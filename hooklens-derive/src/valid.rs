//! Checks on the lowered input that attribute parsing alone cannot make: the kind of
//! item, key combinations, and the names the fields will give their hook points.

use std::collections::HashMap;

use syn::spanned::Spanned;

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
        Body::Struct(fields) => validate_fields(fields, errors),
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
