"""Draft trees from an EAGLE-style head: dynamic (EAGLE-2, LANTERN) and static (EAGLE-1, LANTERN++).

Each step the head first catches up on what the target committed (one entry per new token,
with the target's true hidden states), then grows a tree from its prediction after the last
committed token. A head trained on sequences that open with the caption (LANTERN's t2i heads,
``cls_token_num`` > 0) reads those caption entries once, when the generation begins. Trees:

* ``dynamic`` (EAGLE-2, arXiv 2406.16858): take the head's ``top_k`` tokens; at every further
  depth score each child as parent score + log q(child), expand the ``top_k`` best of the
  ``top_k x top_k`` children, and finally keep the ``nodes`` best-scoring nodes of all depths.
  Nodes are deterministic picks, so each carries a point-mass q (the verifier then tests p(x)
  and zeroes rejected siblings, exactly LANTERN's dynamic-tree verification). Trees differ per
  image: each grows where its own drafts are confident. Under a policy that accepts whole groups
  of codes (clusters, CASCADE: ``AcceptancePolicy.sibling_groups``) siblings are distinct groups.
* ``static`` (EAGLE-1 templates; LANTERN++, arXiv 2502.06352): every node at depth d gets
  ``branching[d]`` children sampled without replacement from the head's q, which they keep, so
  verification is recursive rejection with the true q. The tree keeps drafting deep even where
  the head is unsure, which is what LANTERN++ pairs with latent relaxation. A static tree of one
  child per depth is a chain, drafted lean: one sample per depth from q, one head entry per row,
  and no tree masks or sibling bookkeeping (what auto drafting uses the head for).

Both halves of a CFG pair feed the same tree tokens, each with its own features; q is the
guided, processed head distribution (the target's sampling settings). Under greedy settings
the processed q is a point mass, which cannot branch; trees are then drawn from the softmax of
the guided logits (any q keeps verification lossless).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import IncompatibleDrafterError, SettingsError
from ..memory import MAX_BLOCK_TOKENS, check_block
from ..sampling import DistributionProcessor, point_mass, sample
from ..types import DraftBlock
from .base import DecodeState, DraftSource, StepOutcome, chain
from .tree_head import HeadCache, TreeHead, place_head

TREE_KINDS = ("dynamic", "static")
BRANCHING_PART = re.compile(r"(\d+)(?:\s*\*\s*(\d+))?")  # B, or B*N for N depths of B children
SCORE_FLOOR = -1e4  # log q of tokens q never draws (keeps scores finite)
HEAD_CACHE_MARGIN = 8  # spare head-cache slots beyond the most one image writes (context, tree entries, deepest chain)
DEPTH_PENALTY = 1e-3  # per level: a child always scores below its parent, so the kept tree is closed


@dataclass(frozen=True)
class TreeShape:
    """How a tree grows. Dynamic: ``top_k``, ``depth``, ``nodes``; static: ``branching`` per depth.

    ``guidance`` is the CFG scale the head drafts with (``None``: the target's). Verification always
    uses the target's own scale, so any value keeps the exact policy lossless; a higher one makes the
    head's picks more condition-specific, which matters where a group policy emits the drafted code of
    an accepted group (at the target's scale a one-layer head's picks carry less condition evidence
    than the target's own samples)."""

    kind: str = "dynamic"
    top_k: int = 6
    depth: int = 8
    nodes: int = 48
    branching: tuple[int, ...] = (4, 2, 1, 1, 1, 1, 1, 1)
    guidance: float | None = None

    def __post_init__(self) -> None:
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and 0 < self.guidance <= 100):
            raise SettingsError(f"tree guidance must be a CFG scale in (0, 100], got {self.guidance!r}")
        if self.kind not in TREE_KINDS:
            raise SettingsError(f"tree kind must be one of {TREE_KINDS}, got {self.kind!r}")
        if self.kind == "dynamic":
            for name, value, low in (("top_k", self.top_k, 1), ("depth", self.depth, 1), ("nodes", self.nodes, 1)):
                if not isinstance(value, int) or value < low:
                    raise SettingsError(f"dynamic tree {name} must be an integer >= {low}, got {value!r}")
            if self.nodes > self.top_k + (self.depth - 1) * self.top_k**2:
                raise SettingsError(
                    f"a dynamic tree with top_k {self.top_k} and depth {self.depth} has at most "
                    f"{self.top_k + (self.depth - 1) * self.top_k**2} candidate nodes; "
                    f"{self.nodes} were asked for"
                )
        elif not self.branching or any(not isinstance(b, int) or b < 1 for b in self.branching):
            raise SettingsError(
                f"static tree branching must be integers >= 1 per depth, e.g. 4,2,2,1; got {self.branching!r}"
            )
        if self.kind == "dynamic":
            check_block(f"a dynamic tree of {self.nodes} nodes", self.nodes)
            check_block(f"a dynamic tree of depth {self.depth}", self.depth)
        else:
            check_block(f"a static tree {branching_label(self.branching)}", static_tree_size(self.branching))

    @property
    def size(self) -> int:
        """Nodes per tree (the most a target forward verifies, besides the pending token)."""
        return self.nodes if self.kind == "dynamic" else static_tree_size(self.branching)

    @property
    def is_chain(self) -> bool:
        """A static tree of one child per depth."""
        return self.kind == "static" and all(width == 1 for width in self.branching)

    @property
    def head_entries(self) -> int:
        """Tree nodes the head is fed while drafting one tree (its cache room beyond the image)."""
        if self.kind == "dynamic":
            return self.top_k * (self.depth - 1)
        return self.size

    @staticmethod
    def parse_branching(text: str) -> tuple[int, ...]:
        """``"4,2,2,1"`` (or ``"4x2x2x1"``) -> ``(4, 2, 2, 1)``; ``B*N`` repeats ``B`` for ``N`` depths:
        ``"2,2,1*3"`` -> ``(2, 2, 1, 1, 1)``. Anything else is refused, not guessed at; so is a tree
        larger than one forward may verify, before its widths are even expanded."""
        widths: list[tuple[int, int]] = []
        for part in re.split(r"[,x]", text):
            found = BRANCHING_PART.fullmatch(part.strip())
            if found is None:
                raise SettingsError(
                    f"static tree branching is children per depth, e.g. 4,2,2,1 or 2,2,1*14; {part.strip()!r} in "
                    f"{text!r} is not a number or NUMBER*DEPTHS"
                )
            widths.append((int(found[1]), int(found[2] or 1)))
        check_block(f"the static tree {text!r}", sum(times for _, times in widths))  # depths, before expanding
        branching = tuple(width for width, times in widths for _ in range(times))
        check_block(f"the static tree {text!r}", static_tree_size(branching))
        return branching


def static_tree_size(branching: tuple[int, ...]) -> int:
    """Nodes of a static tree with ``branching`` children per depth; counting stops just past
    ``MAX_BLOCK_TOKENS`` (enough to refuse it), so absurd templates cost no time."""
    nodes, level = 0, 1
    for width in branching:
        level *= width
        nodes += level
        if nodes > MAX_BLOCK_TOKENS:
            break
    return nodes


class TreeHeadDrafts(DraftSource):
    name = "tree"

    def __init__(self, head: TreeHead, shape: TreeShape | None = None) -> None:
        super().__init__()
        self.head, self.shape = head, shape or TreeShape()
        self.largest_block = self.shape.size
        self.processor: DistributionProcessor | None = None
        self.cache: HeadCache | None = None
        self.code_groups: torch.Tensor | None = None  # [V] the policy's group id per code (dynamic trees)

    # -- bookkeeping between target forwards --------------------------------------------------------

    def begin(self, state: DecodeState) -> None:
        self.head = place_head(self.head, state.model)
        settings = state.processor.settings
        if self.shape.guidance is not None:
            if not state.guided:
                raise SettingsError(
                    "tree guidance sets the head's CFG scale, but this generation runs without CFG "
                    "(cfg 1): leave the tree guidance unset"
                )
            settings = settings.with_(cfg_scale=self.shape.guidance)
        self.processor = DistributionProcessor(settings, state.model.constraint)
        self.code_groups = state.sibling_groups
        self.pair = 2 if state.guided else 1
        rows = self.pair * state.batch
        deepest = max(self.shape.depth, len(self.shape.branching))
        self.captions = caption_entries(self.head, state)
        room = self.captions + state.num_tokens + self.shape.head_entries + deepest + HEAD_CACHE_MARGIN
        self.cache = self.head.new_cache(rows, room)
        self.known = torch.full((rows,), self.captions, dtype=torch.long)  # head entries with the target's features
        if self.captions:
            self._feed_captions(state)
        # target states not yet fed, block by block: (states [R, w, D], how many of them each image committed [B])
        self.queue = [(state.context_hidden, state.committed.clone())]  # features for entries 0..c-1

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        """Queue the target's states after the pending token and every accepted node: they are
        the features of the entries for the tokens committed this step. Whatever blocks verified
        them (a head that sat out while auto drafted otherwise), they queue up until it drafts again."""
        path = outcome.verdict.path
        index = self._rows(torch.nn.functional.pad(1 + path.clamp(min=0), (1, 0)))  # slot 0: the pending token
        states = outcome.hidden.gather(1, index[..., None].expand(-1, -1, outcome.hidden.shape[-1]))
        self.queue.append((states, state.committed - outcome.committed_before))

    def end(self) -> None:
        self.cache = None
        self.queue = []

    def _rows(self, per_image: torch.Tensor) -> torch.Tensor:
        return torch.cat([per_image] * self.pair) if self.pair > 1 else per_image

    # -- head forwards ----------------------------------------------------------------------------

    def _feed_captions(self, state: DecodeState) -> None:
        """Open every row's cache with the caption entries, as the head's training sequences opened:
        entry j is token id 0 at position j - C with the target's state at caption position j as its
        feature (each CFG row its own caption's states, the null caption's for unconditional rows).
        Image entries then attend to them at cache slots 0..C-1."""
        assert self.cache is not None and state.condition_hidden is not None
        features = state.condition_hidden  # [R, C, D], C = self.captions (caption_entries checked it)
        rows, count, dev = features.shape[0], self.captions, features.device
        ids = torch.zeros(rows, count, dtype=torch.long, device=dev)
        positions = torch.arange(-count, 0, device=dev).expand(rows, -1)
        mask = torch.ones(count, count, dtype=torch.bool, device=dev).tril().expand(rows, -1, -1)
        embeds = self.head.embed(ids, state.model)
        dtype = self.head.fc.weight.dtype
        self.timed(lambda: self.head.step(embeds, features.to(dtype), positions, self.cache, 0, mask))

    def _catch_up(self, state: DecodeState) -> torch.Tensor:
        """Feed the queued entries (a ragged count per image); returns the head's state after the
        last committed token, ``[R, D]``, from which the tree grows."""
        assert self.cache is not None and self.queue
        dev = state.tokens.device
        queued = pack_queue([(states, self._rows(counts)) for states, counts in self.queue])
        counts = self._rows(torch.stack([counts for _, counts in self.queue]).sum(0))
        width = max(int(counts.max()), 1)
        known = self.known.to(dev)
        offsets = torch.arange(width, device=dev)
        slots = known[:, None] + offsets[None, :]
        read = int(self.known.max()) + width
        keys = torch.arange(read, device=dev)[None, None, :]
        new_key = (keys >= known[:, None, None]) & (keys < known[:, None, None] + counts.to(dev)[:, None, None])
        mask = (keys < known[:, None, None]) | (new_key & (keys <= slots[:, :, None])) | (keys == slots[:, :, None])
        positions = (slots - self.captions).clamp(max=state.num_tokens)  # the caption entries fill the first slots
        tokens = state.tokens.repeat(self.pair, 1).gather(1, positions)
        features = queued[:, :width]  # the pending token's state, then the accepted path's
        out = self.timed(
            lambda: self.head.step(
                self.head.embed(tokens, state.model),
                features.to(self.head.fc.weight.dtype),
                positions,
                self.cache,
                slots,
                mask,
            )
        )
        self.known = self.known + counts.cpu()
        self.queue = []
        last = (counts.to(dev) - 1).clamp(min=0)
        return out.gather(1, last[:, None, None].expand(-1, 1, out.shape[-1]))[:, 0]

    def _feed(
        self,
        state: DecodeState,
        tokens: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        ancestors: torch.Tensor,
        fed: int,
    ) -> torch.Tensor:
        """Feed ``k`` tree nodes per image after the ``fed`` nodes already in the cache. ``ancestors
        [B, k, fed]`` marks which fed nodes each new node descends from. Returns states ``[R, k, D]``."""
        assert self.cache is not None
        dev = tokens.device
        B, k = tokens.shape
        base = int(self.known.max())
        slots = (base + fed + torch.arange(k, device=dev)).expand(self.pair * B, -1)
        read = base + fed + k
        keys = torch.arange(read, device=dev)
        known = self.known.to(dev)[:, None, None]
        prefix = keys[None, None, :] < known
        tree = torch.zeros(self.pair * B, k, read, dtype=torch.bool, device=dev)
        tree[:, :, base : base + fed] = self._rows(ancestors)
        own = keys[None, None, :] == slots[:, :, None]
        mask = prefix | tree | own
        rows_positions = self._rows(positions.clamp(max=state.num_tokens - 1))
        embeds = self.head.embed(self._rows(tokens), state.model)
        return self.timed(lambda: self.head.step(embeds, features, rows_positions, self.cache, base + fed, mask))

    def _distribution(self, state: DecodeState, out: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """The head's guided, processed distribution ``[B, k, V]`` for states ``out [R, k, D]``."""
        assert self.processor is not None
        logits = self.clock.run(lambda: state.model.logits_from_hidden(out))  # the target's output layer: model time
        return branching_distribution(self.processor, logits, predicted.clamp(max=state.num_tokens - 1))

    # -- trees ------------------------------------------------------------------------------------

    def propose(self, state: DecodeState) -> DraftBlock:
        B, V, dev = state.batch, state.model.vocab_size, state.tokens.device
        depth = min(self.shape.depth if self.shape.kind == "dynamic" else len(self.shape.branching), state.max_drafts)
        if depth <= 0:
            return DraftBlock.empty(B, V, dev)
        root = self._catch_up(state)
        committed = state.committed.to(dev)
        q_root = self._distribution(state, root[:, None], committed[:, None])[:, 0]
        if self.shape.kind == "dynamic":
            return self._dynamic(state, root, q_root, committed, depth)
        if self.shape.is_chain:
            return self._chain(state, root, q_root, committed, depth)
        return self._static(state, root, q_root, committed, depth)

    def _chain(
        self, state: DecodeState, root: torch.Tensor, q_root: torch.Tensor, committed: torch.Tensor, depth: int
    ) -> DraftBlock:
        """``depth`` drafts, each sampled from the head's q after the one before (which it keeps).
        Every entry attends to its row's committed entries and to the chain drafted so far."""
        assert self.cache is not None
        dev = q_root.device
        base = int(self.known.max())  # the chain's slots start past every row's committed entries
        keys = torch.arange(base + depth, device=dev)
        readable = (keys[None, None, :] < self.known.to(dev)[:, None, None]) | (keys >= base)  # [R, 1, base + depth]
        tokens, qs = [], []
        q, features = q_root, root[:, None]
        for level in range(depth):
            token = sample(q, state.generator)
            tokens.append(token)
            qs.append(q)
            if level == depth - 1:
                break
            slot, entries = base + level, self._rows(token[:, None])
            positions = self._rows((committed[:, None] + level).clamp(max=state.num_tokens - 1))
            embeds = self.head.embed(entries, state.model)
            mask = readable[..., : slot + 1]
            features = self.timed(lambda: self.head.step(embeds, features, positions, self.cache, slot, mask))
            q = self._distribution(state, features, committed[:, None] + level + 1)[:, 0]
        return chain(torch.stack(tokens, 1), torch.stack(qs, 1))

    def _dynamic(
        self, state: DecodeState, root: torch.Tensor, q_root: torch.Tensor, committed: torch.Tensor, depth: int
    ) -> DraftBlock:
        B, V = q_root.shape
        k = min(self.shape.top_k, V)
        dev = q_root.device
        scores, tokens = self._top_children(q_root, k)
        scores = scores - DEPTH_PENALTY
        cand_tokens, cand_scores = [tokens], [scores]
        cand_parents = [torch.full((B, k), -1, dtype=torch.long, device=dev)]
        frontier = torch.arange(k, device=dev).expand(B, -1)  # candidate index of each frontier node
        features = root[:, None].expand(-1, k, -1)
        ancestors = torch.zeros(B, k, 0, dtype=torch.bool, device=dev)  # fed slots each frontier node descends from
        fed = 0
        for level in range(1, depth):
            out = self._feed(state, tokens, features, committed[:, None] + level - 1, ancestors, fed)
            q = self._distribution(state, out, (committed[:, None] + level).expand(-1, k))
            child_scores, child_tokens = self._top_children(q, k)  # [B, k, k]
            child_scores = (scores[..., None] + child_scores - DEPTH_PENALTY).flatten(1)
            child_tokens = child_tokens.flatten(1)
            cand_tokens.append(child_tokens)
            cand_scores.append(child_scores)
            cand_parents.append(frontier.repeat_interleave(k, dim=1))
            scores, best = child_scores.topk(k, dim=-1)
            parent = torch.div(best, k, rounding_mode="floor")  # frontier position of each new node's parent
            frontier = sum(t.shape[1] for t in cand_tokens[:-1]) + best
            tokens = child_tokens.gather(1, best)
            inherited = ancestors.gather(1, parent[..., None].expand(-1, -1, fed))
            ancestors = torch.cat([inherited, torch.nn.functional.one_hot(parent, k).bool()], 2)
            features = out.gather(1, self._rows(parent)[..., None].expand(-1, -1, out.shape[-1]))
            fed += k
        all_tokens, all_scores = torch.cat(cand_tokens, 1), torch.cat(cand_scores, 1)
        all_parents = torch.cat(cand_parents, 1)
        levels = torch.cat([torch.full((t.shape[1],), i, device=dev) for i, t in enumerate(cand_tokens)])
        keep = min(self.shape.nodes, all_tokens.shape[1])
        kept_scores, chosen = all_scores.topk(keep, dim=-1)  # best first
        # Parent-first block order: by depth, best first among the nodes of a depth, so the sibling
        # tried first is the likeliest (and the one drafted deepest below).
        chosen = chosen.gather(1, levels[chosen].sort(dim=-1, stable=True).indices)
        position = torch.full_like(all_scores, -1, dtype=torch.long)
        position.scatter_(1, chosen, torch.arange(keep, device=dev).expand(B, -1))
        parent_cand = all_parents.gather(1, chosen)
        parents = torch.where(parent_cand < 0, -1, position.gather(1, parent_cand.clamp(min=0)))
        block_tokens = all_tokens.gather(1, chosen)
        # every node has at most k children (k candidates per expanded node, k roots);
        # siblings are distinct codes (top-k of one q, or the picks of distinct groups)
        return DraftBlock(
            block_tokens, point_mass(block_tokens, V), parents, max_depth=depth, max_children=k, picks=True
        )

    def _top_children(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` children of a node with draft ``q [..., V]`` and their log-probability scores.

        Without code groups: q's ``k`` likeliest tokens. With groups (a group-keeping policy such as
        clusters accepts a child with its whole group's target mass), siblings from one group
        would be tested against the same mass twice; so the children are the ``k`` likeliest
        *groups*, scored by the group's draft mass, each drafted as its likeliest code under q.
        That code is what an accepted group emits. Drawing it from q inside the group instead was
        measured worse: the one-layer demo head spreads its mass inside a group, so half-plausible
        codes (an edge patch of the wrong shape) were accepted on the group's mass (docs/benchmarks.md)."""
        logq = q.log().clamp(min=SCORE_FLOOR)
        if self.code_groups is None:
            return logq.topk(k, dim=-1)
        groups = self.code_groups.to(q.device).expand_as(q)
        group_q = torch.zeros_like(q).scatter_add_(-1, groups, q)  # group ids < V
        scores, picked = group_q.log().clamp(min=SCORE_FLOOR).topk(k, dim=-1)
        members = groups[..., None, :] == picked[..., None]  # [..., k, V]
        return scores, torch.where(members, logq[..., None, :], 10 * SCORE_FLOOR).argmax(-1)

    def _static(
        self, state: DecodeState, root: torch.Tensor, q_root: torch.Tensor, committed: torch.Tensor, depth: int
    ) -> DraftBlock:
        B, V = q_root.shape
        dev = q_root.device
        tokens_out, q_out = [], []
        q_parent, features_parent = q_root[:, None], root[:, None]  # the previous level (at first: the root)
        ancestors_parent = torch.zeros(B, 1, 0, dtype=torch.bool, device=dev)  # fed slots, each node included
        widths = tuple(min(width, V) for width in self.shape.branching[:depth])
        fed = 0
        for level, width in enumerate(widths):
            n = q_parent.shape[1]
            children, child_q = sample_children(q_parent, width, state.generator)  # [B, n, width]
            local = torch.arange(n).repeat_interleave(width)  # previous-level index of each child's parent
            tokens = children.flatten(1)
            tokens_out.append(tokens)
            q_out.append(child_q.flatten(1, 2))
            if level == depth - 1:
                break
            local_dev = local.to(dev)[None, :]
            ancestors = ancestors_parent.gather(1, local_dev[..., None].expand(B, -1, fed))
            features = features_parent.gather(
                1, self._rows(local_dev.expand(B, -1))[..., None].expand(-1, -1, features_parent.shape[-1])
            )
            out = self._feed(
                state, tokens, features, (committed[:, None] + level).expand(-1, n * width), ancestors, fed
            )
            eye = torch.eye(n * width, dtype=torch.bool, device=dev).expand(B, -1, -1)
            ancestors_parent = torch.cat([ancestors, eye], 2)
            fed += n * width
            features_parent = out
            q_parent = self._distribution(state, out, (committed[:, None] + level + 1).expand(-1, n * width))
        block_tokens = torch.cat(tokens_out, 1)
        return DraftBlock(block_tokens, torch.cat(q_out, 1), torch.tensor(static_parents(widths))[None].expand(B, -1))


def caption_entries(head: TreeHead, state: DecodeState) -> int:
    """How many caption entries open the head's sequences: its ``cls_token_num``, which the target's
    condition states (``state.condition_hidden``) must match in number, as in the head's training."""
    wanted = head.cfg.cls_token_num
    have = 0 if state.condition_hidden is None else int(state.condition_hidden.shape[1])
    if wanted and have != wanted:
        raise IncompatibleDrafterError(
            f"this tree head was trained on sequences that open with {wanted} caption entries (a LANTERN t2i "
            f"head), but target {state.model.name} gives {have} condition states before the image "
            f"(LlamaGen t2i with {wanted + 1} caption slots gives {wanted})"
        )
    return wanted


def branching_distribution(
    processor: DistributionProcessor, logits: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """A tree drafter's q ``[B, k, V]`` from raw logits ``[R, k, V]``: the processed distribution, or under
    greedy settings (whose point mass cannot branch) the softmax of the guided logits; any q keeps
    verification lossless."""
    if not processor.settings.greedy:
        return processor(logits, positions)
    guided = processor.guide(logits)
    if processor.constrain is not None:
        guided = processor.constrain(guided, positions)
    return torch.softmax(guided, dim=-1)


def sample_children(q: torch.Tensor, width: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``width`` distinct tokens per node drawn without replacement from ``q [B, n, V]`` (Gumbel top-k),
    with the q each was drawn from; tokens beyond q's support are fixed picks with a point-mass q."""
    gumbel = -torch.empty_like(q).exponential_(generator=generator).log()
    keys = torch.where(q > 0, q.log() + gumbel, SCORE_FLOOR * 10 + gumbel)
    children = keys.topk(width, dim=-1).indices  # [B, n, width]
    drawn = q.gather(-1, children) > 0
    child_q = torch.where(
        drawn[..., None], q[:, :, None, :].expand(-1, -1, width, -1), point_mass(children, q.shape[-1])
    )
    return children, child_q


def branching_label(branching: tuple[int, ...] | list[int], sep: str = "-", repeat: str = "x") -> str:
    """A static template for people: ``(2, 2, 1, 1, 1, 1)`` -> ``"2-2-1x4"`` (runs of three or more
    shortened); with ``sep=","`` and ``repeat="*"`` the form :meth:`TreeShape.parse_branching` reads."""
    parts: list[str] = []
    i = 0
    while i < len(branching):
        run = 1
        while i + run < len(branching) and branching[i + run] == branching[i]:
            run += 1
        parts += [f"{branching[i]}{repeat}{run}"] if run >= 3 else [str(branching[i])] * run
        i += run
    return sep.join(parts)


def pack_queue(chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Row ``r``'s first ``counts[r]`` states of every chunk ``(states [R, w, D], counts [R] host)`` in order,
    left-aligned in ``[R, total, D]`` (slots past a row's own total hold leftovers, never read)."""
    if len(chunks) == 1:
        return chunks[0][0]
    states = torch.cat([part for part, _ in chunks], 1)
    counts = torch.stack([count for _, count in chunks])  # [k, R]
    ends = counts.cumsum(0)
    offsets = torch.tensor([0] + [part.shape[1] for part, _ in chunks[:-1]]).cumsum(0)  # each chunk's first column
    slot = torch.arange(int(ends[-1].max()))
    chunk = (slot[None, None, :] >= ends[:, :, None]).sum(0).clamp(max=len(chunks) - 1)  # [R, total]
    before = (ends - counts).T.gather(1, chunk)  # states of earlier chunks in the row
    index = (offsets[chunk] + slot[None, :] - before).clamp(0, states.shape[1] - 1).to(states.device)
    return states.gather(1, index[..., None].expand(-1, -1, states.shape[-1]))


def static_parents(branching: tuple[int, ...]) -> list[int]:
    """Block parents of a static tree laid out level by level, each level in its parents' order:
    node ``i`` of a level has node ``i // branching[level]`` of the level above as its parent."""
    parents: list[int] = []
    above, count = [-1], 0
    for width in branching:
        level = [above[i // width] for i in range(len(above) * width)]
        parents += level
        above, count = list(range(count, count + len(level))), count + len(level)
    return parents


__all__ = [
    "TreeHeadDrafts",
    "TreeShape",
    "TREE_KINDS",
    "branching_distribution",
    "branching_label",
    "sample_children",
    "static_parents",
]
