//! The few YAML files transcoder releases ship (circuit-tracer's `config.yaml`, wandb's
//! `wandb-config.yaml`), read for the scalars SAELens takes from them: top-level
//! `key: value`, and wandb's `key:` blocks holding `value: ...` one level down. Lists,
//! deeper blocks and flow collections are skipped, not interpreted.

use std::path::Path;

use hooklens_core::{Error, Result};

/// A YAML file's top-level mapping: each key's inline scalar (empty for a block) and
/// the `key: scalar` lines of its block's first level.
pub(crate) struct Yaml {
    entries: Vec<Entry>,
}

/// A top-level key, its inline scalar, and its block's first-level `key: scalar` lines.
type Entry = (String, String, Vec<(String, String)>);

/// The most such a file may hold: real ones are a few KiB.
const MAX_YAML_BYTES: u64 = 4 << 20;

impl Yaml {
    /// Reads and parses `path`; a line that is not `key: value` at the top level is an
    /// error naming the file and the line.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = crate::loading::read_bounded(path, MAX_YAML_BYTES)?;
        Self::parse(&text).map_err(|reason| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut child_indent = None;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_end();
            let body = trimmed.trim_start();
            if body.is_empty() || body.starts_with('#') || body == "---" {
                continue;
            }
            let indent = trimmed.len() - body.len();
            if indent == 0 {
                if body.starts_with("- ") || body == "-" {
                    // A top-level list item belongs to the key above it.
                    continue;
                }
                let (key, value) =
                    key_value(body).ok_or_else(|| format!("line {}: `{body}` is not `key: value`", n + 1))?;
                entries.push((key, value, Vec::new()));
                child_indent = None;
            } else if let Some(last) = entries.last_mut() {
                let at = *child_indent.get_or_insert(indent);
                if indent == at {
                    if let Some((key, value)) = key_value(body) {
                        last.2.push((key, value));
                    }
                }
            } else {
                return Err(format!("line {}: indented before any key", n + 1));
            }
        }
        Ok(Yaml { entries })
    }

    /// The scalar of top-level `key`, if it has one (not null, not a block).
    pub(crate) fn scalar(&self, key: &str) -> Option<&str> {
        let (_, v, _) = self.entries.iter().find(|(k, _, _)| k == key)?;
        non_null(v)
    }

    /// The scalar of `sub` inside top-level `key`'s block (wandb's `key: {value: ...}`).
    pub(crate) fn nested(&self, key: &str, sub: &str) -> Option<&str> {
        let (_, _, children) = self.entries.iter().find(|(k, _, _)| k == key)?;
        let (_, v) = children.iter().find(|(k, _)| k == sub)?;
        non_null(v)
    }
}

fn non_null(v: &str) -> Option<&str> {
    match v {
        "" | "null" | "~" | "Null" | "NULL" => None,
        v => Some(v),
    }
}

/// `key: value` with quotes and a trailing comment removed from the value.
fn key_value(body: &str) -> Option<(String, String)> {
    let (key, rest) = if let Some(quoted) = body.strip_prefix('"').or_else(|| body.strip_prefix('\'')) {
        let end = quoted.find(['"', '\''])?;
        (&quoted[..end], quoted[end + 1..].strip_prefix(':')?)
    } else {
        let at = body.find(": ").or_else(|| body.strip_suffix(':').map(|k| k.len()))?;
        (&body[..at], &body[at + 1..])
    };
    let mut value = rest.trim();
    if !value.starts_with(['"', '\'']) {
        if let Some(at) = value.find(" #") {
            value = value[..at].trim_end();
        }
    }
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some((key.trim().to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_scalars_and_wandb_value_blocks() {
        let y = Yaml::parse(
            "# comment\nmodel_name: Qwen/Qwen3-4B  # the model\nscan: null\n_wandb:\n  value:\n    t:\n      \"1\":\n        - 1\n\
             d_model:\n  desc: null\n  value: 2560\ntranscoders:\n- hf://a\n- hf://b\nname: 'quoted: yes'\n",
        )
        .unwrap();
        assert_eq!(y.scalar("model_name"), Some("Qwen/Qwen3-4B"));
        assert_eq!(y.scalar("scan"), None);
        assert_eq!(y.nested("d_model", "value"), Some("2560"));
        assert_eq!(y.nested("d_model", "desc"), None);
        assert_eq!(y.nested("_wandb", "t"), None);
        assert_eq!(y.scalar("name"), Some("quoted: yes"));
        assert_eq!(y.scalar("missing"), None);
        let err = Yaml::parse("a: 1\nnot a mapping line\n").err().unwrap();
        assert!(err.contains("line 2"), "{err}");
    }
}
