"""The node pack with continuous-token (MAR) models: loader, drafter, cspd policy, sampler, compare."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pack import load_pack, run_node
from tiny import tiny_mar

load_pack()
from specar_pack.engine.continuous.checkpoint import save_mar  # noqa: E402
from specar_pack.engine.errors import IncompatibleDrafterError, SettingsError  # noqa: E402
from specar_pack.nodes.host import LocalHost, NodeInterrupted  # noqa: E402
from specar_pack.nodes.sampler_nodes import HEATMAP_EVENT  # noqa: E402

SAMPLING = dict(prompt="green", seed=3, batch_size=2, cfg=2.0, temperature=1.0, top_k=100)


def run(node_id: str, host: LocalHost, **inputs: object) -> tuple:
    return run_node(node_id, host, **inputs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("specar")
    names = {"class_names": ["red", "green", "blue"]}
    save_mar(tiny_mar(0).mar, root / "mar-tiny.safetensors", names, half=False)
    save_mar(tiny_mar(0, perturb=3e-4).mar, root / "mar-tiny-draft.safetensors", names, half=False)
    return root


def _loaded(host: LocalHost) -> tuple[object, object]:
    (model,) = run(
        "SpecARModelLoader",
        host,
        model="mar-tiny.safetensors",
        dtype="auto",
        family="auto",
        image_size=0,
        compile=False,
    )
    (draft,) = run(
        "SpecARDrafterModel",
        host,
        drafter="mar-tiny-draft.safetensors",
        gamma=2,
        dtype="auto",
        shape="chain",
    )
    model.default_settings = model.default_settings.with_(num_iter=6, num_sampling_steps=5)
    return model, draft


def test_sampler_runs_cspd_and_streams_the_heatmap(folder: Path) -> None:
    host = LocalHost(folders=[folder], node_id="9")
    model, draft = _loaded(host)
    (policy,) = run("SpecARAcceptancePolicy", host, policy="cspd", relaxation=0.5)
    images, heatmaps, stats, why = run("SpecARSampler", host, model=model, draft=draft, policy=policy, **SAMPLING)
    assert images.shape == heatmaps.shape == (2, 8, 8, 3)
    assert "CSpD" in stats and "acceptance" in stats and why.shape[0] == 1
    passes = int(stats.split(" target passes")[0].split("| ")[-1])
    assert passes < 6 and len(host.progress_reports) == passes
    frames = [data for event, data in host.messages if event == HEATMAP_EVENT]
    assert frames[-1]["done"] and frames[-1]["committed"] == 16 and frames[-1]["grid"] == [4, 4]


def test_plain_sampling_compare_and_interrupts(folder: Path) -> None:
    host = LocalHost(folders=[folder])
    model, draft = _loaded(host)
    _, _, stats, _ = run("SpecARSampler", host, model=model, **SAMPLING)
    assert stats.startswith("plain MAR") and "6 target passes" in stats
    picture, summary = run("SpecARCompare", host, model=model, draft=draft, **{**SAMPLING, "batch_size": 1})
    assert picture.shape[0] == 1 and "plain MAR" in summary and "fewer target forwards" in summary
    with pytest.raises(NodeInterrupted):
        run("SpecARSampler", LocalHost(folders=[folder], interrupt_after=2), model=model, draft=draft, **SAMPLING)


def test_discrete_settings_are_refused_with_a_clear_message(folder: Path) -> None:
    host = LocalHost(folders=[folder])
    model, draft = _loaded(host)
    (csd,) = run("SpecARAcceptancePolicy", host, policy="csd", relaxation=0.5)
    with pytest.raises(SettingsError, match="Gaussian test"):
        run("SpecARSampler", host, model=model, draft=draft, policy=csd, **SAMPLING)
    (jacobi,) = run("SpecARJacobiDrafts", host, window=8, initialisation="random", coupled=False)
    with pytest.raises(SettingsError, match="continuous tokens"):
        run("SpecARSampler", host, model=model, draft=jacobi, **SAMPLING)
    with pytest.raises(SettingsError, match="temperature"):
        run("SpecARSampler", host, model=model, **{**SAMPLING, "temperature": 0.0})
    with pytest.raises(SettingsError, match="inner_temperature"):
        run("SpecARAcceptancePolicy", host, policy="cspd", inner_temperature=0.5)
    loader = dict(dtype="auto", family="auto", compile=False)
    for name, model_named in (("mar-tiny.safetensors", "a MAR model"), ("demo", "the bundled demo target")):
        with pytest.raises(SettingsError, match=f"{model_named} draws the one image size it was trained for"):
            run("SpecARModelLoader", host, model=name, image_size=512, **loader)
    (discrete,) = run("SpecARModelLoader", host, model="demo", image_size=0, **loader)
    with pytest.raises(IncompatibleDrafterError, match="continuous tokens"):
        run("SpecARSampler", host, model=discrete, draft=draft, **{**SAMPLING, "prompt": "red ring"})
    assert model.device == torch.device("cpu")
