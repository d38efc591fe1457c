//! circuit-tracer's `config.yaml` beside a transcoder set or a cross-layer transcoder.
//!
//! The files hold a flat mapping (`model_kind: transcoder_set`, `feature_input_hook:
//! mlp.hook_in`, ...) and at most one list (`transcoders:`, per-layer file paths). Only
//! that subset of YAML is read, into a typed structure; anything else is an error naming
//! the line, so a file this reader misunderstands is refused rather than half-read.

use std::path::Path;

use hooklens_core::{Error, Result};

/// What `model_kind` says the folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscoderKind {
    /// One transcoder per layer (`transcoder_set`): `layer_{i}.safetensors`.
    Set,
    /// One cross-layer transcoder (`cross_layer_transcoder`): `W_enc_{i}` / `W_dec_{i}`.
    CrossLayer,
}

/// The fields of circuit-tracer's `config.yaml` that loading uses.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscoderConfig {
    /// Set or cross-layer.
    pub kind: TranscoderKind,
    /// Where features read, relative to a block (`mlp.hook_in`).
    pub feature_input_hook: String,
    /// Where features write, relative to a block (`mlp.hook_out`).
    pub feature_output_hook: String,
    /// The scan identifier written into graph files (`scan`), if any.
    pub scan: Option<String>,
    /// The model the transcoders were trained on (`model_name`), if given.
    pub model_name: Option<String>,
    /// Per-layer file paths (`transcoders:`), when the config lists them instead of
    /// relying on `layer_{i}.safetensors`.
    pub transcoders: Vec<String>,
    /// `k` of a TopK activation (`top_k` or `k`), when the transcoders use one.
    pub top_k: Option<usize>,
    /// `skip_connection: true` says a cross-layer transcoder has `W_skip_{i}.safetensors`
    /// files (hooklens's extension: circuit-tracer 0.5.0 stores no CLT skip), so that a hub
    /// repository's are fetched; in a folder they are found without it.
    pub skip_connection: bool,
}

/// Longest `config.yaml` read: the real ones are a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl TranscoderConfig {
    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::BadFile {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::BadFile {
                path: path.to_path_buf(),
                reason: format!("{} bytes: too long for a transcoder config.yaml", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|reason| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the text of a `config.yaml`; the error says which line and why.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let FlatYaml { scalars, list } = FlatYaml::read(text)?;
        let get = |k: &str| scalars.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let kind = match get("model_kind").as_deref() {
            Some("transcoder_set") => TranscoderKind::Set,
            Some("cross_layer_transcoder") => TranscoderKind::CrossLayer,
            Some(other) => {
                return Err(format!(
                    "model_kind `{other}` is not one circuit-tracer defines (transcoder_set, cross_layer_transcoder)"
                ))
            }
            None => return Err("no `model_kind` (transcoder_set or cross_layer_transcoder)".into()),
        };
        let hook = |k: &str| get(k).ok_or_else(|| format!("no `{k}` (e.g. mlp.hook_in / mlp.hook_out)"));
        let transcoders = match list {
            Some((key, items)) if key == "transcoders" => items,
            Some((key, _)) => return Err(format!("`{key}` is a list; only `transcoders` may be one")),
            None => Vec::new(),
        };
        let top_k = match get("top_k").or_else(|| get("k")) {
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|&k| k > 0)
                    .ok_or_else(|| format!("`top_k` is `{v}`, expected a positive integer"))?,
            ),
            None => None,
        };
        let skip_connection = match get("skip_connection").as_deref() {
            None | Some("false") | Some("False") => false,
            Some("true") | Some("True") => true,
            Some(other) => return Err(format!("`skip_connection` is `{other}`, expected true or false")),
        };
        Ok(TranscoderConfig {
            skip_connection,
            kind,
            feature_input_hook: hook("feature_input_hook")?,
            feature_output_hook: hook("feature_output_hook")?,
            scan: get("scan"),
            model_name: get("model_name"),
            transcoders,
            top_k,
        })
    }
}

/// A `config.yaml`'s flat mapping: its scalars in file order and its one list, if any
/// (key and items).
struct FlatYaml {
    scalars: Vec<(String, String)>,
    list: Option<(String, Vec<String>)>,
}

impl FlatYaml {
    /// Reads the subset of YAML these files use; the error says which line and why.
    fn read(text: &str) -> std::result::Result<Self, String> {
        let mut scalars: Vec<(String, String)> = Vec::new();
        let mut list: Option<(String, Vec<String>)> = None;
        let mut open_list: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = strip_comment(raw);
            if line.trim().is_empty() || line.trim() == "---" {
                continue;
            }
            let trimmed = line.trim_start();
            if let Some(item) = trimmed
                .strip_prefix("- ")
                .or(if trimmed == "-" { Some("") } else { None })
            {
                let Some(key) = &open_list else {
                    return Err(format!("line {line_no}: a list item outside a list"));
                };
                let entry = list.get_or_insert_with(|| (key.clone(), Vec::new()));
                entry.1.push(unquote(item.trim()));
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                return Err(format!(
                    "line {line_no}: nested mappings are not part of circuit-tracer's config.yaml"
                ));
            }
            let Some((key, value)) = trimmed.split_once(':') else {
                return Err(format!("line {line_no}: expected `key: value`, found `{}`", raw.trim()));
            };
            let key = key.trim().to_string();
            let value = value.trim();
            if value.is_empty() {
                no_second_list(list.is_some(), line_no, &key)?;
                open_list = Some(key);
                continue;
            }
            open_list = None;
            if value.starts_with('[') {
                let items = flow_list(value, line_no, &key)?;
                no_second_list(list.is_some(), line_no, &key)?;
                list = Some((key, items));
                continue;
            }
            if scalars.iter().any(|(k, _)| *k == key) {
                return Err(format!("line {line_no}: `{key}` is given twice"));
            }
            scalars.push((key, unquote(value)));
        }
        Ok(FlatYaml { scalars, list })
    }
}

/// The items of a one-line list `[a, b, ...]` (`value`, given for `key` on line `line_no`).
fn flow_list(value: &str, line_no: usize, key: &str) -> std::result::Result<Vec<String>, String> {
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| format!("line {line_no}: unclosed list for `{key}`"))?;
    Ok(inner
        .split(',')
        .map(|s| unquote(s.trim()))
        .filter(|s| !s.is_empty())
        .collect())
}

/// `Ok` unless a list was read already (`had_list`): the files have one at most.
fn no_second_list(had_list: bool, line_no: usize, key: &str) -> std::result::Result<(), String> {
    if had_list {
        return Err(format!(
            "line {line_no}: a second list (`{key}`); only `transcoders` is one"
        ));
    }
    Ok(())
}

/// `line` without a `#` comment (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// A scalar without its surrounding quotes.
fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reference_config() {
        let c = TranscoderConfig::parse(
            "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\nscan: public-plt\nmodel_name: public\n",
        )
        .unwrap();
        assert_eq!(c.kind, TranscoderKind::Set);
        assert_eq!(c.feature_input_hook, "mlp.hook_in");
        assert_eq!(c.scan.as_deref(), Some("public-plt"));
        assert!(c.transcoders.is_empty());
    }

    #[test]
    fn reads_a_list_of_files_and_comments() {
        let c = TranscoderConfig::parse(
            "# a set\nmodel_kind: 'cross_layer_transcoder'\nfeature_input_hook: \"hook_resid_mid\" # in\nfeature_output_hook: hook_mlp_out\ntranscoders:\n  - hf://a/b/layer_0.safetensors\n  - layer_1.safetensors\n",
        )
        .unwrap();
        assert_eq!(c.kind, TranscoderKind::CrossLayer);
        assert_eq!(c.feature_input_hook, "hook_resid_mid");
        assert_eq!(c.transcoders, ["hf://a/b/layer_0.safetensors", "layer_1.safetensors"]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let e =
            TranscoderConfig::parse("model_kind: sae\nfeature_input_hook: a\nfeature_output_hook: b\n").unwrap_err();
        assert!(e.contains("model_kind `sae`"), "{e}");
        let e = TranscoderConfig::parse("model_kind: transcoder_set\nfeature_output_hook: b\n").unwrap_err();
        assert!(e.contains("feature_input_hook"), "{e}");
        let e = TranscoderConfig::parse("model_kind: transcoder_set\nx:\n  y: 1\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = TranscoderConfig::parse("model_kind: transcoder_set\nmodel_kind: transcoder_set\n").unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
