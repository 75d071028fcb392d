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
from dataclasses import replace

import torch

from .policies.base import AcceptancePolicy, PolicyContext
from .sampling import DIVISOR_FLOOR, MASS_EPSILON, residual, sample
from .types import DraftBlock, TokenKind, Verdict


def _row(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``dist[b, index[b]]`` for ``dist [B, n, V]`` -> ``[B, V]``."""
    return dist.gather(1, index.view(-1, 1, 1).expand(-1, 1, dist.shape[-1])).squeeze(1)


@functools.lru_cache(maxsize=256)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    """``0, 1, ..., n - 1`` on ``device``, made once per length (the chain verification needs two every step)
    and never written to."""
    return torch.arange(n, device=device)


def _next_kind(limit: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    kind = torch.where(rejected, int(TokenKind.CORRECTED), int(TokenKind.BONUS))
    return torch.where(limit == 0, int(TokenKind.PLAIN), kind)


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
    limit: torch.Tensor,
    generator: torch.Generator,
    evidence: torch.Tensor | None = None,
) -> Verdict:
    """Verify a chain of ``n`` drafts against ``p [B, n + 1, V]``.

    ``positions [B, n]`` are the drafts' image-token indices; ``limit [B]`` caps how many drafts a
    row may accept (a row near its last token must not run past it). ``evidence [B, n + 1, V]``
    (every code's condition evidence, rows as ``p``) is handed to policies that read it.
    """
    B, n = block.tokens.shape
    dev = p.device
    if not n:
        return plain_step(p, generator)
    limit = limit.clamp(max=n)
    steps, rows = _arange(n, dev), _arange(B, dev)
    ctx = PolicyContext(positions, evidence=None if evidence is None else evidence[:, :n])
    alpha, diagnostics = policy.acceptance(p[:, :n], block.q, block.tokens, ctx)
    if not policy.lossless:
        alpha = _within_support(alpha, p[:, :n], block.tokens)
    u = torch.rand(B, n, generator=generator, device=dev)
    accepted = torch.minimum((u < alpha).cumprod(dim=1).sum(dim=1), limit)  # the longest accepted prefix
    rejected = accepted < limit
    p_next = p[rows, accepted]
    j = accepted.clamp(max=n - 1)  # the draft a correction replaces
    at_j = None if evidence is None else evidence[rows, j][:, None]
    ctx = PolicyContext(positions.gather(1, j[:, None]), evidence=at_j)
    corrected = policy.residual(p_next, block.q[rows, j], block.tokens[rows, j], ctx)
    if not policy.lossless:
        corrected = _on_support(corrected, p_next)
    next_dist = torch.where(rejected[:, None], corrected, p_next)
    path = torch.where(steps < accepted[:, None], steps, -1)
    return Verdict(accepted, path, sample(next_dist, generator), next_dist, _next_kind(limit, rejected), diagnostics)


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
    """
    B, n = block.tokens.shape
    dev, V = p.device, p.shape[-1]
    table, depth = layout if layout is not None else tree_tables(block.parents, block.max_depth, block.max_children)
    table = table.to(dev)
    max_depth = 0 if not n else block.max_depth if block.max_depth is not None else int(depth.max())
    limit = limit.clamp(max=max_depth)
    if block.picks and policy.lossless and n:
        return _verify_picks(p, block, table, depth.to(dev), max_depth, limit, generator)
    rows = torch.arange(B, device=dev)
    cur = torch.full((B,), -1, dtype=torch.long, device=dev)
    before = torch.full((B,), -2, dtype=torch.long, device=dev)  # cur's parent; -2: not in this block
    dist = p[:, 0].clone()
    dist_evidence = None if evidence is None else evidence[:, 0]  # evidence of the row dist comes from
    accepted = torch.zeros(B, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    rejected = torch.zeros(B, dtype=torch.bool, device=dev)
    path = torch.full((B, max_depth), -1, dtype=torch.long, device=dev)
    diagnostics: dict[str, torch.Tensor] = {}  # per level: the accepted node's values, else the last one tried
    for level in range(max_depth):
        kids = table[rows, cur + 1]  # [B, K]
        # the target's own distribution here, whose support relaxed policies keep to (the exact policy needs none)
        target = _row(p, cur + 1) if not policy.lossless else None
        moved = torch.zeros(B, dtype=torch.bool, device=dev)
        tried = torch.zeros(B, V, dtype=torch.bool, device=dev)
        open_rows = alive & (accepted < limit)
        for r in range(kids.shape[1]):
            child = kids[:, r]
            live = open_rows & ~moved & (child >= 0)
            node = child.clamp_min(0)
            x = block.tokens.gather(1, node[:, None])
            q = _row(block.q, node).masked_fill(tried, 0.0)
            q = q / q.sum(-1, keepdim=True).clamp_min(DIVISOR_FLOOR)
            ctx = PolicyContext(
                positions.gather(1, node[:, None]), evidence=None if dist_evidence is None else dist_evidence[:, None]
            )
            if hidden is not None and policy.needs_tree_states:
                ctx = _tree_context(ctx, hidden, block.tokens, kids, node, cur, before)
            alpha, info = policy.acceptance(dist[:, None], q[:, None], x, ctx)
            if not policy.lossless:
                alpha = _within_support(alpha, target[:, None], x)
            for name, values in info.items():
                slot = diagnostics.setdefault(name, torch.full((B, max_depth), float("nan"), device=dev))
                slot[:, level] = torch.where(live, values[:, 0].float(), slot[:, level])
            take = live & (torch.rand(B, generator=generator, device=dev) < alpha[:, 0])
            drop = live & ~take
            residual = policy.residual(dist, q, x[:, 0], ctx)
            if not policy.lossless:
                residual = _on_support(residual, target)
            dist = torch.where(drop[:, None], residual, dist)
            tried |= drop[:, None] & (torch.arange(V, device=dev)[None, :] == x)
            dist = torch.where(take[:, None], _row(p, node + 1), dist)
            if dist_evidence is not None:
                dist_evidence = torch.where(take[:, None], _row(evidence, node + 1), dist_evidence)
            before = torch.where(take, cur, before)
            cur = torch.where(take, node, cur)
            path[:, level] = torch.where(take, node, path[:, level])
            moved |= take
        had_children = open_rows & (kids[:, 0] >= 0)
        rejected |= had_children & ~moved
        accepted += moved.long()
        alive &= moved
    next_kind = _next_kind(limit, rejected)
    return Verdict(accepted, path, sample(dist, generator), dist, next_kind, diagnostics)


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
    """Add the tested node's state, its parent's, its grandparent's (NaN where that token is not
    in the block) and its siblings' (tokens and states) to ``ctx``."""

    def states(index: torch.Tensor) -> torch.Tensor:  # block index (-1: pending token) -> [B, ..., D]
        flat = (index + 1).reshape(index.shape[0], -1)
        picked = hidden.gather(1, flat[..., None].expand(-1, -1, hidden.shape[-1]))
        return picked.view(*index.shape, hidden.shape[-1])

    others = (kids >= 0) & (kids != node[:, None])
    siblings = torch.where(others, tokens.gather(1, kids.clamp(min=0)), -1)
    known = (grandparent >= -1)[:, None, None]
    grandparent_hidden = torch.where(known, states(grandparent.clamp(min=-1)[:, None]), float("nan"))
    return replace(
        ctx,
        hidden=states(node[:, None]),
        parent_hidden=states(parent[:, None]),
        grandparent_hidden=grandparent_hidden,
        siblings=siblings[:, None],
        sibling_hidden=states(kids.clamp(min=0))[:, None],
    )
