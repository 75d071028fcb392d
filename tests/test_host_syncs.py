"""One host sync per target forward: the loop's own, for every draft source.

A device value read on the host (``int``, ``bool``, ``.item()``, ``.tolist()``, ``.cpu()``,
``nonzero``) stalls a GPU's queue; small-batch decoding cannot afford more than the one per
forward the loop needs to learn how far each row advanced. ``DeviceReadCounter`` finds such
reads on a CPU run (see tests/syncs.py); the counter itself is tested to see them.
"""

from __future__ import annotations

import pytest
import torch
from syncs import DeviceReadCounter
from tiny import tiny_auto_drafts, tiny_drafter, tiny_model, tiny_tree_head

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, SamplingSettings, generate
from specar.drafts.drafter_tree import DrafterTreeDrafts
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape
from specar.models.llamagen.adapter import LlamaGenModel

SETTINGS = SamplingSettings(cfg_scale=3.0, top_k=20, seed=5)
SOURCES = {
    "jacobi": lambda target: JacobiDrafts(window=8),
    "jacobi-row": lambda target: JacobiDrafts(window=8, init="row_above"),
    "mcsjd": lambda target: JacobiDrafts(window=6, coupling=True),
    "drafter": lambda target: DrafterModelDrafts(tiny_drafter(), gamma=4),
    "drafter-tree": lambda target: DrafterTreeDrafts(tiny_drafter(), branching=(3, 2, 1, 1)),
    "tree-static": lambda target: TreeHeadDrafts(tiny_tree_head(target), TreeShape(kind="static", branching=(3, 2, 1))),
    "tree-dynamic": lambda target: TreeHeadDrafts(tiny_tree_head(target), TreeShape(top_k=4, depth=4, nodes=12)),
    "tree-chain": lambda target: TreeHeadDrafts(tiny_tree_head(target), TreeShape(kind="static", branching=(1,) * 4)),
    "auto": lambda target: tiny_auto_drafts(),
    "auto-head": lambda target: tiny_auto_drafts(head=True),
}
RESULT_COPIES = 3  # tokens, kinds and forward indices come back to the host once, at the end


@pytest.fixture(scope="module")
def target() -> LlamaGenModel:
    return tiny_model(0)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_one_host_sync_per_target_forward(target: LlamaGenModel, source: str) -> None:
    with DeviceReadCounter() as reads:
        result = generate(target, Conditioning.classes([1, 4]), SETTINGS, draft=SOURCES[source](target))
    steps = result.target_forwards - 1  # the prefill needs none
    assert reads.total <= steps + RESULT_COPIES, reads.sites.most_common(4)


def test_caption_head_makes_one_host_sync_per_target_forward() -> None:
    """A head whose sequences open with caption entries (LANTERN's t2i layout) reads the prefill's caption
    states on a t2i target without reading a device value."""
    target = tiny_model(0, model_type="t2i", caption_dim=16, cls_token_num=6)
    draft = TreeHeadDrafts(tiny_tree_head(target, cls_token_num=5), TreeShape(top_k=4, depth=4, nodes=12))
    cond = Conditioning(caption_embeddings=torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0)))
    with DeviceReadCounter() as reads:
        result = generate(target, cond, SETTINGS, draft=draft)
    assert result.drafter_forwards > 0
    assert reads.total <= result.target_forwards - 1 + RESULT_COPIES, reads.sites.most_common(4)


def test_the_counter_sees_reads_of_model_values(target: LlamaGenModel) -> None:
    with DeviceReadCounter() as reads:
        out = target.prefill(Conditioning.classes([1]), guided=False)
        int(out.logits.argmax())
        out.hidden.tolist()
        host = out.logits.cpu()
        int(host.argmax())  # already on the host: not a sync
        int(torch.ones(3).sum())  # host bookkeeping: not a sync
        with torch.inference_mode():  # the decoding loop's mode, where scalar reads bypass dispatch modes
            values = out.logits.sum(-1)
            bool(values.any()), float(values.max()), values.min().item()
    target.release()
    assert reads.total == 6, reads.sites


@pytest.mark.parametrize("policy", ["cascade", "lantern"])
def test_relaxed_tree_verification_makes_one_host_sync_per_target_forward(policy: str) -> None:
    """Group and latent relaxations walk the tree with the target's states, evidence and code vectors (which
    need a tokenizer: the demo model's), and read no device value beyond the loop's one per forward. The run
    hands back one host copy per diagnostic the policy records."""
    from specar.drafts.tree_head import BUNDLED_HEAD, resolve_tree_head
    from specar.models.registry import load_model
    from specar.policies import make_policy

    demo = load_model("demo", device="cpu")
    draft = TreeHeadDrafts(resolve_tree_head(BUNDLED_HEAD, demo), TreeShape())
    with DeviceReadCounter() as reads:
        result = generate(
            demo, Conditioning.classes([1, 4]), demo.default_settings, draft, make_policy(policy, 1.0, model=demo)
        )
    allowed = result.target_forwards - 1 + RESULT_COPIES + len(result.diagnostics)
    assert reads.total <= allowed, reads.sites.most_common(4)


@pytest.mark.parametrize("source", ["jacobi-row", "drafter", "auto"])
def test_row_end_family_makes_one_host_sync_per_target_forward(
    tmp_path_factory: pytest.TempPathFactory, source: str
) -> None:
    """Emu3 (and Lumina-mGPT, Anole) put a row-end token after every grid row; drafting for it,
    and the drafter's own steps, read no model value beyond the loop's one per forward."""
    from tiny_hf import build_tiny_emu3

    from specar.drafts.auto import AutoDrafts
    from specar.models.registry import load_model

    root = tmp_path_factory.mktemp("emu3")
    target = load_model(build_tiny_emu3(root / "target"), device="cpu", dtype="fp32", image_size=16)
    drafter = load_model(build_tiny_emu3(root / "drafter", perturb=0.03), device="cpu", dtype="fp32", image_size=16)
    draft = {
        "jacobi-row": JacobiDrafts(window=8, init="row_above"),
        "drafter": DrafterModelDrafts(drafter, gamma=4),
        "auto": AutoDrafts(drafter),
    }[source]
    cond = Conditioning(prompts=("a cat",))
    settings = SamplingSettings(cfg_scale=3.0, top_k=20, seed=5)
    if source == "auto":
        generate(target, cond, settings, draft=AutoDrafts(drafter))  # costs are measured on the first call
    with DeviceReadCounter() as reads:
        result = generate(target, cond, settings, draft=draft)
    steps = result.target_forwards - 1
    assert reads.total <= steps + RESULT_COPIES, reads.sites.most_common(4)
