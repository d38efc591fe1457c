//! Hook-name patterns: `glob_match` agrees with a plain recursive matcher, a names
//! filter made from a string matches as its kind says, and selecting hook points of a
//! real model with any pattern gives points or an error (never a panic).
//!
//! Input: pattern, a NUL byte, then the name.
#![no_main]

use std::sync::OnceLock;

use hooklens_core::{CacheOptions, HookedModel, NamesFilter};
use hooklens_core::__internal::{glob_match, is_glob, nearest_names};
use hooklens_models::{HookedTransformer, LoadOptions};
use libfuzzer_sys::fuzz_target;

/// The obvious definition: `*` any run of characters, `?` one, others themselves.
fn reference(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => (0..=n.len()).any(|i| reference(rest, &n[i..])),
        Some((&c, rest)) => match n.split_first() {
            Some((&m, tail)) if c == '?' || c == m => reference(rest, tail),
            _ => false,
        },
    }
}

fn model() -> &'static HookedTransformer {
    static MODEL: OnceLock<HookedTransformer> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-gpt2/model");
        HookedTransformer::from_dir(dir, &LoadOptions::no_processing()).expect("the fixture model")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\0').unwrap_or((text, ""));
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The reference is exponential in the number of stars: keep it to short inputs.
    if p.iter().filter(|&&c| c == '*').count() <= 6 && p.len() + n.len() <= 64 {
        assert_eq!(
            glob_match(pattern, name),
            reference(&p, &n),
            "glob_match({pattern:?}, {name:?})"
        );
    }
    let filter = NamesFilter::from(pattern);
    let expected = if is_glob(pattern) {
        glob_match(pattern, name)
    } else {
        pattern == name
    };
    assert_eq!(filter.matches(name), expected);
    let list = NamesFilter::from(vec![pattern, name]);
    assert!(!list.matches(name) || list.matches(name));

    let model = model();
    let dict = model.hook_dict();
    if let Ok(points) = dict.select(model, &filter) {
        assert!(!points.is_empty(), "an Ok selection is never empty");
        for (n, _) in points {
            assert!(filter.matches(n));
        }
    }
    let _ = dict.select(model, &list);
    let _ = nearest_names(pattern, dict.names(), 3);
    let _ = model.hook_point(pattern);
    let _ = CacheOptions::new().names(pattern);
});
