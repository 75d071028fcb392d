"""The node pack without a ComfyUI server: specs, node logic on the demo model, errors, interrupts.

Nodes run with a LocalHost (CPU, recorded progress and messages); the ComfyUI-specific layer is
nodes/host.py's ComfyHost and nodes/comfy_v3.py, exercised by tests/test_comfyui_real.py.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from pack import load_pack, run_node
from tiny import save_own_safetensors, tiny_gpt, tiny_tree_head

load_pack()
from specar_pack.engine.errors import CheckpointError, IncompatibleDrafterError, SettingsError, SpecARError  # noqa: E402
from specar_pack.engine.drafts.drafter_tree import DEFAULT_BRANCHING  # noqa: E402
from specar_pack.engine.drafts.tree_drafts import TreeShape  # noqa: E402
from specar_pack.engine.drafts.tree_head import save_tree_head  # noqa: E402
from specar_pack.engine.policies import ExactPolicy  # noqa: E402
from specar_pack.nodes import NODES, NODES_BY_ID  # noqa: E402
from specar_pack.nodes.decoding_nodes import POLICY_KNOBS  # noqa: E402
from specar_pack.engine.policies import POLICIES  # noqa: E402
from specar_pack.nodes.host import LocalHost, NodeInterrupted  # noqa: E402
from specar_pack.engine.session import DraftRecipe, run_job  # noqa: E402
from specar_pack.nodes.sampler_nodes import HEATMAP_EVENT, sampling_settings  # noqa: E402
from specar_pack.nodes.schema import CHOICE, COMBO, FLOAT, INT  # noqa: E402

SAMPLING = dict(prompt="red ring", seed=3, batch_size=2, cfg=2.0, temperature=1.0, top_k=100)


def run(node_id: str, host: LocalHost, **inputs: object) -> tuple:
    return run_node(node_id, host, **inputs)


@pytest.fixture(scope="module")
def demo() -> object:
    (model,) = run(
        "SpecARModelLoader", LocalHost(), model="demo", dtype="auto", family="auto", image_size=0, compile=False
    )
    return model


@pytest.mark.parametrize("spec", NODES, ids=[s.node_id for s in NODES])
def test_specs_are_consistent(spec) -> None:
    parameters = list(inspect.signature(spec.run).parameters)
    assert parameters[0] == "host" and parameters[1:] == [f.name for f in spec.inputs]
    for f in spec.inputs:
        for shown in (f, *(sub for case in f.cases for sub in case.inputs)):  # a choice's own inputs too
            assert shown.tooltip
            if shown.type in (INT, FLOAT):
                assert shown.min <= shown.default <= shown.max
            if shown.type in (COMBO, CHOICE):
                assert shown.default in shown.choices()
        optional_parameter = inspect.signature(spec.run).parameters[f.name].default is not inspect.Parameter.empty
        assert f.optional == optional_parameter, f.name
    assert len({n.node_id for n in NODES}) == len(NODES)


def test_sampler_with_jacobi_drafts(demo) -> None:
    host = LocalHost(node_id="7")
    (draft,) = run("SpecARJacobiDrafts", host, window=16, initialisation="row_above", coupled=False)
    images, heatmaps, stats, why = run("SpecARSampler", host, model=demo, draft=draft, **SAMPLING)
    assert images.shape == heatmaps.shape == (2, 32, 32, 3)
    assert why.shape[0] == 1 and why.shape[2] >= 2 * 150  # image | heatmap (exact: no policy panels)
    assert images.dtype == torch.float32 and 0 <= float(images.min()) and float(images.max()) <= 1
    assert "tokens/forward" in stats and "acceptance" in stats
    forwards = int(stats.split(" target forwards")[0].split("| ")[-1])
    assert forwards < 256  # drafts were accepted: fewer target forwards than tokens per image
    assert len(host.progress_reports) == forwards  # one progress report per target forward
    assert host.progress_reports[-1][:2] == (256, 256) and host.progress_reports[0][2]  # first one has a preview
    frames = [data for event, data in host.messages if event == HEATMAP_EVENT]
    assert frames and all(f["node"] == "7" for f in frames) and len({f["run"] for f in frames}) == 1
    assert frames[-1]["done"] and frames[-1]["committed"] == 256 and len(frames[-1]["cells"]) == 6 * 256
    assert len(frames) <= forwards + 1  # throttled, plus the final frame


def test_a_run_that_fails_ends_the_widget_with_the_reason() -> None:
    """A run that raises (here: the target returns NaN from its 20th forward) still sends a final frame,
    carrying the one-line reason, so the widget does not stay on "sampling…"."""
    (model,) = run(
        "SpecARModelLoader", LocalHost(), model="demo", dtype="auto", family="auto", image_size=0, compile=False
    )
    real_forward, calls = model.forward, []

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 20:
            out.logits.fill_(float("nan"))
        return out

    model.forward = forward
    host = LocalHost(node_id="9")
    with pytest.raises(SpecARError, match="the target returned NaN"):
        run("SpecARSampler", host, model=model, **SAMPLING)
    frames = [data for event, data in host.messages if event == HEATMAP_EVENT]
    assert frames[-1]["done"] and frames[-1]["error"].startswith("the target returned NaN or infinite logits")
    assert 0 < frames[-1]["committed"] < frames[-1]["total"]


def test_greedy_sampler_is_lossless_with_every_draft_source(demo) -> None:
    host = LocalHost()
    greedy = {**SAMPLING, "temperature": 0.0}
    settings = sampling_settings(demo, greedy["seed"], greedy["cfg"], 0.0, greedy["top_k"])
    plain = run_job(demo, greedy["prompt"], greedy["batch_size"], settings, DraftRecipe("ar")).images
    (jacobi,) = run("SpecARJacobiDrafts", host, window=8, initialisation="random", coupled=True)
    (drafter,) = run("SpecARDrafterModel", host, drafter="demo-drafter", gamma=4, dtype="auto", shape="chain")
    (auto,) = run("SpecARDrafterModel", host, drafter="demo-drafter", dtype="auto", shape="auto")
    for draft in (jacobi, drafter, auto, None):  # None: the sampler's own default, auto self-drafting
        fast, _, stats, _ = run("SpecARSampler", host, model=demo, draft=draft, **greedy)
        assert torch.equal(plain, fast)
        if draft is None or draft is auto:
            assert "auto (row-above Jacobi" in stats and "auto chose" in stats


def test_loader_compile_switch(demo) -> None:
    host = LocalHost()
    (compiled,) = run("SpecARModelLoader", host, model="demo", dtype="auto", family="auto", image_size=0, compile=True)
    assert compiled.compiled is not None and demo.compiled is None
    with pytest.raises(SettingsError, match="switch compile off"):
        run("SpecARModelLoader", host, model="mar-demo", dtype="auto", family="auto", image_size=0, compile=True)


def test_interrupt_stops_between_forwards(demo) -> None:
    host = LocalHost(interrupt_after=5)
    with pytest.raises(NodeInterrupted):
        run("SpecARSampler", host, model=demo, **SAMPLING)
    assert len(host.progress_reports) == 5
    frames = [data for _, data in host.messages]
    assert frames[-1]["committed"] < 256 and frames[-1]["done"]  # the widget is told the run ended there
    assert demo.device == torch.device("cpu") and demo.cache is None  # offloaded, cache released


def test_scale_enlarges_outputs_pixel_for_pixel_and_refuses_huge_ones(demo) -> None:
    host = LocalHost()
    small, small_heat, *_ = run("SpecARSampler", host, model=demo, **SAMPLING)
    large, large_heat, *_ = run("SpecARSampler", host, model=demo, **SAMPLING, scale=8)
    assert large.shape == (2, 256, 256, 3) and large_heat.shape == (2, 256, 256, 3)
    assert torch.equal(large[:, ::8, ::8], small) and torch.equal(large[:, 7::8, 7::8], small)
    assert torch.equal(large_heat[:, 3::8, 5::8], small_heat)
    with pytest.raises(SettingsError, match="scale 200 would make 6400-pixel images; outputs are at most 4096"):
        run("SpecARSampler", host, model=demo, **SAMPLING, scale=200)


def test_relaxation_preview_draws_one_seed_at_each_relaxation(demo) -> None:
    host = LocalHost()
    sampling = {k: v for k, v in SAMPLING.items() if k != "batch_size"}
    picture, stats = run("SpecARRelaxationPreview", host, model=demo, policy="gsd", relaxations="1, 0.5", **sampling)
    assert host.progress_reports[-1] == (1, 1, True)  # the preview ends on the finished picture
    lines = stats.splitlines()
    assert [line.split(":")[0] for line in lines] == ["relaxation 0", "relaxation 0.5", "relaxation 1"]
    assert picture.shape[0] == 1 and picture.shape[2] >= 3 * 160  # three labelled columns
    forwards = [int(line.split(" target forwards")[0].split()[-1]) for line in lines]
    *_, exact_stats, _ = run("SpecARSampler", host, model=demo, **{**SAMPLING, "batch_size": 1})
    assert forwards[0] == int(exact_stats.split(" target forwards")[0].split()[-1])  # relaxation 0: the lossless run
    assert forwards[2] <= forwards[0]
    many = ",".join(str(i / 10) for i in range(1, 9))
    for bad, why in (("0.5, 2", "between 0 and 1"), ("0, a", "'a' is not one"), (many, "at most 8")):
        with pytest.raises(SettingsError, match=why):
            run("SpecARRelaxationPreview", host, model=demo, policy="gsd", relaxations=bad, **sampling)


def test_compare_reports_speedup(demo) -> None:
    host = LocalHost()
    (draft,) = run("SpecARJacobiDrafts", host, window=16, initialisation="row_above", coupled=False)
    picture, stats = run("SpecARCompare", host, model=demo, draft=draft, **{**SAMPLING, "batch_size": 1}, timed_pairs=2)
    assert picture.dim() == 4 and picture.shape[0] == 1 and picture.shape[3] == 3
    assert picture.shape[2] >= 3 * 160  # three labelled columns, enlarged for their captions
    assert "fewer target forwards" in stats and "median of 2 timed pairs after a warm-up" in stats
    runs = [frame for event, frame in host.messages if event == HEATMAP_EVENT and frame.get("done")]
    assert len(runs) == 2 * 3  # a warm-up pair and two timed pairs
    final_value, final_total, with_preview = host.progress_reports[-1]
    assert final_value == final_total and with_preview  # the preview ends on the comparison, not a partial frame


def test_policy_node(demo) -> None:
    host = LocalHost()
    with pytest.raises(AssertionError, match="no input relaxation"):  # exact shows no slider
        run("SpecARAcceptancePolicy", host, policy="exact", relaxation=0.5)
    with pytest.raises(SettingsError, match="unknown acceptance policy 'typical'; available: exact"):
        NODES_BY_ID["SpecARAcceptancePolicy"].run(host, policy={"policy": "typical", "relaxation": 0.5})
    with pytest.raises(SettingsError, match="cfg_scale must be a finite number, got nan"):
        run("SpecARSampler", host, model=demo, **{**SAMPLING, "cfg": float("nan")})
    mask = torch.zeros(1, 32, 32)
    mask[:, :16] = 1.0
    (recipe,) = run("SpecARAcceptancePolicy", host, policy="gsd", relaxation=0.5, mask=mask)
    policy = recipe.build(demo)
    assert policy.region.shape == (1, 256)
    assert torch.equal(policy.region[0], (torch.arange(256) < 128).float())  # top 8 token rows
    images, *_ = run("SpecARSampler", host, model=demo, policy=recipe, **SAMPLING)
    assert images.shape[0] == 2


def test_the_policy_node_is_one_decision_lossless_at_relaxation_zero(demo) -> None:
    """The node's default is a relaxed policy at 0, which runs as the exact policy: the same images, bit for bit."""
    host = LocalHost()
    (default,) = run("SpecARAcceptancePolicy", host)
    assert default.relaxation == 0 and default.name != "exact" and isinstance(default.build(demo), ExactPolicy)
    assert default.describe() == f"{default.name} at 0 (exact)"
    (exact,) = run("SpecARAcceptancePolicy", host, policy="exact")
    (drafter,) = run("SpecARDrafterModel", host, drafter="demo-drafter", gamma=4, shape="chain")
    relaxed_at_zero, *_, stats, _ = run("SpecARSampler", host, model=demo, draft=drafter, policy=default, **SAMPLING)
    lossless, *_ = run("SpecARSampler", host, model=demo, draft=drafter, policy=exact, **SAMPLING)
    assert torch.equal(relaxed_at_zero, lossless) and "at 0 (exact)" in stats


def test_relaxed_policy_node_with_its_own_parameters_explains_its_acceptances(demo) -> None:
    host = LocalHost()
    with pytest.raises(SettingsError, match="tau"):
        run("SpecARAcceptancePolicy", host, policy="csd", relaxation=0.5, tv_threshold=2.0)
    (recipe,) = run("SpecARAcceptancePolicy", host, policy="csd", relaxation=0.5, tv_threshold=0.4)
    assert recipe.build(demo).tv_threshold == 0.4 and recipe.options == (("tv_threshold", 0.4),)
    (drafter,) = run("SpecARDrafterModel", host, drafter="demo-drafter", gamma=6, dtype="auto", shape="chain")
    *_, stats, why = run("SpecARSampler", host, model=demo, draft=drafter, policy=recipe, **SAMPLING)
    assert "policy csd (relaxation 0.5)" in stats
    assert why.shape[2] >= 4 * 150  # image | heatmap | entropy | TV


def test_every_policy_parameter_is_a_widget_at_the_engine_s_default() -> None:
    """Each policy shows all its native parameters; at their defaults the policy keeps its own settings."""
    for name, knobs in POLICY_KNOBS.items():
        if name == "cspd":
            assert [k.field.name for k in knobs] == ["inner_temperature", "max_tries"]
            continue
        factory = POLICIES[name]
        parameters = inspect.signature(factory).parameters
        native = [p for p in parameters if p not in ("self", "relaxation", "region", "model")]
        assert sorted(k.field.name for k in knobs) == sorted(native), name
        for knob in knobs:
            engine_default = parameters[knob.field.name].default
            if engine_default is None:  # the policy's own choice: shown as it is, or as 0 (automatic or off)
                own = {
                    "target_alike": getattr(factory, "groups_target_alike", None),
                    "ratio_bound": getattr(factory, "default_ratio_bound", None),
                    "evidence_margin": getattr(factory, "default_evidence_margin", None),
                }.get(knob.field.name)
                engine_default = 0 if own is None else own
            assert knob.field.default == engine_default, (name, knob.field.name)
        (recipe,) = run("SpecARAcceptancePolicy", LocalHost(), policy=name)
        assert recipe.options == (), name


def test_cspd_is_refused_on_a_token_model_in_the_artist_s_words(demo) -> None:
    (cspd,) = run("SpecARAcceptancePolicy", LocalHost(), policy="cspd", relaxation=0.5)
    with pytest.raises(
        SettingsError, match="accepts continuous .MAR. tokens and specar-demo draws discrete ones: pick one of"
    ):
        run("SpecARSampler", LocalHost(), model=demo, policy=cspd, **SAMPLING)


def test_policy_parameters_reach_the_policy(demo) -> None:
    host = LocalHost()
    (recipe,) = run(
        "SpecARAcceptancePolicy",
        host,
        policy="cascade",
        relaxation=0.5,
        ratio_bound=0.0,
        evidence_margin=0.0,
        target_alike=False,
        max_group=8,
    )
    options = dict(recipe.options)
    assert options == {"ratio_bound": math.inf, "evidence_margin": math.inf, "target_alike": 0.0, "max_group": 8.0}
    policy = recipe.build(demo)
    assert policy.ratio_bound is None and policy.evidence_margin is None and not policy.groups_target_alike
    with pytest.raises(SettingsError, match="power of two"):
        run("SpecARAcceptancePolicy", host, policy="cascade", relaxation=0.5, max_group=12)[0].build(demo)
    (lantern,) = run("SpecARAcceptancePolicy", host, policy="lantern", relaxation=0.3, neighbours=10, ratio_bound=5.0)
    built = lantern.build(demo)
    assert built.neighbours == 10 and built.ratio_bound == 5.0


def test_prompt_errors(demo) -> None:
    host = LocalHost()
    with pytest.raises(
        SettingsError,
        match=r"no class named 'red rings'\. Did you mean 'red ring' or .*\? Class names: red circle, .*ring\.",
    ):
        run("SpecARSampler", host, model=demo, **{**SAMPLING, "prompt": "red rings"})
    with pytest.raises(SettingsError, match="classes 0..15"):
        run("SpecARSampler", host, model=demo, **{**SAMPLING, "prompt": "99"})
    images, *_ = run("SpecARSampler", host, model=demo, **{**SAMPLING, "prompt": "5", "batch_size": 1})
    assert images.shape[0] == 1


def test_tree_head_node_is_lossless_and_cascade_needs_a_tree(demo) -> None:
    host = LocalHost()
    greedy = {**SAMPLING, "temperature": 0.0}
    plain, *_ = run("SpecARSampler", host, model=demo, **greedy)
    trees = {  # the head's CFG scale keeps it lossless
        "auto": {},
        "dynamic": dict(top_k=6, depth=5, nodes=30, guidance=0.0),
        "static": dict(branching="3,2,1,1", guidance=4.0),
    }
    for tree, settings in trees.items():
        (draft,) = run("SpecARTreeHead", host, head="demo-tree-head", tree=tree, **settings)
        fast, _, stats, _ = run("SpecARSampler", host, model=demo, draft=draft, **greedy)
        assert torch.equal(plain, fast) and "tree" in stats
        assert tree != "auto" or "auto (row-above Jacobi or tree head" in stats
    (cascade,) = run("SpecARAcceptancePolicy", host, policy="cascade", relaxation=0.5)
    images, _, stats, why = run("SpecARSampler", host, model=demo, draft=draft, policy=cascade, **SAMPLING)
    assert images.shape == (2, 32, 32, 3) and "cascade" in stats
    (jacobi,) = run("SpecARJacobiDrafts", host, window=8, initialisation="random", coupled=False)
    with pytest.raises(SettingsError, match="siblings of a draft tree"):
        run("SpecARSampler", host, model=demo, draft=jacobi, policy=cascade, **SAMPLING)
    with pytest.raises(SettingsError, match="branching"):
        run(
            "SpecARTreeHead",
            host,
            head="demo-tree-head",
            tree="static",
            branching="3,two",
        )


def test_a_run_loads_the_target_and_its_drafters_together_with_room_for_a_step(demo) -> None:
    host = LocalHost()
    (head,) = run(
        "SpecARTreeHead",
        host,
        head="demo-tree-head",
        tree="dynamic",
        top_k=4,
        depth=4,
        nodes=12,
    )
    (drafter,) = run("SpecARDrafterModel", host, drafter="demo-drafter", gamma=3, dtype="auto", shape="chain")
    run("SpecARSampler", host, model=demo, draft=head, **SAMPLING)
    run("SpecARSampler", host, model=demo, draft=drafter, **SAMPLING)
    run("SpecARSampler", host, model=demo, **SAMPLING)
    (tree_models, tree_bytes), (drafter_models, drafter_bytes), (auto_models, _) = host.loads
    assert tree_models == (demo, head.tree_head)
    assert drafter_models[0] is demo and drafter_models[1] is drafter.drafter and auto_models == (demo,)
    vocab, images = demo.vocab_size, SAMPLING["batch_size"]
    assert tree_bytes == 5 * images * (1 + 12) * vocab * 4 and drafter_bytes == 5 * images * (1 + 3) * vocab * 4


def test_drafter_node_drafts_static_trees_losslessly_and_cascade_relaxes_them(demo) -> None:
    host = LocalHost()
    greedy = {**SAMPLING, "temperature": 0.0}
    plain, *_ = run("SpecARSampler", host, model=demo, **greedy)
    (tree,) = run(
        "SpecARDrafterModel",
        host,
        drafter="demo-drafter",
        dtype="auto",
        shape="static tree",
        branching="2,2,1*6",
    )
    fast, _, stats, _ = run("SpecARSampler", host, model=demo, draft=tree, **greedy)
    assert torch.equal(plain, fast) and "static 2-2-1x6" in stats
    (cascade,) = run("SpecARAcceptancePolicy", host, policy="cascade", relaxation=1.0)
    images, _, stats, _ = run("SpecARSampler", host, model=demo, draft=tree, policy=cascade, **SAMPLING)
    assert images.shape == (2, 32, 32, 3) and "cascade" in stats
    with pytest.raises(SettingsError, match="branching"):
        run(
            "SpecARDrafterModel",
            host,
            drafter="demo-drafter",
            dtype="auto",
            shape="static tree",
            branching="2,two",
        )
    with pytest.raises(SettingsError, match="chain"):
        run(
            "SpecARDrafterModel",
            host,
            drafter="mar-demo-drafter",
            dtype="auto",
            shape="static tree",
            branching="2,1",
        )
    default = NODES_BY_ID["SpecARDrafterModel"].field("shape").defaults("static tree")["branching"]
    assert TreeShape.parse_branching(default) == DEFAULT_BRANCHING


def test_model_folder_listing_loading_and_errors(tmp_path: Path, demo) -> None:
    folder = tmp_path / "specar"
    (folder / "tiny-dir").mkdir(parents=True)
    save_own_safetensors(tiny_gpt(), folder / "tiny-dir" / "gpt.safetensors")
    save_own_safetensors(tiny_gpt(1), folder / "tiny.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint")
    (folder / "notes.txt").write_text("ignored")
    host = LocalHost(folders=[folder])
    choices = NODES_BY_ID["SpecARModelLoader"].field("model").choices(host.model_folders())
    assert choices == ["demo", "mar-demo", "broken.safetensors", "tiny-dir", "tiny.safetensors"]
    (tiny,) = run("SpecARModelLoader", host, model="tiny-dir", dtype="fp32", family="auto", image_size=0, compile=False)
    assert tiny.grid == (8, 8)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        run(
            "SpecARModelLoader",
            host,
            model="broken.safetensors",
            dtype="auto",
            family="auto",
            image_size=0,
            compile=False,
        )
    with pytest.raises(SettingsError, match="no VQ tokenizer"):
        run("SpecARSampler", host, model=tiny, **{**SAMPLING, "prompt": "1"})
    outside = tmp_path / "elsewhere.safetensors"  # a real checkpoint, but not in the model folders
    save_own_safetensors(tiny_gpt(), outside)
    with pytest.raises(SettingsError, match="is not among the bundled models or those in .*models/specar/<name>/"):
        run("SpecARModelLoader", host, model=str(outside), dtype="auto", family="auto", image_size=0, compile=False)
    (mismatched,) = run("SpecARDrafterModel", host, drafter="tiny.safetensors", gamma=4, dtype="fp32", shape="chain")
    with pytest.raises(IncompatibleDrafterError):
        run("SpecARSampler", host, model=demo, draft=mismatched, **SAMPLING)
    save_tree_head(tiny_tree_head(tiny), folder / "tiny-head.safetensors")
    (wrong_head,) = run(
        "SpecARTreeHead",
        host,
        head="tiny-head.safetensors",
        tree="dynamic",
        top_k=4,
        depth=3,
        nodes=8,
    )
    with pytest.raises(IncompatibleDrafterError, match="tree head"):
        run("SpecARSampler", host, model=demo, draft=wrong_head, **SAMPLING)


def test_hex_cells_match_heatmap_colours(demo) -> None:
    host = LocalHost()
    (draft,) = run("SpecARJacobiDrafts", host, window=16, initialisation="row_above", coupled=False)
    _, heatmaps, *_ = run("SpecARSampler", host, model=demo, draft=draft, **SAMPLING)
    final = [data for _, data in host.messages][-1]
    cells = torch.tensor(list(bytes.fromhex(final["cells"])), dtype=torch.uint8).reshape(16, 16, 3)
    pixels = (heatmaps[0, ::2, ::2] * 255).round().to(torch.uint8)  # one pixel per token (32 px / 16 tokens)
    assert torch.equal(cells, pixels)


def test_bundled_demo_is_found_without_folders() -> None:
    assert NODES_BY_ID["SpecARDrafterModel"].field("drafter").choices() == ["demo-drafter", "mar-demo-drafter"]
    assert NODES_BY_ID["SpecARModelLoader"].field("model").choices([Path("/nonexistent")]) == ["demo", "mar-demo"]


def test_the_web_widget_serves_every_node_that_sends_heatmap_frames() -> None:
    script = (Path(__file__).resolve().parents[1] / "web" / "specar.js").read_text()
    listed = script.split("const NODE_TYPES = new Set([", 1)[1].split("])", 1)[0]
    assert {name.strip().strip('"') for name in listed.split(",")} == {s.node_id for s in NODES if s.needs_node_id}


def test_every_node_has_a_v3_class_a_reader_can_find() -> None:
    """nodes/comfy_v3.py imports only inside ComfyUI; the real-ComfyUI test checks what the classes register."""
    source = (Path(__file__).resolve().parents[1] / "nodes" / "comfy_v3.py").read_text()
    for spec in NODES:
        assert f"class {spec.node_id}(SpecARNode):" in source and f"    {spec.node_id},\n" in source
