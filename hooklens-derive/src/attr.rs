//! Parsing of `#[hooked(...)]` attributes.
//!
//! Parsing never stops at the first mistake: every problem goes to an [`Errors`]
//! accumulator and the parser resynchronises at the next comma, so one derive reports
//! all of its attribute mistakes at once. Checks that need more than one key or more
//! than one field (`skip` with `rename`, duplicate names) live in `valid.rs`.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Lit, LitStr, Path};

use crate::valid::Errors;

/// Keys accepted on the struct itself.
const CONTAINER_KEYS: &[&str] = &["crate", "hint"];
/// Keys accepted on a field.
const FIELD_KEYS: &[&str] = &["skip", "rename", "module", "position_axis"];

/// `#[hooked(...)]` on the struct.
#[derive(Default)]
pub struct ContainerAttrs {
    /// `crate = "path"`: where the generated code finds `__private`.
    pub krate: Option<Path>,
    /// `hint = "path::to::fn"`: called by `unknown_hook_hint`.
    pub hint: Option<Path>,
}

/// `#[hooked(...)]` on a field. Flags keep the span of their key so that later
/// checks can point at it.
#[derive(Default)]
pub struct FieldAttrs {
    /// `skip`: the field is not walked.
    pub skip: Option<Span>,
    /// `rename = "name"`: the field's path segment.
    pub rename: Option<LitStr>,
    /// `module`: walk through `Hooked` directly rather than through the probe.
    pub module: Option<Span>,
    /// `position_axis = -N` or `position_axis = None`: the position axis every hook point
    /// under the field declares (see `HookPoint::with_position_axis`).
    pub position_axis: Option<PositionAxis>,
}

/// The value of `position_axis`, with the span of what the user wrote.
pub struct PositionAxis {
    /// The axis counted from the end (`-1` to `-127`), or `None` for no position axis.
    pub axis: Option<i8>,
    /// Where the key was written, for `skip` conflicts.
    pub span: Span,
}

impl ContainerAttrs {
    /// Reads every `#[hooked]` attribute in `attrs`.
    pub fn parse(attrs: &[Attribute], errors: &mut Errors) -> Self {
        let mut out = ContainerAttrs::default();
        for attr in hooked_attrs(attrs) {
            let result = attr.parse_nested_meta(|meta| {
                let key = key_name(&meta.path);
                match key.as_str() {
                    "crate" => {
                        if let Some(path) = parse_path_value(&meta, "crate", "hooklens_core", errors)? {
                            set_once(&mut out.krate, path, &meta, "crate", errors);
                        }
                    }
                    "hint" => {
                        if let Some(path) = parse_path_value(&meta, "hint", "my_hint", errors)? {
                            set_once(&mut out.hint, path, &meta, "hint", errors);
                        }
                    }
                    _ => {
                        let msg = if FIELD_KEYS.contains(&key.as_str()) {
                            format!(
                                "`{key}` is a field attribute, it cannot be used on the struct; expected {}",
                                list(CONTAINER_KEYS)
                            )
                        } else {
                            unknown_key_message(&key, "on the struct", CONTAINER_KEYS)
                        };
                        errors.push(syn::Error::new_spanned(&meta.path, msg));
                        skip_value(&meta)?;
                    }
                }
                Ok(())
            });
            if let Err(err) = result {
                errors.push(err);
            }
        }
        out
    }
}

impl FieldAttrs {
    /// Reads every `#[hooked]` attribute in `attrs`.
    pub fn parse(attrs: &[Attribute], errors: &mut Errors) -> Self {
        let mut out = FieldAttrs::default();
        for attr in hooked_attrs(attrs) {
            let result = attr.parse_nested_meta(|meta| {
                let key = key_name(&meta.path);
                match key.as_str() {
                    "skip" => {
                        parse_flag(&meta, "skip", errors)?;
                        set_once(&mut out.skip, meta.path.span(), &meta, "skip", errors);
                    }
                    "module" => {
                        parse_flag(&meta, "module", errors)?;
                        set_once(&mut out.module, meta.path.span(), &meta, "module", errors);
                    }
                    "rename" => {
                        if let Some(lit) = parse_str_value(&meta, "rename", "name", errors)? {
                            set_once(&mut out.rename, lit, &meta, "rename", errors);
                        }
                    }
                    "position_axis" => {
                        if let Some(axis) = parse_position_axis(&meta, errors)? {
                            set_once(&mut out.position_axis, axis, &meta, "position_axis", errors);
                        }
                    }
                    _ => {
                        let msg = if CONTAINER_KEYS.contains(&key.as_str()) {
                            format!(
                                "`{key}` is a struct attribute, it cannot be used on a field; expected {}",
                                list(FIELD_KEYS)
                            )
                        } else {
                            unknown_key_message(&key, "on a field", FIELD_KEYS)
                        };
                        errors.push(syn::Error::new_spanned(&meta.path, msg));
                        skip_value(&meta)?;
                    }
                }
                Ok(())
            });
            if let Err(err) = result {
                errors.push(err);
            }
        }
        out
    }
}

fn hooked_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("hooked"))
}

/// The key as the user wrote it, for messages; `crate` is a keyword, which
/// `Path::get_ident` still reports as an identifier in nested metas.
fn key_name(path: &Path) -> String {
    match path.get_ident() {
        Some(ident) => ident.to_string(),
        None => quote::quote!(#path).to_string().replace(' ', ""),
    }
}

/// Stores the first occurrence of a key; a second one is an error at the second,
/// because the first is the one that takes effect.
fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta, key: &str, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!("duplicate `{key}` attribute"),
        ));
    } else {
        *slot = Some(value);
    }
}

/// A key that takes no value. A value given anyway is consumed so parsing can go on.
fn parse_flag(meta: &ParseNestedMeta, key: &str, errors: &mut Errors) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
        let span = meta.path.span();
        skip_value(meta)?;
        errors.push(syn::Error::new(
            span,
            format!("`{key}` takes no value: write `#[hooked({key})]`"),
        ));
    }
    Ok(())
}

/// `key = "..."`, returning `None` (after recording why) when the value is missing
/// or is not a string literal.
fn parse_str_value(
    meta: &ParseNestedMeta,
    key: &str,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<LitStr>> {
    let how = format!("write `#[hooked({key} = \"{example}\")]`");
    let Some(expr) = parse_value(meta, key, &how, errors)? else {
        return Ok(None);
    };
    match expr {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Ok(Some(lit)),
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!("expected a string literal: `{key} = \"{example}\"`"),
            ));
            Ok(None)
        }
    }
}

/// The expression after `key =`, or `None` (after recording that it needs a value and
/// `how` to write one) when there is no `=`.
fn parse_value(meta: &ParseNestedMeta, key: &str, how: &str, errors: &mut Errors) -> syn::Result<Option<Expr>> {
    if !meta.input.peek(syn::Token![=]) {
        skip_value(meta)?;
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!("`{key}` needs a value: {how}"),
        ));
        return Ok(None);
    }
    let mut expr: Expr = meta.value()?.parse()?;
    // A value passed through a `macro_rules!` fragment arrives wrapped in an invisible group.
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    Ok(Some(expr))
}

/// `position_axis = -N` (a negative integer literal from -1 to -127: the axis counted
/// from the end, as `pos_slice` and the interventions index it) or `position_axis = None`.
fn parse_position_axis(meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<Option<PositionAxis>> {
    const HOW: &str = "write `position_axis = -2` for `[batch, pos, d]`, `-3` for `[batch, pos, head, d]` \
                       (counted from the end), or `position_axis = None`";
    let span = meta.path.span();
    let Some(expr) = parse_value(meta, "position_axis", HOW, errors)? else {
        return Ok(None);
    };
    let axis = match &expr {
        Expr::Path(p) if p.path.is_ident("None") => Some(None),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr: inner,
            ..
        }) => match &**inner {
            Expr::Lit(syn::ExprLit { lit: Lit::Int(int), .. }) => int
                .base10_parse::<i16>()
                .ok()
                .filter(|n| (1..=127).contains(n))
                .map(|n| Some(-(n as i8))),
            _ => None,
        },
        _ => None,
    };
    match axis {
        Some(axis) => Ok(Some(PositionAxis { axis, span })),
        None => {
            errors.push(syn::Error::new_spanned(
                &expr,
                format!("`position_axis` is a negative axis from -1 to -127 or `None`: {HOW}"),
            ));
            Ok(None)
        }
    }
}

/// `key = "some::path"`, parsed as a path that keeps the literal's span, so that
/// an unresolved path is reported inside the attribute.
fn parse_path_value(
    meta: &ParseNestedMeta,
    key: &str,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<Path>> {
    let Some(lit) = parse_str_value(meta, key, example, errors)? else {
        return Ok(None);
    };
    match lit.parse::<Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            errors.push(syn::Error::new(
                lit.span(),
                format!(
                    "`{key}` must be a path, e.g. `{key} = \"{example}\"`, not {:?}",
                    lit.value()
                ),
            ));
            Ok(None)
        }
    }
}

/// Consumes whatever value follows an unusable key (`= expr` or `(...)`), so that
/// the next key is still parsed and its mistakes reported too.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        // Left unread, the contents would be reported as "unexpected token".
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

fn unknown_key_message(key: &str, place: &str, valid: &[&str]) -> String {
    let mut msg = format!("unknown hooked attribute `{key}` {place}; expected {}", list(valid));
    if let Some(best) = valid
        .iter()
        .filter(|v| edit_distance(key, v) <= 2)
        .min_by_key(|v| edit_distance(key, v))
    {
        msg += &format!(" (did you mean `{best}`?)");
    }
    msg
}

fn list(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Levenshtein distance; keys are a handful of short ASCII words, so the quadratic
/// table is nothing.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_naturally() {
        assert_eq!(list(&["a"]), "`a`");
        assert_eq!(list(&["a", "b", "c"]), "`a`, `b` or `c`");
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert_eq!(edit_distance("renam", "rename"), 1);
        assert!(unknown_key_message("renam", "on a field", FIELD_KEYS).ends_with("(did you mean `rename`?)"));
        assert!(!unknown_key_message("frobnicate", "on a field", FIELD_KEYS).contains("did you mean"));
    }
}
