//! `config.json` parsing: any text gives a config or an error naming the field, and a
//! config that parses is one every loader accepts (`validate` passes).
#![no_main]

use hooklens_models::TransformerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = TransformerConfig::from_hf_str(text, "config.json") else {
        return;
    };
    if let Err(e) = cfg.validate() {
        panic!("from_hf_str accepted a config that validate rejects: {e}\n{text}");
    }
    // Every optional hook name, in and out of range, with nonsense around it.
    for name in [
        "hook_tokens",
        "blocks.0.attn.hook_result",
        "blocks.18446744073709551615.hook_mlp_in",
        "blocks..hook_q_input",
        text,
    ] {
        let _ = cfg.disabled_flag_for(name);
    }
    let _ = cfg.clone().with_all_hooks();
});
