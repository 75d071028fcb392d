"""Draft-source and acceptance-policy nodes: small recipes the sampler turns into engine objects."""

from __future__ import annotations

import torch

from ..engine.continuous.session import speculation_for
from ..engine.continuous.types import RUN_GROWTH
from ..engine.drafts import jacobi_method
from ..engine.drafts.jacobi import INITIALISATIONS
from ..engine.errors import SettingsError
from ..engine.policies import POLICIES, make_policy, parse_policy_options, recommended_relaxation
from ..engine.session import DraftRecipe, PolicyRecipe
from .host import Host
from .schema import BOOLEAN, COMBO, DRAFT, FLOAT, INT, MASK, POLICY, STRING, Field, NodeSpec, Output


def _jacobi(host: Host, window: int, initialisation: str, coupled: bool) -> tuple[DraftRecipe]:
    return (DraftRecipe(jacobi_method(initialisation, coupled), window=window),)


def _policy(
    host: Host, policy: str, relaxation: float, expert_options: str, mask: torch.Tensor | None = None
) -> tuple[PolicyRecipe]:
    options = parse_policy_options(expert_options)
    if policy == "cspd":
        recipe = PolicyRecipe(policy, relaxation, mask, tuple(options.items()))
        speculation_for(DraftRecipe(), recipe)  # bad options fail on this node
        return (recipe,)
    if policy not in POLICIES:  # e.g. a workflow saved with a policy this version does not have
        raise SettingsError(f"unknown acceptance policy {policy!r}; available: {', '.join(POLICIES)}, cspd (MAR)")
    if not getattr(POLICIES[policy], "needs_model", False):  # the others are checked against the model by the sampler
        make_policy(policy, relaxation, **options)  # a bad combination fails here, on this node, not in the sampler
    return (PolicyRecipe(policy, relaxation, mask, tuple(options.items())),)


DEFAULT_POLICY = "clusters"  # keeps every group of look-alike codes at the target's probability as it relaxes
RECOMMENDED = ", ".join(f"{name} {recommended_relaxation(name):g}" for name in POLICIES if name != "exact")


JACOBI_DRAFTS = NodeSpec(
    node_id="SpecARJacobiDrafts",
    display_name="SpecAR Jacobi Drafts",
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
    description="How drafted tokens are accepted: pick a policy, then the relaxation. At 0 every policy keeps the "
    "images' distribution identical to plain decoding; higher values accept more drafts (faster) at a measured "
    "quality cost. An optional mask limits relaxation to painted regions.",
    inputs=(
        Field(
            "policy",
            COMBO,
            "how the relaxation slider relaxes acceptance (at relaxation 0 every policy is lossless, bit for bit "
            "the exact policy); cspd serves continuous (MAR) models: relaxation loosens CSpD's Gaussian test and "
            f"lengthens the draft runs one target pass verifies ({RUN_GROWTH + 1:g}x at 1), trading quality for fewer "
            "target passes",
            default=DEFAULT_POLICY,
            options=(*POLICIES, "cspd"),
        ),
        Field(
            "relaxation",
            FLOAT,
            "0 = lossless; towards 1 accepts more drafts (faster, less faithful). Recommended "
            f"settings (docs/benchmarks.md shows what each costs): {RECOMMENDED}. The exact policy takes only 0",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.05,
            slider=True,
        ),
        Field(
            "expert_options",
            STRING,
            "optional native parameters of the policy, e.g. 'tv_threshold=0.5' (csd), "
            "'neighbours=10, ratio_bound=5' (lantern, LANTERN++), 'rank_window=12' (gsd), "
            "'max_group=8, plausible_share=0.3' (clusters), 'converged_group=32, tau_seq_at_full=0.9' (cascade), "
            "'evidence_margin=inf' or 'ratio_bound=inf' (cascade: switch its evidence guard or ratio bound off)",
            default="",
        ),
        Field("mask", MASK, "where relaxation applies (white = full relaxation, black = lossless)", optional=True),
    ),
    outputs=(Output(POLICY, "policy", "an acceptance policy for the sampler"),),
    run=_policy,
)
