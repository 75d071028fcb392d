"""Draft sources: where the tokens a target forward verifies come from (see :mod:`.base`), and
their registry :data:`DRAFTS`, by the name the command line, the benchmarks and the nodes use.

Each :class:`DraftKind` builds its source from :class:`DraftOptions`, names itself in stats and
tables, says which second model it needs and whether it drafts trees (which CASCADE needs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from .auto import AutoDrafts
from .base import DraftSource
from .drafter import DrafterModelDrafts
from .drafter_tree import DrafterTreeDrafts
from .jacobi import JacobiDrafts
from .tree_drafts import TreeHeadDrafts, TreeShape, branching_label
from .tree_head import TreeHead


@dataclass(frozen=True)
class DraftOptions:
    """The knobs of every draft source; each reads its own."""

    window: int = 16  # Jacobi: tokens per forward, the pending one included
    gamma: int = 6  # drafter chain: drafts per forward
    q_init: str = "one_hot"  # Jacobi with random initialisation: the q convention of new slots
    tree: TreeShape = TreeShape()  # the dynamic tree of "tree" (and the head's drafting guidance)
    tree_branching: tuple[int, ...] = TreeShape().branching  # children per depth of the static trees
    tree_head: TreeHead | None = None
    auto_head: bool = True  # auto drafts with tree_head too
    auto_drafter: bool = True  # auto drafts with the drafter model too

    def tree_shape(self, method: str) -> TreeShape:
        if method == "tree":
            return replace(self.tree, kind="dynamic")
        return TreeShape(kind="static", branching=self.tree_branching, guidance=self.tree.guidance)


KNOBS = ("window", "q_init", "gamma", "tree_top_k", "tree_depth", "tree_nodes", "tree_guidance", "tree_branching")
"""The draft knobs a front end may set; ``tree_*`` are the fields of ``DraftOptions.tree`` and its branching."""

Label = Callable[[DraftOptions, str], str]
"""A source's name in stats and tables from its options and its model's name ('' when unknown)."""


@dataclass(frozen=True)
class DraftKind:
    name: str
    summary: str  # one line for help texts
    make: Callable[[DraftOptions, ImageTokenModel | None], DraftSource]  # (options, drafter model)
    label: Label
    record: Callable[[DraftOptions], dict[str, object]]  # the options stats and JSON keep
    needs: str = ""  # a second model it cannot run without: "drafter" or "tree head"
    takes_drafter: bool = False  # uses a drafter model when one is given
    takes_head: bool = False  # uses a tree head when one is given
    drafts_trees: bool = False
    jacobi: tuple[str, bool] | None = None  # SJD variants: (initialisation, coupling)
    reads: tuple[str, ...] = ()  # the DraftOptions knobs it uses (KNOBS), so a front end can refuse the others

    @property
    def uses_head(self) -> bool:
        return self.takes_head or self.needs == "tree head"


def _named(prefix: str, model: str) -> str:
    return f"{prefix} {model}" if model else prefix


def _jacobi(name: str, init: str, coupling: bool, summary: str) -> DraftKind:
    return DraftKind(
        name,
        summary,
        make=lambda o, _: JacobiDrafts(o.window, init, o.q_init, coupling),
        label=lambda o, _: f"{name}, window {o.window}",
        record=lambda o: {"window": o.window, "init": init, "q_init": o.q_init, "coupling": coupling},
        jacobi=(init, coupling),
        reads=("window", "q_init") if init == "random" else ("window",),  # row-above slots are not random draws
    )


def _head_tree(method: str, summary: str) -> DraftKind:
    """A tree drafted by a tree head: dynamic (``tree``) or static (``tree-static``)."""

    def make(options: DraftOptions, _: ImageTokenModel | None) -> DraftSource:
        if options.tree_head is None:
            raise SettingsError(f"method {method!r} needs a tree head (give --tree-head PATH)")
        return TreeHeadDrafts(options.tree_head, options.tree_shape(method))

    def label(options: DraftOptions, head: str) -> str:
        shape = options.tree_shape(method)
        guidance = f", guidance {shape.guidance:g}" if shape.guidance is not None else ""
        if method == "tree":
            return f"{_named('tree head', head)}, dynamic k{shape.top_k} d{shape.depth} n{shape.nodes}{guidance}"
        return f"{_named('tree head', head)}, static {branching_label(shape.branching)}{guidance}"

    return DraftKind(
        method,
        summary,
        make=make,
        label=label,
        record=lambda o: asdict(o.tree_shape(method)),
        needs="tree head",
        drafts_trees=True,
        reads=("tree_top_k", "tree_depth", "tree_nodes", "tree_guidance")
        if method == "tree"
        else ("tree_branching", "tree_guidance"),
    )


def _auto_label(options: DraftOptions, drafter: str) -> str:
    head = options.tree_head is not None and options.auto_head
    given = (f" or drafter {drafter}" if drafter and options.auto_drafter else "") + (" or tree head" if head else "")
    return f"auto (row-above Jacobi{given}, length by measured cost)"


def _needs_drafter(
    method: str, make: Callable[[DraftOptions, ImageTokenModel], DraftSource]
) -> Callable[[DraftOptions, ImageTokenModel | None], DraftSource]:
    def checked(options: DraftOptions, drafter: ImageTokenModel | None) -> DraftSource:
        if drafter is None:
            raise SettingsError(f"method {method!r} needs a drafter model (give --drafter PATH)")
        return make(options, drafter)

    return checked


DRAFTS: dict[str, DraftKind] = {
    kind.name: kind
    for kind in (
        DraftKind(
            "auto",
            "each forward, row-above Jacobi, the drafter or the tree head (when given) with the chain length "
            "that commits the most tokens per second, by costs measured on this machine",
            make=lambda o, drafter: AutoDrafts(
                drafter if o.auto_drafter else None, o.tree_head if o.auto_head else None
            ),
            label=_auto_label,
            record=lambda _: {},
            takes_drafter=True,
            takes_head=True,
        ),
        _jacobi("jacobi", "random", False, "speculative Jacobi decoding, random initialisation of new window slots"),
        _jacobi(
            "jacobi-row",
            "row_above",
            False,
            "speculative Jacobi decoding, new slots start as the token one grid row above",
        ),
        _jacobi("mcsjd", "random", True, "MC-SJD: Jacobi decoding with coupled resampling, random initialisation"),
        _jacobi("mcsjd-row", "row_above", True, "MC-SJD with row-above initialisation"),
        DraftKind(
            "drafter",
            "a separate small drafter model proposes tokens",
            make=_needs_drafter("drafter", lambda o, d: DrafterModelDrafts(d, o.gamma)),
            label=lambda o, drafter: f"{_named('drafter', drafter)}, gamma {o.gamma}",
            record=lambda o: {"gamma": o.gamma},
            needs="drafter",
            takes_drafter=True,
            reads=("gamma",),
        ),
        _head_tree("tree", "an EAGLE-style head drafts a dynamic tree (EAGLE-2), verified in one forward"),
        _head_tree("tree-static", "the head drafts a static tree with sampled children (EAGLE-1 / LANTERN++)"),
        DraftKind(
            "drafter-tree",
            "the drafter model drafts a static tree with sampled children (one drafter row per leaf)",
            make=_needs_drafter("drafter-tree", lambda o, d: DrafterTreeDrafts(d, o.tree_branching)),
            label=lambda o, drafter: f"{_named('drafter', drafter)}, static {branching_label(o.tree_branching)}",
            record=lambda o: {"branching": list(o.tree_branching)},
            needs="drafter",
            takes_drafter=True,
            drafts_trees=True,
            reads=("tree_branching",),
        ),
    )
}


def draft_kind(method: str) -> DraftKind:
    if method not in DRAFTS:
        raise SettingsError(f"unknown draft source {method!r}; available: {', '.join(DRAFTS)}")
    return DRAFTS[method]


def make_draft(method: str, options: DraftOptions, drafter: ImageTokenModel | None = None) -> DraftSource:
    """A fresh draft source (sources hold per-call state)."""
    return draft_kind(method).make(options, drafter)


def jacobi_method(init: str, coupling: bool) -> str:
    """The name of the SJD variant with this initialisation and coupling."""
    return next(name for name, kind in DRAFTS.items() if kind.jacobi == (init, coupling))


def unused_knobs(methods: list[str], given: set[str]) -> list[str]:
    """The knobs among ``given`` that none of ``methods`` reads (plain AR reads none)."""
    read = {knob for method in methods if method in DRAFTS for knob in DRAFTS[method].reads}
    return [knob for knob in KNOBS if knob in given and knob not in read]


def check_policy_fits(policy: object, method: str) -> None:
    """CASCADE judges tree siblings by the target's states: refuse it where no tree is drafted
    (plain decoding, not a draft source, runs no policy)."""
    if getattr(policy, "needs_tree_states", False) and method in DRAFTS and not DRAFTS[method].drafts_trees:
        trees = ", ".join(name for name, kind in DRAFTS.items() if kind.drafts_trees)
        raise SettingsError(
            f"the {getattr(policy, 'name', policy)} policy relaxes acceptance among the siblings of a "
            f"draft tree; use it with the tree drafts ({trees}), not {method}"
        )
