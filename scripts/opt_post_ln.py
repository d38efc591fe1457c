"""Hugging Face ground truth for the two OPT layouts TransformerLens 2.16.1 cannot load:
post-LN blocks with `word_embed_proj_dim` != `hidden_size` (facebook/opt-350m's layout), and
pre-LN blocks with that projection.

Usage: /work/venv-ct/bin/python scripts/opt_post_ln.py [TESTDATA_DIR]
  TESTDATA_DIR defaults to testdata/ next to this script's folder.
Made with: torch 2.15.0 (CPU), transformers 4.57.3, Python 3.11; offline, nothing downloaded.

For each variant it builds a tiny random `OPTForCausalLM` (float32, eager attention, seed
fixed): hidden 64, word_embed_proj_dim 32, 2 layers, 4 heads, ffn 128, vocab 512,
max_position_embeddings 64, relu, biases, tied embeddings. Parameters are redrawn so that
nothing is at its initial value: LayerNorm gains 1 + 0.3 N(0,1), biases 0.05 N(0,1),
`embed_tokens` 0.3 N(0,1), `project_in` / `project_out` 0.2 N(0,1), everything else
0.08 N(0,1). It writes

  <variant>/model/            save_pretrained (config.json, model.safetensors without
                              lm_head.weight, which is tied to embed_tokens)
  <variant>/hf.safetensors:
    tokens           int64 [2, 10]   token ids in 3..512 (no pad id 1, no BOS 2), position 0
                                     is BOS (2)
    logits           f32 [2, 10, 512]
    hidden_states.i  f32, i = 0..=2  `output_hidden_states`: hidden_states[i] for i < 2 is the
                                     input of decoder layer i, i.e. hooklens's
                                     `blocks.{i}.hook_resid_pre` (for i = 0 the token embedding
                                     after project_in plus the positions; for post-LN and i > 0
                                     the previous layer's output, already normalised by its
                                     `final_layer_norm`). The last one, hidden_states[2], is
                                     [2, 10, 32]: project_out of (final_layer_norm of, pre-LN
                                     only) the last layer's output; in hooklens that is
                                     project_out applied to `blocks.1.hook_normalized_resid_post`
                                     (post-LN) or to `ln_final.hook_normalized` (pre-LN).
    attn_out.i       f32 [2, 10, 64] layer i's self_attn output (after out_proj) =
                                     `blocks.{i}.hook_attn_out`
    mlp_out.i        f32 [2, 10, 64] layer i's fc2 output = `blocks.{i}.hook_mlp_out`
    attn_ln.i        f32 [2, 10, 64] layer i's self_attn_layer_norm output =
                                     `blocks.{i}.ln1.hook_normalized` (post-LN: it normalises
                                     resid_pre + attn_out; pre-LN: resid_pre)
    layer_out.i      f32 [2, 10, 64] layer i's output (post-LN: its final_layer_norm output =
                                     `blocks.{i}.hook_normalized_resid_post`; pre-LN:
                                     `blocks.{i}.hook_resid_post`)
    greedy_prompt    int64 [2, 4]    tokens[:, :4]
    greedy_tokens    int64 [2, 12]   the prompt and 8 greedy tokens: argmax of the full forward
                                     at each step (no cache), checked equal to HF's
                                     `generate(do_sample=False)` with its KV cache

Checks (the script fails if any does not hold): the greedy tokens equal HF's generate; the
smallest top-1 minus top-2 logit gap over the generation steps is printed (how far from a tie).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import OPTConfig, OPTForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "testdata")
NEW_TOKENS = 8
PROMPT_LEN = 4

VARIANTS = {
    # facebook/opt-350m's layout: post-LN blocks, no final norm, project_in / project_out.
    "opt-post-ln": dict(do_layer_norm_before=False, seed=350),
    # Pre-LN with the projection: the final norm, then project_out.
    "opt-proj": dict(do_layer_norm_before=True, seed=351),
}


def build(pre_ln, seed):
    torch.manual_seed(seed)
    cfg = OPTConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, do_layer_norm_before=pre_ln,
        dropout=0.0, attention_dropout=0.0, activation_function="relu", bos_token_id=2,
        eos_token_id=2, pad_token_id=1, enable_bias=True, tie_word_embeddings=True,
        torch_dtype="float32", _attn_implementation="eager")
    model = OPTForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif "project_" in name:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    dec = model.model.decoder
    assert dec.project_in is not None and dec.project_out is not None
    assert (dec.final_layer_norm is not None) == pre_ln
    return model


def capture(model, tokens):
    """Forward with hidden states, and per-layer module outputs through forward hooks."""
    saved = {}
    handles = []
    for i, layer in enumerate(model.model.decoder.layers):
        def keep(key):
            def hook(_module, _inputs, output):
                saved[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()
            return hook
        handles.append(layer.self_attn.register_forward_hook(keep(f"attn_out.{i}")))
        handles.append(layer.fc2.register_forward_hook(keep(f"mlp_out.{i}")))
        handles.append(layer.self_attn_layer_norm.register_forward_hook(keep(f"attn_ln.{i}")))
        handles.append(layer.register_forward_hook(keep(f"layer_out.{i}")))
    with torch.no_grad():
        out = model(tokens, output_hidden_states=True)
    for h in handles:
        h.remove()
    # fc2's output is [batch*pos, d] inside the layer (it reshapes): back to [batch, pos, d].
    for k in list(saved):
        if k.startswith("mlp_out."):
            saved[k] = saved[k].reshape(tokens.shape[0], tokens.shape[1], -1)
    saved["logits"] = out.logits.detach().clone()
    for i, h in enumerate(out.hidden_states):
        saved[f"hidden_states.{i}"] = h.detach().clone()
    return saved


def greedy(model, prompt):
    seq = prompt.clone()
    gaps = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(seq).logits[:, -1]
            top2 = logits.topk(2, dim=-1).values
            gaps.append((top2[:, 0] - top2[:, 1]).min().item())
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=True,
                            pad_token_id=1)
    assert torch.equal(hf, seq), (hf, seq)
    return seq, min(gaps)


def main():
    for name, spec in VARIANTS.items():
        model = build(spec["do_layer_norm_before"], spec["seed"])
        folder = os.path.join(OUT, name)
        model.save_pretrained(os.path.join(folder, "model"), safe_serialization=True)
        g = torch.Generator().manual_seed(spec["seed"])
        tokens = torch.randint(3, 512, (2, 10), generator=g, dtype=torch.int64)
        tokens[:, 0] = 2
        ref = capture(model, tokens)
        n = model.config.num_hidden_layers
        assert len([k for k in ref if k.startswith("hidden_states.")]) == n + 1
        assert ref[f"hidden_states.{n}"].shape[-1] == 32
        if not spec["do_layer_norm_before"]:
            # Post-LN: the input of layer i + 1 is layer i's output, its final_layer_norm's.
            for i in range(n - 1):
                assert torch.equal(ref[f"hidden_states.{i + 1}"], ref[f"layer_out.{i}"])
        prompt = tokens[:, :PROMPT_LEN].contiguous()
        seq, gap = greedy(model, prompt)
        ref["tokens"] = tokens
        ref["greedy_prompt"] = prompt
        ref["greedy_tokens"] = seq
        save_file({k: v.contiguous() for k, v in sorted(ref.items())},
                  os.path.join(folder, "hf.safetensors"), metadata={"format": "pt"})
        scale = ref["logits"].abs().max().item()
        print(f"{name}: logits max |x| {scale:.3f}, smallest greedy top-2 gap {gap:.4f}, "
              f"greedy {seq.tolist()}")
        print(json.dumps({k: list(v.shape) for k, v in sorted(ref.items())}))


if __name__ == "__main__":
    main()
