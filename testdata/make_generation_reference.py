"""Greedy-generation ground truth from TransformerLens 2.16.1 for the eight rotary families in
testdata/ (neox, llama, mistral, qwen2, qwen3, gemma, gemma2, phi3).

Usage: python make_generation_reference.py [TESTDATA_DIR] [FAMILY ...]
  TESTDATA_DIR defaults to the directory of this script; FAMILY defaults to all eight.
Needs: transformer-lens==2.16.1, transformers 5.x (checkpoints written by 5.24), torch,
safetensors, and make_arch_reference.py next to this script (its tl_config_dict / tl_model build
the TransformerLens model exactly as the activation references were built).
Made with: torch 2.15.0 (CPU), transformers 5.24.0, transformer-lens 2.16.1, Python 3.11.

For each family it reads TESTDATA_DIR/<family>/model (AutoModelForCausalLM, float32, eager
attention) and tokens.safetensors (`tokens`, int64 [2, 10]), builds the UNPROCESSED
HookedTransformer (as from_pretrained_no_processing would), and runs

    model.generate(prompt, max_new_tokens=12, do_sample=False, stop_at_eos=False,
                   use_past_kv_cache=True, prepend_bos=False, verbose=False)

with prompt = tokens[:, :4] (position 0 is BOS). It writes TESTDATA_DIR/<family>/tl_generate.safetensors:
  prompt     int64 [2, 4]
  generated  int64 [2, 16]   prompt followed by the 12 greedy tokens
Checks (the script fails if any does not hold):
  - use_past_kv_cache=False gives the same tokens as use_past_kv_cache=True;
  - every generated token is the argmax of TL's plain forward over the generated sequence.
It also prints whether Hugging Face's own greedy generate (no EOS stop) gives the same tokens,
and the smallest top-1 minus top-2 logit gap over the 12 steps (how far the argmax is from a tie).

TL 2.16.1's generate asserts that the model has a tokenizer even for token input, so the
byte-level BPE of testdata/tiny-tokenizer is attached; with rotary models (no positional
embedding) and token input its only use is that assertion: it changes no value.
"""
import copy, os, sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_arch_reference import ARCHS, tl_config_dict, tl_model  # noqa: E402

PROMPT_LEN = 4
NEW_TOKENS = 12


def dummy_tokenizer():
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(HERE, "tiny-tokenizer", "tokenizer.json"),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.padding_side = "right"
    return tok


def tl_generate(model, prompt, use_cache):
    out = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, stop_at_eos=False,
                         use_past_kv_cache=use_cache, prepend_bos=False, verbose=False)
    assert out.shape == (prompt.shape[0], PROMPT_LEN + NEW_TOKENS), out.shape
    return out.to(torch.int64)


def hf_generate(hf, prompt):
    # no EOS stop (and no min_new_tokens, which would mask the EOS logit and could change argmax)
    gen_cfg = copy.deepcopy(hf.generation_config)
    gen_cfg.eos_token_id = None
    gen_cfg.do_sample = False
    gen_cfg.max_new_tokens = NEW_TOKENS
    gen_cfg.min_new_tokens = None
    gen_cfg.max_length = None
    gen_cfg.pad_token_id = 0
    for k in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if hasattr(gen_cfg, k):
            setattr(gen_cfg, k, None)
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg)
    return out.to(torch.int64)


def main(root, archs):
    tok = dummy_tokenizer()
    for arch in archs:
        d = os.path.join(root, arch)
        model_dir = os.path.join(d, "model")
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
        for p in hf.parameters():
            p.requires_grad = False
        prompt = load_file(os.path.join(d, "tokens.safetensors"))["tokens"][:, :PROMPT_LEN]
        prompt = prompt.to(torch.int64).contiguous()
        with torch.no_grad():
            hf_out = hf_generate(hf, prompt)

        cfg_dict = tl_config_dict(arch, model_dir, hf.config)
        model = tl_model(arch, cfg_dict, hf, process=False)
        model.tokenizer = tok  # see the docstring: required by generate's assertion only
        with torch.no_grad():
            gen = tl_generate(model, prompt, use_cache=True)
            gen_nocache = tl_generate(model, prompt, use_cache=False)
            logits = model(gen)[:, PROMPT_LEN - 1:-1]  # predictions of the 12 new tokens
        assert torch.equal(gen[:, :PROMPT_LEN], prompt)
        assert torch.equal(gen, gen_nocache), f"{arch}: KV cache changes generation\n{gen}\n{gen_nocache}"
        assert torch.equal(logits.argmax(-1), gen[:, PROMPT_LEN:]), f"{arch}: not greedy"
        top2 = logits.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()

        save_file({"prompt": prompt, "generated": gen.contiguous()},
                  os.path.join(d, "tl_generate.safetensors"))
        os.chmod(os.path.join(d, "tl_generate.safetensors"), 0o644)
        same = torch.equal(hf_out, gen)
        print(f"{arch:8s} HF generate == TL: {same}; min top-2 logit gap {margin:.3g} "
              f"(max |logit| {logits.abs().max().item():.3g}); "
              f"generated {gen.tolist()}")
        if not same:
            print(f"{'':8s} HF generated {hf_out.tolist()}")


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else HERE
    archs = sys.argv[2:] or ARCHS
    main(root, archs)
