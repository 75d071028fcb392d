"""Shared verification: turns a policy's per-token rule into accepted paths and a next token.

Chains are verified in one vectorised pass (accept the longest prefix whose uniform draws fall
under the acceptance probabilities). Trees use recursive rejection over siblings (SpecInfer,
arXiv 2305.09781; EAGLE): try the children of the current node in block order; after each
rejection the target distribution becomes the policy's residual and the tried token is removed
from the sibling draft distribution; the first accepted child becomes the current node.
Both are lossless with :class:`~specar.policies.ExactPolicy`. A tree of fixed picks (point-mass
drafts, distinct siblings: a dynamic tree) under that policy takes a shortcut with the same outcome
distribution: trying point-mass siblings in turn with residualisation accepts sibling ``x`` with
probability ``p(x)``, exactly as drawing one token from ``p`` and following the sibling that equals
it; so one draw per node from the target, in one batched call, and the path of drafts that match
them replace the loop over levels and siblings.

``p[:, 0]`` is always the target distribution for the first drafted position (the output row of
the pending token) and ``p[:, i + 1]`` the distribution after block node ``i``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import torch

from .policies.base import AcceptancePolicy, PolicyContext
from .policies.exact import exact_ratio
from .sampling import DIVISOR_FLOOR, MASS_EPSILON, residual, residual_weights, sample
from .types import DraftBlock, TokenKind, Verdict


def _row(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``dist[b, index[b]]`` for ``dist [B, n, V]`` -> ``[B, V]``."""
    return dist.gather(1, index.view(-1, 1, 1).expand(-1, 1, dist.shape[-1])).squeeze(1)


@functools.lru_cache(maxsize=256)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    """``0, 1, ..., n - 1`` on ``device``, made once per length (the chain verification needs two every step)
    and never written to."""
    return torch.arange(n, device=device)


def _next_kind(limit: torch.Tensor | None, rejected: torch.Tensor) -> torch.Tensor:
    kind = torch.where(rejected, int(TokenKind.CORRECTED), int(TokenKind.BONUS))
    return kind if limit is None else torch.where(limit == 0, int(TokenKind.PLAIN), kind)


def plain_step(p: torch.Tensor, generator: torch.Generator, zeros: torch.Tensor | None = None) -> Verdict:
    """Nothing drafted: plain AR's step, its token drawn from the pending token's distribution ``p[:, 0]``.

    ``zeros [B]`` (long) may be handed in to be reused: nothing accepted, and the next kind PLAIN (0)."""
    if zeros is None:
        zeros = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
    first = p[:, 0]
    return Verdict(zeros, zeros[:, None][:, :0], sample(first, generator), first, zeros)


def verify_chain(
    policy: AcceptancePolicy,
    p: torch.Tensor,
    block: DraftBlock,
    positions: torch.Tensor,
    limit: torch.Tensor | None,
    generator: torch.Generator,
    evidence: torch.Tensor | None = None,
) -> Verdict:
    """Verify a chain of ``n`` drafts against ``p [B, n + 1, V]``.

    ``positions [B, n]`` are the drafts' image-token indices; ``limit [B]`` caps how many drafts a
    row may accept (a row near its last token must not run past it), ``None`` when every row may
    accept all ``n`` (most steps: the caps then cost no tensor operations). ``evidence [B, n + 1, V]``
    (every code's condition evidence, rows as ``p``) is handed to policies that read it.
    """
    B, n = block.tokens.shape
    dev = p.device
    if not n:
        return plain_step(p, generator)
    limit = None if limit is None else limit.clamp(max=n)
    steps, rows = _arange(n, dev), _arange(B, dev)
    ctx = PolicyContext(positions, evidence=None if evidence is None else evidence[:, :n])
    alpha, diagnostics = policy.acceptance(p[:, :n], block.q, block.tokens, ctx)
    if not policy.lossless:
        alpha = _within_support(alpha, p[:, :n], block.tokens)
    u = torch.rand(B, n, generator=generator, device=dev)
    passed = u < alpha
    accepted = passed.cumprod(dim=1).sum(dim=1)  # the longest accepted prefix
    if limit is None:
        rejected = accepted < n
    else:
        accepted = torch.minimum(accepted, limit)
        rejected = accepted < limit
    path = torch.where(steps < accepted[:, None], steps, -1)
    kind = _next_kind(limit, rejected)
    if block.redrawn:
        # Coupling a draft with its new distribution takes the exact test's outcome on the same uniform
        slot_passed = passed if policy.lossless else u < exact_ratio(p[:, :n], block.q, block.tokens)
        draws = _slot_draws(p, block, accepted, rejected, limit, generator)
        next_token = draws.gather(1, accepted[:, None])[:, 0]
        if not policy.lossless:  # a rejected row's correction comes from the policy's own residual
            j = accepted.clamp(max=n - 1)
            corrected = _correction(policy, p[rows, j], block, j, positions, evidence)
            next_token = torch.where(rejected, sample(corrected, generator), next_token)
        return Verdict(accepted, path, next_token, None, kind, diagnostics, draws, slot_passed)
    p_next = p[rows, accepted]
    j = accepted.clamp(max=n - 1)  # the draft a correction replaces
    corrected = _correction(policy, p_next, block, j, positions, evidence)
    next_dist = torch.where(rejected[:, None], corrected, p_next)
    return Verdict(accepted, path, sample(next_dist, generator), next_dist, kind, diagnostics)


def _correction(
    policy: AcceptancePolicy,
    target: torch.Tensor,
    block: DraftBlock,
    j: torch.Tensor,
    positions: torch.Tensor,
    evidence: torch.Tensor | None,
) -> torch.Tensor:
    """The distribution ``[B, V]`` a correction of each row's draft ``j [B]`` is drawn from, where the target
    says ``target [B, V]`` (the policy's residual, kept to the target's support under a relaxed policy)."""
    rows = _arange(len(j), j.device)
    at_j = None if evidence is None else evidence[rows, j][:, None]
    ctx = PolicyContext(positions.gather(1, j[:, None]), evidence=at_j)
    corrected = policy.residual(target, block.q[rows, j], block.tokens[rows, j], ctx)
    return corrected if policy.lossless else _on_support(corrected, target)


def _slot_draws(
    p: torch.Tensor,
    block: DraftBlock,
    accepted: torch.Tensor,
    rejected: torch.Tensor,
    limit: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """A draw at every slot of a ``redrawn`` chain (:class:`~specar.types.Verdict`'s ``slot_draws [B, n + 1]``)
    from ``norm(max(0, p - q))``, which a coupled draft takes where its exact test failed: the next window's
    drafts, and under the exact policy each row's next token too, the draw at ``accepted``. A rejected slot's
    draw is a correction from its residual, as after one draw there; a row that accepted every draft takes the
    last slot's draw, from ``p``; a row stopped by its ``limit`` takes its bonus from ``p`` at that slot, which
    replaces the residual there."""
    n = block.tokens.shape[1]
    slots = _arange(n + 1, p.device)
    dist = torch.cat([residual_weights(p[:, :n], block.q), p[:, n:]], 1)  # [B, n + 1, V]
    if limit is not None:
        stopped = (accepted < n) & ~rejected  # by its limit, at an untested draft: its bonus comes from p there
        if not _nothing_left(stopped):
            dist = torch.where(((slots == accepted[:, None]) & stopped[:, None])[..., None], p, dist)
    return sample(dist, generator)


def _within_support(alpha: torch.Tensor, p: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Acceptance ``alpha [B, m]`` with drafts the target's processed distribution ``p [B, m, V]`` gives no
    probability (outside the user's top-k or top-p, or a forbidden code) never accepted: a relaxed policy
    may move mass between look-alike codes, never onto codes the sampling settings exclude."""
    return torch.where(p.gather(-1, tokens[..., None]).squeeze(-1) > 0, alpha, 0.0)


def _on_support(dist: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A relaxed policy's correction distribution ``[B, V]`` kept to the support of the target's ``p [B, V]``
    and renormalised (``p`` itself where nothing is left)."""
    kept = torch.where(p > 0, dist, 0.0)
    mass = kept.sum(-1, keepdim=True)
    return torch.where(mass > MASS_EPSILON, kept / mass.clamp_min(DIVISOR_FLOOR), p)


def tree_tables(
    parents: torch.Tensor, max_depth: int | None = None, max_children: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row children tables ``[B, n + 1, K]`` (row 0: children of the root, row i + 1: children
    of node i, in block order, padded with -1) and node depths ``[B, n]`` (1-based) for
    ``parents [B, n]``. Parents must precede children.

    Host parents are checked and measured. Device parents come with upper bounds on the depth
    and the children per node (``K = max_children``) and are used as they are, without a sync.
    """
    B, n = parents.shape
    dev = parents.device
    node = torch.arange(n, device=dev)
    if max_depth is None or max_children is None:
        if bool(((parents < -1) | (parents >= node[None, :])).any()):
            bad = int(((parents < -1) | (parents >= node[None, :])).nonzero()[0, 1])
            raise ValueError(f"tree node {bad} has parent {parents[:, bad].tolist()}; parents must come first")
    depth = _depths(parents, max_depth)
    same_parent = (parents[:, :, None] == parents[:, None, :]) & (node[None, None, :] < node[None, :, None])
    rank = same_parent.sum(-1)  # [B, n]: how many earlier siblings each node has
    width = max_children if max_children is not None else (int(rank.max()) + 1 if n else 1)
    table = torch.full((B, n + 1, width), -1, dtype=torch.long, device=dev)
    rows = torch.arange(B, device=dev)[:, None].expand(B, n)
    table[rows, parents + 1, rank.clamp(max=width - 1)] = node[None, :].expand(B, n)
    return table, depth


def _ancestor_steps(parents: torch.Tensor, max_depth: int | None) -> int:
    """How many parent-chain steps reach every root: the bound when given (device parents, no
    read), else the host tree's own depth, found by walking it."""
    if max_depth is not None:
        return max_depth
    steps, ancestor = 0, parents
    while bool((ancestor >= 0).any()):
        ancestor = torch.where(ancestor >= 0, parents.gather(1, ancestor.clamp(min=0)), -1)
        steps += 1
    return steps + 1


def _depths(parents: torch.Tensor, max_depth: int | None) -> torch.Tensor:
    """1-based node depths, by following every node's parent chain up to ``max_depth`` steps at once."""
    depth = torch.ones_like(parents)
    ancestor = parents
    for _ in range(max(_ancestor_steps(parents, max_depth) - 1, 0)):
        above = ancestor >= 0
        depth = depth + above.long()
        ancestor = torch.where(above, parents.gather(1, ancestor.clamp(min=0)), -1)
    return depth


def tree_attention_rows(parents: torch.Tensor, max_depth: int | None = None) -> torch.Tensor:
    """Masks ``[B, n + 1, n + 1]`` over ``[pending token, nodes...]``: each attends to its ancestors
    and itself (the pending token is every node's ancestor). ``max_depth`` bounds the tree's
    depth (needed for device parents; host parents are measured)."""
    B, n = parents.shape
    dev = parents.device
    mask = torch.zeros(B, n + 1, n + 1, dtype=torch.bool, device=dev)
    mask[:, :, 0] = True
    index = torch.arange(1, n + 1, device=dev)
    mask[:, index, index] = True
    rows = torch.arange(B, device=dev)[:, None].expand(B, n)
    ancestor = parents
    for _ in range(_ancestor_steps(parents, max_depth)):
        mask[rows, index[None, :].expand(B, n), ancestor + 1] = True  # ancestor -1 marks column 0: always set
        ancestor = torch.where(ancestor >= 0, parents.gather(1, ancestor.clamp(min=0)), -1)
    return mask


TreeLayout = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A block's children table and node depths (:func:`tree_tables`) and attention mask (:func:`tree_attention_rows`)."""


def block_tree_layout(parents: torch.Tensor, max_depth: int | None, max_children: int | None) -> TreeLayout:
    """:func:`tree_tables` and :func:`tree_attention_rows` of a block's ``parents [B, n]``. Host parents
    (a static tree's, the same every step) are laid out once and then looked up, as they are a few dozen
    small tensor operations per depth level; device parents are laid out every time (reading them to make a
    key would be a host sync). The returned tensors are shared: read them, never write to them."""
    if parents.device.type != "cpu" or (max_depth is not None and max_children is not None):
        return (*tree_tables(parents, max_depth, max_children), tree_attention_rows(parents, max_depth))
    return _host_tree_layout(tuple(parents.shape), parents.contiguous().numpy().tobytes())


@functools.lru_cache(maxsize=32)
def _host_tree_layout(shape: tuple[int, ...], parents: bytes) -> TreeLayout:
    tree = torch.frombuffer(bytearray(parents), dtype=torch.long).view(shape)
    return (*tree_tables(tree), tree_attention_rows(tree))


def tree_layout(parents: list[int]) -> tuple[torch.Tensor, list[int]]:
    """:func:`tree_tables` for one tree given as a list: children table ``[n + 1, K]`` and depths."""
    table, depth = tree_tables(torch.tensor(parents, dtype=torch.long).reshape(1, -1))
    return table[0], depth[0].tolist()


def tree_attention(parents: list[int]) -> torch.Tensor:
    """:func:`tree_attention_rows` for one tree given as a list: ``[n + 1, n + 1]``."""
    return tree_attention_rows(torch.tensor(parents, dtype=torch.long).reshape(1, -1))[0]


def verify_tree(
    policy: AcceptancePolicy,
    p: torch.Tensor,
    block: DraftBlock,
    positions: torch.Tensor,
    limit: torch.Tensor,
    generator: torch.Generator,
    hidden: torch.Tensor | None = None,
    layout: tuple[torch.Tensor, torch.Tensor] | None = None,
    evidence: torch.Tensor | None = None,
) -> Verdict:
    """Recursive rejection sampling over a draft tree; ``p [B, n + 1, V]`` as described above.

    ``hidden [B, n + 1, D]`` (target states after the pending token and after every node) is
    handed to policies that judge nodes by them (``needs_tree_states``), ``evidence [B, n + 1, V]``
    (every code's condition evidence, rows as ``p``) to those that read it; ``layout`` is
    :func:`tree_tables` of the block when the caller already has it.

    Siblings are tried in block order. Each is tested against the current (residualised) target
    with its draft distribution renormalised without the siblings already tried, which keeps the
    scheme exact for point-mass siblings and for siblings sampled without replacement alike.
    Levels below the last node with two or more children (a static tree's long single-child tails)
    are tested in one vectorised pass. On a CPU, where reading a value costs no wait, the walk skips
    work no row needs, and a run of levels at which every row takes its current node's first child
    is tested in one pass too. All keep the draws and outcomes of the full walk.
    """
    B, n = block.tokens.shape
    dev = p.device
    table, depth = layout if layout is not None else tree_tables(block.parents, block.max_depth, block.max_children)
    max_depth = 0 if not n else block.max_depth if block.max_depth is not None else int(depth.max())
    tail = _single_child_levels(table, depth, max_depth) if not block.bounded else 0
    table = table.to(dev)
    limit = limit.clamp(max=max_depth)
    if block.picks and policy.lossless and n:
        return _verify_picks(p, block, table, depth.to(dev), max_depth, limit, generator)
    walk = _Walk(
        cur=torch.full((B,), -1, dtype=torch.long, device=dev),
        before=torch.full((B,), -2, dtype=torch.long, device=dev),
        dist=p[:, 0].clone(),
        dist_evidence=None if evidence is None else evidence[:, 0],
        accepted=torch.zeros(B, dtype=torch.long, device=dev),
        alive=torch.ones(B, dtype=torch.bool, device=dev),
        rejected=torch.zeros(B, dtype=torch.bool, device=dev),
        path=torch.full((B, max_depth), -1, dtype=torch.long, device=dev),
    )
    # The walk's draws, one per level, child slot and row, taken at once whatever the walk ends up testing
    draws = torch.rand(max_depth, table.shape[-1], B, generator=generator, device=dev)
    tree = _Tree(policy, p, block, positions, limit, draws, hidden, table, evidence)
    level, tail_start = 0, max_depth - tail
    while level < max_depth and not _nothing_left(walk.alive & (walk.accepted < limit)):
        if level == tail_start:
            _chain_tail(walk, level, tree)
            break
        level += _first_children(walk, level, tail_start, tree)
        if level < tail_start:
            _walk_level(walk, level, tree)
            level += 1
    next_kind = _next_kind(limit, walk.rejected)
    return Verdict(walk.accepted, walk.path, sample(walk.dist, generator), walk.dist, next_kind, walk.diagnostics)


@dataclass(frozen=True)
class _Tree:
    """What every level of one tree's verification reads (the arguments of :func:`verify_tree`)."""

    policy: AcceptancePolicy
    p: torch.Tensor  # [B, n + 1, V]
    block: DraftBlock
    positions: torch.Tensor  # [B, n]
    limit: torch.Tensor  # [B]
    draws: torch.Tensor  # [max_depth, K, B] uniforms: one per level, child slot and row
    hidden: torch.Tensor | None  # [B, n + 1, D]
    table: torch.Tensor  # [B, n + 1, K] children
    evidence: torch.Tensor | None  # [B, n + 1, V]


@dataclass
class _Walk:
    """Where each row's recursive rejection stands: its current node ``cur`` (-1: the pending token) and
    that node's parent ``before`` (-2: not in this block), the distribution the next child is tested
    against and the evidence of the row it came from, and what was accepted so far."""

    cur: torch.Tensor  # [B]
    before: torch.Tensor  # [B]
    dist: torch.Tensor  # [B, V]
    dist_evidence: torch.Tensor | None  # [B, V]
    accepted: torch.Tensor  # [B]
    alive: torch.Tensor  # [B]: every level so far accepted a child
    rejected: torch.Tensor  # [B]: the walk ended on a rejected child
    path: torch.Tensor  # [B, max_depth]
    # per level: the accepted node's values, else those of the last node tried
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, info: dict[str, torch.Tensor], levels: slice, tested: torch.Tensor) -> None:
        """Keep ``info`` values ``[B, m]`` of the nodes tested (``tested [B, m]``) at ``levels``."""
        B, depth = self.path.shape
        for name, values in info.items():
            slot = self.diagnostics.setdefault(name, torch.full((B, depth), float("nan"), device=self.path.device))
            slot[:, levels] = torch.where(tested, values.float(), slot[:, levels])


def _nothing_left(rows: torch.Tensor) -> bool:
    """Whether no row of ``rows [B]`` (bool) is set, read only where that costs no wait for a device: on a
    CPU. Elsewhere the walk goes on through work that changes nothing rather than sync the host."""
    return rows.device.type == "cpu" and not bool(rows.any())


def _single_child_levels(table: torch.Tensor, depth: torch.Tensor, max_depth: int) -> int:
    """How many of a tree's last levels pick among at most one child in every row: the levels below its
    deepest node with two or more children. Read off the host's children table (no device value)."""
    if table.shape[-1] < 2:
        return max_depth
    node_depth = torch.cat([torch.zeros_like(depth[:, :1]), depth], 1)  # table rows: the root, then the nodes
    branching = table[..., 1] >= 0
    return max_depth - (int(node_depth[branching].max()) + 1 if bool(branching.any()) else 0)


def _walk_level(walk: _Walk, level: int, tree: _Tree) -> None:
    """Try the children of every row's current node in block order, one draw each, until one is accepted."""
    B, V = walk.dist.shape
    dev = tree.p.device
    rows = torch.arange(B, device=dev)
    kids = tree.table[rows, walk.cur + 1]  # [B, K]
    # the target's own distribution here, whose support relaxed policies keep to (the exact policy needs none)
    target = _row(tree.p, walk.cur + 1) if not tree.policy.lossless else None
    moved = torch.zeros(B, dtype=torch.bool, device=dev)
    tried = torch.zeros(B, V, dtype=torch.bool, device=dev)
    open_rows = walk.alive & (walk.accepted < tree.limit)
    draws = tree.draws[level]  # [K, B]
    for r in range(kids.shape[1]):
        child = kids[:, r]
        live = open_rows & ~moved & (child >= 0)
        if _nothing_left(live):  # no row tests this slot: its test would change nothing
            continue
        node = child.clamp_min(0)
        x = tree.block.tokens.gather(1, node[:, None])
        q = _row(tree.block.q, node).masked_fill(tried, 0.0)
        q = q / q.sum(-1, keepdim=True).clamp_min(DIVISOR_FLOOR)
        evidence_here = None if walk.dist_evidence is None else walk.dist_evidence[:, None]
        ctx = PolicyContext(tree.positions.gather(1, node[:, None]), evidence=evidence_here)
        if tree.hidden is not None and tree.policy.needs_tree_states:
            family = (node[:, None], walk.cur[:, None], walk.before[:, None])  # the node, its parent and grandparent
            ctx = _tree_context(ctx, tree.hidden, tree.block.tokens, kids[:, None], *family)
        alpha, info = tree.policy.acceptance(walk.dist[:, None], q[:, None], x, ctx)
        if not tree.policy.lossless:
            alpha = _within_support(alpha, target[:, None], x)
        walk.record(info, slice(level, level + 1), live[:, None])
        take = live & (draws[r] < alpha[:, 0])
        drop = live & ~take
        if not _nothing_left(drop):  # a rejection here: the next sibling faces the residual
            residual = tree.policy.residual(walk.dist, q, x[:, 0], ctx)
            if not tree.policy.lossless:
                residual = _on_support(residual, target)
            walk.dist = torch.where(drop[:, None], residual, walk.dist)
            tried |= drop[:, None] & (torch.arange(V, device=dev)[None, :] == x)
        walk.dist = torch.where(take[:, None], _row(tree.p, node + 1), walk.dist)
        if walk.dist_evidence is not None:
            walk.dist_evidence = torch.where(take[:, None], _row(tree.evidence, node + 1), walk.dist_evidence)
        walk.before = torch.where(take, walk.cur, walk.before)
        walk.cur = torch.where(take, node, walk.cur)
        walk.path[:, level] = torch.where(take, node, walk.path[:, level])
        moved |= take
        if _nothing_left(open_rows & ~moved):  # every row has moved on: the slots left would test nothing
            break
    had_children = open_rows & (kids[:, 0] >= 0)
    walk.rejected |= had_children & ~moved
    walk.accepted += moved.long()
    walk.alive &= moved


@dataclass(frozen=True)
class _ChainTests:
    """The tests of a run of first children: from each row's current node down its chain of first children,
    ``T`` levels, every node tested as the walk tests a level's first child (``[B, T]`` unless noted)."""

    nodes: torch.Tensor  # block indices; -1 from where a row's chain ends
    dist: torch.Tensor  # [B, T, V]: the target after each node's parent
    q: torch.Tensor  # [B, T, V]: each node's draft distribution
    x: torch.Tensor  # the nodes' tokens
    ctx: PolicyContext
    info: dict[str, torch.Tensor]  # the policy's per-node values
    taken: torch.Tensor  # bool: tested and accepted, and so was every node above
    tested: torch.Tensor  # bool: reached by the walk (every node above taken) and within the row's limit

    @property
    def count(self) -> torch.Tensor:
        """``[B]``: how many levels each row's walk goes down."""
        return self.taken.sum(1)


def _test_chain(walk: _Walk, first_level: int, levels: int, tree: _Tree) -> _ChainTests:
    """Test ``levels`` levels of first children from ``first_level`` in one pass.

    Why each test is the walk's: a level's first child is tested against the target's own distribution after
    its parent, as no sibling was tried before it, so every node's test on the chain is known before any is
    decided; each takes its level's draw for child slot 0."""
    B, V = walk.dist.shape
    K = tree.table.shape[-1]
    first_child = tree.table[..., 0]  # [B, n + 1]: the first child of the root and of each node
    chain, above = [], walk.cur
    for _ in range(levels):
        above = first_child.gather(1, (above + 1).clamp(min=0)[:, None])[:, 0]
        chain.append(above)
    nodes = torch.stack(chain, 1)  # [B, T]
    exists = (nodes >= 0).cumprod(1).bool()
    nodes = torch.where(exists, nodes, -1)
    node = nodes.clamp(min=0)
    parent = torch.cat([walk.cur[:, None], nodes[:, :-1]], 1)
    x = tree.block.tokens.gather(1, node)
    q = tree.block.q.gather(1, node[..., None].expand(-1, -1, V))
    q = q / q.sum(-1, keepdim=True).clamp_min(DIVISOR_FLOOR)
    here = (parent + 1).clamp(min=0)[..., None].expand(-1, -1, V)
    dist = tree.p.gather(1, here)
    evidence = None if tree.evidence is None else tree.evidence.gather(1, here)
    ctx = PolicyContext(tree.positions.gather(1, node), evidence=evidence)
    if tree.hidden is not None and tree.policy.needs_tree_states:
        kids = tree.table.gather(1, (parent + 1).clamp(min=0)[..., None].expand(-1, -1, K))
        grandparent = torch.cat([walk.before[:, None], parent[:, :-1]], 1)
        ctx = _tree_context(ctx, tree.hidden, tree.block.tokens, kids, node, parent, grandparent)
    alpha, info = tree.policy.acceptance(dist, q, x, ctx)
    if not tree.policy.lossless:
        alpha = _within_support(alpha, dist, x)
    steps = torch.arange(levels, device=nodes.device)
    u = tree.draws[first_level : first_level + levels, 0].t()  # [B, T]: each level's draw for its first child
    open_rows = walk.alive & (walk.accepted < tree.limit)
    testable = open_rows[:, None] & exists & (walk.accepted[:, None] + steps < tree.limit[:, None])
    taken = (testable & (u < alpha)).cumprod(1).bool()
    tested = testable & torch.cat([torch.ones_like(taken[:, :1]), taken[:, :-1]], 1)
    return _ChainTests(nodes, dist, q, x, ctx, info, taken, tested)


def _chain_tail(walk: _Walk, first_level: int, tree: _Tree) -> None:
    """The walk's levels from ``first_level`` on, where every node has at most one child: each row's path
    goes on down its current node's chain of only children, tested as a chain (the longest prefix whose
    draws fall under the acceptance), with the residual taken at the first rejected node."""
    depth = walk.path.shape[1]
    T = depth - first_level
    chain = _test_chain(walk, first_level, T, tree)
    walk.record(chain.info, slice(first_level, depth), chain.tested)
    count = chain.count
    dropped = (chain.tested & ~chain.taken).any(1)
    last = chain.nodes.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0]
    walk.dist = torch.where((count > 0)[:, None], _row(tree.p, last + 1), walk.dist)
    if not _nothing_left(dropped):  # a rejection: its row's next token comes from the residual there
        stop = count.clamp(max=T - 1)[:, None]  # the first node not taken
        at_stop = PolicyContext(**{name: _at(value, stop) for name, value in vars(chain.ctx).items()})
        p_stop = _at(chain.dist, stop)[:, 0]
        x_stop = chain.x.gather(1, stop)[:, 0]
        residual = tree.policy.residual(p_stop, _at(chain.q, stop)[:, 0], x_stop, at_stop)
        if not tree.policy.lossless:
            residual = _on_support(residual, p_stop)
        walk.dist = torch.where(dropped[:, None], residual, walk.dist)
    walk.path[:, first_level:] = torch.where(chain.taken, chain.nodes, walk.path[:, first_level:])
    walk.rejected |= dropped
    walk.accepted += count
    walk.alive &= count == T


def _first_children(walk: _Walk, level: int, end: int, tree: _Tree) -> int:
    """On a CPU: the number of levels from ``level`` (before ``end``) at which every open row's walk takes its
    current node's first child, found in one pass (:func:`_test_chain`); the walk is moved down them.
    Elsewhere 0 (finding it means reading a device value). A tree whose first children are mostly accepted (a
    dynamic tree puts its likeliest child first) is then walked sibling by sibling only where one is rejected."""
    if not walk.dist.is_cpu or end - level < 2:
        return 0
    open_rows = walk.alive & (walk.accepted < tree.limit)
    chain = _test_chain(walk, level, end - level, tree)
    levels = int(chain.count[open_rows].min())
    if not levels:
        return 0
    taken = chain.taken[:, :levels]  # every open row's, and no other row's
    last = chain.nodes[:, levels - 1]
    walk.dist = torch.where(open_rows[:, None], _row(tree.p, last + 1), walk.dist)
    if walk.dist_evidence is not None:
        walk.dist_evidence = torch.where(open_rows[:, None], _row(tree.evidence, last + 1), walk.dist_evidence)
    parent = chain.nodes[:, levels - 2] if levels > 1 else walk.cur
    walk.before = torch.where(open_rows, parent, walk.before)
    walk.cur = torch.where(open_rows, last, walk.cur)
    down = slice(level, level + levels)
    walk.record({name: values[:, :levels] for name, values in chain.info.items()}, down, taken)
    walk.path[:, down] = torch.where(taken, chain.nodes[:, :levels], walk.path[:, down])
    walk.accepted += levels * open_rows.long()
    return levels


def _at(value: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """``value [B, T, ...]`` at one node per row, ``index [B, 1]`` -> ``[B, 1, ...]``."""
    if value is None:
        return None
    return value.gather(1, index.view(index.shape[0], 1, *[1] * (value.dim() - 2)).expand(-1, 1, *value.shape[2:]))


def _verify_picks(
    p: torch.Tensor,
    block: DraftBlock,
    table: torch.Tensor,
    depth: torch.Tensor,
    max_depth: int,
    limit: torch.Tensor,
    generator: torch.Generator,
) -> Verdict:
    """Exact verification of a tree of fixed picks (module doc): draw ``y`` from ``p`` at every node,
    accept the nodes whose token equals the draw at their parent and whose ancestors were all
    accepted (at most one child matches, siblings being distinct), up to ``limit``. The draw at the
    deepest accepted node is the next token: a bonus where it has no children within the limit, else a
    correction, whose distribution is ``p`` there without its children's tokens."""
    B, n = block.tokens.shape
    parents = block.parents.to(p.device)
    drawn = sample(p, generator)  # [B, n + 1]: row 0 after the pending token, row i + 1 after node i
    match = (block.tokens == drawn.gather(1, parents + 1)) & (depth <= limit[:, None])
    on_path = match & (parents < 0)
    for _ in range(max_depth - 1):  # each pass settles one more level: a node needs its parent on the path
        on_path = match & ((parents < 0) | on_path.gather(1, parents.clamp(min=0)))
    accepted = on_path.sum(1)
    node = torch.arange(n, device=p.device)
    deepest = torch.where(on_path & (depth == accepted[:, None]), node, -1).amax(1)  # -1: none accepted
    path = torch.full((B, max_depth + 1), -1, dtype=torch.long, device=p.device)
    path.scatter_(1, torch.where(on_path, depth - 1, max_depth), node.expand(B, n))
    rows = deepest + 1
    children = table.gather(1, rows.view(-1, 1, 1).expand(-1, 1, table.shape[-1]))[:, 0]  # [B, K]
    rejected = (children[:, 0] >= 0) & (accepted < limit)
    here = _row(p, rows)
    child_tokens = block.tokens.gather(1, children.clamp(min=0))  # padding slots repeat the first child
    tried = torch.zeros_like(here).scatter_(1, torch.where(children >= 0, child_tokens, child_tokens[:, :1]), 1.0)
    corrected = residual(here, tried)  # p without the children's tokens
    next_dist = torch.where(rejected[:, None], corrected, here)
    next_token = drawn.gather(1, rows[:, None])[:, 0]
    return Verdict(accepted, path[:, :max_depth], next_token, next_dist, _next_kind(limit, rejected))


def _tree_context(
    ctx: PolicyContext,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    kids: torch.Tensor,
    node: torch.Tensor,
    parent: torch.Tensor,
    grandparent: torch.Tensor,
) -> PolicyContext:
    """Add the tested nodes' states ``node [B, m]``, their parents', their grandparents' (NaN where that
    token is not in the block: index -2) and their siblings' (tokens and states; ``kids [B, m, K]`` are
    the parents' children) to ``ctx``. Index -1 is the pending token."""

    def states(index: torch.Tensor) -> torch.Tensor:  # block index (-1: pending token) -> [B, ..., D]
        flat = (index + 1).reshape(index.shape[0], -1)
        picked = hidden.gather(1, flat[..., None].expand(-1, -1, hidden.shape[-1]))
        return picked.view(*index.shape, hidden.shape[-1])

    others = (kids >= 0) & (kids != node[..., None])
    siblings = torch.where(others, tokens.gather(1, kids.clamp(min=0).flatten(1)).view(kids.shape), -1)
    known = (grandparent >= -1)[..., None]
    grandparent_hidden = torch.where(known, states(grandparent.clamp(min=-1)), float("nan"))
    return replace(
        ctx,
        hidden=states(node),
        parent_hidden=states(parent),
        grandparent_hidden=grandparent_hidden,
        siblings=siblings,
        sibling_hidden=states(kids.clamp(min=0)),
    )
