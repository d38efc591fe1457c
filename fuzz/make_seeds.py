#!/usr/bin/env python3
"""Writes the starting corpora of the fuzz targets into fuzz/seeds/<target>/.

Standard library only. The checkpoint seeds are tiny but complete GPT-2 checkpoints
(1 layer, d_model 4, 8 tokens, 4 positions) in the checkpoint target's input layout:
u16 little-endian config length, config JSON, safetensors bytes.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, dtype="F32", metadata=None):
    header, blobs, offset = {}, [], 0
    size = {"F32": 4, "F16": 2}[dtype]
    for name, shape in tensors:
        n = 1
        for s in shape:
            n *= s
        if dtype == "F32":
            blob = struct.pack("<%df" % n, *[((i * 37) % 11 - 5) / 10 for i in range(n)])
        else:
            blob = b"\x00\x3c" * n  # 1.0 in f16
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n * size]}
        blobs.append(blob)
        offset += n * size
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def gpt2_tensors(prefix, d=4, v=8, ctx=4, layers=1):
    t = [(prefix + "wte.weight", [v, d]), (prefix + "wpe.weight", [ctx, d])]
    for i in range(layers):
        h = "%sh.%d." % (prefix, i)
        t += [
            (h + "ln_1.weight", [d]), (h + "ln_1.bias", [d]),
            (h + "attn.c_attn.weight", [d, 3 * d]), (h + "attn.c_attn.bias", [3 * d]),
            (h + "attn.c_proj.weight", [d, d]), (h + "attn.c_proj.bias", [d]),
            (h + "ln_2.weight", [d]), (h + "ln_2.bias", [d]),
            (h + "mlp.c_fc.weight", [d, 4 * d]), (h + "mlp.c_fc.bias", [4 * d]),
            (h + "mlp.c_proj.weight", [4 * d, d]), (h + "mlp.c_proj.bias", [d]),
        ]
    return t + [(prefix + "ln_f.weight", [d]), (prefix + "ln_f.bias", [d])]


CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
    "bos_token_id": 7, "eos_token_id": 7, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
    "n_ctx": 4, "n_embd": 4, "n_head": 2, "n_inner": None, "n_layer": 1, "n_positions": 4,
    "vocab_size": 8,
}


def checkpoint(config, weights):
    c = json.dumps(config).encode()
    return struct.pack("<H", len(c)) + c + weights


def main():
    cfg = json.dumps(CONFIG)
    write("config", "tiny.json", cfg)
    write("config", "relu_inner.json", json.dumps(dict(CONFIG, activation_function="relu", n_inner=6)))
    write("config", "no_model_type.json", json.dumps({k: v for k, v in CONFIG.items() if k != "model_type"}))
    with open(os.path.join(HERE, "..", "testdata", "tiny-gpt2", "model", "config.json")) as f:
        write("config", "fixture.json", f.read())

    prefixed = safetensors(gpt2_tensors("transformer."))
    write("checkpoint", "prefixed", checkpoint(CONFIG, prefixed))
    write("checkpoint", "published", checkpoint(CONFIG, safetensors(gpt2_tensors(""))))
    write("checkpoint", "f16", checkpoint(CONFIG, safetensors(gpt2_tensors(""), dtype="F16")))
    write("checkpoint", "lm_head", checkpoint(CONFIG, safetensors(gpt2_tensors("") + [("lm_head.weight", [8, 4])])))
    write("checkpoint", "truncated", checkpoint(CONFIG, prefixed[: len(prefixed) // 2]))
    cache = safetensors([("hook_embed", [1, 2, 4]), ("blocks.0.hook_resid_pre", [1, 2, 4])],
                        metadata={"hooklens.order": '["hook_embed","blocks.0.hook_resid_pre"]',
                                  "hooklens.has_batch_dim": "true"})
    write("checkpoint", "cache", checkpoint(CONFIG, cache))

    for i, text in enumerate(["Hello world", " the<|endoftext|>x", "héllo 😀\n\n  x", "   a\t\tb  ", "1,000 ok?"]):
        write("tokenizer", "text%d_gpt2" % i, b"\x00" + text.encode())
        write("tokenizer", "text%d_tiny" % i, b"\x01" + text.encode())
    write("tokenizer", "ids_gpt2", b"\x02" + struct.pack("<4I", 15496, 995, 50256, 8582))
    write("tokenizer", "ids_tiny", b"\x03" + struct.pack("<3I", 39, 511, 512))

    for i, (p, n) in enumerate([("blocks.*.attn.hook_pattern", "blocks.1.attn.hook_pattern"),
                                ("blocks.?.hook_*", "blocks.0.hook_resid_pre"),
                                ("hook_embed", "hook_embed"), ("*", ""), ("a*b*c", "aXbYd")]):
        write("names_filter", "p%d" % i, p + "\0" + n)

    for i, s in enumerate(["5", "-1", ":", "2:8", "::2", "-4:", "[1,3,5]", "1,3", "[]", "1:2:0"]):
        write("slice", "s%d" % i, s)


if __name__ == "__main__":
    main()
