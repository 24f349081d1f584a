"""One training step captured as a CUDA graph and replayed: no per-kernel launch cost.

A population's step (forward, losses, backward, update) is hundreds of small kernels;
on a GPU their launches, not the arithmetic, set the pace. ``torch.cuda.CUDAGraph``
records them once and replays them with one launch (the "whole network capture" of
PyTorch's CUDA graphs notes): inputs are copied into static tensors first, and the
step's outputs are static tensors the caller reads (or copies) before the next replay.

The step must be capturable: no host synchronisation (``.item()``, printing a tensor,
data-dependent shapes), tensors it updates in place are the same objects at every
replay, and numbers that change between steps (learning-rate factors) come in as tensors.
Autocast's weight cache must be off inside it (``cache_enabled=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Outputs = tuple[torch.Tensor, ...]


class StepGraph:
    """``step(*inputs) -> tuple of tensors`` run eagerly ``warmup`` times on a side
    stream, then captured and replayed. ``__call__`` returns the step's outputs (after
    capture, static tensors that the next replay overwrites: copy what you keep), or
    raises :class:`GraphUnavailable` when the inputs' shapes changed or capture failed
    (the caller then runs the step eagerly; no work of this call has been done)."""

    def __init__(self, step: Callable[..., Outputs], warmup: int = 2) -> None:
        self.step = step
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: Outputs = ()

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        if self.calls < self.warmup:
            self.calls += 1
            return self._eager_on_side_stream(inputs)
        if self.graph is None:
            self._capture(inputs)
        elif not _same_layout(inputs, self.inputs):
            raise GraphUnavailable("the step's inputs changed shape")
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        assert self.graph is not None
        self.graph.replay()
        return self.outputs

    def _eager_on_side_stream(self, inputs: Sequence[torch.Tensor]) -> Outputs:
        # warm-up outside the default stream, as the CUDA graphs notes ask before capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, inputs: Sequence[torch.Tensor]) -> None:
        self.inputs = [x.clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.step(*self.inputs)
        except Exception as err:  # a sync or an unsupported op in the step: run it eagerly
            raise GraphUnavailable(f"capture failed: {type(err).__name__}: {err}") from err
        self.graph = graph


class GraphUnavailable(RuntimeError):
    """The step cannot be replayed as a graph; nothing of it ran."""


def _same_layout(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> bool:
    return len(new) == len(old) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
        for a, b in zip(new, old))
