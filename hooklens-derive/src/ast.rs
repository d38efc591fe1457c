//! The derive input as the rest of the macro sees it: a struct with its parsed
//! attributes and, for each field, the segment it will contribute to hook names.
//!
//! Building this never fails. Attribute mistakes are recorded in [`Errors`] and the
//! IR is still produced, so validation can report its own findings in the same run
//! and the error path can still emit a stub impl for the right type.

use syn::{Data, DeriveInput, Fields, Generics, Ident, Index, Member, Type};

use crate::attr::{ContainerAttrs, FieldAttrs};
use crate::valid::Errors;

/// The whole derive input.
pub struct Input<'a> {
    /// The struct's name.
    pub ident: &'a Ident,
    /// Its generics, kept as written for `split_for_impl`.
    pub generics: &'a Generics,
    /// `#[hooked(...)]` on the struct.
    pub attrs: ContainerAttrs,
    /// The fields, or what stands in their place.
    pub body: Body<'a>,
}

/// What the derive was applied to. Enums and unions are kept (rather than rejected
/// here) so that validation owns every message.
pub enum Body<'a> {
    /// Any struct: named, tuple (fields named by index) or unit (no fields).
    Struct(Vec<Field<'a>>),
    /// The `enum` keyword, where the error points.
    Enum(syn::token::Enum),
    /// The `union` keyword, where the error points.
    Union(syn::token::Union),
}

/// One field of the struct.
pub struct Field<'a> {
    /// The field as written, for spans.
    pub original: &'a syn::Field,
    /// `#[hooked(...)]` on the field.
    pub attrs: FieldAttrs,
    /// `self.<member>`: the name or the tuple index.
    pub member: Member,
    /// The field's type, for `module` bounds and their error spans.
    pub ty: &'a Type,
    /// The path segment: the rename if any, else the field name or index.
    pub name: String,
}

impl<'a> Input<'a> {
    /// Lowers `node`, recording attribute mistakes in `errors`.
    pub fn from_syn(node: &'a DeriveInput, errors: &mut Errors) -> Self {
        let attrs = ContainerAttrs::parse(&node.attrs, errors);
        let body = match &node.data {
            Data::Struct(data) => Body::Struct(fields(&data.fields, errors)),
            Data::Enum(data) => Body::Enum(data.enum_token),
            Data::Union(data) => Body::Union(data.union_token),
        };
        Input {
            ident: &node.ident,
            generics: &node.generics,
            attrs,
            body,
        }
    }

    /// The path that generated code reaches hooklens through (`::hooklens` unless
    /// `#[hooked(crate = "...")]` says otherwise).
    pub fn krate(&self) -> syn::Path {
        self.attrs
            .krate
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::hooklens))
    }
}

fn fields<'a>(fields: &'a Fields, errors: &mut Errors) -> Vec<Field<'a>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let attrs = FieldAttrs::parse(&field.attrs, errors);
            let member = match &field.ident {
                Some(ident) => Member::Named(ident.clone()),
                None => {
                    let mut index = Index::from(i);
                    index.span = syn::spanned::Spanned::span(&field.ty);
                    Member::Unnamed(index)
                }
            };
            let name = match (&attrs.rename, &field.ident) {
                (Some(lit), _) => lit.value(),
                // A raw identifier (`r#type`) names its hook point without the escape,
                // which is only Rust syntax.
                (None, Some(ident)) => syn::ext::IdentExt::unraw(ident).to_string(),
                (None, None) => i.to_string(),
            };
            Field {
                original: field,
                attrs,
                member,
                ty: &field.ty,
                name,
            }
        })
        .collect()
}

impl Field<'_> {
    /// Where messages about this field's name point: the rename literal if there
    /// is one, since that is what produced the name, else the field itself.
    pub fn name_span(&self) -> proc_macro2::Span {
        match (&self.attrs.rename, &self.original.ident) {
            (Some(lit), _) => lit.span(),
            (None, Some(ident)) => ident.span(),
            (None, None) => syn::spanned::Spanned::span(&self.original.ty),
        }
    }
}
