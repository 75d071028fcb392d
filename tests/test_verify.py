"""The shared verifier on synthetic distributions: chains and trees emit tokens distributed as p."""

from __future__ import annotations

import pytest
import torch
from stats import noise_floor, total_variation

from specar import sampling
from specar.policies import ExactPolicy
from specar.sampling import _kth_largest, point_mass, sample
from specar.types import DraftBlock, TokenKind
from specar.verify import tree_attention, tree_layout, verify_chain, verify_tree

V, ROWS = 12, 20000


def _dist(seed: int, sharp: float = 1.5) -> torch.Tensor:
    logits = torch.randn(V, generator=torch.Generator().manual_seed(seed)) * sharp
    return torch.softmax(logits, -1)


def _counts(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V)


def _first_emitted(block: DraftBlock, verdict) -> torch.Tensor:
    first_node = verdict.path[:, 0].clamp(min=0)
    return torch.where(verdict.accepted > 0, block.tokens.gather(1, first_node[:, None])[:, 0], verdict.next_token)


@pytest.mark.parametrize("redrawn", [False, True])
def test_chain_with_full_draft_distribution_emits_p(redrawn: bool) -> None:
    p, q = _dist(0), _dist(1)
    gen = torch.Generator().manual_seed(5)
    drafts = torch.multinomial(q, ROWS, replacement=True, generator=gen)[:, None]
    block = DraftBlock(drafts, q.expand(ROWS, 1, V).clone(), [-1], redrawn=redrawn)
    p_rows = torch.stack([p, _dist(2)]).expand(ROWS, 2, V)
    verdict = verify_chain(
        ExactPolicy(), p_rows, block, torch.zeros(ROWS, 1, dtype=torch.long), torch.full((ROWS,), 5), gen
    )
    assert total_variation(_counts(_first_emitted(block, verdict)), p) <= noise_floor(p, ROWS)
    # the bonus row is only used after an acceptance; corrections come from the residual
    kinds = verdict.next_kind
    assert set(kinds.unique().tolist()) == {int(TokenKind.BONUS), int(TokenKind.CORRECTED)}


@pytest.mark.parametrize("redrawn", [False, True])
def test_chain_respects_the_per_row_limit(redrawn: bool) -> None:
    p = point_mass(torch.tensor([[3, 4, 5]]), V).expand(4, 3, V)
    block = DraftBlock(
        torch.tensor([[3, 4]]).expand(4, 2),
        point_mass(torch.tensor([[3, 4]]), V).expand(4, 2, V),
        [-1, 0],
        redrawn=redrawn,
    )
    limit = torch.tensor([0, 1, 2, 7])
    verdict = verify_chain(ExactPolicy(), p, block, torch.zeros(4, 2, dtype=torch.long), limit, torch.Generator())
    assert verdict.accepted.tolist() == [0, 1, 2, 2]
    assert verdict.next_token.tolist() == [3, 4, 5, 5]
    assert verdict.next_kind.tolist() == [TokenKind.PLAIN, TokenKind.BONUS, TokenKind.BONUS, TokenKind.BONUS]


@pytest.mark.parametrize("redrawn", [False, True])
def test_no_limit_is_room_for_every_draft(redrawn: bool) -> None:
    """``limit=None`` (the loop's call while no row is near its last token) decides exactly as a limit at
    least the block's length, draw for draw."""
    rows, n = 64, 4
    seeded = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(rows, n + 1, V, generator=seeded), -1)
    q = torch.softmax(torch.randn(rows, n, V, generator=seeded), -1)
    tokens = sample(q, seeded)
    block = DraftBlock(tokens, q, list(range(-1, n - 1)), redrawn=redrawn)
    positions = torch.zeros(rows, n, dtype=torch.long)
    capped, uncapped = (
        verify_chain(ExactPolicy(), p, block, positions, limit, torch.Generator().manual_seed(4))
        for limit in (torch.full((rows,), n + 3), None)
    )
    assert 0 < int(uncapped.accepted.sum()) < rows * n  # acceptances and rejections both happened
    for name in ("accepted", "path", "next_token", "next_kind", "slot_draws", "slot_passed"):
        a, b = getattr(capped, name), getattr(uncapped, name)
        assert (a is None and b is None) if not redrawn and name.startswith("slot") else torch.equal(a, b), name


def test_a_redrawn_chain_stopped_by_its_limit_takes_its_bonus_from_p() -> None:
    """The slot where a row's limit stops it holds a draft that was never tested: the bonus there is drawn
    from the target's p, which may well be that draft's token, never from the residual without it."""
    p = torch.stack([point_mass(torch.tensor(3), V), _dist(20), _dist(21)]).expand(ROWS, 3, V)
    drafts = torch.tensor([[3, int(p[0, 1].argmax())]])  # the second, the likeliest code there
    block = DraftBlock(drafts.expand(ROWS, 2), point_mass(drafts, V).expand(ROWS, 2, V), [-1, 0])
    block.redrawn = True
    limit = torch.ones(ROWS, dtype=torch.long)
    verdict = verify_chain(
        ExactPolicy(), p.clone(), block, torch.zeros(ROWS, 2, dtype=torch.long), limit, torch.Generator()
    )
    assert verdict.accepted.eq(1).all()
    assert total_variation(_counts(verdict.next_token), p[0, 1]) <= noise_floor(p[0, 1], ROWS)


def test_a_redrawn_chain_couples_every_draft_past_the_first_rejection() -> None:
    """Past a row's first rejection, ``where(slot_passed, draft, slot_draws)`` is a maximal coupling of the draft
    (drawn from ``q``) with the target's new distribution ``p`` there, whatever the row's outcome: distributed
    as ``p``, and equal to the draft with probability ``sum(min(p, q))``."""
    p_rows = torch.stack([_dist(30), _dist(31), _dist(32)])
    q = torch.stack([_dist(33), _dist(34)])
    gen = torch.Generator().manual_seed(7)
    drafts = torch.stack([torch.multinomial(q[i], ROWS, replacement=True, generator=gen) for i in range(2)], 1)
    block = DraftBlock(drafts, q.expand(ROWS, 2, V).clone(), [-1, 0], redrawn=True)
    limit = torch.full((ROWS,), 2)
    verdict = verify_chain(
        ExactPolicy(), p_rows.expand(ROWS, 3, V), block, torch.zeros(ROWS, 2, dtype=torch.long), limit, gen
    )
    assert verdict.slot_draws is not None and verdict.slot_passed is not None
    redrawn = torch.where(verdict.slot_passed, drafts, verdict.slot_draws[:, :2])
    past = verdict.accepted == 0  # slot 1 lies past these rows' first rejection
    assert total_variation(_counts(redrawn[past, 1]), p_rows[1]) <= noise_floor(p_rows[1], int(past.sum()))
    kept = (redrawn[:, 1] == drafts[:, 1]).float().mean()
    assert abs(kept - torch.minimum(p_rows[1], q[1]).sum()) < 4 * (0.25 / ROWS) ** 0.5
    assert total_variation(_counts(verdict.slot_draws[:, 2]), p_rows[2]) <= noise_floor(p_rows[2], ROWS)


@pytest.mark.parametrize("siblings", ["point_mass_top3", "without_replacement"])
def test_tree_siblings_recursive_rejection_emits_p(siblings: str) -> None:
    p, q = _dist(10), _dist(11, sharp=0.7)
    gen = torch.Generator().manual_seed(9)
    if siblings == "point_mass_top3":  # deterministic candidates, e.g. a drafter's top-k
        tokens = q.topk(3).indices.expand(ROWS, 3)
        q_nodes = point_mass(tokens, V)
    else:  # three distinct candidates sampled from q without replacement, each storing q
        tokens = torch.stack([torch.multinomial(q, 3, replacement=False, generator=gen) for _ in range(ROWS)])
        q_nodes = q.expand(ROWS, 3, V).clone()
    block = DraftBlock(tokens, q_nodes, [-1, -1, -1])
    p_rows = torch.cat([p[None], torch.stack([_dist(20 + i) for i in range(3)])]).expand(ROWS, 4, V)
    verdict = verify_tree(
        ExactPolicy(), p_rows, block, torch.zeros(ROWS, 3, dtype=torch.long), torch.full((ROWS,), 4), gen
    )
    assert total_variation(_counts(_first_emitted(block, verdict)), p) <= noise_floor(p, ROWS)


def test_a_tree_of_fixed_picks_emits_p() -> None:
    """The shortcut for point-mass trees (one draw per node, follow the matching sibling)."""
    p, q = _dist(10), _dist(11, sharp=0.7)
    tokens = q.topk(3).indices.expand(ROWS, 3)
    block = DraftBlock(tokens, point_mass(tokens, V), [-1, -1, -1], picks=True)
    p_rows = torch.cat([p[None], torch.stack([_dist(20 + i) for i in range(3)])]).expand(ROWS, 4, V)
    verdict = verify_tree(
        ExactPolicy(), p_rows, block, torch.zeros(ROWS, 3, dtype=torch.long), torch.full((ROWS,), 4), _gen(9)
    )
    assert total_variation(_counts(_first_emitted(block, verdict)), p) <= noise_floor(p, ROWS)


def test_fixed_picks_shortcut_matches_node_by_node_verification() -> None:
    """Accepted depth, path, next token and its kind: the same joint distribution either way, rows
    with a depth limit included; and the next-token distribution the shortcut reports is the one it
    draws from."""
    p_rows = torch.stack([_dist(40 + i, sharp=1.0) for i in range(7)]).expand(ROWS, 7, V)
    parents = [-1, -1, 0, 0, 1, 2]  # two roots; node 0 has children 2, 3; node 1 has 4; node 2 has 5
    tokens = torch.stack([_dist(40).topk(2).indices, _dist(41).topk(2).indices, _dist(42).topk(2).indices])
    tokens = torch.tensor([tokens[0, 0], tokens[0, 1], tokens[1, 0], tokens[1, 1], tokens[2, 0], tokens[2, 1]])
    tokens = tokens.expand(ROWS, 6)
    limit = torch.tensor([0, 1, 2, 5]).repeat(ROWS // 4)
    outcomes, next_dists = [], []
    for picks in (False, True):
        block = DraftBlock(tokens, point_mass(tokens, V), parents, picks=picks)
        verdict = verify_tree(ExactPolicy(), p_rows, block, torch.zeros(ROWS, 6, dtype=torch.long), limit, _gen(picks))
        drawn = verdict.next_dist.gather(1, verdict.next_token[:, None])[:, 0]
        assert bool((drawn > 0).all())  # the next token lies in the reported distribution's support
        where = ((verdict.path + 1) @ torch.tensor([100, 10, 1])) * 10 + verdict.next_kind  # path and kind
        next_dists.append({int(w): verdict.next_dist[i] for i, w in enumerate(where.tolist())})
        key = verdict.accepted * 10_000 + (verdict.path + 1) @ torch.tensor([1000, 100, 10]) + verdict.next_token
        outcomes.append((key * 10 + verdict.next_kind, limit))
    for where, dist in next_dists[0].items():  # a correction's distribution: p there without the children tried
        if where in next_dists[1]:
            assert torch.allclose(dist, next_dists[1][where], atol=1e-6)
    for row_limit in range(4):
        node_by_node, shortcut = (key[torch.arange(ROWS) % 4 == row_limit] for key, _ in outcomes)
        values, counts = torch.cat([node_by_node, shortcut]).unique(return_counts=True)
        reference = torch.stack([(node_by_node == v).sum() for v in values]).float()
        ours = torch.stack([(shortcut == v).sum() for v in values]).float()
        rows = len(node_by_node)
        assert 0.5 * (reference / rows - ours / rows).abs().sum() <= noise_floor(reference / rows, rows) * 1.5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def test_tree_second_level_follows_the_accepted_node() -> None:
    """After accepting node i, the next token follows p after node i (bonus or deeper node)."""
    p_root = point_mass(torch.tensor(4), V)
    p_after = [_dist(30), _dist(31)]
    tokens = torch.tensor([4, 7]).expand(ROWS, 2)  # node 0 = 4 (always accepted), node 1 = 7 under it
    block = DraftBlock(tokens, point_mass(tokens, V), [-1, 0])
    p_rows = torch.stack([p_root, p_after[0], p_after[1]]).expand(ROWS, 3, V)
    gen = torch.Generator().manual_seed(4)
    verdict = verify_tree(
        ExactPolicy(), p_rows, block, torch.zeros(ROWS, 2, dtype=torch.long), torch.full((ROWS,), 9), gen
    )
    assert bool((verdict.path[:, 0] == 0).all())
    second = torch.where(verdict.accepted > 1, torch.full_like(verdict.next_token, 7), verdict.next_token)
    assert total_variation(_counts(second), p_after[0]) <= noise_floor(p_after[0], ROWS)


def test_tree_layout_and_mask() -> None:
    parents = [-1, -1, 0, 0, 2]
    table, depth = tree_layout(parents)
    assert depth == [1, 1, 2, 2, 3]
    assert table[0].tolist()[:2] == [0, 1] and table[1].tolist()[:2] == [2, 3] and table[3, 0] == 4
    mask = tree_attention(parents)
    assert mask[5].tolist() == [True, True, False, True, False, True]  # node 4 sees pending, 0, 2, itself
    with pytest.raises(ValueError):
        tree_layout([1, -1])


def test_an_empty_chain_is_a_plain_step_drawn_from_the_first_row() -> None:
    p = torch.stack([_dist(0), _dist(1)])[:, None].expand(2, 1, V)
    block = DraftBlock.empty(2, V, torch.device("cpu"))
    verdict = verify_chain(
        ExactPolicy(),
        p,
        block,
        torch.zeros(2, 0, dtype=torch.long),
        torch.tensor([5, 0]),
        torch.Generator().manual_seed(3),
    )
    expected = sample(p[:, 0], torch.Generator().manual_seed(3))
    assert verdict.accepted.tolist() == [0, 0] and verdict.path.shape == (2, 0)
    assert verdict.next_token.tolist() == expected.tolist()
    assert verdict.next_kind.tolist() == [TokenKind.PLAIN, TokenKind.PLAIN]


@pytest.mark.parametrize("numpy_sorts_in_simd", [True, False])  # sorted rows, or a selection in them
def test_the_top_k_threshold_is_the_kth_largest_value_ties_and_masked_codes_included(
    numpy_sorts_in_simd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sampling, "_NUMPY_SORTS_IN_SIMD", numpy_sorts_in_simd)
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        vocab = int(torch.randint(2, 300, (1,), generator=gen))
        k = int(torch.randint(1, vocab, (1,), generator=gen))
        logits = torch.randn(3, 4, vocab, generator=gen)
        if trial % 3 == 0:
            logits = logits.round()  # ties at the threshold
        if trial % 5 == 0:
            logits[..., : vocab // 2] = float("-inf")  # codes a constraint removed
        assert torch.equal(_kth_largest(logits, k), torch.topk(logits, k, dim=-1).values[..., -1:])
