"""Drafting with a separate small model of the same family (Leviathan et al. 2023; Chen et al. 2023).

The drafter runs its own CFG pair, its own cache and the target's sampling settings, so each
draft's ``q`` is the processed distribution it was drawn from. Its cache is rolled back lazily:
before drafting, every row drops its last cached token and re-feeds the last two committed
tokens. That one uniform step covers both outcomes of the previous block (a rejection leaves the
cache one token ahead of the correction; a fully accepted block leaves the last draft uncached),
so rows with different acceptance lengths stay in one rectangular forward. Where the drafter sat
out some steps (another source drafted them, :mod:`.auto`), it re-feeds every committed token its
cache has not seen, in the same one forward.
"""

from __future__ import annotations


import torch

from ..errors import IncompatibleDrafterError, SettingsError
from ..memory import check_block
from ..models.base import ImageTokenModel
from ..models.registry import FAMILY_NAMES
from ..sampling import DistributionProcessor, sample
from ..types import DraftBlock
from .base import DecodeState, DraftSource, StepOutcome, chain


# fit_signature() entries that differ between drafter and target, in words
FIT_PROBLEMS = {
    "prompt ids": "it turns prompts into other token ids than the target (another tokenizer or prompt template)",
    "tokenizer": "its tokenizer has another vocabulary than the target's",
    "image tokens": "its image codes are other tokens of its text vocabulary than the target's",
    "row end": "it ends image rows with another token than the target (another row layout)",
    "caption features": "it reads caption features of another shape (text slots, width) than the target",
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def check_drafter_fits(target: ImageTokenModel, drafter: ImageTokenModel) -> None:
    """Raise :class:`IncompatibleDrafterError` unless ``drafter`` can draft for ``target``: a model of the same
    family (any width or depth) with the same codes, grid and conditioning, prompt format, image-token ids
    and row layout, in the same number format. Its device may differ (:func:`place_drafter` moves it)."""
    if not isinstance(drafter, ImageTokenModel):
        raise IncompatibleDrafterError(
            f"{getattr(drafter, 'name', drafter)} generates continuous tokens; it can only "
            f"draft for a continuous (MAR) target, not for {target.name}"
        )
    problems = []
    family, target_family = drafter.family, target.family
    if family != target_family:
        named, target_named = FAMILY_NAMES.get(family, family), FAMILY_NAMES.get(target_family, target_family)
        problems.append(
            f"it is {_a(named)} {named} model and the target {_a(target_named)} {target_named} model "
            "(a drafter must be of the target's family)"
        )
    if drafter.vocab_size != target.vocab_size:
        problems.append(f"vocabulary {drafter.vocab_size} vs the target's {target.vocab_size}")
    if drafter.grid != target.grid:
        problems.append(f"token grid {drafter.grid} vs the target's {target.grid}")
    if drafter.conditioning_kind != target.conditioning_kind:
        problems.append(f"{drafter.conditioning_kind} conditioning vs the target's {target.conditioning_kind}")
    elif drafter.num_classes != target.num_classes:
        problems.append(f"{drafter.num_classes} classes vs the target's {target.num_classes}")
    if family == target_family:  # another family differs everywhere: its line says it all
        problems += _signature_problems(drafter, target)
    if drafter.dtype != target.dtype:
        problems.append(
            f"weights in {DTYPE_NAMES.get(drafter.dtype, drafter.dtype)} vs the target's "
            f"{DTYPE_NAMES.get(target.dtype, target.dtype)} (load both with the same dtype)"
        )
    if problems:
        raise IncompatibleDrafterError(
            f"drafter {drafter.name} does not fit target {target.name}: " + "; ".join(problems)
        )


def _signature_problems(drafter: ImageTokenModel, target: ImageTokenModel) -> list[str]:
    """A line per :meth:`~specar.models.base.ImageTokenModel.fit_signature` entry that differs, except where
    another line explains it: another tokenizer writes prompts as other ids, and prompts state the grid."""
    ours, theirs = drafter.fit_signature(), target.fit_signature()
    differ = [key for key in ours if key in theirs and ours[key] != theirs[key]]
    if "tokenizer" in differ or drafter.grid != target.grid:
        differ = [key for key in differ if key != "prompt ids"]
    return [FIT_PROBLEMS.get(key, f"its {key} differs from the target's") for key in differ]


def _a(name: str) -> str:
    return "an" if name[:1].upper() in "AEIOU" else "a"


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are one device (an index left out is the current one)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def place_drafter(target: ImageTokenModel, drafter: ImageTokenModel) -> None:
    """Check ``drafter`` fits ``target`` (:func:`check_drafter_fits`), move it to the target's device, and
    compile its forwards exactly when the target's are (one switch serves the run)."""
    check_drafter_fits(target, drafter)
    if not same_device(drafter.device, target.device):
        drafter.to(torch.device(target.device))
    if drafter.pads_blocks != target.pads_blocks:
        drafter.set_compile(target.pads_blocks)


class DrafterModelDrafts(DraftSource):
    name = "drafter"

    def __init__(self, drafter: ImageTokenModel, gamma: int = 6) -> None:
        super().__init__()
        if not isinstance(gamma, int) or gamma < 1:
            raise SettingsError(
                f"drafter gamma (tokens drafted per target forward) must be an integer >= 1, got {gamma!r}"
            )
        check_block(f"a drafter chain of {gamma:,} tokens", gamma)
        self.drafter, self.gamma = drafter, gamma
        self.largest_block = gamma
        self.processor: DistributionProcessor | None = None
        self.valid = torch.zeros(0, dtype=torch.long)  # [B] host: leading image tokens the drafter's cache holds right
        self._proposed: tuple[DraftBlock, torch.Tensor] | None = None  # the last block, and committed when drafted

    def begin(self, state: DecodeState) -> None:
        place_drafter(state.model, self.drafter)
        self.processor = DistributionProcessor(state.processor.settings, self.drafter.constraint)
        self.timed(lambda: self.drafter.prefill(state.cond, state.guided))
        known = int(state.committed.min()) - 1  # a fixed prefix: read it now, as the target did
        if known > 0:
            positions = torch.arange(known, device=state.tokens.device).expand(state.batch, -1)
            self.timed(lambda: self.drafter.forward(state.tokens[:, :known], positions))
        self.valid = state.committed - 1

    def propose(self, state: DecodeState) -> DraftBlock:
        assert self.processor is not None, "begin() first"
        m = min(self.gamma, state.max_drafts)
        B, V = state.batch, self.drafter.vocab_size
        dev = state.tokens.device
        if m <= 0:
            return DraftBlock.empty(B, V, dev)
        inputs, positions, last = self._catch_up_inputs(state)
        committed = state.committed.to(dev)[:, None]
        drafts, qs = [], []
        for step in range(m):
            out = self.timed(lambda: self.drafter.forward(inputs, positions))
            logits = out.logits[:, -1:]
            if step == 0 and last is not None:  # rows that fed a tail past their last committed token
                self.drafter.truncate(state.committed)
                rows = last.repeat(out.logits.shape[0] // B)  # both halves of a CFG pair
                logits = out.logits.gather(1, rows[:, None, None].expand(-1, 1, out.logits.shape[-1]))
            predicted = committed + step
            q = self.processor(logits, predicted)
            token = sample(q, state.generator)
            drafts.append(token)
            qs.append(q)
            inputs, positions = token, predicted
        block = chain(torch.cat(drafts, dim=1), torch.cat(qs, dim=1))
        self._proposed = (block, state.committed)
        return block

    def _catch_up_inputs(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The first forward of a chain: every row feeds the same number of tokens, the most any row's
        cache is missing, ending with its last committed token. A row with fewer tokens than that feeds
        its first ones, past its last committed token too; its cache is cut back after the forward (the
        causal cache entries before the tail do not depend on it), and ``last [B]`` (else ``None``) says
        where each row's last committed token sits in the forward."""
        dev = state.tokens.device
        refeed = int((state.committed - self.valid).max())
        start = (state.committed - refeed).clamp(min=0)
        self.drafter.truncate(start)
        positions = start.to(dev)[:, None] + torch.arange(refeed, device=dev)[None, :]
        inputs = state.tokens.gather(1, positions)
        last = (state.committed - 1 - start).to(dev) if int(state.committed.min()) < refeed else None
        return inputs, positions, last

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        """The cache holds the committed tokens and the drafts up to the first one rejected
        (the last draft was never fed); blocks drafted by another source leave it as it was."""
        if self._proposed is None or self._proposed[0] is not outcome.block:
            return
        before = self._proposed[1]
        fed = before + outcome.block.size - 1  # tokens cached: committed ones and all drafts but the last
        self.valid = torch.minimum(state.committed - 1, fed)

    def end(self) -> None:
        self.drafter.release()
