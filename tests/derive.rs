//! What `#[derive(Hooked)]` names, and in which order, for every shape of struct it
//! accepts. Mistakes it rejects are covered by the UI tests in `tests/ui`.

// The generated code must not make a user's crate warn.
#![deny(warnings)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hooklens::{HookPath, HookPoint, Hooked};

/// Every hook name under `model`, in visiting order.
fn names<T: Hooked + ?Sized>(model: &T) -> Vec<String> {
    let mut out = Vec::new();
    model.visit_hook_points(&mut HookPath::new(), &mut |name, _| out.push(name.to_owned()));
    out
}

fn linear() -> candle_nn::Linear {
    let w = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_nn::Linear::new(w, None)
}

fn layer_norm() -> candle_nn::LayerNorm {
    let w = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    candle_nn::LayerNorm::new(w, b, 1e-5)
}

#[derive(Hooked, Default)]
struct Attn {
    hook_q: HookPoint,
    hook_k: HookPoint,
}

#[derive(Hooked)]
struct Block {
    ln1: candle_nn::LayerNorm,
    hook_resid_pre: HookPoint,
    attn: Attn,
    w_out: candle_nn::Linear,
    hook_resid_post: HookPoint,
}

impl Block {
    fn new() -> Self {
        Self {
            ln1: layer_norm(),
            hook_resid_pre: HookPoint::new(),
            attn: Attn::default(),
            w_out: linear(),
            hook_resid_post: HookPoint::new(),
        }
    }
}

#[derive(Hooked)]
struct Model {
    n_layers: usize,
    hook_embed: HookPoint,
    blocks: Vec<Block>,
    scales: Vec<f32>,
    unembed: candle_nn::Linear,
}

#[test]
fn nested_structs_and_vec_name_by_field_path_in_field_order() {
    let model = Model {
        n_layers: 2,
        hook_embed: HookPoint::new(),
        blocks: vec![Block::new(), Block::new()],
        scales: vec![1.0],
        unembed: linear(),
    };
    assert_eq!(
        names(&model),
        [
            "hook_embed",
            "blocks.0.hook_resid_pre",
            "blocks.0.attn.hook_q",
            "blocks.0.attn.hook_k",
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_pre",
            "blocks.1.attn.hook_q",
            "blocks.1.attn.hook_k",
            "blocks.1.hook_resid_post",
        ]
    );
    assert_eq!(model.n_layers + model.scales.len(), 3);
}

#[test]
fn visited_points_are_the_fields_themselves() {
    let model = Model {
        n_layers: 1,
        hook_embed: HookPoint::new(),
        blocks: vec![Block::new()],
        scales: Vec::new(),
        unembed: linear(),
    };
    let mut ids = Vec::new();
    model.visit_hook_points(&mut HookPath::new(), &mut |name, point| {
        ids.push((name.to_owned(), point.id()));
    });
    let block = &model.blocks[0];
    assert_eq!(
        ids,
        [
            ("hook_embed".to_owned(), model.hook_embed.id()),
            ("blocks.0.hook_resid_pre".to_owned(), block.hook_resid_pre.id()),
            ("blocks.0.attn.hook_q".to_owned(), block.attn.hook_q.id()),
            ("blocks.0.attn.hook_k".to_owned(), block.attn.hook_k.id()),
            ("blocks.0.hook_resid_post".to_owned(), block.hook_resid_post.id()),
        ]
    );
}

#[test]
fn the_starting_path_is_a_prefix() {
    let attn = Attn::default();
    let mut path = HookPath::new();
    path.push("blocks");
    path.push_index(7);
    path.push("attn");
    let mut out = Vec::new();
    attn.visit_hook_points(&mut path, &mut |name, _| out.push(name.to_owned()));
    assert_eq!(out, ["blocks.7.attn.hook_q", "blocks.7.attn.hook_k"]);
    // The walk leaves the caller's path as it found it.
    assert_eq!(path.as_str(), "blocks.7.attn");
}

#[derive(Hooked)]
struct Optional {
    hook_a: Option<HookPoint>,
    attn: Option<Attn>,
    hook_b: HookPoint,
}

#[test]
fn option_adds_no_segment_and_none_adds_no_points() {
    let some = Optional {
        hook_a: Some(HookPoint::new()),
        attn: Some(Attn::default()),
        hook_b: HookPoint::new(),
    };
    assert_eq!(names(&some), ["hook_a", "attn.hook_q", "attn.hook_k", "hook_b"]);

    let none = Optional {
        hook_a: None,
        attn: None,
        hook_b: HookPoint::new(),
    };
    assert_eq!(names(&none), ["hook_b"]);
}

#[derive(Hooked, Default)]
struct Arrays {
    hooks: [HookPoint; 2],
    heads: [Attn; 2],
    empty: [Attn; 0],
}

#[test]
fn arrays_name_by_index() {
    assert_eq!(
        names(&Arrays::default()),
        [
            "hooks.0",
            "hooks.1",
            "heads.0.hook_q",
            "heads.0.hook_k",
            "heads.1.hook_q",
            "heads.1.hook_k",
        ]
    );
}

#[derive(Hooked)]
struct Pointers {
    boxed: Box<Attn>,
    hook_boxed: Box<HookPoint>,
    shared: Arc<Attn>,
    boxed_opt: Option<Box<Attn>>,
}

#[test]
fn box_and_arc_add_no_segment() {
    let p = Pointers {
        boxed: Box::default(),
        hook_boxed: Box::default(),
        shared: Arc::default(),
        boxed_opt: Some(Box::default()),
    };
    assert_eq!(
        names(&p),
        [
            "boxed.hook_q",
            "boxed.hook_k",
            "hook_boxed",
            "shared.hook_q",
            "shared.hook_k",
            "boxed_opt.hook_q",
            "boxed_opt.hook_k",
        ]
    );
}

#[derive(Hooked)]
struct Generic<T, U> {
    #[hooked(module)]
    inner: T,
    // Not walked, by request: without `skip` (or `module`) an unbounded generic field
    // is a compile error (tests/ui/unbounded_generic.rs), since the derive cannot tell
    // whether it holds hook points.
    #[hooked(skip)]
    other: U,
    #[hooked(module)]
    many: Vec<T>,
    hook_out: HookPoint,
}

#[test]
fn module_walks_generic_fields_and_skip_leaves_them_out() {
    let g = Generic {
        inner: Attn::default(),
        other: HookPoint::new(),
        many: vec![Attn::default()],
        hook_out: HookPoint::new(),
    };
    assert_eq!(
        names(&g),
        [
            "inner.hook_q",
            "inner.hook_k",
            "many.0.hook_q",
            "many.0.hook_k",
            "hook_out"
        ]
    );
}

/// `module` adds `T: Hooked` to the impl only, not to the struct: a `Generic` over a
/// non-hooked type still exists, it just is not `Hooked`.
#[test]
fn module_bound_is_on_the_impl_not_the_struct() {
    let g = Generic {
        inner: 1u8,
        other: 2u8,
        many: vec![3u8],
        hook_out: HookPoint::new(),
    };
    assert_eq!(g.inner + g.other + g.many[0], 6);
    assert_eq!(names(&g.hook_out), [""]);
}

#[derive(Hooked)]
struct Bounded<T: Hooked> {
    inner: T,
}

#[test]
fn a_generic_with_a_hooked_bound_needs_no_module() {
    let b = Bounded { inner: Attn::default() };
    assert_eq!(names(&b), ["inner.hook_q", "inner.hook_k"]);
}

#[derive(Hooked)]
struct ConstGeneric<T, const N: usize> {
    #[hooked(module)]
    heads: [T; N],
    layers: [Attn; N],
}

#[test]
fn const_generics_are_kept() {
    let c = ConstGeneric::<HookPoint, 2> {
        heads: [HookPoint::new(), HookPoint::new()],
        layers: [Attn::default(), Attn::default()],
    };
    assert_eq!(
        names(&c),
        [
            "heads.0",
            "heads.1",
            "layers.0.hook_q",
            "layers.0.hook_k",
            "layers.1.hook_q",
            "layers.1.hook_k",
        ]
    );
}

// `'a` is also the name hooked.rs gives its method lifetime: the generated method
// must not reuse it.
#[derive(Hooked)]
struct Borrowed<'a, 'b: 'a, M>
where
    M: Hooked + ?Sized,
{
    attn: &'a Attn,
    hook: &'b HookPoint,
    model: &'a M,
}

#[test]
fn lifetimes_and_where_clauses_are_kept() {
    let attn = Attn::default();
    let hook = HookPoint::new();
    let inner = Attn::default();
    let b: Borrowed<'_, '_, Attn> = Borrowed {
        attn: &attn,
        hook: &hook,
        model: &inner,
    };
    assert_eq!(
        names(&b),
        ["attn.hook_q", "attn.hook_k", "hook", "model.hook_q", "model.hook_k"]
    );
}

#[derive(Hooked)]
struct Tuple(HookPoint, usize, Attn, #[hooked(rename = "hook_last")] HookPoint);

#[test]
fn tuple_struct_fields_are_named_by_index() {
    let t = Tuple(HookPoint::new(), 5, Attn::default(), HookPoint::new());
    assert_eq!(names(&t), ["0", "2.hook_q", "2.hook_k", "hook_last"]);
    assert_eq!(t.1, 5);
}

#[derive(Hooked)]
struct Unit;

#[derive(Hooked)]
struct Empty {}

#[derive(Hooked)]
struct EmptyTuple();

#[test]
fn structs_without_fields_have_no_hook_points() {
    assert!(names(&Unit).is_empty());
    assert!(names(&Empty {}).is_empty());
    assert!(names(&EmptyTuple()).is_empty());
}

#[derive(Hooked)]
struct Renamed {
    #[hooked(rename = "hook_resid_pre")]
    resid_pre: HookPoint,
    #[hooked(rename = "0")]
    first: Attn,
    #[hooked(skip)]
    cached: HookPoint,
    #[hooked(skip)]
    #[allow(dead_code)]
    scratch: Attn,
    // A skipped field's name is free for another field to take.
    #[hooked(rename = "cached")]
    kept: HookPoint,
    #[hooked(module, rename = "inner")]
    wrapped: Attn,
    r#type: HookPoint,
}

#[test]
fn rename_and_skip() {
    let r = Renamed {
        resid_pre: HookPoint::new(),
        first: Attn::default(),
        cached: HookPoint::new(),
        scratch: Attn::default(),
        kept: HookPoint::new(),
        wrapped: Attn::default(),
        r#type: HookPoint::new(),
    };
    assert_eq!(
        names(&r),
        [
            "hook_resid_pre",
            "0.hook_q",
            "0.hook_k",
            "cached",
            "inner.hook_q",
            "inner.hook_k",
            "type",
        ]
    );
    // The skipped `cached` point really was not visited: the visited `cached` is `kept`.
    let mut ids = Vec::new();
    r.visit_hook_points(&mut HookPath::new(), &mut |_, p| ids.push(p.id()));
    assert!(!ids.contains(&r.cached.id()));
    assert!(ids.contains(&r.kept.id()));
}

#[derive(Hooked)]
#[hooked(crate = "hooklens")]
struct WithCratePath {
    hook_x: HookPoint,
}

#[derive(Hooked)]
#[hooked(crate = "::hooklens")]
struct WithAbsoluteCratePath {
    hook_y: HookPoint,
}

#[test]
fn crate_attribute_switches_the_root_path() {
    assert_eq!(
        names(&WithCratePath {
            hook_x: HookPoint::new()
        }),
        ["hook_x"]
    );
    assert_eq!(
        names(&WithAbsoluteCratePath {
            hook_y: HookPoint::new()
        }),
        ["hook_y"]
    );
}

fn attn_result_hint(model: &WithHint, name: &str) -> Option<hooklens::Error> {
    (!model.use_attn_result && name.ends_with("hook_result")).then(|| hooklens::Error::DisabledHook {
        name: name.to_owned(),
        flag: "use_attn_result".to_owned(),
    })
}

#[derive(Hooked)]
#[hooked(hint = "attn_result_hint")]
struct WithHint {
    use_attn_result: bool,
    hook_z: HookPoint,
}

#[derive(Hooked)]
#[hooked(hint = "Self::hint", crate = "hooklens")]
struct WithMethodHint {
    hook_z: HookPoint,
}

impl WithMethodHint {
    fn hint(&self, name: &str) -> Option<hooklens::Error> {
        Some(hooklens::Error::invalid(format!("{name} is not here")))
    }
}

#[test]
fn hint_overrides_unknown_hook_hint() {
    let off = WithHint {
        use_attn_result: false,
        hook_z: HookPoint::new(),
    };
    assert_eq!(names(&off), ["hook_z"]);
    let err = off.unknown_hook_hint("blocks.0.attn.hook_result").unwrap();
    assert!(matches!(&err, hooklens::Error::DisabledHook { name, flag }
        if name == "blocks.0.attn.hook_result" && flag == "use_attn_result"));
    assert!(off.unknown_hook_hint("blocks.0.attn.hook_x").is_none());

    let on = WithHint {
        use_attn_result: true,
        hook_z: HookPoint::new(),
    };
    assert!(on.unknown_hook_hint("blocks.0.attn.hook_result").is_none());

    let m = WithMethodHint {
        hook_z: HookPoint::new(),
    };
    assert_eq!(names(&m), ["hook_z"]);
    assert_eq!(m.unknown_hook_hint("hook_q").unwrap().to_string(), "hook_q is not here");
}

#[test]
fn without_hint_the_default_applies() {
    assert!(Attn::default().unknown_hook_hint("anything").is_none());
}

/// The expansion lands among the user's names; none of these may capture it.
#[allow(dead_code, non_camel_case_types)]
mod shadowing {
    struct HookPoint;
    struct HookPath;
    trait Hooked {}
    struct Probe;
    trait ProbeHooked {}
    trait ProbeOther {}
    struct Error;
    struct Option;
    struct FnMut;
    struct str;
    mod core {}
    mod hooklens {}
    // Names a closure parameter could bind to as a pattern.
    #[allow(non_upper_case_globals)]
    const name: u8 = 0;
    struct point;

    #[derive(::hooklens::Hooked)]
    #[hooked(hint = "no_hint")]
    pub struct Shadowed<'a> {
        #[hooked(position_axis = -2)]
        pub hook_a: ::hooklens::HookPoint,
        pub inner: &'a super::Attn,
        config: HookPoint,
        #[hooked(module)]
        pub modules: ::std::vec::Vec<super::Attn>,
    }

    fn no_hint(_: &Shadowed<'_>, _: &::core::primitive::str) -> ::core::option::Option<::hooklens::Error> {
        ::core::option::Option::None
    }

    pub fn build(inner: &super::Attn) -> Shadowed<'_> {
        Shadowed {
            hook_a: ::hooklens::HookPoint::new(),
            inner,
            config: HookPoint,
            modules: vec![super::Attn::default()],
        }
    }
}

#[test]
fn user_names_do_not_shadow_the_expansion() {
    let attn = Attn::default();
    let s = shadowing::build(&attn);
    assert_eq!(
        names(&s),
        [
            "hook_a",
            "inner.hook_q",
            "inner.hook_k",
            "modules.0.hook_q",
            "modules.0.hook_k",
        ]
    );
    assert!(s.unknown_hook_hint("x").is_none());
}

/// Hooked models are usable as trait objects, through references and containers.
#[test]
fn derived_types_work_behind_dyn_and_references() {
    let attn = Attn::default();
    let dynamic: &dyn Hooked = &attn;
    assert_eq!(names(dynamic), ["hook_q", "hook_k"]);
    let list: Vec<&Attn> = vec![&attn, &attn];
    assert_eq!(names(&list), ["0.hook_q", "0.hook_k", "1.hook_q", "1.hook_k"]);
}
