//! A worker's manifest: its settings and fingerprints, its finished shards (each with
//! its size, rows and SHA-256) and, once complete, totals.
//!
//! A resumed run trusts nothing in it: every setting and fingerprint must equal this
//! run's, every shard entry must be the file this worker would have written at that
//! place, with the rows its header says and the content its checksum says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::fingerprint::file_sha256;
use crate::error::{CliError, CliResult};

/// The manifest's `format` field; bumped when the layout changes.
pub const FORMAT: &str = "hooklens-harvest/2";

/// One finished shard, as the manifest lists it.
pub struct ShardEntry {
    /// The file name, inside the output directory.
    pub file: String,
    /// Sequences it holds.
    pub rows: usize,
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its content.
    pub sha256: String,
}

/// The manifest of one worker.
pub struct Manifest {
    path: PathBuf,
    settings: Value,
    about: Value,
    tensors: BTreeMap<String, Value>,
    /// Finished shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Whether the whole input was read.
    pub complete: bool,
    /// Totals, once complete.
    pub extra: Value,
}

/// What a setting's change means, for the refusal.
fn describe(key: &str) -> &'static str {
    match key {
        "input_sha256" => "the --input file's content changed",
        "model_sha256" => "the model's files (checkpoint, config or tokenizer) changed",
        _ => "a setting changed",
    }
}

/// The settings in which the workers of one harvest may differ: which part of the input
/// each takes, and how it batches and cuts its shards (which changes none of the rows).
const PER_WORKER: [&str; 3] = ["shard_index", "batch_size", "rows_per_shard"];

/// Refuses a worker whose harvest is not the one the other manifests in `dir` (all but
/// `own`) belong to: one --out holds one harvest, which a reader takes whole, so workers
/// with other splits, hook points, context or input would be read as one.
pub fn check_same_harvest(dir: &Path, own: &Path, settings: &Value) -> CliResult<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError(format!("--out {}: {e}", dir.display())))?;
    let mut others: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && name.ends_with("-manifest.json") && p.as_path() != own
        })
        .collect();
    others.sort();
    let one = "one --out holds one harvest (the workers of one run, which differ only in --shard-index, \
               --batch-size and --shard-size-mb): harvest into another --out";
    for path in others {
        let shown = path.display();
        // Only regular files are read: a FIFO of that name would hang the read.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            return Err(CliError(format!("{shown} is not a regular file; {one}")));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| CliError(format!("{shown}: {e}")))?;
        let old: Value = serde_json::from_str(&text)
            .map_err(|e| CliError(format!("{shown}: not a harvest manifest ({e}); {one}")))?;
        if old["format"] != FORMAT {
            return Err(CliError(format!(
                "{shown}: not a {FORMAT} manifest (format {}); {one}",
                old["format"]
            )));
        }
        for (key, now) in settings.as_object().into_iter().flatten() {
            let was = &old["settings"][key];
            if !PER_WORKER.contains(&key.as_str()) && was != now {
                return Err(CliError(format!(
                    "--out {} holds another harvest: {shown} was written with {key} = {was}, this run has \
                     {key} = {now}; {one}",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// The file name of shard `index` of worker `prefix`.
pub fn shard_file(prefix: &str, index: usize) -> String {
    format!("{prefix}-shard-{index:06}.safetensors")
}

impl Manifest {
    /// Reads the manifest at `path` and checks it against this run: the settings, then
    /// every shard entry; a new manifest when there is none. `prefix` names the worker,
    /// `rows_per_shard` is the size every shard but a complete run's last one has.
    pub fn open(
        path: &Path,
        prefix: &str,
        settings: Value,
        about: Value,
        tensors: BTreeMap<String, Value>,
        rows_per_shard: usize,
    ) -> CliResult<Self> {
        let shown = path.display();
        let fresh = Manifest {
            path: path.to_path_buf(),
            settings: settings.clone(),
            about: about.clone(),
            tensors: tensors.clone(),
            shards: Vec::new(),
            complete: false,
            extra: Value::Null,
        };
        let meta = match std::fs::symlink_metadata(path) {
            // Written with the first shard: a run that stops before it (bad input
            // further down, say) leaves nothing behind.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
            Err(e) => return Err(CliError(format!("{shown}: {e}"))),
            Ok(m) => m,
        };
        if !meta.is_file() {
            return Err(CliError(format!(
                "{shown} is not a regular file: a manifest is one (move it away)"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| CliError(format!("{shown}: {e}")))?;
        let old: Value =
            serde_json::from_str(&text).map_err(|e| CliError(format!("{shown}: not a harvest manifest: {e}")))?;
        if old["format"] != FORMAT {
            return Err(CliError(format!(
                "{shown}: not a {FORMAT} manifest (format {}): it was written by another version of \
                 hooklens; harvest into another --out",
                old["format"]
            )));
        }
        let start_over =
            format!("use another --out, or delete that directory's files of worker {prefix} to start over");
        if let Some(obj) = settings.as_object() {
            for (key, now) in obj {
                let was = &old["settings"][key];
                if was != now {
                    return Err(CliError(format!(
                        "{shown}: {}: it was written with {key} = {was}, this run has {key} = {now}; \
                         resuming would mix two harvests ({start_over})",
                        describe(key)
                    )));
                }
            }
        }
        let complete = match &old["complete"] {
            Value::Bool(b) => *b,
            other => {
                return Err(CliError(format!(
                    "{shown}: `complete` is {other}, expected true or false"
                )))
            }
        };
        let list = old["shards"]
            .as_array()
            .ok_or_else(|| CliError(format!("{shown}: `shards` is not a list")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shards = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let lie = |what: String| {
                CliError(format!(
                    "{shown}: shard entry {i} {what}: the manifest or the directory was changed since; {start_over}"
                ))
            };
            let want_file = shard_file(prefix, i);
            let file = s["file"].as_str().unwrap_or_default();
            if file != want_file {
                return Err(lie(format!("names {}, expected {want_file:?}", s["file"])));
            }
            let rows = s["rows"]
                .as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .filter(|&r| r >= 1 && r <= rows_per_shard)
                .ok_or_else(|| lie(format!("has rows = {}, expected 1 to {rows_per_shard}", s["rows"])))?;
            let last = i + 1 == list.len();
            if rows != rows_per_shard && !(complete && last) {
                return Err(lie(format!(
                    "has rows = {rows}, but every shard but a finished run's last holds {rows_per_shard}"
                )));
            }
            let bytes = s["bytes"]
                .as_u64()
                .ok_or_else(|| lie(format!("has bytes = {}", s["bytes"])))?;
            let sha256 = s["sha256"]
                .as_str()
                .filter(|h| h.len() == 64)
                .ok_or_else(|| lie(format!("has sha256 = {}", s["sha256"])))?
                .to_string();
            let full = dir.join(file);
            let on_disk = std::fs::symlink_metadata(&full)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            if on_disk != Some(bytes) {
                return Err(lie(format!(
                    "lists {} ({bytes} bytes), but {}",
                    full.display(),
                    match on_disk {
                        None => "it is missing or not a regular file".to_string(),
                        Some(n) => format!("it has {n} bytes"),
                    }
                )));
            }
            let now = file_sha256("shard", &full)?;
            if now != sha256 {
                return Err(lie(format!(
                    "lists {} with SHA-256 {sha256}, but its content has {now} (damaged on disk?)",
                    full.display()
                )));
            }
            let in_file = header_rows(&full).map_err(|e| lie(format!("lists {}, which {e}", full.display())))?;
            if in_file != rows {
                return Err(lie(format!(
                    "has rows = {rows}, but {} holds {in_file}",
                    full.display()
                )));
            }
            shards.push(ShardEntry {
                file: file.to_string(),
                rows,
                bytes,
                sha256,
            });
        }
        Ok(Manifest {
            shards,
            complete,
            extra: old["totals"].clone(),
            ..fresh
        })
    }

    /// Sequences in finished shards.
    pub fn rows(&self) -> usize {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// The manifest's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the manifest atomically (temporary file, fsync, rename).
    pub fn save(&self) -> CliResult<()> {
        let shards: Vec<Value> = self
            .shards
            .iter()
            .map(|s| json!({ "file": s.file, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256 }))
            .collect();
        let value = json!({
            "format": FORMAT,
            "settings": self.settings,
            "about": self.about,
            "tensors": self.tensors,
            "shards": shards,
            "complete": self.complete,
            "totals": self.extra,
        });
        let text = serde_json::to_string_pretty(&value).map_err(|e| CliError(format!("cannot write JSON: {e}")))?;
        crate::cmd::common::write_text_file(&self.path, &(text + "\n"))
    }
}

/// The rows of a shard, from the shape of its `tokens` in the safetensors header.
fn header_rows(path: &Path) -> Result<usize, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err("is not a safetensors file".into());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: Value = serde_json::from_slice(&header).map_err(|e| format!("has a bad header: {e}"))?;
    header["tokens"]["shape"][0]
        .as_u64()
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| "holds no `tokens`".to_string())
}
