"""A decoding method, chosen by name: plain AR, or a registered draft source with an acceptance policy."""

from __future__ import annotations

from dataclasses import dataclass

from .drafts import DRAFTS, DraftOptions, make_draft
from .drafts.base import DraftSource
from .models.base import ImageTokenModel
from .policies import AcceptancePolicy, make_policy

PLAIN_AR = "ar"  # one token per target forward: no drafts, no acceptance policy
METHOD_SUMMARIES: dict[str, str] = {
    PLAIN_AR: "plain autoregressive decoding, one token per target forward (the baseline)",
    **{name: kind.summary for name, kind in DRAFTS.items()},
}


@dataclass(frozen=True)
class MethodOptions(DraftOptions):
    """The draft sources' knobs and the acceptance policy's: name, relaxation, native parameters."""

    policy: str = "exact"
    relaxation: float = 0.0  # 0..1 for relaxed policies (0 = lossless)
    policy_options: tuple[tuple[str, float], ...] = ()  # native parameters of the policy (experts)

    def make_policy(self, model: ImageTokenModel) -> AcceptancePolicy:
        return make_policy(self.policy, self.relaxation, model=model, **dict(self.policy_options))


def make_method_draft(method: str, options: DraftOptions, drafter: ImageTokenModel | None = None) -> DraftSource | None:
    """A fresh draft source for ``method`` (``None`` for plain AR)."""
    return None if method == PLAIN_AR else make_draft(method, options, drafter)
