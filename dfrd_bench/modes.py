"""The model-mode contract, written once: which model is in eval mode and which is frozen, and for how long.

Generation stages and attacks read a model without training it: BatchNorm must use its running
statistics (eval mode) and no weight gradient should be computed (frozen parameters), and both must
be back as they were afterwards, even when the block raises. `frozen(model)` does that for the
student during a generator step or an attack on it; the teacher is frozen and in eval mode for the
whole run (the runner sets it up so and checks it after every epoch). docs/adding-a-method.md,
"The model-mode contract", says which methods use which form.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, train: Optional[bool] = None,
               requires_grad: Optional[bool] = None) -> Iterator[torch.nn.Module]:
    """Set the mode (`train`) and/or every parameter's `requires_grad` for the block; None leaves
    that one untouched. What was changed is restored on exit: the previous mode and each
    parameter's own previous flag."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    if train is not None:
        model.train(train)
    if requires_grad is not None:
        for p in model.parameters():
            p.requires_grad_(requires_grad)
    try:
        yield model
    finally:
        if requires_grad is not None:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        if train is not None:  # a mode left alone is not re-applied (that would reset submodules' modes)
            model.train(was_training)


def frozen(model: torch.nn.Module, eval_mode: bool = True) -> "contextlib.AbstractContextManager[torch.nn.Module]":
    """No parameter gradients, and eval mode unless `eval_mode=False` (ZSKT's generator step goes
    through the student in train mode), for the duration of the block; both restored afterwards.
    Input gradients still flow: `with frozen(ctx.student) as s: loss = f(s(x)); loss.backward()`."""
    return model_mode(model, train=False if eval_mode else None, requires_grad=False)


def in_eval_mode(model: torch.nn.Module) -> "contextlib.AbstractContextManager[torch.nn.Module]":
    """Eval mode for the block, parameters untouched (reading predictions or attacking with
    `torch.autograd.grad` on the input only); the previous mode restored afterwards."""
    return model_mode(model, train=False)
