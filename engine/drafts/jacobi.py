"""Speculative Jacobi decoding: the target drafts for itself (SJD, Teng et al., arXiv 2410.01699).

The window holds drafts for the next positions. One target forward over [pending token, drafts]
verifies them; at every window position it also yields the target's distribution given the
(possibly wrong) drafts before it, and a fresh sample from it becomes the next iteration's draft
there, with that distribution as its ``q``. Positions new to the window are initialised:

* ``random``: a uniform random token. Official SJD stores a one-hot ``q`` (accept with ``p(x)``);
  the CSD re-implementation stores the uniform ``q = 1/V`` (accept with ``min(1, V p(x))``).
  Both are exact; ``q_init`` picks the convention, one-hot by default as in the SJD code.
* ``row_above``: the token one grid row above, as a point mass (a spatial prior). In the image's first
  grid row, which has nothing above it, the last committed token, drafted afresh every forward: a row
  of an image often runs in stretches of one code, and the stretch under way is accepted far more
  often there than a sample given the drafts before it, which nothing above anchors.

``coupling=True`` is MC-SJD's coupled resampling (arXiv 2510.24211): where a position already
held a draft, keep it with probability ``min(1, q_new(d)/q_old(d))`` and otherwise draw from
``norm(max(0, q_new - q_old))``, a maximal coupling, so the new draft is still distributed as
``q_new`` but changes only when it must, which keeps drafts stable across iterations. That test is the
exact policy's, so the verification makes these draws in the passes it makes anyway
(:class:`~specar.types.Verdict`'s ``slot_draws``), under a relaxed policy as well.
"""

from __future__ import annotations

import torch

from ..errors import SettingsError
from ..memory import check_block
from ..sampling import sample
from ..types import DraftBlock
from .base import DecodeState, DraftSource, StepOutcome, chain

INITIALISATIONS = ("random", "row_above")
Q_CONVENTIONS = ("one_hot", "uniform")


class JacobiDrafts(DraftSource):
    name = "jacobi"

    def __init__(self, window: int = 16, init: str = "random", q_init: str = "one_hot", coupling: bool = False) -> None:
        super().__init__()
        if not isinstance(window, int) or window < 1:
            raise SettingsError(f"Jacobi window must be an integer >= 1 (tokens per target forward), got {window!r}")
        check_block(f"a Jacobi window of {window:,}", window)
        if init not in INITIALISATIONS:
            raise SettingsError(f"Jacobi init must be one of {INITIALISATIONS}, got {init!r}")
        if q_init not in Q_CONVENTIONS:
            raise SettingsError(f"Jacobi q_init must be one of {Q_CONVENTIONS}, got {q_init!r}")
        self.window, self.init, self.q_init, self.coupling = window, init, q_init, coupling
        self.slots = window - 1  # drafts per block: the window also feeds the pending token
        self.largest_block = self.slots
        self.tokens = torch.zeros(0, 0, dtype=torch.long)
        self.q = torch.zeros(0, 0, 0)
        self.slot = torch.zeros(0, dtype=torch.long)  # 0, 1, ... over the window's slots, made once per run
        self.slot_after = self.slot  # 1, 2, ...: slot s holds the position s + 1 past the pending token
        self.slot_above = self.slot  # each slot's offset to its row above, less the committed count
        self.batch_row = self.slot  # [B, 1]: each image's row, to index a row's slots with

    def begin(self, state: DecodeState) -> None:
        B, V = state.batch, state.model.vocab_size
        dev = state.tokens.device
        self.slot = torch.arange(self.slots, device=dev)
        self.slot_after = self.slot + 1
        self.slot_above = self.slot - state.model.grid[1]
        self.batch_row = torch.arange(B, device=dev)[:, None]
        self.tokens = torch.zeros(B, self.slots, dtype=torch.long, device=dev)
        self.q = torch.zeros(B, self.slots, V, device=dev)
        everything = torch.ones(B, self.slots, dtype=torch.bool, device=dev)
        self._initialise(state, state.committed, everything)

    def propose(self, state: DecodeState) -> DraftBlock:
        m = min(self.slots, state.max_drafts)
        block = chain(self.tokens[:, :m], self.q[:, :m])
        block.redrawn, block.q_checked = self.coupling, True
        return block

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        p, block, verdict = outcome.p, outcome.block, outcome.verdict
        m = block.size
        # [B, m + 1]: a new draft at every window position; coupled, the block's drafts move only where they must,
        # to the draws the verification made at every slot
        if self.coupling and m:
            fresh = torch.cat(
                [torch.where(verdict.slot_passed, block.tokens, verdict.slot_draws[:, :m]), verdict.slot_draws[:, m:]],
                1,
            )
        else:
            fresh = sample(p, state.generator)
        # Slot s of the new window is position committed_new + s = old p row accepted + 1 + s; slots
        # past the block's last row are new to the window.
        rows = verdict.accepted[:, None] + self.slot_after
        new = rows > m
        rows = rows.clamp_(max=m)
        self.tokens = fresh.gather(1, rows)
        self.q = p[self.batch_row, rows]  # whole rows copied, not gathered entry by entry
        width = state.model.grid[1]
        if self.init == "row_above" and min(state.committed.tolist()) < width:
            new |= state.committed.to(new.device)[:, None] + self.slot < width  # the first grid row: drafted afresh
        self._initialise(state, state.committed, new)

    def _initialise(self, state: DecodeState, committed: torch.Tensor, new: torch.Tensor) -> None:
        """Fill the window slots marked ``new [B, S]`` (positions new to the window) by the init rule;
        ``committed [B]`` (host) counts each row's committed tokens."""
        B, S = self.tokens.shape
        if S == 0:
            return
        V = self.q.shape[-1]
        dev = self.tokens.device
        if self.init == "row_above" and S <= state.model.grid[1] and min(committed.tolist()) >= state.model.grid[1]:
            guess = self._committed_above(state, committed)  # every slot's row above is committed: no guess needed
        elif self.init == "row_above":
            guess = self._row_above(state, committed.to(dev), new)
        else:
            guess = torch.randint(0, V, (B, S), generator=state.generator, device=dev)
        self.tokens = torch.where(new, guess, self.tokens)
        # ``self.q`` is this source's own tensor (made in begin, or copied from p in observe): set in place
        if self.init == "random" and self.q_init == "uniform":
            self.q.masked_fill_(new[..., None], 1.0 / V)
        else:  # a point mass at the guess: cleared, then 1 added at the guess
            self.q.masked_fill_(new[..., None], 0.0).scatter_add_(-1, guess[..., None], new[..., None].float())

    def _committed_above(self, state: DecodeState, committed: torch.Tensor) -> torch.Tensor:
        """The committed token one grid row above each slot, for windows no wider than a row, past the first row."""
        return state.tokens.gather(1, committed.to(self.slot.device)[:, None] + self.slot_above)

    def _row_above(self, state: DecodeState, committed: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The token one grid row above each slot: committed, or a draft already in the window; in the first
        grid row, the last committed token."""
        width = state.model.grid[1]
        S = new.shape[1]
        above = committed[:, None] + self.slot_above
        from_committed = (above >= 0) & (self.slot < width)  # above < committed exactly when slot < width
        last = state.tokens.gather(1, committed[:, None] - 1)  # [B, 1]: each row's last committed token
        out = torch.where(from_committed, state.tokens.gather(1, above.clamp(0, state.tokens.shape[1] - 1)), last)
        # Slots whose row-above lies inside the window itself (windows wider than a grid row),
        # filled in order so each reads an already-decided slot.
        for s in range(width, S):
            src = s - width
            chosen = torch.where(new[:, src], out[:, src], self.tokens[:, src])
            out[:, s] = torch.where(above[:, s] >= committed, chosen, out[:, s])
        return out
