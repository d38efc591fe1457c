//! Regression tests for what `scripts/fuzz.sh` found (issue 6), in the normal test suite
//! so that they run without cargo-fuzz. Each test names the fuzz target and the input.

use hooklens::__internal::glob_match;
use hooklens::NamesFilter;

/// names_filter, input `*\0*\0` (pattern `*`, name `*\0`): a `*` in the pattern was
/// compared as a literal with a `*` in the name before being treated as a wildcard, so
/// the wildcard matched only the name's first character.
#[test]
fn glob_star_matches_names_that_contain_a_star() {
    assert!(glob_match("*", "*\0"));
    assert!(glob_match("*", "**"));
    assert!(glob_match("a*", "a*b"));
    assert!(glob_match("*b", "*ab"));
    assert!(glob_match("?*", "**x"));
    assert!(!glob_match("*c", "*ab"));
    assert!(NamesFilter::from("blocks.*").matches("blocks.*.x"));
}
