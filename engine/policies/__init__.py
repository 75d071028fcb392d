"""Acceptance policies, by name: the lossless one and the relaxed (lossy) ones."""

from __future__ import annotations

import inspect

from typing import Callable, Sequence

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from .base import AcceptancePolicy, PolicyContext
from .cascade import CascadePolicy
from .clusters import ClusterPolicy
from .csd import CSDPolicy
from .exact import ExactPolicy
from .gsd import GSDPolicy
from .lantern import LanternPolicy

POLICIES: dict[str, Callable[..., AcceptancePolicy]] = {
    "exact": ExactPolicy,
    "lantern": LanternPolicy,
    "gsd": GSDPolicy,
    "csd": CSDPolicy,
    "cascade": CascadePolicy,
    "clusters": ClusterPolicy,
}


def make_policy(
    name: str,
    relaxation: float = 0.0,
    region: torch.Tensor | None = None,
    model: ImageTokenModel | None = None,
    **options: float,
) -> AcceptancePolicy:
    """Policy ``name`` at ``relaxation`` (0..1, 0 = lossless), scaled per token by ``region [B or 1, tokens]``.

    ``model`` (the target) is handed to policies that compare code vectors; ``options`` set a
    policy's native parameters (experts)."""
    if name not in POLICIES:
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICIES)}")
    factory = POLICIES[name]
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "relaxation", "region", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise SettingsError(f"the {name} policy has no option {', '.join(unknown)}: {takes}")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{name} option {key} must be a number, got {value!r}")
    if getattr(factory, "needs_model", False):
        if model is None:
            return TargetPendingPolicy(name, relaxation, region, options)
        options = {**options, "model": model}
    return factory(relaxation, region, **options)


class TargetPendingPolicy(AcceptancePolicy):
    """A policy that compares the target's code vectors, named before the target is known:
    :func:`specar.generate` builds it for its target (:meth:`for_model`)."""

    def __init__(self, name: str, relaxation: float, region: torch.Tensor | None, options: dict[str, float]) -> None:
        super().__init__(relaxation, region)
        self.name, self.options = name, dict(options)
        self.needs_tree_states = getattr(POLICIES[name], "needs_tree_states", False)
        self.needs_code_evidence = getattr(POLICIES[name], "needs_code_evidence", False)

    def for_model(self, model: ImageTokenModel) -> AcceptancePolicy:
        return make_policy(self.name, self.relaxation, self.region, model=model, **self.options)

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise self._unbuilt()

    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        raise self._unbuilt()

    def _unbuilt(self) -> SettingsError:
        return SettingsError(
            f"the {self.name} policy compares the target's code vectors: generate() builds it for its target; "
            "to call it directly, build it with policy.for_model(target) or make_policy(..., model=target)"
        )


def parse_policy_options(text: str | Sequence[str] | None) -> dict[str, float]:
    """Native parameters for experts, ``"lambda_at_full=2, tv_threshold=0.5"`` (or a list of
    ``KEY=VALUE``) -> ``{"lambda_at_full": 2.0, "tv_threshold": 0.5}``; the policy checks names and ranges."""
    items = [text] if isinstance(text, str) else list(text or ())
    options: dict[str, float] = {}
    for item in (part.strip() for chunk in items for part in chunk.replace(";", ",").split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            options[key.strip()] = float(value)
        except ValueError:
            raise SettingsError(f"policy option {item!r}: write NAME=NUMBER, e.g. tv_threshold=0.5") from None
    return options


def recommended_relaxation(name: str) -> float:
    """The relaxation a policy runs at when none is given: chosen from the Pareto benchmark (0 for exact)."""
    if name not in POLICIES:
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICIES)}")
    return POLICIES[name].recommended_relaxation


def recommendation(name: str) -> str:
    """The recommended relaxation in words, with the draft source it was measured on, e.g. ``"1 with Jacobi drafts"``.

    A relaxation's quality cost depends on the drafts it relaxes (a chain compounds it, Jacobi's drafts are the
    target's own guesses), so a setting is recommended only with the source it kept plain AR's quality with."""
    relaxation = recommended_relaxation(name)  # checks the name
    source = POLICIES[name].recommended_with
    if source:
        return f"{relaxation:g} with {source}"
    return f"{relaxation:g} (the mildest measured; none kept plain AR's quality)" if relaxation else "0"


__all__ = [
    "AcceptancePolicy",
    "PolicyContext",
    "ExactPolicy",
    "LanternPolicy",
    "GSDPolicy",
    "CSDPolicy",
    "CascadePolicy",
    "ClusterPolicy",
    "POLICIES",
    "make_policy",
    "parse_policy_options",
    "recommendation",
    "recommended_relaxation",
]
