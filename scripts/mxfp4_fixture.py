"""Writes testdata/mxfp4/convert_moe_packed_tensors.safetensors: random MXFP4 expert
blocks and scales and what transformers' `convert_moe_packed_tensors` makes of them
(the function Hugging Face dequantises gpt-oss's experts with on load), for
hooklens-models/src/convert/mxfp4.rs's test.

Run with a Python that has torch, transformers (4.55+) and safetensors:
    python scripts/mxfp4_fixture.py
"""

import os

import torch
import transformers
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

torch.manual_seed(0)
experts, rows, groups = 3, 5, 2
blocks = torch.randint(0, 256, (experts, rows, groups, 16), dtype=torch.uint8)
# Scales around 2^0, plus the extremes that keep every value finite: 0 (2^-127, whose
# values are subnormal) and 252 (6 * 2^125 is below f32's largest).
scales = torch.randint(117, 138, (experts, rows, groups), dtype=torch.uint8)
scales[0, 0, 0] = 0
scales[0, 1, 1] = 1
scales[1, 2, 0] = 252
scales[2, 4, 1] = 127

bf16 = convert_moe_packed_tensors(blocks, scales)  # transformers' default dtype
f32 = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
assert bf16.shape == (experts, groups * 32, rows), bf16.shape
# Every MXFP4 value is exact in both dtypes.
assert torch.equal(bf16.float(), f32), (bf16.float() - f32).abs().max()
assert torch.isfinite(f32).all()

out = os.path.join(os.path.dirname(__file__), "..", "testdata", "mxfp4")
os.makedirs(out, exist_ok=True)
save_file(
    {"blocks": blocks, "scales": scales, "dequantized": f32.contiguous()},
    os.path.join(out, "convert_moe_packed_tensors.safetensors"),
    metadata={"transformers": transformers.__version__, "torch": torch.__version__},
)
print("wrote", out, "with transformers", transformers.__version__)
