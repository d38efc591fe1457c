//! Which hook points a hook or a cache applies to (TransformerLens's `names_filter`).

use std::sync::Arc;

/// A selection of hook names: everything, one name, a list, a glob pattern, or a
/// predicate.
///
/// From a string: a name with `*` (any run of characters, dots included) or `?`
/// (one character) is a glob such as `blocks.*.attn.hook_pattern`; anything else is
/// an exact name, and an exact name the model lacks is an error, not an empty match.
#[derive(Clone)]
pub enum NamesFilter {
    /// Every hook point.
    All,
    /// One exact name.
    Name(String),
    /// A glob pattern over full names.
    Glob(String),
    /// Several names or globs; each must match something.
    Names(Vec<String>),
    /// A predicate on the full name.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl NamesFilter {
    /// A filter from a predicate on names.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        NamesFilter::Predicate(Arc::new(f))
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamesFilter::All => true,
            NamesFilter::Name(n) => n == name,
            NamesFilter::Glob(g) => glob_match(g, name),
            NamesFilter::Names(list) => list.iter().any(|p| pattern_matches(p, name)),
            NamesFilter::Predicate(f) => f(name),
        }
    }
}

/// Whether a string given as a name is a glob pattern.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// An exact name or a glob, by [`is_glob`].
pub(crate) fn pattern_matches(pattern: &str, name: &str) -> bool {
    if is_glob(pattern) {
        glob_match(pattern, name)
    } else {
        pattern == name
    }
}

/// Matches `name` against `pattern` where `*` is any run of characters and `?` one.
/// Iterative with one backtrack point, so no pattern can make it exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // `*` first: tested after the literal comparison, a `*` in the pattern would be
        // consumed as a literal by a `*` in the name, with no backtrack point recorded
        // (found by fuzzing: `glob_match("*", "*x")` was false).
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl std::fmt::Debug for NamesFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for NamesFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamesFilter::All => f.write_str("<all>"),
            NamesFilter::Name(n) | NamesFilter::Glob(n) => write!(f, "`{n}`"),
            NamesFilter::Names(list) => write!(f, "{list:?}"),
            NamesFilter::Predicate(_) => f.write_str("<predicate>"),
        }
    }
}

impl From<&str> for NamesFilter {
    fn from(s: &str) -> Self {
        if is_glob(s) {
            NamesFilter::Glob(s.to_string())
        } else {
            NamesFilter::Name(s.to_string())
        }
    }
}

impl From<String> for NamesFilter {
    fn from(s: String) -> Self {
        NamesFilter::from(s.as_str())
    }
}

impl From<&String> for NamesFilter {
    fn from(s: &String) -> Self {
        NamesFilter::from(s.as_str())
    }
}

impl From<Vec<String>> for NamesFilter {
    fn from(v: Vec<String>) -> Self {
        NamesFilter::Names(v)
    }
}

impl From<Vec<&str>> for NamesFilter {
    fn from(v: Vec<&str>) -> Self {
        NamesFilter::Names(v.into_iter().map(String::from).collect())
    }
}

impl<const N: usize> From<[&str; N]> for NamesFilter {
    fn from(v: [&str; N]) -> Self {
        NamesFilter::Names(v.iter().map(|s| s.to_string()).collect())
    }
}

impl From<&[&str]> for NamesFilter {
    fn from(v: &[&str]) -> Self {
        NamesFilter::Names(v.iter().map(|s| s.to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("blocks.*.attn.hook_pattern", "blocks.11.attn.hook_pattern"));
        assert!(!glob_match("blocks.*.attn.hook_pattern", "blocks.1.attn.hook_patterns"));
        assert!(glob_match("*hook_resid_*", "blocks.0.hook_resid_pre"));
        assert!(glob_match("blocks.?.hook_*", "blocks.3.hook_mlp_out"));
        assert!(!glob_match("blocks.?.hook_*", "blocks.10.hook_mlp_out"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b*c", "aXbYd"));
    }

    #[test]
    fn strings_become_names_or_globs() {
        assert!(matches!(NamesFilter::from("hook_embed"), NamesFilter::Name(_)));
        assert!(matches!(NamesFilter::from("blocks.*"), NamesFilter::Glob(_)));
        let list = NamesFilter::from(["hook_embed", "blocks.*.hook_z"]);
        assert!(list.matches("blocks.2.hook_z"));
        assert!(list.matches("hook_embed"));
        assert!(!list.matches("hook_pos_embed"));
    }
}
