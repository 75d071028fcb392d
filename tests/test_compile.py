"""The compiled fast path passes the same losslessness tests as the eager one.

Compiled forwards pad every block to a bucket and read a fixed-capacity cache; these tests run
the real ``torch.compile`` (inductor) on tiny random LlamaGen models and on the demo model.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor
from tiny import tiny_drafter, tiny_model, tiny_tree_head
from test_lossless import _target_distributions

from specar import Conditioning, DrafterModelDrafts, DraftSource, JacobiDrafts, SamplingSettings, generate
from specar.compile import BUCKETS, CompiledForward, bucket_for, unavailable_reason
from specar.drafts.drafter_tree import DrafterTreeDrafts
from specar.drafts.auto import AutoDrafts
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape
from specar.drafts.tree_head import BUNDLED_HEAD, TreeHead, resolve_tree_head
from specar.lab.bench import plan_calls, run_call
from specar.lab.fidelity import ks_uniform, randomized_pit
from specar.methods import MethodOptions
from specar.models.llamagen.adapter import LlamaGenModel
from specar.session import run_job

pytestmark = pytest.mark.skipif(
    unavailable_reason(torch.device("cpu")) is not None, reason="torch.compile needs a C compiler here"
)

COND = Conditioning.classes([1, 4, 7])


def compiled(model: LlamaGenModel) -> LlamaGenModel:
    model.set_compile(True)
    return model


@pytest.fixture(scope="module")
def target() -> LlamaGenModel:
    return compiled(tiny_model(0))


@pytest.fixture(scope="module")
def drafter() -> LlamaGenModel:
    return compiled(tiny_drafter())


def test_buckets_hold_every_block_and_reuse_compiled_shapes() -> None:
    assert [bucket_for(k, set()) for k in (1, 2, 3, 4, 6, 17, 18, 257)] == [1, 2, 3, 5, 9, 17, 33, 257]
    assert bucket_for(258, set()) is None
    assert bucket_for(5, {17}) == 17 and bucket_for(5, {3, 9, 17}) == 9 and bucket_for(18, {17}) == 33
    assert bucket_for(17, {129}) == 17 and bucket_for(1, {17}) == 1  # no padding into a far larger bucket
    assert list(BUCKETS) == sorted(BUCKETS)


HEAD_SHAPES = {
    "tree-static": TreeShape(kind="static", branching=(3, 2, 1)),
    "tree-dynamic": TreeShape(kind="dynamic", top_k=3, depth=4, nodes=10),
    "tree-chain": TreeShape(kind="static", branching=(1,) * 6),
}


@pytest.fixture(scope="module")
def head(target: LlamaGenModel) -> TreeHead:
    """A head asked to compile (on CPUs a head compiles with its target only when asked), shared as the target
    is: its compiled steps serve every test's drafts."""
    head = tiny_tree_head(target)
    head.set_compile(True)
    return head


def compiled_calls(monkeypatch: pytest.MonkeyPatch, forward: CompiledForward) -> list[int]:
    """The buckets of the calls ``forward`` serves from here on (each a compiled step, not an eager one)."""
    calls: list[int] = []
    call = CompiledForward.__call__

    def counted(self: CompiledForward, bucket: int, *args: torch.Tensor) -> object:
        if self is forward:
            calls.append(bucket)
        return call(self, bucket, *args)

    monkeypatch.setattr(CompiledForward, "__call__", counted)
    return calls


@pytest.mark.parametrize("source", ["ar", "jacobi", "drafter", "drafter-tree", *HEAD_SHAPES, "auto-head"])
def test_compiled_greedy_equals_eager_plain_ar(
    monkeypatch: pytest.MonkeyPatch, target: LlamaGenModel, drafter: LlamaGenModel, head: TreeHead, source: str
) -> None:
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=5)
    drafts = {
        "ar": lambda: None,
        "jacobi": lambda: JacobiDrafts(window=16),
        "drafter": lambda: DrafterModelDrafts(drafter, gamma=4),
        "drafter-tree": lambda: DrafterTreeDrafts(drafter, branching=(3, 2, 1, 1)),
        **{name: (lambda shape=shape: TreeHeadDrafts(head, shape)) for name, shape in HEAD_SHAPES.items()},
        "auto-head": lambda: AutoDrafts(drafter, head),
    }
    eager_ar = generate(tiny_model(0), COND, settings)
    assert head.compiled is not None
    head_steps = compiled_calls(monkeypatch, head.compiled)
    spec = generate(target, COND, settings, draft=drafts[source]())
    assert torch.equal(spec.tokens, eager_ar.tokens)
    assert spec.finished
    assert target.compiled is not None and target.compiled.active and target.compile_seconds > 0
    if source in HEAD_SHAPES:  # a head drafts through compiled steps when its target is compiled
        assert head.compiled.active and head_steps


SAMPLED = SamplingSettings(cfg_scale=2.0, top_k=24)


def sampled_images(target: LlamaGenModel, draft: Callable[[], DraftSource], seed: int) -> tuple[Conditioning, Tensor]:
    """48 images, drawn ``COND``'s batch at a time with fresh drafts and seeds: at that batch they run on the
    forwards the greedy tests compiled (each batch size compiles every bucket afresh)."""
    batch = len(COND.class_ids)
    calls = [Conditioning.classes([(batch * call + i) % 10 for i in range(batch)]) for call in range(48 // batch)]
    tokens = [
        generate(target, cond, SAMPLED.with_(seed=seed + n), draft=draft()).tokens for n, cond in enumerate(calls)
    ]
    return Conditioning.classes([c for cond in calls for c in cond.class_ids]), torch.cat(tokens)


def follows_target(target: LlamaGenModel, cond: Conditioning, tokens: Tensor) -> bool:
    """Every token's randomized PIT under the target's own distribution is uniform (KS p above 0.001)."""
    p = _target_distributions(target, cond, tokens, SAMPLED)
    return ks_uniform(randomized_pit(p, tokens))[1] > 0.001


@pytest.mark.parametrize("shape", ["tree-chain", "tree-static"])
def test_compiled_head_follows_the_target_distribution(target: LlamaGenModel, head: TreeHead, shape: str) -> None:
    assert follows_target(target, *sampled_images(target, lambda: TreeHeadDrafts(head, HEAD_SHAPES[shape]), 2025))


def test_drafters_and_heads_follow_their_target_s_compile_switch(target: LlamaGenModel) -> None:
    eager_target, head, drafter = tiny_model(0), tiny_tree_head(target, seed=3), tiny_drafter()
    head.set_compile(True)
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=5)
    plain = generate(eager_target, COND, settings).tokens
    for draft in (TreeHeadDrafts(head, HEAD_SHAPES["tree-chain"]), DrafterModelDrafts(drafter, gamma=4)):
        assert torch.equal(generate(eager_target, COND, settings, draft=draft).tokens, plain)
    assert head.compiled is None and drafter.compiled is None  # an eager target: all eager
    generate(target, COND, settings, draft=DrafterModelDrafts(drafter, gamma=4))  # a compiled target: one switch
    assert drafter.compiled is not None and drafter.compiled.active and drafter.compile_seconds > 0
    generate(target, COND, settings, draft=TreeHeadDrafts(head, HEAD_SHAPES["tree-chain"]))
    assert head.compiled is None  # on a CPU a head compiles only when asked


@pytest.mark.parametrize("source", ["jacobi", "drafter"])
def test_compiled_whole_images_follow_the_target_distribution(
    target: LlamaGenModel, drafter: LlamaGenModel, source: str
) -> None:
    draft = (lambda: JacobiDrafts(window=16)) if source == "jacobi" else (lambda: DrafterModelDrafts(drafter, gamma=4))
    assert follows_target(target, *sampled_images(target, draft, 2024))


def test_compiled_demo_is_lossless() -> None:
    from specar.demo.model import load_demo

    demo = load_demo(device="cpu")
    settings = demo.default_settings.with_(greedy=True, seed=3)
    eager = generate(demo, Conditioning.classes([2, 9]), settings)
    demo.set_compile(True)
    # the stats line says how long a run spent compiling, when it compiled anything
    first, again = (run_job(demo, "2", 2, settings).summary for _ in range(2))
    assert " s of it compiling" in first and "compiling" not in again
    head = resolve_tree_head(BUNDLED_HEAD, demo)
    head.set_compile(True)
    chain = TreeShape(kind="static", branching=(1,) * 8)
    for draft in (None, JacobiDrafts(window=16, init="row_above"), TreeHeadDrafts(head, chain)):
        assert torch.equal(generate(demo, Conditioning.classes([2, 9]), settings, draft=draft).tokens, eager.tokens)
    assert head.compiled is not None and head.compiled.active
    # one compiled forward per block bucket serves every read window of the cache: nothing recompiles
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    generate(demo, Conditioning.classes([5, 11]), settings.with_(greedy=False), draft=JacobiDrafts(16, "row_above"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert demo.compiled is not None and len(demo.compiled.compiled) == len(demo.compiled.buckets)


def test_without_a_compiler_it_runs_eagerly_after_one_notice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "")
    model = tiny_model(0)
    model.set_compile(True)
    assert capsys.readouterr().err.count("running eagerly (no C compiler") == 1
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=5)
    assert torch.equal(
        generate(model, COND, settings, draft=JacobiDrafts(window=8)).tokens,
        generate(tiny_model(0), COND, settings).tokens,
    )
    assert model.compile_seconds == 0.0 and not model.cache


def test_a_failed_compilation_falls_back_to_eager(capsys: pytest.CaptureFixture[str]) -> None:
    def unlowerable(*tensors: torch.Tensor) -> torch.Tensor:
        return torch.tensor(tensors[0].tolist())  # data-dependent: fullgraph compilation refuses it

    forward = CompiledForward(unlowerable, torch.device("cpu"), "tiny")
    with pytest.raises(RuntimeError):
        forward(1, torch.ones(2))
    assert not forward.active and "compilation failed" in capsys.readouterr().err
    assert forward.bucket(1) is None


def test_bench_takes_compiling_off_a_call_s_times() -> None:
    model = compiled(tiny_model(0))
    call = plan_calls(1, 1, SamplingSettings(cfg_scale=3.0, seed=5))[0]
    result = run_call(model, "jacobi", lambda indices: Conditioning.classes([1] * len(indices)), call, MethodOptions())
    assert model.compile_seconds > 0  # every bucket compiled inside this call
    assert 0 < result.model_seconds < result.wall_seconds < model.compile_seconds
