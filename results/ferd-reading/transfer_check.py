"""How far do FERD's Uniform-Target Adversarial Examples move a student, crafted on the teacher (the
printed Eq. 10) or on the student (the released code, the default)?

For each student checkpoint: KL(T(x) || S(x')) averaged over 512 CIFAR-10 TRAINING images (the JPEG
copy; the test split is not touched), for x' = x (clean), the teacher-crafted UTAE and the
student-crafted UTAE (gamma 0.5), and RSLAD's student attack (gamma 0); quick-preset attack
settings of the paper preset (10 sign steps of 2/255 in 8/255, start x + 0.001 N(0, I)), with the
suite's own objective and attack loop. Writes transfer_check.json beside this file.

    DFRD_DATA=../shared/assets python3 results/ferd-reading/transfer_check.py STUDENT.pt [STUDENT.pt ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dfrd_bench.attacks import kl_objective, sign_ascent
from dfrd_bench.checkpoints import load_model
from dfrd_bench.data import load_split
from dfrd_bench.losses import kl_div
from dfrd_bench.teachers import load_teacher

EPS, STEP, STEPS, GAMMA, N, SEED = 8 / 255, 2 / 255, 10, 0.5, 512, 0


def attack(model: torch.nn.Module, x: torch.Tensor, probs: torch.Tensor, gamma: float) -> torch.Tensor:
    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))).clamp(0, 1)
    return sign_ascent(kl_objective(model, probs, gamma), x, EPS, STEP, STEPS, start=start)


def main(paths: list) -> None:
    torch.set_num_threads(1)
    teacher = load_teacher("cpu-resnet20-cifar10", "cifar10").eval().requires_grad_(False)
    x, _ = load_split("cifar10", "train").subset(N, seed=SEED).tensors()
    with torch.no_grad():
        t_logits = teacher(x)
    probs = F.softmax(t_logits, 1)
    rows = {}
    for path in paths:
        student = load_model(path).eval().requires_grad_(False)
        crafted = {"clean": x,
                   "utae_on_teacher": attack(teacher, x, probs, GAMMA),
                   "utae_on_student": attack(student, x, probs, GAMMA),
                   "rslad_on_student": attack(student, x, probs, 0.0)}
        with torch.no_grad():
            kl = {k: float(kl_div(t_logits, student(v))) for k, v in crafted.items()}
        kl.update({f"{k}_vs_clean": kl[k] / kl["clean"] for k in list(kl) if k != "clean"})
        rows[str(path)] = kl
        print(path, json.dumps({k: round(v, 4) for k, v in kl.items()}))
    out = Path(__file__).with_name("transfer_check.json")
    out.write_text(json.dumps({"images": f"{N} CIFAR-10 training images (JPEG copy), stratified, seed {SEED}",
                               "attack": {"eps": EPS, "step": STEP, "steps": STEPS, "gamma": GAMMA},
                               "kl_teacher_student": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
