"""Hints (FitNets, Romero et al. 2015): a teacher's intermediate feature maps as dense targets for
a student ViT's patch tokens.

A ViT starts with no notion of locality, and within 30 CPU minutes it does not learn to read
from image-level targets alone. A convnet teacher's stage outputs say, for every region of every
training picture, what a network that reads sees there. A linear head per hinted block maps the
student's patch tokens (average-pooled to a coarser teacher map's grid; for a finer map, each
token predicts its sub-positions) into the teacher's channels, and the loss asks each position to
point the same way as the teacher's feature vector there. The heads are training scaffolding:
they are not part of the student's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def teacher_map_hooks(visual: nn.Module, layers: Sequence[str], store: dict[str, torch.Tensor]) -> list:
    """Forward hooks that keep each named stage's output of a ResNet tower as (batch, h*w, channels)
    in half precision (the targets of 100,000 pictures must fit in memory)."""

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            store[name] = output.flatten(2).transpose(1, 2).half()

        return hook

    return [visual.get_submodule(name).register_forward_hook(make_hook(name)) for name in layers]


class HintHeads(nn.Module):
    """One linear head per hinted transformer block of a student ViT's image tower.

    `hints` pairs a block index with the teacher map it learns from; `channels` and `sides` give
    each teacher map's channel count and grid side: a divisor of the patch grid's side, or a
    multiple of it. While attached, each forward pass of the student's image tower leaves the
    hinted blocks' patch tokens here for `loss`.
    """

    def __init__(self, visual: nn.Module, hints: Sequence[tuple[int, str]], channels: Sequence[int],
                 sides: Sequence[int]):
        super().__init__()
        transformer = visual.transformer
        width = transformer.width
        self.grid = visual.grid_size
        self.batch_first = getattr(transformer, "batch_first", True)
        self.blocks = [int(block) for block, _ in hints]
        self.sides = [int(side) for side in sides]
        # A map coarser than the patch grid is matched by pooling patch tokens; a finer one by
        # asking each patch token for its (side / grid)^2 sub-positions, which keeps within-patch
        # detail (strokes of letters, corners of shapes) that a linear patch embedding can lose.
        self.splits = []
        for side in self.sides:
            if side <= self.grid[0] and not (self.grid[0] % side or self.grid[1] % side):
                self.splits.append(1)
            elif side > self.grid[0] and self.grid[0] == self.grid[1] and side % self.grid[0] == 0:
                self.splits.append(side // self.grid[0])
            else:
                raise ValueError(f"a teacher map of side {side} does not tile the student's {self.grid} patch grid")
        self.heads = nn.ModuleList(nn.Linear(width, int(c) * split * split) for c, split in zip(channels, self.splits))
        self._tokens: dict[int, torch.Tensor] = {}
        self._handles = [transformer.resblocks[block].register_forward_hook(self._keep(block)) for block in self.blocks]

    @classmethod
    def for_teacher_maps(cls, visual: nn.Module, hints: Sequence[tuple[int, str]],
                         maps: Sequence[torch.Tensor]) -> HintHeads:
        """Heads sized for the teacher's maps, each (pictures, side*side, channels)."""
        return cls(visual, hints, [m.shape[-1] for m in maps], [math.isqrt(m.shape[1]) for m in maps])

    def _keep(self, block: int):
        def hook(_module, _inputs, output):
            self._tokens[block] = output if self.batch_first else output.transpose(0, 1)

        return hook

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(self, targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean cosine distance between each head's projection of its block's patch tokens (pooled,
        or split into sub-positions) and the teacher's features, (batch, h*w, channels) per hint,
        over positions and hints."""
        total = 0.0
        for block, side, split, head, target in zip(self.blocks, self.sides, self.splits, self.heads, targets):
            tokens = self._tokens.pop(block)[:, 1:]  # patch tokens, row-major, the class token left out
            batch, _, width = tokens.shape
            if split == 1:
                maps = tokens.transpose(1, 2).reshape(batch, width, *self.grid)
                pooled = F.adaptive_avg_pool2d(maps, side).flatten(2).transpose(1, 2)  # (batch, side*side, width)
                predicted = head(pooled)
            else:  # (batch, grid, grid, split, split, channels) -> row-major (batch, side*side, channels)
                grid = self.grid[0]
                predicted = head(tokens).view(batch, grid, grid, split, split, -1)
                predicted = predicted.permute(0, 1, 3, 2, 4, 5).reshape(batch, side * side, -1)
            total = total + (1 - F.cosine_similarity(predicted, target.float(), dim=-1)).mean()
        return total / len(self.blocks)
