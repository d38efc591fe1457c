//! Text in and out of `HookedTransformer`, as TransformerLens's `to_tokens`, `to_string`,
//! `to_str_tokens`, `to_single_token` and `get_token_position`.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};
use hooklens_core::{Error, Result};

use super::model::HookedTransformer;
use crate::tokenizer::Tokenizer;

/// Where padding goes when prompts of different lengths share a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaddingSide {
    /// After each prompt (TransformerLens's default).
    #[default]
    Right,
    /// Before each prompt (what batched generation needs: every prompt ends at the
    /// last position).
    Left,
}

/// One prompt or several, for [`HookedTransformer::to_tokens`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompts<'a>(pub Vec<&'a str>);

impl<'a> From<&'a str> for Prompts<'a> {
    fn from(s: &'a str) -> Self {
        Prompts(vec![s])
    }
}

impl<'a> From<&'a String> for Prompts<'a> {
    fn from(s: &'a String) -> Self {
        Prompts(vec![s.as_str()])
    }
}

impl<'a> From<Vec<&'a str>> for Prompts<'a> {
    fn from(v: Vec<&'a str>) -> Self {
        Prompts(v)
    }
}

impl<'a> From<&'a [&'a str]> for Prompts<'a> {
    fn from(v: &'a [&'a str]) -> Self {
        Prompts(v.to_vec())
    }
}

impl<'a, const N: usize> From<[&'a str; N]> for Prompts<'a> {
    fn from(v: [&'a str; N]) -> Self {
        Prompts(v.to_vec())
    }
}

impl<'a> From<&'a [String]> for Prompts<'a> {
    fn from(v: &'a [String]) -> Self {
        Prompts(v.iter().map(String::as_str).collect())
    }
}

impl<'a> From<&'a Vec<String>> for Prompts<'a> {
    fn from(v: &'a Vec<String>) -> Self {
        Prompts(v.iter().map(String::as_str).collect())
    }
}

/// A text, or its tokens: the inputs TransformerLens's `to_str_tokens` and
/// `get_token_position` accept.
#[derive(Clone, Copy, Debug)]
pub enum TextOrTokens<'a> {
    /// A text, tokenized first.
    Text(&'a str),
    /// Token ids.
    Ids(&'a [u32]),
    /// A token tensor `[pos]` or `[1, pos]`.
    Tokens(&'a Tensor),
}

impl<'a> From<&'a str> for TextOrTokens<'a> {
    fn from(s: &'a str) -> Self {
        TextOrTokens::Text(s)
    }
}

impl<'a> From<&'a String> for TextOrTokens<'a> {
    fn from(s: &'a String) -> Self {
        TextOrTokens::Text(s)
    }
}

impl<'a> From<&'a [u32]> for TextOrTokens<'a> {
    fn from(ids: &'a [u32]) -> Self {
        TextOrTokens::Ids(ids)
    }
}

impl<'a> From<&'a Vec<u32>> for TextOrTokens<'a> {
    fn from(ids: &'a Vec<u32>) -> Self {
        TextOrTokens::Ids(ids)
    }
}

impl<'a> From<&'a Tensor> for TextOrTokens<'a> {
    fn from(t: &'a Tensor) -> Self {
        TextOrTokens::Tokens(t)
    }
}

/// One token, by id or by its text (which must tokenize to exactly one token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleToken<'a> {
    /// A token id.
    Id(u32),
    /// The text of one token, e.g. `" Mary"`.
    Str(&'a str),
}

impl From<u32> for SingleToken<'_> {
    fn from(id: u32) -> Self {
        SingleToken::Id(id)
    }
}

impl<'a> From<&'a str> for SingleToken<'a> {
    fn from(s: &'a str) -> Self {
        SingleToken::Str(s)
    }
}

/// Which occurrence [`HookedTransformer::get_token_position`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Occurrence {
    /// The first (TransformerLens's `mode="first"`).
    #[default]
    First,
    /// The last (`mode="last"`).
    Last,
}

/// GPT-2's tokenizer, built once per process for every model without its own.
fn default_tokenizer() -> Result<&'static Tokenizer> {
    static GPT2: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
    GPT2.get_or_init(|| Tokenizer::gpt2().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::invalid(e.clone()))
}

/// Token ids out of an integer tensor of any rank, negative ids rejected.
fn tensor_ids(t: &Tensor) -> Result<Vec<u32>> {
    if !matches!(t.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(Error::invalid(format!(
            "tokens must be integers (u8, u32 or i64), got {:?}",
            t.dtype()
        )));
    }
    t.to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|id| u32::try_from(id).map_err(|_| Error::invalid(format!("token id {id} is not a valid id"))))
        .collect()
}

/// The rows of a token tensor `[batch, pos]` (a 1-D `[pos]` is one row).
fn tensor_rows(t: &Tensor) -> Result<Vec<Vec<u32>>> {
    match t.rank() {
        1 => Ok(vec![tensor_ids(t)?]),
        2 => {
            let (b, p) = t.dims2()?;
            let ids = tensor_ids(t)?;
            Ok((0..b).map(|i| ids[i * p..(i + 1) * p].to_vec()).collect())
        }
        r => Err(Error::invalid(format!(
            "tokens must be [batch, pos] or [pos], got rank {r} with shape {:?}",
            t.dims()
        ))),
    }
}

/// The ids of a single sequence: `[pos]` or `[1, pos]`.
fn single_row(t: &Tensor, what: &str) -> Result<Vec<u32>> {
    let mut rows = tensor_rows(t)?;
    if rows.len() != 1 {
        return Err(Error::invalid(format!(
            "{what} takes one sequence ([pos] or [1, pos]), got tokens of shape {:?}",
            t.dims()
        )));
    }
    Ok(rows.remove(0))
}

impl HookedTransformer {
    /// This model with `tokenizer` for its text methods (`to_tokens`, ...).
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(Arc::new(tokenizer));
        self
    }

    /// Replaces the tokenizer of the text methods; `None` goes back to the default
    /// (GPT-2's BPE for a GPT-2, none for other families).
    pub fn set_tokenizer(&mut self, tokenizer: Option<Tokenizer>) {
        self.tokenizer = tokenizer.map(Arc::new);
    }

    /// The tokenizer of the text methods: the one given by `from_pretrained` (the
    /// model's `tokenizer.json`) or [`HookedTransformer::with_tokenizer`], else GPT-2's BPE
    /// for a GPT-2 whose vocabulary holds GPT-2's 50257 tokens. Any other model without
    /// one is an error naming the missing `tokenizer.json` (GPT-2's BPE would give ids
    /// outside its vocabulary).
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        const GPT2_VOCAB: usize = 50257;
        match &self.tokenizer {
            Some(t) => Ok(t),
            None if self.cfg().is_gpt2() && self.cfg().d_vocab >= GPT2_VOCAB => default_tokenizer(),
            None if self.cfg().is_gpt2() => Err(Error::invalid(format!(
                "this GPT-2 has no tokenizer.json and a vocabulary of {} tokens, too small for GPT-2's \
                 BPE ({GPT2_VOCAB}): put its tokenizer.json in the model folder (from_pretrained reads it), \
                 give one with with_tokenizer, or pass token ids (--tokens)",
                self.cfg().d_vocab
            ))),
            None => Err(Error::invalid(format!(
                "this {} has no tokenizer: put its tokenizer.json in the model folder \
                 (from_pretrained reads it) or give one with with_tokenizer",
                self.cfg().original_architecture
            ))),
        }
    }

    /// The BOS token: the config's `bos_token_id`, else the tokenizer's
    /// (`<|endoftext|>`, 50256 for GPT-2).
    pub fn bos_token_id(&self) -> Result<u32> {
        if let Some(id) = self.cfg().bos_token_id {
            return Ok(id);
        }
        self.tokenizer()?
            .bos_token_id()
            .ok_or_else(|| Error::invalid("the model's config and tokenizer name no BOS token"))
    }

    /// The padding token: the tokenizer's (`<|endoftext|>` for GPT-2, as
    /// TransformerLens sets it), else the config's EOS, else BOS.
    pub fn pad_token_id(&self) -> Result<u32> {
        self.tokenizer()
            .ok()
            .and_then(|t| t.pad_token_id())
            .filter(|&id| (id as usize) < self.cfg().d_vocab)
            .or(self.cfg().eos_token_id)
            .map_or_else(|| self.bos_token_id(), Ok)
    }

    /// Token ids of one text, BOS first if `prepend_bos`; checked against the model's
    /// vocabulary and context length.
    pub fn encode(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let tok = self.tokenizer()?;
        let mut ids = Vec::new();
        if prepend_bos {
            ids.push(self.bos_token_id()?);
        }
        ids.extend(tok.encode(text)?);
        let d_vocab = self.cfg().d_vocab;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= d_vocab) {
            return Err(Error::TokenOutOfVocab {
                id: bad.into(),
                d_vocab,
                message: format!(
                    "{text:?} gives token id {bad} ({}), outside the model's vocabulary of {d_vocab}: \
                     the tokenizer does not fit this model (give the model its own tokenizer.json, or pass tokens)",
                    tok.source()
                ),
            });
        }
        if ids.is_empty() {
            return Err(Error::invalid(
                "an empty prompt without BOS gives no tokens: the model needs at least one",
            ));
        }
        let n_ctx = self.cfg().n_ctx;
        if ids.len() > n_ctx {
            return Err(Error::ContextTooLong {
                positions: ids.len(),
                n_ctx,
                message: format!(
                    "the prompt is {} tokens long, more than the context length n_ctx = {n_ctx}: {:?}...",
                    ids.len(),
                    text.chars().take(40).collect::<String>()
                ),
            });
        }
        Ok(ids)
    }

    /// TransformerLens's `to_tokens`: tokens `[batch, pos]` (u32, on the model's
    /// device) of one prompt or several, BOS first if `prepend_bos` (TransformerLens's
    /// default). Prompts of different lengths are padded on `padding_side` with the
    /// padding token; [`HookedTransformer::to_tokens_with_mask`] also gives the mask to pass
    /// as `ForwardOptions::attention_mask`.
    pub fn to_tokens<'a>(
        &self,
        input: impl Into<Prompts<'a>>,
        prepend_bos: bool,
        padding_side: PaddingSide,
    ) -> Result<Tensor> {
        Ok(self.to_tokens_with_mask(input, prepend_bos, padding_side)?.0)
    }

    /// [`HookedTransformer::to_tokens`] and the attention mask: `([batch, pos], [batch, pos])`,
    /// both u32, the mask 1 at real tokens (BOS included) and 0 at padding.
    pub fn to_tokens_with_mask<'a>(
        &self,
        input: impl Into<Prompts<'a>>,
        prepend_bos: bool,
        padding_side: PaddingSide,
    ) -> Result<(Tensor, Tensor)> {
        let prompts = input.into().0;
        if prompts.is_empty() {
            return Err(Error::invalid("to_tokens: no prompt given"));
        }
        let rows = prompts
            .iter()
            .map(|p| self.encode(p, prepend_bos))
            .collect::<Result<Vec<_>>>()?;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let pad = if rows.iter().all(|r| r.len() == width) {
            0
        } else {
            self.pad_token_id()?
        };
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in &rows {
            let n_pad = width - row.len();
            let (pad_ids, pad_mask) = (std::iter::repeat_n(pad, n_pad), std::iter::repeat_n(0u32, n_pad));
            let (real_ids, real_mask) = (row.iter().copied(), std::iter::repeat_n(1u32, row.len()));
            match padding_side {
                PaddingSide::Right => {
                    ids.extend(real_ids.chain(pad_ids));
                    mask.extend(real_mask.chain(pad_mask));
                }
                PaddingSide::Left => {
                    ids.extend(pad_ids.chain(real_ids));
                    mask.extend(pad_mask.chain(real_mask));
                }
            }
        }
        let shape = (rows.len(), width);
        Ok((
            Tensor::from_vec(ids, shape, self.device())?,
            Tensor::from_vec(mask, shape, self.device())?,
        ))
    }

    /// TransformerLens's `to_string` on one sequence: the text of tokens `[pos]` or
    /// `[1, pos]`. Use [`HookedTransformer::to_strings`] for a batch.
    pub fn to_string(&self, tokens: &Tensor) -> Result<String> {
        self.tokenizer()?.decode(&single_row(tokens, "to_string")?)
    }

    /// TransformerLens's `to_string` on a batch: one text per row of tokens
    /// `[batch, pos]` (a 1-D `[pos]` gives one).
    pub fn to_strings(&self, tokens: &Tensor) -> Result<Vec<String>> {
        let tok = self.tokenizer()?;
        tensor_rows(tokens)?.iter().map(|row| tok.decode(row)).collect()
    }

    /// TransformerLens's `to_str_tokens`: the text of each token. A text is tokenized
    /// first (BOS first if `prepend_bos`); ids or a tensor `[pos]` / `[1, pos]` are
    /// taken as they are (`prepend_bos` is then ignored).
    pub fn to_str_tokens<'a>(&self, input: impl Into<TextOrTokens<'a>>, prepend_bos: bool) -> Result<Vec<String>> {
        let ids = self.input_ids(input.into(), prepend_bos, "to_str_tokens")?;
        let tok = self.tokenizer()?;
        ids.iter().map(|&id| tok.token_str(id)).collect()
    }

    /// TransformerLens's `to_single_token`: the id of a string that is exactly one
    /// token (`" Mary"`); anything else is an error listing the tokens it gives.
    pub fn to_single_token(&self, s: &str) -> Result<u32> {
        let tok = self.tokenizer()?;
        let ids = tok.encode(s)?;
        match ids.as_slice() {
            [id] if (*id as usize) < self.cfg().d_vocab => Ok(*id),
            [id] => Err(Error::TokenOutOfVocab {
                id: (*id).into(),
                d_vocab: self.cfg().d_vocab,
                message: format!(
                    "{s:?} is token {id}, outside the model's vocabulary of {}",
                    self.cfg().d_vocab
                ),
            }),
            _ => {
                let strs: Vec<String> = ids.iter().map(|&id| tok.token_str(id)).collect::<Result<_>>()?;
                Err(Error::invalid(format!(
                    "{s:?} is not a single token: it is {} tokens {strs:?} (ids {ids:?})",
                    ids.len()
                )))
            }
        }
    }

    /// TransformerLens's `to_single_str_token`: the text of token `id`.
    pub fn to_single_str_token(&self, id: u32) -> Result<String> {
        self.tokenizer()?.token_str(id)
    }

    /// TransformerLens's `get_token_position`: the position of `token` (an id, or a
    /// string that is one token) in `input` (a text, tokenized with BOS first if
    /// `prepend_bos`; or ids, or tokens `[pos]` / `[1, pos]`), its first or last
    /// occurrence. An error if it does not occur.
    pub fn get_token_position<'a, 'b>(
        &self,
        token: impl Into<SingleToken<'a>>,
        input: impl Into<TextOrTokens<'b>>,
        mode: Occurrence,
        prepend_bos: bool,
    ) -> Result<usize> {
        let id = match token.into() {
            SingleToken::Id(id) => id,
            SingleToken::Str(s) => self.to_single_token(s)?,
        };
        let ids = self.input_ids(input.into(), prepend_bos, "get_token_position")?;
        let found = match mode {
            Occurrence::First => ids.iter().position(|&t| t == id),
            Occurrence::Last => ids.iter().rposition(|&t| t == id),
        };
        found.ok_or_else(|| {
            let text = self.tokenizer().and_then(|t| t.token_str(id)).unwrap_or_default();
            Error::invalid(format!(
                "token {id} ({text:?}) does not occur in the input ({} tokens)",
                ids.len()
            ))
        })
    }

    fn input_ids(&self, input: TextOrTokens<'_>, prepend_bos: bool, what: &str) -> Result<Vec<u32>> {
        match input {
            TextOrTokens::Text(text) => self.encode(text, prepend_bos),
            TextOrTokens::Ids(ids) => Ok(ids.to_vec()),
            TextOrTokens::Tokens(t) => single_row(t, what),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::model::LoadOptions;

    /// Models holding a tokenizer are shared across threads.
    #[test]
    fn model_with_a_tokenizer_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<HookedTransformer>();
    }

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    /// The tiny reference model with the tiny byte-level BPE (512 ids, EOS 511).
    fn tiny() -> HookedTransformer {
        let model =
            HookedTransformer::from_dir(testdata().join("tiny-gpt2/model"), &LoadOptions::no_processing()).unwrap();
        let tok = Tokenizer::from_file(testdata().join("tiny-tokenizer/tokenizer.json")).unwrap();
        model.with_tokenizer(tok)
    }

    fn rows(t: &Tensor) -> Vec<Vec<u32>> {
        t.to_vec2::<u32>().unwrap()
    }

    #[test]
    fn to_tokens_prepends_bos_and_pads() {
        let m = tiny();
        let hello = [39, 68, 75, 363, 338, 266, 75, 67];
        let t = m.to_tokens("Hello world", true, PaddingSide::Right).unwrap();
        assert_eq!(t.dtype(), DType::U32);
        let mut want = vec![511];
        want.extend(hello);
        assert_eq!(rows(&t), vec![want.clone()]);
        let t = m.to_tokens("Hello world", false, PaddingSide::Right).unwrap();
        assert_eq!(rows(&t), vec![hello.to_vec()]);

        let (t, mask) = m
            .to_tokens_with_mask(["Hello world", "ma"], true, PaddingSide::Right)
            .unwrap();
        assert_eq!(rows(&t)[0], want);
        assert_eq!(rows(&t)[1], vec![511, 300, 511, 511, 511, 511, 511, 511, 511]);
        assert_eq!(rows(&mask)[1], vec![1, 1, 0, 0, 0, 0, 0, 0, 0]);
        let (t, mask) = m
            .to_tokens_with_mask(["ma", "Hello world"], true, PaddingSide::Left)
            .unwrap();
        assert_eq!(rows(&t)[0], vec![511, 511, 511, 511, 511, 511, 511, 511, 300]);
        assert_eq!(rows(&mask)[0], vec![0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(rows(&mask)[1], vec![1; 9]);
    }

    #[test]
    fn left_padded_batch_gives_each_prompt_its_own_logits() {
        let m = tiny();
        let (t, mask) = m
            .to_tokens_with_mask(["ma", "Hello world"], true, PaddingSide::Left)
            .unwrap();
        let opts = crate::model::ForwardOptions::new().attention_mask(mask);
        let batch = m.forward_with(&t, &opts).unwrap().logits.unwrap();
        let alone = m.forward(&m.to_tokens("ma", true, PaddingSide::Left).unwrap()).unwrap();
        let last_batch = batch.get(0).unwrap().get(8).unwrap();
        let last_alone = alone.get(0).unwrap().get(1).unwrap();
        assert!(hooklens_testutil::max_abs_diff(&last_batch, &last_alone) < 1e-4);
    }

    #[test]
    fn bad_prompts_are_errors() {
        let m = tiny();
        let err = m.to_tokens("", false, PaddingSide::Right).unwrap_err().to_string();
        assert!(err.contains("empty prompt"), "{err}");
        assert_eq!(
            rows(&m.to_tokens("", true, PaddingSide::Right).unwrap()),
            vec![vec![511]]
        );
        let long = "x ".repeat(100);
        let err = m
            .to_tokens(long.as_str(), true, PaddingSide::Right)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_ctx = 64"), "{err}");
        let empty: Vec<&str> = Vec::new();
        assert!(m.to_tokens(empty, true, PaddingSide::Right).is_err());
    }

    #[test]
    fn a_gpt2_too_small_for_gpt2_bpe_needs_its_tokenizer_json() {
        let mut m = tiny();
        m.set_tokenizer(None);
        // GPT-2's BPE would give ids up to 50256 in a 512-token vocabulary.
        let err = m
            .to_tokens("Hello world", true, PaddingSide::Right)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("vocabulary of 512"),
            "{err}"
        );
        // Token ids still work without one.
        let ids = candle_core::Tensor::new(&[[511u32, 5, 9]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(m.forward(&ids).unwrap().dims(), [1, 3, 512]);
    }

    #[test]
    fn strings_and_str_tokens() {
        let m = tiny();
        let t = m.to_tokens("Hello world", true, PaddingSide::Right).unwrap();
        assert_eq!(m.to_string(&t).unwrap(), "<|endoftext|>Hello world");
        assert_eq!(m.to_string(&t.squeeze(0).unwrap()).unwrap(), "<|endoftext|>Hello world");
        let t2 = m.to_tokens(["Hello world", "ma"], false, PaddingSide::Right).unwrap();
        assert!(m.to_string(&t2).is_err());
        let s = m.to_strings(&t2).unwrap();
        assert_eq!(s[0], "Hello world");
        assert!(s[1].starts_with("ma<|endoftext|>"), "{s:?}");
        let strs = m.to_str_tokens("Hello world", true).unwrap();
        assert_eq!(strs.concat(), "<|endoftext|>Hello world");
        assert_eq!(strs[0], "<|endoftext|>");
        assert_eq!(strs.len(), 9);
        assert_eq!(
            m.to_str_tokens(&vec![300u32, 511], false).unwrap(),
            ["ma", "<|endoftext|>"]
        );
        assert_eq!(m.to_str_tokens(&t, false).unwrap(), strs);
        let bad = Tensor::new(&[600u32], m.device()).unwrap();
        assert!(m.to_str_tokens(&bad, false).is_err());
    }

    #[test]
    fn single_tokens_and_positions() {
        let m = tiny();
        assert_eq!(m.to_single_token("ma").unwrap(), 300);
        assert_eq!(m.to_single_str_token(300).unwrap(), "ma");
        let err = m.to_single_token("Hello").unwrap_err().to_string();
        assert!(err.contains("not a single token"), "{err}");
        assert!(m.to_single_token("").is_err());
        // "Hello world": l (75) occurs at 3 and 7 after BOS.
        assert_eq!(
            m.get_token_position(75u32, "Hello world", Occurrence::First, true)
                .unwrap(),
            3
        );
        assert_eq!(
            m.get_token_position(75u32, "Hello world", Occurrence::Last, true)
                .unwrap(),
            7
        );
        assert_eq!(
            m.get_token_position(75u32, "Hello world", Occurrence::First, false)
                .unwrap(),
            2
        );
        assert_eq!(
            m.get_token_position("ma", &vec![1u32, 300, 300], Occurrence::Last, false)
                .unwrap(),
            2
        );
        let err = m
            .get_token_position("ma", "Hello world", Occurrence::First, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not occur"), "{err}");
    }

    #[test]
    fn reference_tokens_decode() {
        let m = tiny();
        let tokens = candle_core::safetensors::load(testdata().join("tiny-gpt2/tokens.safetensors"), m.device())
            .unwrap()
            .remove("tokens")
            .unwrap();
        let texts = m.to_strings(&tokens).unwrap();
        assert_eq!(texts.len(), 2);
        assert!(texts.iter().all(|t| t.starts_with("<|endoftext|>")));
    }
}
