//! A text corpus as `hooklens harvest --input` and `hooklens train-sae --input` read it:
//! one document per line (plain text, or a JSON object with the document in a string
//! field), tokenized, joined with the end-of-text token between documents and cut into
//! sequences of `context_size` tokens, each starting with BOS (TransformerLens's
//! `tokenize_and_concatenate`); the tokens left over at the end are dropped.

mod token_queue;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use hooklens_core::{Error, Result};
use serde_json::Value;

pub use token_queue::TokenQueue;

use crate::Tokenizer;

/// How a corpus's lines hold their documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorpusFormat {
    /// One document per line.
    Text,
    /// One JSON object per line, the document in a string field.
    Jsonl,
}

impl CorpusFormat {
    /// `Jsonl` for files ending in `.jsonl`, `.ndjson` or `.json`, else `Text`.
    pub fn detect(path: &Path) -> Self {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "jsonl" | "ndjson" | "json") {
            CorpusFormat::Jsonl
        } else {
            CorpusFormat::Text
        }
    }
}

/// Why a line holds no readable document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentError {
    /// The line is not valid JSON (the message names the column).
    Json(String),
    /// The text field holds something other than a string (named: "a number", ...).
    NotAString {
        /// The field.
        field: String,
        /// What it holds.
        kind: &'static str,
    },
    /// The object has no such field.
    NoField(String),
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentError::Json(m) => f.write_str(m),
            DocumentError::NotAString { field, kind } => write!(f, "field `{field}` is not a string but {kind}"),
            DocumentError::NoField(field) => write!(f, "no field `{field}`"),
        }
    }
}

/// The document on one line (its end, if any, is ignored); `None` for a blank line or a
/// blank document, which both formats skip alike.
pub fn document(line: &str, fmt: CorpusFormat, field: &str) -> std::result::Result<Option<String>, DocumentError> {
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        return Ok(None);
    }
    if fmt != CorpusFormat::Jsonl {
        return Ok(Some(trimmed.to_string()));
    }
    let value: Value = serde_json::from_str(trimmed).map_err(|e| DocumentError::Json(json_error(trimmed, &e)))?;
    match value.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DocumentError::NotAString {
            field: field.to_string(),
            kind: match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
            },
        }),
        None => Err(DocumentError::NoField(field.to_string())),
    }
}

/// serde_json's error for one line of the file: its own "line 1" would contradict the
/// line number in front, so only the column is kept. A lone surrogate escape (which
/// serde_json reports as "unexpected end of hex escape") is named as such.
fn json_error(line: &str, e: &serde_json::Error) -> String {
    if let Some(col) = lone_surrogate(line) {
        return format!(
            "not valid JSON at column {col}: a \\u escape of a lone UTF-16 surrogate \
             (\\uD800-\\uDFFF must come in a surrogate pair; alone it is no character)"
        );
    }
    let msg = e.to_string();
    let what = msg.split(" at line ").next().unwrap_or(&msg);
    format!("not valid JSON at column {}: {what}", e.column())
}

/// The column (from 1, in characters) of the first `\uXXXX` escape in `line` that is
/// half of a surrogate pair without its other half.
fn lone_surrogate(line: &str) -> Option<usize> {
    let chars: Vec<char> = line.chars().collect();
    let escape_at = |i: usize| -> Option<u32> {
        if chars.get(i) != Some(&'\\') || chars.get(i + 1) != Some(&'u') {
            return None;
        }
        let hex: String = chars.get(i + 2..i + 6)?.iter().collect();
        u32::from_str_radix(&hex, 16).ok()
    };
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '\\' {
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(0xD800..=0xDBFF) => match escape_at(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => return Some(i + 1),
            },
            Some(0xDC00..=0xDFFF) => return Some(i + 1),
            Some(_) => i += 6,
            // Any other escape, `\\` included: skip the escaped character.
            None => i += 2,
        }
    }
    None
}

/// The block to stop a forward before when only `names` are needed: one past the last
/// block a name lives in; `None` (run every block) when a name is after the blocks
/// (`ln_final.*`) or not a block's.
pub fn stop_layer(names: &[String], n_layers: usize) -> Option<usize> {
    let mut need = 0;
    for name in names {
        let layer = match name.strip_prefix("blocks.") {
            Some(rest) => rest
                .split('.')
                .next()
                .and_then(|l| l.parse::<usize>().ok())
                .map(|l| l + 1),
            None if name.starts_with("hook_") => Some(0),
            None => None,
        };
        need = need.max(layer.unwrap_or(n_layers));
    }
    (need < n_layers).then_some(need)
}

/// Where a corpus is and how to read it.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The file.
    pub path: PathBuf,
    /// How its lines hold documents.
    pub format: CorpusFormat,
    /// The field holding the document in JSON lines.
    pub text_field: String,
}

impl Corpus {
    /// The corpus at `path`, its format from the name ([`CorpusFormat::detect`]), the
    /// document in field `text` of JSON lines.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Corpus {
            format: CorpusFormat::detect(&path),
            path,
            text_field: "text".to_string(),
        }
    }
}

/// The longest line [`CorpusSequences`] reads: a file with no line ends never fills
/// memory.
pub const MAX_LINE_BYTES: u64 = 256 << 20;

/// The sequences of a corpus, read line by line: every document tokenized, followed by
/// `eos`, and cut into sequences of `context_size` tokens that start with `bos` (as
/// `hooklens harvest` cuts them: the same sequences from the same file).
pub struct CorpusSequences<'a> {
    corpus: &'a Corpus,
    tokenizer: &'a Tokenizer,
    bos: u32,
    eos: u32,
    context_size: usize,
    reader: BufReader<File>,
    line_no: usize,
    line: Vec<u8>,
    pending: TokenQueue,
}

impl<'a> CorpusSequences<'a> {
    /// Opens `corpus` (an error naming its path if it cannot be read).
    pub fn open(corpus: &'a Corpus, tokenizer: &'a Tokenizer, bos: u32, eos: u32, context_size: usize) -> Result<Self> {
        if context_size < 2 {
            return Err(Error::invalid(format!(
                "context size {context_size}: a sequence holds BOS and at least one token"
            )));
        }
        Ok(CorpusSequences {
            corpus,
            tokenizer,
            bos,
            eos,
            context_size,
            reader: BufReader::new(open(&corpus.path)?),
            line_no: 0,
            line: Vec::new(),
            pending: TokenQueue::default(),
        })
    }

    /// Starts again from the first line; the tokens left over are dropped.
    pub fn restart(&mut self) -> Result<()> {
        self.reader = BufReader::new(open(&self.corpus.path)?);
        self.line_no = 0;
        self.pending = TokenQueue::default();
        Ok(())
    }

    /// The next sequence, `None` at the end of the corpus.
    pub fn next_sequence(&mut self) -> Result<Option<Vec<u32>>> {
        let ctx = self.context_size;
        while self.pending.len() < ctx - 1 {
            if !self.read_document()? {
                return Ok(None);
            }
        }
        let mut seq = Vec::with_capacity(ctx);
        seq.push(self.bos);
        self.pending.take_into(ctx - 1, &mut seq);
        Ok(Some(seq))
    }

    /// Reads lines up to the next document and queues its tokens; false at the end.
    fn read_document(&mut self) -> Result<bool> {
        let corpus = self.corpus;
        let path = &corpus.path;
        loop {
            let at = format!("{} line {}", path.display(), self.line_no + 1);
            self.line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| Error::invalid(format!("{at}: {e}")))?;
            if n == 0 {
                return Ok(false);
            }
            if n as u64 > MAX_LINE_BYTES {
                return Err(Error::invalid(format!(
                    "{at}: longer than {} MiB (a file with no line ends?)",
                    MAX_LINE_BYTES >> 20
                )));
            }
            let first = self.line_no == 0;
            self.line_no += 1;
            let mut text =
                std::str::from_utf8(&self.line).map_err(|e| Error::invalid(format!("{at}: not UTF-8 text: {e}")))?;
            if first {
                // A byte-order mark starts the file, not the first document.
                text = text.strip_prefix('\u{feff}').unwrap_or(text);
            }
            let doc =
                document(text, corpus.format, &corpus.text_field).map_err(|e| Error::invalid(format!("{at}: {e}")))?;
            if let Some(doc) = doc {
                let mut tokens = self.tokenizer.encode(&doc)?;
                tokens.push(self.eos);
                self.pending.extend(tokens);
                return Ok(true);
            }
        }
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_of_both_formats() {
        assert_eq!(document("a b\r\n", CorpusFormat::Text, "text"), Ok(Some("a b".into())));
        assert_eq!(document("  \n", CorpusFormat::Text, "text"), Ok(None));
        assert_eq!(
            document(r#"{"text": "hi", "id": 3}"#, CorpusFormat::Jsonl, "text"),
            Ok(Some("hi".into()))
        );
        assert_eq!(
            document(r#"{"text": " "}"#, CorpusFormat::Jsonl, "text"),
            Ok(None),
            "blank documents are skipped in both formats"
        );
        let e = document(r#"{"id": 3}"#, CorpusFormat::Jsonl, "id").unwrap_err();
        assert_eq!(e.to_string(), "field `id` is not a string but a number");
        let e = document(r#"{"id": 3}"#, CorpusFormat::Jsonl, "text").unwrap_err();
        assert_eq!(e, DocumentError::NoField("text".into()));
        let e = document(r#"{"text": "\ud800"}"#, CorpusFormat::Jsonl, "text").unwrap_err();
        assert!(e.to_string().contains("lone UTF-16 surrogate"), "{e}");
        assert_eq!(CorpusFormat::detect(Path::new("a.ndjson")), CorpusFormat::Jsonl);
        assert_eq!(CorpusFormat::detect(Path::new("a.txt")), CorpusFormat::Text);
    }

    #[test]
    fn stop_layer_is_one_past_the_last_block_needed() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(stop_layer(&names(&["blocks.0.hook_resid_post"]), 2), Some(1));
        assert_eq!(stop_layer(&names(&["hook_embed"]), 2), Some(0));
        assert_eq!(stop_layer(&names(&["blocks.1.hook_mlp_out"]), 2), None);
        assert_eq!(stop_layer(&names(&["ln_final.hook_normalized"]), 2), None);
    }
}
