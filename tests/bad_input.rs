//! Bad input to the hook engine gives an error that says what and where, never a panic
//! (issue 6). The GPT-2 entry points are in `hooklens-models/tests/bad_input.rs`, the
//! command line in `hooklens-cli/tests/bad_input.rs`.
//!
//! Already covered elsewhere, and not repeated here:
//! - unknown names in `add_hook`, `hooks()` and cache lists, `Direction::Both`:
//!   `tests/hooks.rs::unknown_names_and_empty_filters_are_errors_that_attach_nothing`;
//! - a hook returning the wrong shape or dtype:
//!   `tests/hooks.rs::wrong_shape_dtype_from_a_hook_names_the_hook`, and
//!   `hook_point.rs::wrong_shape_is_an_error_naming_both_shapes`;
//! - `remove_batch_dim` on a batch of 2, a `pos_slice` index past the end:
//!   `tests/cache.rs::remove_batch_dim_and_pos_slice`;
//! - a file that is not safetensors, a save into a missing directory:
//!   `activation_cache.rs::save_and_load_round_trip_keeps_order_and_values`;
//! - `incl_bwd` without a scalar: `tests/gradients.rs::run_with_cache_refuses_incl_bwd_without_a_scalar`.
//!
//! A hook returning a tensor on another device cannot be produced on a CPU-only build;
//! `HookPoint::check_replacement` compares devices the same way it compares dtypes.

mod common;

use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{TempDir, TinyModel};
use hooklens::{
    ActivationCache, CacheOptions, Direction, Error, HookOptions, HookPoint, HookSet, HookedModel, NamesFilter, Slice,
};

fn sample_cache() -> ActivationCache {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 3, 0.0);
    model.run_with_cache(CacheOptions::new(), |m| m.forward(&x)).unwrap().1
}

/// Every prefix of a saved cache (cut in the length field, the header and the data),
/// and headers that lie about sizes and offsets, are errors naming the file.
#[test]
fn truncated_or_malformed_cache_files_are_errors_naming_the_file() {
    let dir = TempDir::new("cache-files");
    let good = dir.join("good.safetensors");
    sample_cache().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let bad = dir.join("bad.safetensors");
    let expect_bad = |what: &str| {
        let err = ActivationCache::load(&bad, &Device::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::BadFile { .. }), "{what}: {msg}");
        assert!(msg.contains("bad.safetensors"), "{what}: {msg}");
    };
    for cut in [
        0,
        1,
        7,
        8,
        9,
        8 + header_len / 2,
        8 + header_len,
        8 + header_len + 1,
        bytes.len() - 1,
    ] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        expect_bad(&format!("cut at {cut} of {}", bytes.len()));
    }
    // A header length larger than the file (and than memory).
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&bad, &huge).unwrap();
    expect_bad("header length u64::MAX");
    // A header that is not JSON.
    let mut garbled = bytes.clone();
    garbled[8] = b'!';
    std::fs::write(&bad, &garbled).unwrap();
    expect_bad("header not JSON");
    // Headers that parse but describe something impossible.
    let file = |header: &str, data: &[u8]| {
        let mut h = header.as_bytes().to_vec();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        out
    };
    for (what, header) in [
        (
            "offsets past the end",
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
        ),
        (
            "shape and size disagree",
            r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        ),
        (
            "unknown dtype",
            r#"{"x":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
        ),
        (
            "order metadata not JSON",
            r#"{"__metadata__":{"hooklens.order":"[x"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        ),
        (
            "order lists a missing tensor",
            r#"{"__metadata__":{"hooklens.order":"[\"x\",\"y\"]"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        ),
        (
            "shape overflows",
            r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
        ),
    ] {
        std::fs::write(&bad, file(header, &[0; 8])).unwrap();
        expect_bad(what);
    }
    // No file, or a directory: an I/O error naming the path.
    for path in [dir.join("missing.safetensors"), dir.to_path_buf()] {
        let err = ActivationCache::load(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}

/// Paths that cannot be written: an error naming the path, and no temporary file left.
/// (The process may run as root, which ignores permission bits, so the unwritable
/// paths here are structural: under a regular file, onto a directory, no file name.)
#[test]
fn saving_to_an_unwritable_path_is_an_error_and_leaves_nothing() {
    let dir = TempDir::new("unwritable");
    let cache = sample_cache();
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let onto_dir = dir.join("a-directory");
    std::fs::create_dir(&onto_dir).unwrap();
    for path in [file.join("c.safetensors"), onto_dir.clone()] {
        let err = cache.save(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{}: {err}", path.display());
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
    for path in [Path::new("/"), Path::new("")] {
        let err = cache.save(path).unwrap_err();
        assert!(matches!(err, Error::Invalid(_) | Error::Io { .. }), "{err}");
    }
    let left: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "only the two entries made here remain: {left:?}");
    assert!(std::fs::read_dir(&onto_dir).unwrap().next().is_none());
}

/// Slice strings that do not parse: each an `Error::Slice` quoting the string.
#[test]
fn slice_strings_that_do_not_parse_are_errors_quoting_them() {
    for s in [
        " ",
        "x",
        "1.5",
        "--1",
        "1:2:3:4",
        "::0",
        "::-1",
        "1:a",
        "[1,2",
        "[a]",
        "[1,,2]",
        "1,",
        ",",
        "99999999999999999999999",
        "1:99999999999999999999999",
        "[1]x",
    ] {
        match s.parse::<Slice>() {
            Err(Error::Slice { slice, reason }) => {
                assert_eq!(slice, s, "the error quotes the input");
                assert!(!reason.is_empty());
            }
            other => panic!("{s:?} gave {other:?}"),
        }
    }
}

/// A `pos_slice` that does not fit the activations is an error naming the hook point;
/// ranges clamp as Python's do (not an error).
#[test]
fn pos_slices_out_of_range_are_errors_naming_the_hook() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 3, 0.0);
    for slice in [
        Slice::Index(3),
        Slice::Index(-4),
        Slice::Indices(vec![0, 3]),
        Slice::Index(isize::MIN),
    ] {
        let err = model
            .run_with_cache(CacheOptions::new().pos_slice(slice.clone()), |m| m.forward(&x))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("hook_embed") && msg.contains("out of range"),
            "{slice}: {msg}"
        );
    }
    let (_, cache) = model
        .run_with_cache(
            CacheOptions::new().pos_slice(Slice::range(Some(-100), Some(100))),
            |m| m.forward(&x),
        )
        .unwrap();
    assert_eq!(cache["hook_embed"].dims(), &[1, 3, 4]);
    let (_, cache) = model
        .run_with_cache(CacheOptions::new().pos_slice(Slice::Indices(vec![])), |m| m.forward(&x))
        .unwrap();
    assert_eq!(
        cache["hook_embed"].dims(),
        &[1, 0, 4],
        "an empty selection is empty, not an error"
    );
    // Applied by hand to a tensor without that axis.
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(Slice::Index(0).apply(&t, 1), Err(Error::Slice { .. })));
    assert!(matches!(Slice::Index(0).apply(&t, -2), Err(Error::Slice { .. })));
}

/// Every entry point that takes names refuses a name or pattern that selects nothing,
/// before running anything: the forward closure is never called and nothing is attached.
#[test]
fn names_that_select_nothing_fail_before_the_forward_runs() {
    let model = TinyModel::new(2, 4);
    let x = model.input(1, 2, 0.0);
    let noop = |_: &Tensor, _: &HookPoint| Ok(None);
    let ran = Cell::new(false);
    let forward = |m: &TinyModel| {
        ran.set(true);
        m.forward(&x)
    };
    let filters: Vec<(NamesFilter, &str)> = vec![
        ("hook_embd".into(), "did you mean `hook_embed`"),
        ("blocks.2.hook_resid_pre".into(), "unknown hook point"),
        ("".into(), "unknown hook point"),
        ("blocks.*.attn.*".into(), "matched no hook point"),
        ("?".into(), "matched no hook point"),
        (vec!["hook_embed", "blocks.9.*"].into(), "matched no hook point"),
        (NamesFilter::predicate(|_| false), "matched no hook point"),
    ];
    for (filter, needle) in filters {
        let label = filter.to_string();
        let check = |err: Error| {
            let msg = err.to_string();
            assert!(msg.contains(needle), "{label}: {msg}");
        };
        check(
            model
                .run_with_hooks(HookSet::new().fwd(filter.clone(), noop), forward)
                .unwrap_err(),
        );
        check(
            model
                .run_with_hooks(HookSet::new().bwd(filter.clone(), noop), forward)
                .unwrap_err(),
        );
        check(
            model
                .run_with_cache(CacheOptions::new().names(filter.clone()), forward)
                .unwrap_err(),
        );
        check(
            model
                .run_with_cache_bwd(CacheOptions::new().names(filter.clone()), HookSet::new(), |m| {
                    ran.set(true);
                    m.loss(&x)
                })
                .unwrap_err(),
        );
        check(
            model
                .with_hooks(HookSet::new().fwd(filter.clone(), noop), |m| {
                    ran.set(true);
                    m.forward(&x)
                })
                .unwrap_err(),
        );
        check(
            model
                .add_hook(filter.clone(), noop, HookOptions::bwd().permanent())
                .unwrap_err(),
        );
        assert!(!ran.get(), "{label}: the forward ran");
        assert!(model.list_hooks().is_empty(), "{label}: something was attached");
    }
    let err = model.hook_point("blocks.0.mlp.hook_pos").unwrap_err().to_string();
    assert!(err.contains("did you mean `blocks.0.mlp.hook_post`"), "{err}");
    let err = model
        .add_perma_hook("nothing*", noop, Direction::Fwd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("matched no hook point"), "{err}");
}

/// The wrong shape from a backward hook, and a dtype change in a chain of forward hooks,
/// name the hook point as forward shape errors do.
#[test]
fn bad_replacements_from_backward_and_chained_hooks_name_the_hook() {
    let model = TinyModel::new(1, 4);
    let x = model.input(1, 2, 0.0);
    let err = model
        .run_with_cache_bwd(
            CacheOptions::new(),
            HookSet::new().bwd("blocks.0.mlp.hook_pre", |g: &Tensor, _: &HookPoint| {
                Ok(Some(g.sum_keepdim(1)?))
            }),
            |m| m.loss(&x),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("blocks.0.mlp.hook_pre") && msg.contains("[1, 2, 8]") && msg.contains("[1, 1, 8]"),
        "{msg}"
    );
    // The second hook of a chain breaks the dtype the first one kept.
    let err = model
        .run_with_hooks(
            HookSet::new()
                .fwd("hook_final", |t: &Tensor, _: &HookPoint| Ok(Some((t * 2.0)?)))
                .fwd("hook_final", |t: &Tensor, _: &HookPoint| {
                    Ok(Some(t.to_dtype(DType::F16)?))
                }),
            |m| m.forward(&x),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::HookDType { name, .. } if name == "hook_final"),
        "{err}"
    );
    // A scalar where a [1, 2, 4] activation was.
    let err = model
        .run_with_hooks(
            HookSet::new().fwd("hook_embed", |_: &Tensor, _: &HookPoint| {
                Ok(Some(Tensor::new(1f32, &Device::Cpu)?))
            }),
            |m| m.forward(&x),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::HookShape { name, .. } if name == "hook_embed"),
        "{err}"
    );
    assert!(model.list_hooks().is_empty());
}
