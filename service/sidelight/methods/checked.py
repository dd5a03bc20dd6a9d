"""Model calls that ask first: a model whose module consults a check before every call, and
raises Stopped instead of running a call the check refuses.

This is how a computation that knows nothing of jobs or RPCs (a gradient method, faithfulness
scoring) stops between its chunks: each already calls the model in chunks of bounded rows
(sidelight.methods.chunking), so the start of a model call is the one point they all share.
The call in progress finishes; nothing after it runs. The perturbation methods need none of
this: their Evaluator asks the job's Control before each round and returns a partial estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from sidelight.models.model import Model

# (rows through the model so far, rows of the next call) -> why not to run it, or None to go on.
Check = Callable[[int, int], str | None]


class Stopped(Exception):
    """A check refused a model call: `reason` says why ("cancelled", "deadline", ...),
    `evaluations` how many rows had gone through the model before."""

    def __init__(self, reason: str, evaluations: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evaluations = evaluations


class CheckedModule(nn.Module):
    """`module`, with `check` asked before every call and the rows counted."""

    def __init__(self, module: nn.Module, check: Check) -> None:
        super().__init__()
        self.inner = module
        self.check = check
        self.evaluations = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = int(x.shape[0])
        reason = self.check(self.evaluations, rows)
        if reason is not None:
            raise Stopped(reason, self.evaluations)
        self.evaluations += rows
        out: torch.Tensor = self.inner(x)
        return out


def checked(model: Model, check: Check) -> Model:
    """`model` whose every call asks `check` first (its layer and weights are the same)."""
    return dataclasses.replace(model, module=CheckedModule(model.module, check))
