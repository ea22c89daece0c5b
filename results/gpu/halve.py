"""Write a dfrd-bench checkpoint with its floating-point weights in fp16 (half the size).

    python3 results/gpu/halve.py SRC.pt DST.pt

A ResNet-18 teacher is 45 MB in fp32 and 22 MB in fp16; loading casts the weights back to the
model's fp32 (load_state_dict copies), so the teacher a run uses is the fp16-rounded one. That is
the file that gets evaluated and bundled: its card's numbers are of the rounded weights. The script
refuses weights that would overflow fp16 and BatchNorm running variances that would round to 0;
weights below fp16's smallest subnormal (6e-8) become 0, which changes no output measurably.
"""
from __future__ import annotations

import sys

import torch


def halve(src: str, dst: str) -> None:
    sys.path.insert(0, ".")
    from dfrd_bench.checkpoints import read_checkpoint
    from dfrd_bench.utils import atomic_torch_save

    raw = read_checkpoint(src)
    if raw.get("format") != "dfrd-bench-model/1":
        sys.exit(f"{src} is not a dfrd-bench checkpoint")
    halved = {}
    for key, value in raw["state_dict"].items():
        if value.is_floating_point():
            half = value.half().contiguous()
            if not torch.isfinite(half).all() or (key.endswith("running_var") and (half <= 0).any()):
                sys.exit(f"{key} does not fit fp16 (largest {float(value.abs().max()):.3g}, smallest "
                         f"{float(value.abs().min()):.3g}): keep the fp32 checkpoint")
            value = half
        halved[key] = value
    raw["state_dict"] = halved
    raw.setdefault("meta", {})["weights_dtype"] = "float16 (results/gpu/halve.py; loaded into fp32)"
    atomic_torch_save(raw, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 results/gpu/halve.py SRC.pt DST.pt")
    halve(sys.argv[1], sys.argv[2])
