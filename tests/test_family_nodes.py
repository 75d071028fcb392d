"""Every real-model family through the ComfyUI nodes, on tiny random checkpoints in a models folder.

The folders carry the names the README and the family workflows use, so the loader lists them as
a user would see them; generation runs loader -> Jacobi drafts -> sampler, as the workflows do.
"""

from __future__ import annotations

import pytest
import torch
from functools import partial

from tiny_hf import build_tiny_chameleon, build_tiny_emu3, build_tiny_janus, build_tiny_llamagen_t2i

from pack import load_pack

load_pack()
from specar_pack.nodes import NODES_BY_ID  # noqa: E402
from specar_pack.nodes.host import LocalHost  # noqa: E402

# folder -> (builder, family widget, image_size widget, decoded pixels per side)
FAMILIES = {
    "Janus-Pro-7B": (build_tiny_janus, "janus", 0, 16),
    "Emu3-Gen-hf": (build_tiny_emu3, "auto", 16, 16),
    "Lumina-mGPT-7B-768": (partial(build_tiny_chameleon, lumina=True, vqgan=True), "auto", 128, 16),
    "Anole-7b-v0.1-hf": (partial(build_tiny_chameleon, lumina=False, vqgan=True), "anole", 64, 8),
    "LlamaGen-T2I-XL-512": (build_tiny_llamagen_t2i, "auto", 0, 16),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> LocalHost:
    folder = tmp_path_factory.mktemp("models") / "specar"
    for name, (build, *_rest) in FAMILIES.items():
        build(folder / name)
    return LocalHost(folders=[folder])


@pytest.mark.parametrize("folder", list(FAMILIES))
def test_family_generates_through_the_nodes(host: LocalHost, folder: str) -> None:
    _, family, image_size, pixels = FAMILIES[folder]
    choices = NODES_BY_ID["SpecARModelLoader"].field("model").choices(host.model_folders())
    assert folder in choices
    (model,) = NODES_BY_ID["SpecARModelLoader"].run(
        host, model=folder, dtype="auto", family=family, image_size=image_size, compile=False
    )
    (draft,) = NODES_BY_ID["SpecARJacobiDrafts"].run(host, window=8, initialisation="row_above", coupled=False)
    images, heatmaps, stats, _ = NODES_BY_ID["SpecARSampler"].run(
        host,
        model=model,
        draft=draft,
        prompt="a red cat on the grass",
        seed=2,
        batch_size=2,
        cfg=3.0,
        temperature=1.0,
        top_k=50,
        scale=1,
    )
    assert images.shape == (2, pixels, pixels, 3) and heatmaps.shape[0] == 2
    assert float(images.std()) > 0 and "tokens/forward" in stats
    assert torch.isfinite(images).all()
