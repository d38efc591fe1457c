"""Makes tokenizer.json: a GPT-2-style byte-level BPE with 512 ids, the vocab size of
testdata/tiny-gpt2, with `<|endoftext|>` at 511 (the tiny model's BOS/EOS).

Trained with Python `tokenizers` 0.23.3 on the README.md and Encoder.js of the npm
package gpt-3-encoder 1.1.4 (any text would do: only the file format matters).
Usage: python make_tokenizer.py README.md Encoder.js
"""
import sys

from tokenizers import ByteLevelBPETokenizer

text = "".join(open(p).read() for p in sys.argv[1:])
tok = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
tok.train_from_iterator([text], vocab_size=511, min_frequency=1, special_tokens=[], show_progress=False)
tok.add_special_tokens(["<|endoftext|>"])
assert tok.token_to_id("<|endoftext|>") == 511
tok.save("tokenizer.json")
