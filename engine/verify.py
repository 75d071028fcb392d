"""Shared verification: turns a policy's per-token rule into accepted paths and a next token.

Chains are verified in one vectorised pass (accept the longest prefix whose uniform draws fall
under the acceptance probabilities). Trees use recursive rejection over siblings (SpecInfer,
arXiv 2305.09781; EAGLE): try the children of the current node in block order; after each
rejection the target distribution becomes the policy's residual and the tried token is removed
from the sibling draft distribution; the first accepted child becomes the current node.
Both are lossless with :class:`~engine.policies.ExactPolicy`.

``p[:, 0]`` is always the target distribution for the first drafted position (the output row of
the pending token) and ``p[:, i + 1]`` the distribution after block node ``i``.
"""

from __future__ import annotations

import torch

from .policies.base import AcceptancePolicy, PolicyContext
from .sampling import sample
from .types import DraftBlock, TokenKind, Verdict


def _row(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``dist[b, index[b]]`` for ``dist [B, n, V]`` -> ``[B, V]``."""
    return dist.gather(1, index.view(-1, 1, 1).expand(-1, 1, dist.shape[-1])).squeeze(1)


def _next_kind(limit: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    plain = torch.full_like(limit, int(TokenKind.PLAIN))
    kind = torch.where(rejected, int(TokenKind.CORRECTED), int(TokenKind.BONUS))
    return torch.where(limit == 0, plain, kind)


def verify_chain(policy: AcceptancePolicy, p: torch.Tensor, block: DraftBlock, positions: torch.Tensor,
                 limit: torch.Tensor, generator: torch.Generator) -> Verdict:
    """Verify a chain of ``n`` drafts against ``p [B, n + 1, V]``.

    ``positions [B, n]`` are the drafts' image-token indices; ``limit [B]`` caps how many drafts a
    row may accept (a row near its last token must not run past it).
    """
    B, n = block.tokens.shape
    dev = p.device
    limit = limit.clamp(max=n)
    steps = torch.arange(n, device=dev)
    diagnostics: dict[str, torch.Tensor] = {}
    if n:
        alpha, diagnostics = policy.acceptance(p[:, :n], block.q, block.tokens, PolicyContext(positions))
        u = torch.rand(B, n, generator=generator, device=dev)
        ok = (u < alpha) & (steps[None, :] < limit[:, None])
        accepted = ok.long().cumprod(dim=1).sum(dim=1)
    else:
        accepted = torch.zeros(B, dtype=torch.long, device=dev)
    rejected = accepted < limit
    p_next = _row(p, accepted)
    if n:
        j = accepted.clamp(max=n - 1)
        ctx = PolicyContext(positions.gather(1, j[:, None]))
        corrected = policy.residual(p_next, _row(block.q, j), block.tokens.gather(1, j[:, None]).squeeze(1), ctx)
        next_dist = torch.where(rejected[:, None], corrected, p_next)
    else:
        next_dist = p_next
    path = torch.where(steps[None, :] < accepted[:, None], steps[None, :], -1)
    return Verdict(accepted, path, sample(next_dist, generator), next_dist, _next_kind(limit, rejected), diagnostics)


def tree_layout(parents: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Children table ``[n + 1, K]`` (row 0: children of the root, row i + 1: children of node i,
    padded with -1) and the depth (1-based) of every node. Parents must precede children."""
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n + 1)]
    depth: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"tree node {i} has parent {parent}; parents must come first")
        children[parent + 1].append(i)
        depth.append(1 if parent < 0 else depth[parent] + 1)
    width = max((len(c) for c in children), default=0)
    table = torch.full((n + 1, max(width, 1)), -1, dtype=torch.long)
    for row, kids in enumerate(children):
        table[row, : len(kids)] = torch.tensor(kids, dtype=torch.long)
    return table, depth


def tree_attention(parents: list[int]) -> torch.Tensor:
    """Mask ``[n + 1, n + 1]`` over ``[pending token, nodes...]``: each attends to its ancestors
    and itself (the pending token is every node's ancestor)."""
    n = len(parents)
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[:, 0] = True
    for i, parent in enumerate(parents):
        row = i + 1
        mask[row, row] = True
        if parent >= 0:
            mask[row] |= mask[parent + 1]
    return mask


def verify_tree(policy: AcceptancePolicy, p: torch.Tensor, block: DraftBlock, positions: torch.Tensor,
                limit: torch.Tensor, generator: torch.Generator) -> Verdict:
    """Recursive rejection sampling over a draft tree; ``p [B, n + 1, V]`` as described above.

    Siblings are tried in block order. Each is tested against the current (residualised) target
    with its draft distribution renormalised without the siblings already tried, which keeps the
    scheme exact for point-mass siblings and for siblings sampled without replacement alike.
    """
    B, n = block.tokens.shape
    dev, V = p.device, p.shape[-1]
    table, depth = tree_layout(block.parents)
    table = table.to(dev)
    max_depth = max(depth, default=0)
    limit = limit.clamp(max=max_depth)
    cur = torch.full((B,), -1, dtype=torch.long, device=dev)
    dist = p[:, 0].clone()
    accepted = torch.zeros(B, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    rejected = torch.zeros(B, dtype=torch.bool, device=dev)
    path = torch.full((B, max_depth), -1, dtype=torch.long, device=dev)
    for level in range(max_depth):
        kids = table[cur + 1]  # [B, K]
        moved = torch.zeros(B, dtype=torch.bool, device=dev)
        tried = torch.zeros(B, V, dtype=torch.bool, device=dev)
        open_rows = alive & (accepted < limit)
        for r in range(kids.shape[1]):
            child = kids[:, r]
            live = open_rows & ~moved & (child >= 0)
            node = child.clamp_min(0)
            x = block.tokens.gather(1, node[:, None])
            q = _row(block.q, node).masked_fill(tried, 0.0)
            q = q / q.sum(-1, keepdim=True).clamp_min(1e-30)
            ctx = PolicyContext(positions.gather(1, node[:, None]))
            alpha, _ = policy.acceptance(dist[:, None], q[:, None], x, ctx)
            take = live & (torch.rand(B, generator=generator, device=dev) < alpha[:, 0])
            drop = live & ~take
            dist = torch.where(drop[:, None], policy.residual(dist, q, x[:, 0], ctx), dist)
            tried |= drop[:, None] & (torch.arange(V, device=dev)[None, :] == x)
            dist = torch.where(take[:, None], _row(p, node + 1), dist)
            cur = torch.where(take, node, cur)
            path[:, level] = torch.where(take, node, path[:, level])
            moved |= take
        had_children = open_rows & (kids[:, 0] >= 0)
        rejected |= had_children & ~moved
        accepted += moved.long()
        alive &= moved
    next_kind = _next_kind(limit, rejected)
    return Verdict(accepted, path, sample(dist, generator), dist, next_kind, {})
