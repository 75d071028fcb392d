"""Small data classes that cross module borders.

The loop, the model adapters, the draft sources and the acceptance policies only talk to each
other through these types, so each plug-in can be read (and replaced) on its own.

Shapes use ``B`` for images in the batch, ``n`` for drafted tokens in one block, ``V`` for the
vocabulary the model's head produces and ``N`` for image tokens per image.
"""

from __future__ import annotations

from typing import Callable, Sequence

import enum
import functools
from dataclasses import dataclass, field, replace

import torch

from .errors import SettingsError
from .validation import finite_number, seed, whole_number


@dataclass(frozen=True)
class SamplingSettings:
    """How the target's logits become a distribution, and the seed of the whole run.

    ``greedy`` turns every distribution into a point mass on its argmax, which makes every
    lossless method reproduce plain greedy decoding token for token.
    """

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0  # 1.0: no nucleus filtering
    greedy: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        finite_number("cfg_scale", self.cfg_scale, low=0.0)
        finite_number("temperature", self.temperature, low=0.0)
        if not self.greedy and self.temperature <= 0:
            raise SettingsError(
                f"temperature must be > 0 when sampling, got {self.temperature} (use greedy decoding for temperature 0)"
            )
        whole_number("top_k", self.top_k, low=0)  # 0 disables it
        if not 0.0 < finite_number("top_p", self.top_p) <= 1.0:
            raise SettingsError(f"top_p must be in (0, 1], got {self.top_p}")
        seed(self.seed)
        if not isinstance(self.greedy, bool):
            raise SettingsError(f"greedy must be True or False, got {self.greedy!r}")

    @property
    def uses_cfg(self) -> bool:
        """Classifier-free guidance needs the unconditional half of the batch only when scale != 1."""
        return self.cfg_scale != 1.0

    def with_(self, **changes: object) -> "SamplingSettings":
        return replace(self, **changes)


@dataclass(frozen=True)
class Conditioning:
    """What the target is asked to draw, one entry per image in the batch.

    Exactly one kind is set: ``class_ids`` for class-conditional models, ``prompts`` for models
    that tokenise text themselves, or ``caption_embeddings`` (with ``caption_mask``) for models
    conditioned on precomputed text-encoder features such as LlamaGen t2i.
    """

    class_ids: tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    caption_embeddings: torch.Tensor | None = None  # [B, T, C]
    caption_mask: torch.Tensor | None = None  # [B, T] bool, True = real token

    def __post_init__(self) -> None:
        kinds = [k for k in ("class_ids", "prompts", "caption_embeddings") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise SettingsError(
                f"Conditioning needs exactly one of class_ids, prompts, caption_embeddings; got {kinds or 'none'}"
            )
        if self.class_ids is not None and not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.class_ids
        ):
            raise SettingsError(f"class ids must be whole numbers >= 0, got {list(self.class_ids)}")
        if self.prompts is not None and not all(isinstance(prompt, str) for prompt in self.prompts):
            raise SettingsError("prompts must be text")
        if self.batch_size == 0:
            raise SettingsError("Conditioning needs at least one image (an empty list of classes or prompts)")

    @property
    def batch_size(self) -> int:
        if self.class_ids is not None:
            return len(self.class_ids)
        if self.prompts is not None:
            return len(self.prompts)
        assert self.caption_embeddings is not None
        return int(self.caption_embeddings.shape[0])

    @staticmethod
    def classes(class_ids: list[int] | tuple[int, ...]) -> "Conditioning":
        """Class-conditional images; whole-number ids of any integer type (numpy, 0-d tensors) are accepted."""
        return Conditioning(class_ids=tuple(_class_id(c) for c in class_ids))

    def repeat_each(self, times: int) -> "Conditioning":
        """Every image's condition ``times`` times in a row (a drafter running several rows per image)."""
        if self.class_ids is not None:
            return Conditioning(class_ids=tuple(c for c in self.class_ids for _ in range(times)))
        if self.prompts is not None:
            return Conditioning(prompts=tuple(p for p in self.prompts for _ in range(times)))
        assert self.caption_embeddings is not None
        mask = None if self.caption_mask is None else self.caption_mask.repeat_interleave(times, 0)
        return Conditioning(caption_embeddings=self.caption_embeddings.repeat_interleave(times, 0), caption_mask=mask)


def _class_id(value: object) -> int:
    try:
        whole = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"a class id must be a whole number, got {value!r}") from None
    if isinstance(value, (bool, str, float)) or whole != value:
        raise SettingsError(f"a class id must be a whole number, got {value!r}")
    return whole


ConditionFn = Callable[[Sequence[int]], Conditioning]
"""Conditioning for the images with these indices (so every method of a benchmark draws the same images)."""


@dataclass
class DraftBlock:
    """Tokens a draft source proposes for one target forward.

    ``parents[b, i]`` is the index of node ``i``'s parent inside row ``b``'s block, or -1 when its
    parent is the last committed token; a chain is ``[-1, 0, 1, ...]`` in every row. Rows may hold
    different trees of the same size (a dynamic tree grows where each image's drafter is
    confident); a list of ints is accepted as one shape for every row. Parents always precede
    their children. ``q[b, i]`` is the full processed distribution that ``tokens[b, i]`` was
    drawn from; point-mass drafts (random or spatial initialisation, a dynamic tree's top-k
    picks) store a one-hot row, and the uniform convention stores ``1/V`` everywhere, so one
    acceptance rule covers all of them.
    """

    tokens: torch.Tensor  # [B, n] long
    q: torch.Tensor  # [B, n, V] float32
    parents: torch.Tensor  # [B, n] long on the host (a list[int] is expanded to every row), see below
    # Upper bounds on the tree's depth and on any node's number of children. A source that gives
    # them keeps ``parents`` on the device: the loop then lays the tree out without reading it
    # back (each read would be a host sync). Without them parents move to the host.
    max_depth: int | None = None
    max_children: int | None = None
    # Every node is a fixed pick (its q a point mass on its own token) and siblings are distinct
    # tokens, as in a dynamic tree; exact verification then takes a shortcut (verify.verify_tree).
    picks: bool = False
    # The source redraws every slot of a chain after the forward by maximal coupling with the target's new
    # distribution there (MC-SJD), which is the exact policy's test and residual: verification then draws
    # them too (Verdict.slot_draws), in the passes it makes anyway.
    redrawn: bool = False
    # ``q`` holds only rows of the target's own processed distributions, whose logits the loop checked for NaN
    # when they came, and point masses or uniform rows (Jacobi): the loop need not check it again.
    q_checked: bool = False

    _chain: bool | None = field(default=None, init=False, repr=False, compare=False)  # is_chain, once known
    # Drafts per row: the loop reads it several times a step, so it is read off the shape once
    size: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        batch, n = self.tokens.shape
        self.size = n
        if not isinstance(self.parents, torch.Tensor):
            listed = list(self.parents)
            chain = listed == list(range(-1, n - 1))
            if not self.bounded:  # read off the list, not worked out again from the tensor
                self._chain = chain
            # a chain (every step of most sources) reuses its parents: cheaper than reading a list into a tensor
            self.parents = _chain_parents(n) if chain else torch.tensor(listed, dtype=torch.long).reshape(1, n)
        if self.bounded:
            self.parents = self.parents.to(dtype=torch.long)
        elif self.parents.device.type != "cpu" or self.parents.dtype != torch.long:
            self.parents = self.parents.to("cpu", torch.long)
        self.parents = self.parents.expand(batch, n)

    @property
    def bounded(self) -> bool:
        return self.max_depth is not None and self.max_children is not None

    @property
    def is_chain(self) -> bool:
        """Whether node ``i``'s parent is node ``i - 1`` in every row; found once (the loop asks every step)."""
        if self._chain is None:
            if self.bounded:  # a bounded tree is laid out as a tree, whatever its shape
                self._chain = self.size == 0
            else:
                self._chain = bool((self.parents == torch.arange(-1, self.size - 1)[None, :]).all())
        return self._chain

    @staticmethod
    def empty(batch: int, vocab: int, device: torch.device) -> "DraftBlock":
        return DraftBlock(
            tokens=torch.zeros(batch, 0, dtype=torch.long, device=device),
            q=torch.zeros(batch, 0, vocab, dtype=torch.float32, device=device),
            parents=torch.zeros(batch, 0, dtype=torch.long),
        )


@functools.lru_cache(maxsize=None)
def _chain_parents(n: int) -> torch.Tensor:
    """``[1, n]`` parents of a chain of ``n`` nodes (-1, 0, 1, ...), made once per length and never written to."""
    return torch.arange(-1, n - 1).reshape(1, n)


@dataclass
class Verdict:
    """An acceptance policy's decision for one block, per row of the batch.

    ``path[b, :accepted[b]]`` are the block indices of the accepted nodes (for a chain simply
    0, 1, ...). ``next_token`` is the token the target emitted after them, drawn from
    ``next_dist``: a correction after a rejection, or a bonus token when nothing on the path was
    rejected; ``next_kind`` says which (a :class:`TokenKind`). ``next_dist`` is ``None`` where the
    token is one of ``slot_draws``, whose distributions the verification never normalises (the loop
    does not read them). ``diagnostics`` holds per-node quantities a policy decided on (for heatmaps):
    chains ``[B, n]`` per node, trees ``[B, depth]`` per level.

    ``slot_draws`` and ``slot_passed`` come with the verification of a ``redrawn`` chain of ``n`` drafts:
    ``slot_draws [B, n + 1]`` a token drawn at every slot from ``norm(max(0, p - q))`` (from ``p`` at the last
    slot, past the drafts, and where a row's limit stopped it), and ``slot_passed [B, n]`` whether each slot's
    uniform fell under the exact ratio ``min(1, p(x)/q(x))`` (a relaxed policy tests its own acceptance on the
    same uniform, and draws a rejected row's correction from its own residual apart). Past a row's first
    rejection nothing read them, so they are fresh there: a maximal coupling of each later draft with its new
    distribution.
    """

    accepted: torch.Tensor  # [B] long
    path: torch.Tensor  # [B, depth] long, block indices of accepted nodes, padded with -1
    next_token: torch.Tensor  # [B] long
    next_dist: torch.Tensor | None  # [B, V] float32
    next_kind: torch.Tensor  # [B] long TokenKind of next_token
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    slot_draws: torch.Tensor | None = None  # [B, n + 1] long
    slot_passed: torch.Tensor | None = None  # [B, n] bool


class TokenKind(enum.IntEnum):
    """How a committed token came to be; the heatmap colours cells by this."""

    PLAIN = 0  # sampled by the target with no draft offered at this position
    ACCEPTED = 1  # a draft token that the policy accepted
    CORRECTED = 2  # drawn by the target after the draft at this position was rejected
    BONUS = 3  # drawn by the target after every draft of the block was accepted


def forwards_per_image(forward_index: torch.Tensor) -> torch.Tensor:
    """``[B]``: the distinct target forwards that committed tokens of each image, from ``forward_index [B, N]``
    (-1 where nothing is committed). Rows advance independently, so this is what each image would have
    needed decoded on its own; a batch's count of forwards is set by its slowest row."""
    ordered = forward_index.sort(dim=1).values
    starts = (ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return (ordered[:, 0] >= 0).long() + starts.sum(dim=1)


def tokens_per_forward(committed: torch.Tensor, forward_index: torch.Tensor) -> float:
    """Step compression, the one figure every report shows: image tokens committed per target forward,
    per image (so it does not depend on the batch size)."""
    return float(committed.sum()) / max(int(forwards_per_image(forward_index).sum()), 1)


@dataclass
class StepEvent:
    """What an observer sees after every target forward."""

    step: int  # index of the target forward that just ran (0 = prefill)
    tokens: torch.Tensor  # [B, N] committed tokens so far (undefined past ``committed``)
    committed: torch.Tensor  # [B] how many tokens each row has committed
    kinds: torch.Tensor  # [B, N] TokenKind codes, -1 where nothing is committed yet
    forward_index: torch.Tensor  # [B, N] target forward that committed each token, -1 where none yet
    target_forwards: int
    total_tokens: int  # number of image tokens per image

    @property
    def tokens_per_forward(self) -> float:
        return tokens_per_forward(self.committed, self.forward_index)


@dataclass
class GenerationResult:
    """Tokens and bookkeeping of one call of :func:`specar.generate`.

    ``forward_index[b, t]`` is the target forward that committed token ``t`` of image ``b`` and
    ``kinds[b, t]`` how it was committed; together they are the data behind the heatmaps.
    """

    tokens: torch.Tensor  # [B, N] long (cpu)
    kinds: torch.Tensor  # [B, N] int8 TokenKind
    forward_index: torch.Tensor  # [B, N] int32
    committed: torch.Tensor  # [B] tokens committed per row (N unless interrupted)
    target_forwards: int
    drafter_forwards: int
    drafted: int  # draft tokens examined by the policy, over all rows
    accepted: int  # of those, accepted
    wall_seconds: float
    model_seconds: float  # time inside target and drafter forwards
    finished: bool = True
    # Per token, what the acceptance policy decided on (e.g. entropy, tv, neighbour_mass, group_size):
    # [B, N] float, NaN where no draft was tested (trees: the accepted node's, else the last sibling tried);
    # the exact policy records nothing.
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    draft_summary: str = ""  # what the draft source chose, if it chooses (DraftSource.summary)
    # target forwards after the prefill by the tokens each fed per row (pending token and drafts): what their cost
    # depends on
    block_sizes: dict[int, int] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def forwards_per_image(self) -> torch.Tensor:
        """Target forwards that committed tokens of each image ``[B]`` (see :func:`forwards_per_image`)."""
        return forwards_per_image(self.forward_index)

    @property
    def tokens_per_forward(self) -> float:
        """Step compression: image tokens per target forward, per image (see :func:`tokens_per_forward`)."""
        return tokens_per_forward(self.committed, self.forward_index)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def _committed_tokens(self) -> torch.Tensor:
        """Tokens with -1 where nothing was committed (an interrupted generation)."""
        return self.tokens.masked_fill(self.kinds < 0, -1)

    def stats(self) -> dict[str, object]:
        """The JSON-ready summary the CLI writes with ``--stats``."""
        return {
            "tokens": self._committed_tokens().tolist(),
            "target_forwards": self.target_forwards,
            "target_forwards_per_image": self.forwards_per_image.tolist(),
            "drafter_forwards": self.drafter_forwards,
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "wall_seconds": round(self.wall_seconds, 4),
            "model_seconds": round(self.model_seconds, 4),
            "finished": self.finished,
            **({"draft_choices": self.draft_summary} if self.draft_summary else {}),
        }


Observer = Callable[[StepEvent], "bool | None"]
"""Called after every target forward; returning ``False`` stops the generation early."""
