//! Code generation for `impl Hooked`.
//!
//! Every name the generated code uses is an absolute path (`::core::…` or
//! `<crate>::__private::…`), because the expansion lands in the user's module, where
//! `HookPoint`, `Option` or `Hooked` may mean something else.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Generics, Type};

use crate::ast::{Body, Field, Input};

/// The full impl for a valid input.
pub fn derive(input: &Input) -> TokenStream {
    let krate = input.krate();
    let private = quote!(#krate::__private);
    let ident = input.ident;

    let fields: &[Field] = match &input.body {
        Body::Struct(fields) => fields,
        // Validation rejects these; the stub keeps the caller compiling.
        Body::Enum(_) | Body::Union(_) => return stub(input),
    };
    let walked: Vec<&Field> = fields.iter().filter(|f| f.attrs.skip.is_none()).collect();

    let generics = with_module_bounds(input.generics, &walked, &private);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

    // The method's lifetime must not collide with a lifetime parameter of the struct.
    let lt = syn::Lifetime::new("'__hooklens_a", Span::call_site());
    let (path, visitor) = if walked.is_empty() {
        (quote!(_path), quote!(_visitor))
    } else {
        (quote!(__hooklens_path), quote!(__hooklens_visitor))
    };

    let steps = walked.iter().map(|field| {
        let name = &field.name;
        let member = &field.member;
        let walk = if field.attrs.module.is_some() {
            // Spanned at the field type, so that "`T: Hooked` is not satisfied" points
            // at the field that asked for it.
            quote_spanned! {field.ty.span()=>
                #private::Hooked::visit_hook_points(&self.#member, #path, #visitor);
            }
        } else {
            quote! {
                (&#private::Probe(&self.#member)).__hooklens_visit(#path, #visitor);
            }
        };
        let walk = match &field.attrs.position_axis {
            None => walk,
            Some(declared) => {
                let axis = match declared.axis {
                    Some(a) => {
                        let a = a as isize;
                        quote!(::core::option::Option::Some(#a))
                    }
                    None => quote!(::core::option::Option::None),
                };
                // Every point reached through this field declares the axis as the walk
                // names it (unless it declared one already: nearest wins), so a point
                // made with `HookPoint::new()` slices right too.
                quote! {
                    {
                        let __hooklens_outer = &mut *#visitor;
                        let #visitor = &mut |__hooklens_name: &::core::primitive::str,
                                             __hooklens_point: &#lt #private::HookPoint| {
                            #private::declare_position_axis(__hooklens_point, #axis);
                            __hooklens_outer(__hooklens_name, __hooklens_point)
                        };
                        #walk
                    }
                }
            }
        };
        quote! {
            #path.push(#name);
            #walk
            #path.pop();
        }
    });

    // Only imported when used: an unused import in generated code would warn in the
    // user's crate.
    let probe_traits = walked.iter().any(|f| f.attrs.module.is_none()).then(|| {
        quote! {
            use #private::{ProbeHooked as _, ProbeOther as _};
        }
    });

    let hint = input.attrs.hint.as_ref().map(|hint| {
        quote! {
            fn unknown_hook_hint(
                &self,
                __hooklens_name: &::core::primitive::str,
            ) -> ::core::option::Option<#private::Error> {
                #hint(self, __hooklens_name)
            }
        }
    });

    quote! {
        #[automatically_derived]
        impl #impl_generics #private::Hooked for #ident #ty_generics #where_clause {
            fn visit_hook_points<#lt>(
                &#lt self,
                #path: &mut #private::HookPath,
                #visitor: &mut dyn ::core::ops::FnMut(&::core::primitive::str, &#lt #private::HookPoint),
            ) {
                #probe_traits
                #(#steps)*
            }

            #hint
        }
    }
}

/// What is emitted next to the `compile_error!`s: an impl that does nothing, so that
/// uses of the type elsewhere do not add "`Hooked` is not implemented" errors to the
/// real one.
pub fn stub(input: &Input) -> TokenStream {
    let krate = input.krate();
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #krate::__private::Hooked for #ident #ty_generics #where_clause {
            fn visit_hook_points<'__hooklens_a>(
                &'__hooklens_a self,
                _path: &mut #krate::__private::HookPath,
                _visitor: &mut dyn ::core::ops::FnMut(&::core::primitive::str, &'__hooklens_a #krate::__private::HookPoint),
            ) {
            }
        }
    }
}

/// Adds `FieldType: Hooked` for every `module` field whose type involves a type or
/// const parameter. Those are the fields the impl cannot check on its own; a
/// concrete type is left unbounded so that, if it is not `Hooked`, the error is
/// reported at the field rather than at every use of the struct.
fn with_module_bounds(generics: &Generics, walked: &[&Field], private: &TokenStream) -> Generics {
    let params: Vec<&Ident> = generics
        .params
        .iter()
        .filter_map(|param| match param {
            syn::GenericParam::Type(p) => Some(&p.ident),
            syn::GenericParam::Const(p) => Some(&p.ident),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    let mut generics = generics.clone();
    if params.is_empty() {
        return generics;
    }
    for field in walked.iter().filter(|f| f.attrs.module.is_some()) {
        if mentions_any(field.ty, &params) {
            let ty = field.ty;
            generics
                .make_where_clause()
                .predicates
                .push(syn::parse_quote!(#ty: #private::Hooked));
        }
    }
    generics
}

/// Whether `ty` names any of `params`. Token-level, so it also sees parameters
/// inside macro types and associated-type projections; a false positive (a path
/// segment that happens to share a parameter's name) only adds a redundant bound.
fn mentions_any(ty: &Type, params: &[&Ident]) -> bool {
    fn walk(tokens: TokenStream, params: &[&Ident]) -> bool {
        tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(ident) => params.iter().any(|p| **p == ident),
            TokenTree::Group(group) => walk(group.stream(), params),
            TokenTree::Punct(_) | TokenTree::Literal(_) => false,
        })
    }
    walk(ty.to_token_stream(), params)
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;
    use syn::DeriveInput;

    use crate::ast::Input;
    use crate::valid::Errors;

    fn where_clause(src: &str) -> String {
        let node: DeriveInput = syn::parse_str(src).unwrap();
        let mut errors = Errors::default();
        let input = Input::from_syn(&node, &mut errors);
        errors.finish().unwrap();
        let crate::ast::Body::Struct(fields) = &input.body else {
            unreachable!()
        };
        let walked: Vec<_> = fields.iter().filter(|f| f.attrs.skip.is_none()).collect();
        let generics = super::with_module_bounds(input.generics, &walked, &quote::quote!(P));
        generics
            .where_clause
            .map(|w| w.to_token_stream().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn module_fields_over_parameters_get_a_bound_and_concrete_ones_do_not() {
        let src = "struct S<'a, T, U, const N: usize> {
            #[hooked(module)] a: Vec<T>,
            #[hooked(module)] b: [Inner; N],
            #[hooked(module)] c: &'a Concrete,
            #[hooked(module, skip)] d: U,
            e: U,
        }";
        assert_eq!(
            where_clause(src),
            "where Vec < T > : P :: Hooked , [Inner ; N] : P :: Hooked"
        );
    }

    #[test]
    fn existing_where_clauses_are_extended() {
        let src = "struct S<T> where T: Clone { #[hooked(module)] a: T }";
        assert_eq!(where_clause(src), "where T : Clone , T : P :: Hooked");
    }
}
