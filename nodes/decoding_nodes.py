"""Draft-source and acceptance-policy nodes: small recipes the sampler turns into engine objects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.continuous.acceptance import MAX_INNER_TEMPERATURE, MAX_TRIES, RECOMMENDED_RELAXATION, GaussianAcceptance
from ..engine.continuous.session import speculation_for
from ..engine.continuous.types import RUN_GROWTH
from ..engine.drafts import jacobi_method
from ..engine.drafts.jacobi import INITIALISATIONS
from ..engine.errors import SettingsError
from ..engine.policies import POLICIES, make_policy, recommendation
from ..engine.policies import cascade
from ..engine.policies.clusters import MAX_GROUP as CLUSTERS_MAX_GROUP
from ..engine.policies.csd import LAMBDA_AT_FULL, TV_THRESHOLD
from ..engine.policies.gsd import P_GAP_AT_FULL, RANK_WINDOW
from ..engine.policies.lantern import DELTA_AT_FULL
from ..engine.session import DraftRecipe, PolicyRecipe
from .host import Host
from .schema import BOOLEAN, CHOICE, COMBO, DRAFT, FLOAT, INT, MASK, POLICY, Case, Field, NodeSpec, Output


def _jacobi(host: Host, window: int, initialisation: str, coupled: bool) -> tuple[DraftRecipe]:
    return (DraftRecipe(jacobi_method(initialisation, coupled), window=window),)


@dataclass(frozen=True)
class PolicyKnob:
    """One native parameter of a policy, shown as a widget under the policy's choice.

    At its default the policy keeps its own setting and nothing is passed (so a policy that checks
    whether a user set a parameter sees that nobody did); with ``zero_is_off``, 0 switches the
    parameter off (it is passed as infinity, as the engine spells "off")."""

    field: Field
    zero_is_off: bool = False

    def option(self, value: float | bool) -> float | None:
        """The engine option for a widget ``value``, or ``None`` where the policy keeps its own."""
        if value == self.field.default:
            return None
        if self.zero_is_off and value == 0:
            return math.inf
        return float(value)


def _number(name: str, tooltip: str, default: float, low: float, high: float, step: float) -> Field:
    return Field(name, FLOAT, tooltip, default=default, min=low, max=high, step=step)


def _count(name: str, tooltip: str, default: int, low: int, high: int) -> Field:
    return Field(name, INT, tooltip, default=default, min=low, max=high)


def _ratio_bound(default: float) -> PolicyKnob:
    return PolicyKnob(
        _number(
            "ratio_bound",
            "LANTERN++'s lambda: a draft is accepted only if the target gives it at least 1/lambda of the "
            "drafter's probability (at least 1; 0 = no bound)",
            default,
            0.0,
            1000.0,
            0.5,
        ),
        zero_is_off=True,
    )


def _grouping(max_group: int, ratio_bound: float, target_alike: bool, evidence_margin: float) -> tuple[PolicyKnob, ...]:
    """The look-alike grouping knobs clusters and CASCADE share, at one policy's defaults."""
    return (
        PolicyKnob(
            _count("max_group", "codes per look-alike group at relaxation 1 (a power of two)", max_group, 1, 4096)
        ),
        _ratio_bound(ratio_bound),
        PolicyKnob(
            _number(
                "plausible_share",
                "a group counts only codes holding at least this share of its most likely member's probability",
                0.0,
                0.0,
                1.0,
                0.05,
            )
        ),
        PolicyKnob(
            Field(
                "target_alike",
                BOOLEAN,
                "group codes that look alike and also leave the target in alike states (off: looks only)",
                default=target_alike,
            )
        ),
        PolicyKnob(
            _number(
                "evidence_margin",
                "nats: a draft whose code says this much less about the prompt than its group's is tested on its "
                "own probability (needs a CFG scale above 1; 0 = no guard)",
                evidence_margin,
                0.0,
                100.0,
                0.1,
            ),
            zero_is_off=True,
        ),
    )


# Every policy's native parameters, at the engine's defaults (a test checks them against the policies).
POLICY_KNOBS: dict[str, tuple[PolicyKnob, ...]] = {
    "exact": (),
    "lantern": (
        PolicyKnob(_number("delta_at_full", "LANTERN's delta at relaxation 1", DELTA_AT_FULL, 0.0, 1.0, 0.05)),
        PolicyKnob(
            _count(
                "neighbours",
                "latent neighbours each code may be swapped with (0 = the default for the model's vocabulary)",
                0,
                0,
                10**7,
            )
        ),
        _ratio_bound(0.0),
    ),
    "gsd": (
        PolicyKnob(_number("p_gap_at_full", "GSD's probability gap at relaxation 1", P_GAP_AT_FULL, 0.0, 1.0, 0.05)),
        PolicyKnob(_count("rank_window", "GSD's window of the target's top-ranked codes", RANK_WINDOW, 0, 10**7)),
        PolicyKnob(
            _number(
                "max_distance",
                "latent distance within which codes count as neighbours (0 = the model's own scale)",
                0.0,
                0.0,
                1000.0,
                0.1,
            )
        ),
    ),
    "csd": (
        PolicyKnob(_number("lambda_at_full", "CSD's lambda at relaxation 1", LAMBDA_AT_FULL, 0.0, 100.0, 0.1)),
        PolicyKnob(_number("tv_threshold", "CSD's total-variation threshold tau", TV_THRESHOLD, 0.0, 1.0, 0.05)),
    ),
    "cascade": (
        PolicyKnob(
            _number(
                "tau_pos_at_full",
                "cosine a code must reach against the target's pick",
                cascade.TAU_POS_AT_FULL,
                -1,
                1,
                0.01,
            )
        ),
        PolicyKnob(
            _number(
                "tau_seq_at_full",
                "cosine of consecutive states that counts as converged",
                cascade.TAU_SEQ_AT_FULL,
                -1,
                1,
                0.01,
            )
        ),
        *_grouping(cascade.MAX_GROUP, cascade.RATIO_BOUND, True, cascade.EVIDENCE_MARGIN),
        PolicyKnob(
            _count(
                "converged_group",
                "codes per group at relaxation 1 in converged contexts",
                cascade.CONVERGED_GROUP,
                1,
                4096,
            )
        ),
    ),
    "clusters": _grouping(CLUSTERS_MAX_GROUP, 0.0, False, 0.0),
    "cspd": (
        PolicyKnob(
            _number(
                "inner_temperature",
                "temperature of CSpD's Gaussian test (at least 1; 0 = follow the relaxation)",
                0.0,
                0.0,
                MAX_INNER_TEMPERATURE,
                0.5,
            )
        ),
        PolicyKnob(
            _count(
                "max_tries",
                "residual-sampler tries per token before its bounded fallback",
                GaussianAcceptance().max_tries,
                1,
                MAX_TRIES,
            )
        ),
    ),
}


def _relaxation(policy: str) -> Field:
    recommended = f"{RECOMMENDED_RELAXATION:g}" if policy == "cspd" else recommendation(policy)
    serves = (
        f"loosens CSpD's Gaussian test and lengthens the draft runs one target pass verifies ({RUN_GROWTH + 1:g}x at 1)"
        if policy == "cspd"
        else "accepts more drafts"
    )
    return Field(
        "relaxation",
        FLOAT,
        f"0 = lossless (bit for bit the exact policy); towards 1 {serves}: faster, less faithful. "
        f"Recommended: {recommended} (docs/benchmarks.md shows what it costs)",
        default=0.0,
        min=0.0,
        max=1.0,
        step=0.05,
        slider=True,
    )


def policy_case(policy: str) -> Case:
    """A policy's choice on the node: its relaxation slider (not for exact) and its native parameters."""
    relaxation = () if policy == "exact" else (_relaxation(policy),)
    return Case(policy, (*relaxation, *(knob.field for knob in POLICY_KNOBS[policy])))


def policy_recipe(choice: dict[str, Any], mask: torch.Tensor | None = None) -> PolicyRecipe:
    """The recipe for the node's policy choice (the policy's name under ``policy``, its widgets beside it)."""
    name = choice["policy"]
    if name not in POLICY_KNOBS:  # e.g. a workflow saved with a policy this version does not have
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICY_KNOBS)}")
    knobs = POLICY_KNOBS[name]
    options = {knob.field.name: knob.option(choice.get(knob.field.name, knob.field.default)) for knob in knobs}
    chosen = tuple((key, value) for key, value in options.items() if value is not None)
    return PolicyRecipe(name, float(choice.get("relaxation", 0.0)), mask, chosen)


def _policy(host: Host, policy: dict[str, Any], mask: torch.Tensor | None = None) -> tuple[PolicyRecipe]:
    recipe = policy_recipe(policy, mask)
    if recipe.name == "cspd":
        speculation_for(DraftRecipe(), recipe)  # bad options fail on this node
    elif not getattr(POLICIES[recipe.name], "needs_model", False):  # the others are checked by the sampler
        make_policy(recipe.name, recipe.relaxation, **dict(recipe.options))  # a bad combination fails here
    return (recipe,)


DEFAULT_POLICY = "clusters"  # keeps every group of look-alike codes at the target's probability as it relaxes


JACOBI_DRAFTS = NodeSpec(
    node_id="SpecARJacobiDrafts",
    display_name="SpecAR Jacobi Drafts",
    search_aliases=("SJD", "speculative Jacobi decoding", "self drafting", "no drafter"),
    description="Self-drafting (speculative Jacobi decoding): the target guesses a window of future tokens and checks "
    "them in the same forward. No extra model; lossless with the exact policy.",
    inputs=(
        Field(
            "window",
            INT,
            "tokens fed to the target per forward: the pending one plus window-1 guesses",
            default=16,
            min=2,
            max=64,
        ),
        Field(
            "initialisation",
            COMBO,
            "first guess for a new position: the token one row above (better on images) "
            "or a random token (as in the SJD paper)",
            default="row_above",
            options=INITIALISATIONS,
        ),
        Field("coupled", BOOLEAN, "MC-SJD coupled resampling: keeps guesses stable between forwards", default=False),
    ),
    outputs=(Output(DRAFT, "draft", "a draft source for the sampler"),),
    run=_jacobi,
)

ACCEPTANCE_POLICY = NodeSpec(
    node_id="SpecARAcceptancePolicy",
    display_name="SpecAR Acceptance Policy",
    search_aliases=("relaxation", "relaxed acceptance", "LANTERN", "GSD", "CSD", "CASCADE", "lossless"),
    description="How drafted tokens are accepted: pick a policy, then its relaxation. At relaxation 0 every policy "
    "keeps the images' distribution identical to plain decoding; higher values accept more drafts (faster) at a "
    "measured quality cost. An optional mask limits relaxation to painted regions.",
    inputs=(
        Field(
            "policy",
            CHOICE,
            "how relaxation relaxes acceptance; each policy shows its relaxation slider and its own parameters "
            "(at their defaults it keeps its tuned settings). exact never relaxes; cspd is for continuous (MAR) "
            "models only",
            default=DEFAULT_POLICY,
            cases=tuple(policy_case(name) for name in POLICY_KNOBS),
        ),
        Field("mask", MASK, "where relaxation applies (white = full relaxation, black = lossless)", optional=True),
    ),
    outputs=(Output(POLICY, "policy", "an acceptance policy for the sampler"),),
    run=_policy,
)
