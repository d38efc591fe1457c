//! `run_with_cache`'s options and the `ActivationCache` it returns.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, TempDir, TinyModel};
use hooklens::{ActivationCache, CacheOptions, Error, HookedModel, NamesFilter, Slice};

#[test]
fn caches_every_hook_in_firing_order_sharing_storage() {
    let model = TinyModel::new(2, 8);
    let x = model.input(2, 5, 0.0);
    let (out, cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&x)).unwrap();
    let keys: Vec<&str> = cache.keys().collect();
    assert_eq!(keys.len(), 12);
    assert_eq!(
        &keys[..3],
        ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.mlp.hook_pre"]
    );
    assert_eq!(keys[11], "hook_final");
    assert!(cache.has_batch_dim());
    assert_eq!(
        out.id(),
        cache["hook_final"].id(),
        "the cache holds the forward's own tensor"
    );
}

#[test]
fn names_filter_globs_lists_and_predicates() {
    let model = TinyModel::new(3, 4);
    let x = model.input(1, 2, 0.0);
    let run = |f: NamesFilter| {
        let (_, c) = model
            .run_with_cache(CacheOptions::new().names(f), |m| m.forward(&x))
            .unwrap();
        c.keys().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(
        run("blocks.*.mlp.hook_post".into()),
        [
            "blocks.0.mlp.hook_post",
            "blocks.1.mlp.hook_post",
            "blocks.2.mlp.hook_post"
        ]
    );
    assert_eq!(run("hook_embed".into()), ["hook_embed"]);
    assert_eq!(
        run(["hook_final", "blocks.1.hook_*"].into()),
        [
            "blocks.1.hook_resid_pre",
            "blocks.1.hook_mlp_out",
            "blocks.1.hook_resid_post",
            "hook_final"
        ]
    );
    assert_eq!(
        run(NamesFilter::predicate(|n| n.ends_with("resid_pre") && n.contains(".2."))),
        ["blocks.2.hook_resid_pre"]
    );
    let err = model
        .run_with_cache(CacheOptions::new().names("blocks.*.attn.*"), |m| m.forward(&x))
        .unwrap_err();
    assert!(matches!(err, Error::EmptyFilter { .. }), "{err}");
}

#[test]
fn remove_batch_dim_and_pos_slice() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 6, 0.0);
    let (_, full) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&x)).unwrap();
    let (_, c) = model
        .run_with_cache(
            CacheOptions::new().remove_batch_dim(true).pos_slice(Slice::Index(-1)),
            |m| m.forward(&x),
        )
        .unwrap();
    assert!(!c.has_batch_dim());
    assert_eq!(c["hook_embed"].dims(), &[4]);
    let last = full["hook_embed"].get(0).unwrap().get(5).unwrap();
    assert_eq!(max_abs_diff(&c["hook_embed"], &last), 0.0);
    let (_, c) = model
        .run_with_cache(CacheOptions::new().pos_slice("1:4".parse::<Slice>().unwrap()), |m| {
            m.forward(&x)
        })
        .unwrap();
    assert_eq!(c["blocks.0.mlp.hook_pre"].dims(), &[1, 3, 8]);
    // A batch of 2 cannot drop its batch axis: the error names the hook.
    let x2 = model.input(2, 3, 0.0);
    let err = model
        .run_with_cache(CacheOptions::new().remove_batch_dim(true), |m| m.forward(&x2))
        .unwrap_err();
    assert!(
        err.to_string().contains("hook_embed") && err.to_string().contains("batch size 2"),
        "{err}"
    );
    let err = model
        .run_with_cache(CacheOptions::new().pos_slice(Slice::Index(10)), |m| m.forward(&x))
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn position_axis_follows_transformer_lens() {
    use hooklens::position_axis;
    assert_eq!(position_axis("blocks.0.attn.hook_q", 4), Some(-3));
    assert_eq!(position_axis("blocks.0.attn.hook_z", 3), Some(-3));
    assert_eq!(position_axis("blocks.0.hook_q_input", 4), Some(-3));
    assert_eq!(position_axis("blocks.0.attn.hook_pattern", 4), Some(-2));
    assert_eq!(position_axis("blocks.0.ln1.hook_scale", 3), Some(-2));
    assert_eq!(
        position_axis("blocks.0.attn.hook_q", 2),
        None,
        "no position axis, no slicing"
    );
    assert_eq!(position_axis("hook_tokens", 2), Some(-1));
}

#[test]
fn device_option_and_save_load() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 3, 0.0);
    let (_, c) = model
        .run_with_cache(CacheOptions::new().device(Device::Cpu), |m| m.forward(&x))
        .unwrap();
    let dir = TempDir::new("facade-cache");
    let path = dir.join("c.safetensors");
    c.save(&path).unwrap();
    let back = ActivationCache::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
    for (name, t) in &c {
        assert_eq!(max_abs_diff(t, &back[name]), 0.0, "{name}");
    }
    let moved = back.to_device(&Device::Cpu).unwrap();
    assert_eq!(moved.len(), c.len());
    let single = c.clone().remove_batch_dim().unwrap();
    assert_eq!(single["hook_final"].dims(), &[3, 4]);
    let _: &Tensor = single.try_get("hook_final").unwrap();
}

/// Points whose position axis the name rule would get wrong, declared instead: by the
/// derive (on a point, on a module's points, as `None`) and by the constructor.
#[derive(hooklens::Hooked)]
struct Declared {
    /// `[batch, pos, head, d]` under a name the rule does not know.
    #[hooked(position_axis = -3)]
    hook_per_head: hooklens::HookPoint,
    /// `[batch, pos, d]` rows: the rule's `-2`, undeclared.
    hook_rows: hooklens::HookPoint,
    /// Every point of the module declares `-1` (`[batch, pos]`).
    #[hooked(module, position_axis = -1)]
    scores: Scores,
    /// `[batch * pos, d]`, flattened: no position axis to slice.
    #[hooked(position_axis = None)]
    hook_flat: hooklens::HookPoint,
    /// Declared by the constructor: `[pos, batch, d]`.
    hook_time_major: hooklens::HookPoint,
}

#[derive(hooklens::Hooked)]
struct Scores {
    hook_score: hooklens::HookPoint,
}

impl Declared {
    fn forward(&self, x: &Tensor) -> hooklens::Result<()> {
        let (b, p, d) = x.dims3()?;
        self.hook_per_head
            .forward(&x.reshape((b, p, 1, d))?.repeat((1, 1, 2, 1))?)?;
        self.hook_rows.forward(x)?;
        self.scores.hook_score.forward(&x.sum(2)?)?;
        self.hook_flat.forward(&x.reshape((b * p, d))?)?;
        self.hook_time_major.forward(&x.transpose(0, 1)?.contiguous()?)?;
        Ok(())
    }
}

#[test]
fn pos_slice_follows_the_axis_each_point_declares() {
    let model = Declared {
        hook_per_head: hooklens::HookPoint::new(),
        hook_rows: hooklens::HookPoint::new(),
        scores: Scores {
            hook_score: hooklens::HookPoint::new(),
        },
        hook_flat: hooklens::HookPoint::new(),
        hook_time_major: hooklens::HookPoint::new().with_position_axis(Some(-3)),
    };
    // batch 2, 5 positions, d 3: every value says its position.
    let pos = Tensor::arange(0f32, 5.0, &Device::Cpu).unwrap();
    let x = pos
        .reshape((1, 5, 1))
        .unwrap()
        .broadcast_as((2, 5, 3))
        .unwrap()
        .contiguous()
        .unwrap();
    let (_, cache) = model
        .run_with_cache(CacheOptions::new().pos_slice(Slice::Index(3)), |m| m.forward(&x))
        .unwrap();
    let shape = |n: &str| cache[n].dims().to_vec();
    let only_pos_3 = |n: &str| {
        let v = cache[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&p| p == 3.0), "{n}: {v:?}");
    };
    assert_eq!(shape("hook_per_head"), [2, 2, 3], "sliced at -3, not at the head axis");
    only_pos_3("hook_per_head");
    assert_eq!(shape("hook_rows"), [2, 3]);
    only_pos_3("hook_rows");
    assert_eq!(shape("scores.hook_score"), [2], "the module's point sliced at -1");
    assert_eq!(cache["scores.hook_score"].to_vec1::<f32>().unwrap(), [9.0, 9.0]);
    assert_eq!(shape("hook_flat"), [10, 3], "no position axis: left whole");
    assert_eq!(
        shape("hook_time_major"),
        [2, 3],
        "the constructor's -3 on [pos, batch, d]"
    );
    only_pos_3("hook_time_major");
    let declared = model.hook_point("hook_per_head").unwrap().position_axis(4);
    assert_eq!(declared, Some(-3));
    assert_eq!(model.hook_point("hook_flat").unwrap().position_axis(2), None);
}

/// A module declaring its own axes, inside a struct declaring another for the module.
#[derive(hooklens::Hooked)]
struct Outer {
    #[hooked(position_axis = -2)]
    inner: Inner,
}

#[derive(hooklens::Hooked)]
struct Inner {
    #[hooked(position_axis = -3)]
    hook_heads: hooklens::HookPoint,
    hook_plain: hooklens::HookPoint,
    hook_built: hooklens::HookPoint,
}

#[test]
fn the_declaration_nearest_a_point_wins() {
    let model = Outer {
        inner: Inner {
            hook_heads: hooklens::HookPoint::new(),
            hook_plain: hooklens::HookPoint::new(),
            hook_built: hooklens::HookPoint::new().with_position_axis(Some(-1)),
        },
    };
    let axis = |name: &str| model.hook_point(name).unwrap().position_axis(4);
    assert_eq!(axis("inner.hook_heads"), Some(-3), "the inner field's attribute");
    assert_eq!(axis("inner.hook_plain"), Some(-2), "the outer field's attribute");
    assert_eq!(axis("inner.hook_built"), Some(-1), "the constructor's");
    // Building the dictionary again changes nothing.
    let _ = model.hook_dict();
    assert_eq!(axis("inner.hook_heads"), Some(-3));
}
