//! The tokenizers: text -> ids -> text gives the text back, every id is inside the
//! vocabulary, and any list of ids decodes or is an error (never a panic).
//!
//! The first byte picks the case: GPT-2's built-in BPE or the tiny fixture's
//! `tokenizer.json` (a byte-level BPE, so both must round-trip any UTF-8 text), text or
//! ids.
#![no_main]

use std::sync::OnceLock;

use hooklens_models::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizers() -> &'static [Tokenizer; 2] {
    static TOKS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKS.get_or_init(|| {
        let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tiny-tokenizer/tokenizer.json");
        [
            Tokenizer::gpt2().expect("GPT-2's BPE"),
            Tokenizer::from_file(tiny).expect("the fixture tokenizer"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tok = &tokenizers()[usize::from(mode & 1)];
    if mode & 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let ids = tok.encode(text).expect("any text encodes");
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
            panic!("{}: {text:?} gave id {bad} outside the vocabulary", tok.source());
        }
        let back = tok.decode(&ids).expect("its own ids decode");
        assert_eq!(back, text, "{}: round trip through {ids:?}", tok.source());
    } else {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let in_vocab = ids.iter().all(|&id| (id as usize) < tok.vocab_size());
        match tok.decode(&ids) {
            Ok(_) => assert!(in_vocab, "{}: decoded ids outside the vocabulary {ids:?}", tok.source()),
            Err(e) => assert!(!in_vocab, "{}: ids in the vocabulary failed: {e}", tok.source()),
        }
        for &id in ids.iter().take(4) {
            let _ = tok.token_str(id);
        }
    }
});
