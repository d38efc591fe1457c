//! Model names: TransformerLens's aliases, the ids Hugging Face serves under two names,
//! and what a Hugging Face id may look like.

use hooklens_core::{Error, Result};

/// TransformerLens's names for models that are not Hugging Face ids.
pub(super) const ALIASES: &[(&str, &str)] = &[("gpt2-small", "gpt2")];

/// Ids that Hugging Face moved under an organisation and still serves by both names;
/// Python's cache keeps each under the name it was asked for, so a cached copy may sit
/// under either.
#[cfg(feature = "hub")]
pub(super) const SAME_REPO: &[(&str, &str)] = &[
    ("gpt2", "openai-community/gpt2"),
    ("gpt2-medium", "openai-community/gpt2-medium"),
    ("gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "openai-community/gpt2-xl"),
    ("distilgpt2", "distilbert/distilgpt2"),
];

/// Whether `name` can only be meant as a path: Hugging Face ids have at most one `/`
/// and never start with `.`, `/` or `~`.
pub(super) fn looks_like_path(name: &str) -> bool {
    name.starts_with(['.', '/', '~']) || name.matches('/').count() > 1 || name.contains('\\')
}

/// Checks that `id` is a valid Hugging Face id (`name` or `org/name`).
pub(super) fn check_repo_id(id: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.contains("..")
    };
    if id.split('/').count() <= 2 && id.split('/').all(ok_part) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "model `{id}`: neither a directory nor a valid Hugging Face id (`name` or `org/name`)"
        )))
    }
}
