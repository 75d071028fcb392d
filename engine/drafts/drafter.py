"""Drafting with a separate small model of the same family (Leviathan et al. 2023; Chen et al. 2023).

The drafter runs its own CFG pair, its own cache and the target's sampling settings, so each
draft's ``q`` is the processed distribution it was drawn from. Its cache is rolled back lazily:
before drafting, every row drops its last cached token and re-feeds the last two committed
tokens. That one uniform step covers both outcomes of the previous block (a rejection leaves the
cache one token ahead of the correction; a fully accepted block leaves the last draft uncached),
so rows with different acceptance lengths stay in one rectangular forward.
"""

from __future__ import annotations


import torch

from ..errors import IncompatibleDrafterError, SettingsError
from ..models.base import ImageTokenModel
from ..sampling import DistributionProcessor, sample
from ..types import DraftBlock
from .base import DecodeState, DraftSource, chain


def check_drafter_fits(target: ImageTokenModel, drafter: ImageTokenModel) -> None:
    """Raise :class:`IncompatibleDrafterError` unless ``drafter`` can draft for ``target``."""
    if not isinstance(drafter, ImageTokenModel):
        raise IncompatibleDrafterError(f"{getattr(drafter, 'name', drafter)} generates continuous tokens; it can only "
                                       f"draft for a continuous (MAR) target, not for {target.name}")
    problems = []
    if drafter.vocab_size != target.vocab_size:
        problems.append(f"vocabulary {drafter.vocab_size} vs the target's {target.vocab_size}")
    if drafter.grid != target.grid:
        problems.append(f"token grid {drafter.grid} vs the target's {target.grid}")
    if drafter.conditioning_kind != target.conditioning_kind:
        problems.append(f"{drafter.conditioning_kind} conditioning vs the target's {target.conditioning_kind}")
    elif drafter.num_classes != target.num_classes:
        problems.append(f"{drafter.num_classes} classes vs the target's {target.num_classes}")
    if problems:
        raise IncompatibleDrafterError(f"drafter {drafter.name} does not fit target {target.name}: " + "; ".join(problems))


class DrafterModelDrafts(DraftSource):
    name = "drafter"

    def __init__(self, drafter: ImageTokenModel, gamma: int = 6) -> None:
        super().__init__()
        if not isinstance(gamma, int) or gamma < 1:
            raise SettingsError(f"drafter gamma (tokens drafted per target forward) must be an integer >= 1, got {gamma!r}")
        self.drafter, self.gamma = drafter, gamma
        self.processor: DistributionProcessor | None = None

    def begin(self, state: DecodeState) -> None:
        check_drafter_fits(state.model, self.drafter)
        self.processor = DistributionProcessor(state.processor.settings, self.drafter.constrain)
        self.timed(lambda: self.drafter.prefill(state.cond, state.guided))
        known = int(state.committed.min()) - 1  # a fixed prefix: read it now, as the target did
        if known > 0:
            positions = torch.arange(known, device=state.tokens.device).expand(state.batch, -1)
            self.timed(lambda: self.drafter.forward(state.tokens[:, :known], positions))

    def propose(self, state: DecodeState) -> DraftBlock:
        assert self.processor is not None, "begin() first"
        m = min(self.gamma, state.max_drafts)
        B, V = state.batch, self.drafter.vocab_size
        dev = state.tokens.device
        if m <= 0:
            return DraftBlock.empty(B, V, dev)
        committed = state.committed.to(dev)
        refeed = min(2, int(state.committed.min()))
        self.drafter.truncate(state.committed - refeed)
        positions = committed[:, None] - refeed + torch.arange(refeed, device=dev)[None, :]
        inputs = state.tokens.gather(1, positions)
        drafts, qs = [], []
        for _ in range(m):
            out = self.timed(lambda: self.drafter.forward(inputs, positions))
            predicted = positions[:, -1:] + 1
            q = self.processor(out.logits[:, -1:], predicted)
            token = sample(q, state.generator)
            drafts.append(token)
            qs.append(q)
            inputs, positions = token, predicted
        return chain(torch.cat(drafts, dim=1), torch.cat(qs, dim=1))

    def end(self) -> None:
        self.drafter.release()
