//! Mistakes `#[derive(Hooked)]` must reject, each with its message at the offending
//! tokens and without follow-on errors. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test ui`, then read them.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
