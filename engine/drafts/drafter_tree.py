"""Static draft trees from a small drafter model (token trees as in SpecInfer, arXiv 2305.09781).

Why a model and not only the EAGLE-style head: the head drafts every level after the first from
its own predicted states, while a drafter model reads real tokens through its own cache, so its
drafts do not drift with depth. Under CASCADE's group acceptance the drafted code of an accepted
group is what the image gets, and on the demo the head's codes cost class accuracy where a drafter
model's did not.

How: the drafter runs one row per leaf of the template (``prod(branching)`` rows per image, 4 for
2-2-1-1-...), each row drafting one root-to-leaf path, so a level is one drafter forward of one
token per row. Rows under the same node feed its token alike (the few shared top nodes are
computed once per row that passes through them). A node's children are sampled without
replacement from the drafter's q at that node and keep that q, as in the head's static trees, so
verification is recursive rejection with the true q: lossless under the exact policy.

Cache: after verification only the accepted path's row holds the right tokens. So before the
next tree every row rolls back to what all rows share (the tokens committed before the last
tree) and re-feeds what was committed since, in one forward; rows that committed fewer tokens
pad the feed and drop the padding afterwards.
"""

from __future__ import annotations

import math

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from ..sampling import DistributionProcessor
from ..types import DraftBlock
from .base import DecodeState, DraftSource
from .drafter import place_drafter
from .tree_drafts import TreeShape, branching_distribution, sample_children, static_parents

DEFAULT_BRANCHING = (2, 2) + (1,) * 30  # 4 paths of 32 tokens (docs/benchmarks.md: draft trees)


class DrafterTreeDrafts(DraftSource):
    name = "drafter-tree"

    def __init__(self, drafter: ImageTokenModel, branching: tuple[int, ...] = DEFAULT_BRANCHING) -> None:
        super().__init__()
        self.shape = TreeShape(kind="static", branching=tuple(branching))  # checks the template
        self.drafter = drafter
        self.leaves = math.prod(self.shape.branching)
        self.largest_block = self.shape.size
        self.processor: DistributionProcessor | None = None
        self.shared: torch.Tensor | None = None  # [B] host: leading tokens every row of an image has cached

    def begin(self, state: DecodeState) -> None:
        place_drafter(state.model, self.drafter)
        widest = max(self.shape.branching)
        if widest > self.drafter.vocab_size:
            raise SettingsError(
                f"a static tree node cannot have {widest} distinct children in a vocabulary of "
                f"{self.drafter.vocab_size} codes"
            )
        self.processor = DistributionProcessor(state.processor.settings, self.drafter.constraint)
        self.timed(lambda: self.drafter.prefill(state.cond.repeat_each(self.leaves), state.guided))
        self.shared = torch.zeros(state.batch, dtype=torch.long)
        self.pair = 2 if state.guided else 1  # the drafter's rows: [cond rows; uncond rows] with CFG

    def end(self) -> None:
        self.drafter.release()
        self.shared = None

    def _per_row(self, per_image: torch.Tensor) -> torch.Tensor:
        return per_image.repeat_interleave(self.leaves, dim=0)

    def _q(self, logits: torch.Tensor, predicted: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The drafter's q ``[B, leaves, V]`` from its logits for one token per row, predicting ``predicted [B]``."""
        assert self.processor is not None
        positions = self._per_row(predicted.clamp(max=num_tokens - 1))[:, None]
        q = branching_distribution(self.processor, logits, positions)
        return q.view(predicted.shape[0], self.leaves, -1)

    def _catch_up(self, state: DecodeState) -> torch.Tensor:
        """Bring every row to the committed tokens; returns q for the first drafted position ``[B, leaves, V]``."""
        assert self.shared is not None
        dev, N = state.tokens.device, state.num_tokens
        committed = state.committed
        fresh = committed - self.shared  # >= 1 where unfinished: every forward commits a token
        width = max(int(fresh.max()), 1)
        self.drafter.truncate(self._per_row(self.shared))
        positions = (self.shared[:, None] + torch.arange(width)[None, :]).clamp(max=N - 1).to(dev)
        tokens = state.tokens.gather(1, positions)  # past a row's committed tokens: padding
        out = self.timed(lambda: self.drafter.forward(self._per_row(tokens), self._per_row(positions)))
        last = self._per_row((fresh - 1).clamp(min=0)).to(dev).repeat(self.pair)  # each row's last committed token
        logits = out.logits.gather(1, last[:, None, None].expand(-1, 1, out.logits.shape[-1]))
        self.drafter.truncate(self._per_row(committed))
        self.shared = committed.clone()
        return self._q(logits, committed.to(dev), N)

    def propose(self, state: DecodeState) -> DraftBlock:
        B, V, dev, N = state.batch, self.drafter.vocab_size, state.tokens.device, state.num_tokens
        depth = min(len(self.shape.branching), state.max_drafts)
        if depth <= 0:
            return DraftBlock.empty(B, V, dev)
        q_rows = self._catch_up(state)
        committed = state.committed.to(dev)
        widths = self.shape.branching[:depth]
        tokens_out, q_out = [], []
        below = self.leaves  # rows (leaves) under each node of the level above
        for level, width in enumerate(widths):
            children, child_q = sample_children(q_rows[:, ::below], width, state.generator)  # [B, nodes above, width]
            tokens = children.flatten(1)
            tokens_out.append(tokens)
            q_out.append(child_q.flatten(1, 2))
            below //= width
            if level == depth - 1:
                break
            row_tokens = tokens.repeat_interleave(below, dim=1).reshape(-1, 1)  # each row's node at this level
            positions = self._per_row((committed + level).clamp(max=N - 1))[:, None]
            out = self.timed(lambda: self.drafter.forward(row_tokens, positions))
            q_rows = self._q(out.logits, committed + level + 1, N)
        parents = torch.tensor(static_parents(widths))[None].expand(B, -1)
        return DraftBlock(torch.cat(tokens_out, 1), torch.cat(q_out, 1), parents)


__all__ = ["DrafterTreeDrafts", "DEFAULT_BRANCHING"]
