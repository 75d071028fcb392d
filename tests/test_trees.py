"""Tree drafting: the head's cache, tree shapes, head files (ours and LANTERN's), CASCADE.

Losslessness of tree decoding (greedy equality, whole-image PIT, per-position distribution) is
proven with the other sources in test_lossless.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_drafter, tiny_model, tiny_model_with_codes, tiny_tree_head

from specar import Conditioning, SamplingSettings, generate
from specar.checkpoints import save_safetensors
from specar.drafts.base import DecodeState, StepOutcome
from specar.drafts.drafter_tree import DrafterTreeDrafts
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape, branching_label, static_parents
from specar.drafts.tree_head import load_tree_head, save_tree_head
from specar.errors import CheckpointError, IncompatibleDrafterError, SettingsError
from specar.policies import make_policy
from specar.policies.base import PolicyContext
from specar.sampling import DistributionProcessor
from specar.types import DraftBlock
from specar.verify import tree_tables

COND = Conditioning.classes([1, 4, 7])
SAMPLING = SamplingSettings(cfg_scale=2.0, top_k=24, seed=3)


class RecordsBlocks:
    """Mixed into a draft source: keeps every block and the committed count it was drafted at."""

    blocks: list[tuple[torch.Tensor, object]]

    def propose(self, state: DecodeState):
        block = super().propose(state)
        self.__dict__.setdefault("blocks", []).append((state.committed.clone(), block))
        return block


class RecordingDrafts(RecordsBlocks, TreeHeadDrafts):
    pass


class RecordingDrafterTree(RecordsBlocks, DrafterTreeDrafts):
    pass


def _head_inputs(target, tokens: torch.Tensor, guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced target states and code embeddings of whole sequences (both CFG halves)."""
    gpt = target.gpt
    ids = torch.tensor(COND.class_ids)
    if guided:
        ids, tokens = torch.cat([ids, torch.full_like(ids, gpt.cfg.num_classes)]), tokens.repeat(2, 1)
    h = torch.cat([gpt.cls_embedding(ids), gpt.tok_embeddings(tokens)], 1)
    states = gpt.run_layers(h, torch.arange(h.shape[1]).expand(h.shape[0], -1), None)
    return states, gpt.tok_embeddings(tokens)


@torch.inference_mode()
def test_head_drafts_from_the_same_states_as_a_full_sequence_pass() -> None:
    """Catching up on committed tokens (ragged accepted paths, both CFG halves) and growing the
    tree from the cache must give what the head computes over the whole sequence at once."""
    target = tiny_model(0)
    head = tiny_tree_head(target)
    drafts = RecordingDrafts(head, TreeShape(kind="static", branching=(3, 2)))
    settings = SamplingSettings(cfg_scale=2.0, greedy=True, seed=1)
    result = generate(target, COND, settings, draft=drafts)
    states, embeds = _head_inputs(target, result.tokens, guided=True)
    predicted = head(embeds, states[:, :-1])  # [2B, N, D]: state after token t
    logits = target.logits_from_hidden(predicted)
    guided = logits[:3] * 2.0 - logits[3:]  # cfg 2: uncond + 2 (cond - uncond)
    checked = 0
    for committed, block in drafts.blocks[1:6]:
        for b in range(3):
            c = int(committed[b])
            root_children = block.tokens[b, :3]  # depth-1 nodes are the root distribution's picks
            expected = torch.softmax(guided[b, c - 1], -1)
            assert torch.allclose(block.q[b, 0], expected, atol=1e-4)
            assert int(root_children.unique().numel()) == 3
            checked += 1
    assert checked == 15


CAPTION_SLOTS = 6  # the tiny t2i target's caption positions; a LANTERN-style head reads all but the last


@torch.inference_mode()
def test_caption_head_drafts_from_the_prefill_s_caption_states() -> None:
    """A head whose sequences open with caption entries drafts on a t2i target what one pass over
    [caption entries, image entries] computes, each CFG row with its own caption's states (the null
    caption's for the unconditional rows); greedy output stays the target's."""
    target = tiny_model(0, model_type="t2i", caption_dim=16, cls_token_num=CAPTION_SLOTS)
    head = tiny_tree_head(target, cls_token_num=CAPTION_SLOTS - 1)
    captions = torch.randn(2, CAPTION_SLOTS, 16, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(caption_embeddings=captions, caption_mask=torch.ones(2, CAPTION_SLOTS, dtype=torch.bool))
    settings = SamplingSettings(cfg_scale=2.0, greedy=True, seed=1)
    drafts = RecordingDrafts(head, TreeShape(kind="static", branching=(3, 2)))
    result = generate(target, cond, settings, draft=drafts)
    assert torch.equal(result.tokens, generate(target, cond, settings).tokens)
    gpt, tokens = target.gpt, result.tokens.repeat(2, 1)
    null = gpt.cls_embedding.uncond_embedding.expand_as(captions)
    h = torch.cat([gpt.cls_embedding(torch.cat([captions, null])), gpt.tok_embeddings(tokens)], 1)
    states = gpt.run_layers(h, torch.arange(h.shape[1]).expand(4, -1), None)
    entries = CAPTION_SLOTS - 1 + tokens.shape[1]  # caption entries (id 0, positions below 0), then image entries
    ids = torch.cat([torch.zeros(4, CAPTION_SLOTS - 1, dtype=torch.long), tokens], 1)
    positions = (torch.arange(entries) - (CAPTION_SLOTS - 1)).expand(4, -1)
    mask = torch.ones(entries, entries, dtype=torch.bool).tril().expand(4, -1, -1)
    predicted = head.step(head.embed(ids, target), states[:, :-1], positions, head.new_cache(4, entries), 0, mask)
    logits = target.logits_from_hidden(predicted[:, CAPTION_SLOTS - 1 :])
    guided = logits[:2] * 2.0 - logits[2:]
    for committed, block in drafts.blocks[1:6]:
        for b in range(2):
            expected = torch.softmax(guided[b, int(committed[b]) - 1], -1)
            assert torch.allclose(block.q[b, 0], expected, atol=1e-4)


def test_caption_head_needs_a_target_with_as_many_caption_states() -> None:
    head = tiny_tree_head(tiny_model(0), cls_token_num=CAPTION_SLOTS - 1)
    with pytest.raises(IncompatibleDrafterError, match="5 caption entries"):
        generate(tiny_model(0), COND, SAMPLING, draft=TreeHeadDrafts(head))


def test_dynamic_trees_are_closed_and_differ_per_image() -> None:
    target = tiny_model(0)
    shape = TreeShape(top_k=4, depth=4, nodes=12)
    drafts = RecordingDrafts(tiny_tree_head(target), shape)
    generate(target, Conditioning.classes([1, 4, 7, 2]), SAMPLING, draft=drafts)
    shapes_differ = False
    far_from_the_end = [
        block for committed, block in drafts.blocks if int(committed.max()) < target.num_image_tokens - 4
    ]
    assert len(far_from_the_end) > 5
    for block in far_from_the_end:
        assert block.size == 12
        node = torch.arange(12)[None, :]
        assert bool((block.parents < node).all()) and bool((block.parents >= -1).all())
        _, depth = tree_tables(block.parents)
        assert int(depth.max()) <= 4
        shapes_differ |= not bool((block.parents == block.parents[0]).all())
        assert bool((block.q.sum(-1) == 1).all())  # point masses
    assert shapes_differ


def test_static_tree_layout_and_sampled_children() -> None:
    target = tiny_model(0)
    shape = TreeShape(kind="static", branching=(3, 2, 1))
    assert shape.size == 3 + 6 + 6
    drafts = RecordingDrafts(tiny_tree_head(target), shape)
    generate(target, COND, SAMPLING, draft=drafts)
    _, block = drafts.blocks[1]
    assert block.parents[0].tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8]
    for b in range(3):  # siblings are distinct tokens drawn from their parent's q
        for first in (0, 3, 5, 7):
            kids = block.tokens[b, first : first + (3 if first == 0 else 2)]
            assert kids.unique().numel() == kids.numel()
        assert float(block.q[b, 0, block.tokens[b, 0]]) > 0


@torch.inference_mode()
def test_drafter_tree_drafts_every_path_from_the_committed_tokens() -> None:
    """Each node's q is the drafter's distribution after the committed tokens and the node's ancestors,
    computed here by a full pass without cache: the per-leaf rows and their roll-back keep the cache right."""
    target, drafter = tiny_model(0), tiny_drafter()
    drafts = RecordingDrafterTree(drafter, (2, 2, 1))
    result = generate(target, COND, SAMPLING, draft=drafts)
    ids = torch.tensor(COND.class_ids)
    processor = DistributionProcessor(SAMPLING)
    assert static_parents((2, 2, 1)) == [-1, -1, 0, 0, 1, 1, 2, 3, 4, 5]
    checked = 0
    for committed, block in drafts.blocks[1:6]:
        assert block.parents[0].tolist() == static_parents((2, 2, 1))
        for b in range(len(ids)):
            c = int(committed[b])
            if c + 3 > target.num_image_tokens:
                continue
            for leaf in range(6, 10):
                path = [leaf]
                while int(block.parents[b, path[0]]) >= 0:
                    path.insert(0, int(block.parents[b, path[0]]))
                seq = torch.cat([result.tokens[b, :c], block.tokens[b, path]])[None]
                pair = torch.tensor([int(ids[b]), drafter.gpt.cfg.num_classes])
                logits = drafter.gpt(pair, seq.expand(2, -1))
                q = processor(logits, torch.arange(seq.shape[1])[None])[0]
                for level, node in enumerate(path):
                    assert torch.allclose(block.q[b, node], q[c + level], atol=1e-5)
                    checked += 1
        for first in (0, 2, 4):  # siblings are distinct tokens drawn from their parent's q
            assert bool((block.tokens[:, first] != block.tokens[:, first + 1]).all())
    assert checked >= 30


def test_branching_labels() -> None:
    assert branching_label((2, 2, 1, 1, 1, 1)) == "2-2-1x4"
    assert branching_label((4, 2, 1, 1)) == "4-2-1-1"
    assert branching_label(TreeShape.parse_branching("3*3,1")) == "3x3-1"


def test_tree_shape_errors() -> None:
    with pytest.raises(SettingsError, match="tree kind"):
        TreeShape(kind="bushy")
    with pytest.raises(SettingsError, match="candidate nodes"):
        TreeShape(top_k=2, depth=2, nodes=7)
    with pytest.raises(SettingsError, match="branching"):
        TreeShape(kind="static", branching=(2, 0))
    with pytest.raises(SettingsError, match="branching"):
        TreeShape.parse_branching("4,two")
    assert TreeShape.parse_branching("4x2x1") == (4, 2, 1)
    assert TreeShape.parse_branching("2,2,1*3") == (2, 2, 1, 1, 1)
    with pytest.raises(SettingsError, match="branching"):
        TreeShape.parse_branching("2,1*many")
    with pytest.raises(SettingsError, match="tree guidance"):
        TreeShape(guidance=0.0)


@torch.inference_mode()
def test_tree_guidance_sets_the_head_s_cfg_scale_only() -> None:
    """The head drafts other trees at its own scale; without CFG there is no scale to set, which is said."""
    target = tiny_model(0)
    trees = {}
    for guidance in (None, 6.0):
        drafts = RecordingDrafts(tiny_tree_head(target), TreeShape(top_k=3, depth=3, nodes=6, guidance=guidance))
        result = generate(target, COND, SAMPLING, draft=drafts)
        trees[guidance] = torch.cat([block.tokens for _, block in drafts.blocks[:3]])
        assert result.finished and drafts.processor is not None
        assert drafts.processor.settings.cfg_scale == (guidance or SAMPLING.cfg_scale)
    assert not torch.equal(trees[None], trees[6.0])
    with pytest.raises(SettingsError, match="without CFG"):
        generate(
            target,
            COND,
            SAMPLING.with_(cfg_scale=1.0),
            draft=TreeHeadDrafts(tiny_tree_head(target), TreeShape(guidance=4.0)),
        )


def test_head_files_round_trip_and_mismatches_are_clear(tmp_path: Path) -> None:
    target = tiny_model(0)
    head = tiny_tree_head(target)
    with torch.no_grad():  # files are fp16: compare with fp16-representable weights
        for param in head.parameters():
            param.copy_(param.half().float())
    path = tmp_path / "head.safetensors"
    save_tree_head(head, path, {"train_steps": 1})
    loaded = load_tree_head(path, target)
    embeds, features = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    assert torch.allclose(loaded(embeds, features), head(embeds, features), atol=1e-4)
    with pytest.raises(IncompatibleDrafterError, match="hidden size"):
        load_tree_head(path, tiny_model(0, dim=32, n_head=2))
    other = tmp_path / "not-a-head.safetensors"
    save_safetensors({"w": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a tree head"):
        load_tree_head(other, target)
    with pytest.raises(CheckpointError, match="without config.json"):
        load_tree_head(tmp_path, target)


def test_lantern_head_folder_loads_with_its_own_embedding(tmp_path: Path) -> None:
    """LANTERN's cnets layout: HF-style config.json, fc with bias, layer 0 without input norm, and
    a stored copy of the target's embedding."""
    target = tiny_model(0, grid_size=16)  # LANTERN's t2i heads are for 16x16-token images
    head = tiny_tree_head(target)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["embed_tokens.weight"] = target.gpt.tok_embeddings.weight.detach().clone()
    save_safetensors(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 96,
                "vocab_size": 64,
                "rms_norm_eps": 1e-5,
                "num_hidden_layers": 1,
                "input_type": "t2i",
            }
        )
    )
    loaded = load_tree_head(tmp_path, target)
    assert loaded.embed_tokens is not None
    embeds, features = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    assert torch.allclose(loaded(embeds, features), head(embeds, features), atol=1e-5)


class NodeByNodeTree(TreeHeadDrafts):
    """A dynamic tree whose blocks do not say they are fixed picks: the exact policy then verifies it
    node by node, as every relaxed policy does, rather than by one draw per node."""

    def propose(self, state: DecodeState) -> DraftBlock:
        return dataclasses.replace(super().propose(state), picks=False)


def test_cascade_at_zero_is_the_exact_tree_and_relaxation_raises_acceptance() -> None:
    target = tiny_model_with_codes(0)
    cond = Conditioning.classes(list(range(8)))

    def run(policy):
        draft = NodeByNodeTree(tiny_tree_head(target), TreeShape(top_k=4, depth=4, nodes=16))
        return generate(target, cond, SAMPLING, policy=policy, draft=draft)

    exact = run(None)
    assert torch.equal(run(make_policy("cascade", 0.0, model=target)).tokens, exact.tokens)
    loose = run(make_policy("cascade", 1.0, model=target, tau_pos_at_full=-1.0, tau_seq_at_full=-1.0))
    assert loose.acceptance_rate > exact.acceptance_rate
    # recorded per tree level, for heatmaps
    assert set(loose.diagnostics) == {"group_mass", "interchangeable", "convergence"}
    tested = ~loose.diagnostics["group_mass"].isnan()
    known = ~loose.diagnostics["convergence"].isnan()  # roots have no grandparent in their block
    assert 0 < int(known.sum()) < int(tested.sum()) and bool((known <= tested).all())
    assert bool((loose.diagnostics["interchangeable"][known] >= 0).all())


def _cascade_case(converged: bool, root: bool = False):
    """A CASCADE policy on explicit groups (codes 0..15 in order: pairs, or fours where converged),
    a node drafting token 0 (point mass) with siblings 5 (same state) and 9 (another state)."""
    policy = make_policy(
        "cascade",
        1.0,
        model=tiny_model_with_codes(0),
        tau_pos_at_full=0.9,
        tau_seq_at_full=0.9,
        max_group=2,
        converged_group=4,
        ratio_bound=math.inf,
    )  # inf: the group test alone
    policy.ranks = torch.arange(16)
    p = torch.softmax(torch.linspace(0.0, 1.5, 16), 0)[None, None]
    q = torch.zeros(1, 1, 16).index_fill_(-1, torch.tensor([0]), 1.0)
    same, far = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    grandparent = torch.full((2,), float("nan")) if root else (same if converged else far)
    ctx = PolicyContext(
        torch.tensor([[5]]),
        hidden=same.view(1, 1, 2),
        parent_hidden=same.view(1, 1, 2),
        grandparent_hidden=grandparent.view(1, 1, 2),
        siblings=torch.tensor([[[5, 9, -1]]]),
        sibling_hidden=torch.stack([same, far, same]).view(1, 1, 3, 2),
    )
    return policy, p, q, torch.tensor([[0]]), ctx


def test_cascade_groups_grow_where_the_context_converged_and_take_in_interchangeable_siblings() -> None:
    policy, p, q, x, ctx = _cascade_case(converged=True)
    alpha, info = policy.acceptance(p, q, x, ctx)
    # converged: the group of four {0..3}, plus sibling 5's group {4..7} (same state); 9 differs
    assert float(alpha) == pytest.approx(float(p[0, 0, :8].sum()), rel=1e-6)
    assert info["interchangeable"].item() == 1 and info["convergence"].item() == pytest.approx(1.0)
    residual = policy.residual(p[:, 0], q[:, 0], x[:, 0], ctx)
    assert float(residual[0, :8].sum()) == 0.0  # both groups are spent with the rejected node
    assert torch.allclose(residual[0, 8:], p[0, 0, 8:] / p[0, 0, 8:].sum())
    for diverged in (_cascade_case(converged=False), _cascade_case(converged=False, root=True)):
        policy, p, q, x, ctx = diverged
        alpha, info = policy.acceptance(p, q, x, ctx)
        assert float(alpha) == pytest.approx(float(p[0, 0, :2].sum()), rel=1e-6)  # pairs, nothing merged
        assert info["interchangeable"].item() == 0
    policy, p, q, x, ctx = _cascade_case(converged=True)
    policy.ratio_bound = 2.0  # LANTERN++'s bound: at most twice the exact test, p(0) for a point mass
    alpha, _ = policy.acceptance(p, q, x, ctx)
    assert float(alpha) == pytest.approx(2 * float(p[0, 0, 0]), rel=1e-6)
    chain_alpha, _ = policy.acceptance(p, q, x, PolicyContext(torch.tensor([[5]])))
    assert torch.allclose(chain_alpha, p[:, :, 0])  # no tree states: exact
    with pytest.raises(SettingsError, match="at least max_group"):
        make_policy("cascade", 1.0, model=tiny_model_with_codes(0), max_group=16, converged_group=8)


def test_group_policies_draft_one_sibling_per_group() -> None:
    """A group is accepted with all its target mass, so a second sibling of the same group could
    never be accepted: the dynamic tree then offers the likeliest code of each of the likeliest groups."""
    target = tiny_model_with_codes(0)
    for name in ("clusters", "cascade"):
        policy = make_policy(name, 0.5, model=target)
        groups = policy.sibling_groups()
        assert groups is not None and int(groups.unique().numel()) == target.vocab_size // 4
        drafts = RecordingDrafts(tiny_tree_head(target), TreeShape(top_k=4, depth=3, nodes=12))
        generate(target, COND, SAMPLING, draft=drafts, policy=policy)
        for _, block in drafts.blocks:
            for row in range(block.tokens.shape[0]):
                parents = block.parents[row] if block.parents.dim() == 2 else block.parents
                for parent in parents.unique():
                    kids = block.tokens[row][parents == parent]
                    assert len(groups[kids].unique()) == len(kids)
    assert make_policy("clusters", 0.0, model=target).sibling_groups() is None
    assert make_policy("exact").sibling_groups() is None


def test_grouped_children_are_the_likeliest_code_of_each_likeliest_group() -> None:
    """What an accepted group emits is its drafted code, so each group is drafted as the head's mode in it."""
    target = tiny_model_with_codes(0)
    drafts = TreeHeadDrafts(tiny_tree_head(target), TreeShape(top_k=2, depth=2, nodes=4))
    drafts.code_groups = torch.arange(8) // 4  # two groups: codes 0..3 and 4..7
    q = torch.tensor([[0.05, 0.30, 0.10, 0.05, 0.12, 0.13, 0.13, 0.12]])  # group masses 0.5 / 0.5
    q[0, 6] += 0.01
    q = q / q.sum()
    scores, children = drafts._top_children(q, 2)
    assert children.tolist() == [[6, 1]] and torch.allclose(scores.exp(), torch.tensor([[0.51, 0.50]]) / 1.01)


def test_head_that_does_not_fit_is_refused_before_decoding() -> None:
    target = tiny_model(0)
    head = tiny_tree_head(tiny_model(0, vocab_size=32))
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        generate(target, COND, SAMPLING, draft=TreeHeadDrafts(head))


def test_outcome_type_is_what_observe_reads() -> None:
    assert {"block", "verdict", "p", "hidden", "committed_before"} <= set(StepOutcome.__dataclass_fields__)


def test_tree_draft_sources_are_exported_where_the_readme_says() -> None:
    import specar
    from specar.drafts import drafter_tree, tree_drafts, tree_head

    assert specar.TreeHeadDrafts is tree_drafts.TreeHeadDrafts and specar.TreeShape is tree_drafts.TreeShape
    assert specar.TreeHead is tree_head.TreeHead and specar.load_tree_head is tree_head.load_tree_head
    assert specar.DrafterTreeDrafts is drafter_tree.DrafterTreeDrafts
