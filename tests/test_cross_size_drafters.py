"""Cross-size drafter pairs (issue 35, item 2): a smaller model of the target's family drafts for it.

For every family a tiny target and two smaller drafters sharing its tokenizer and codes are saved like real
checkpoints and loaded with ``specar.load_model``: a *narrower* one (another width and depth, its own random
weights, as LlamaGen-B is to LlamaGen-XL or Janus-Pro-1B to -7B) and a *shallower* one (the target's first
layers, so it agrees with the target often). Greedy decoding with either equals plain AR token for token, and
sampled images follow the target's distribution. Drafters that do not fit are refused in one line that says why.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from tiny import tiny_gpt, tiny_model_dir
from tiny_hf import WORDS, build_tiny_chameleon, build_tiny_emu3, build_tiny_janus, build_tiny_llamagen_t2i

from specar import Conditioning, DrafterModelDrafts, SamplingSettings, generate, load_model, processed_distributions
from specar.drafts.drafter import check_drafter_fits, place_drafter
from specar.errors import IncompatibleDrafterError
from specar.lab.fidelity import ks_uniform, randomized_pit

PROMPTS = ("a red cat on the grass", "blue sky")
TARGET_LAYERS = 3


@dataclass
class Pair:
    """A family's target folder, its smaller drafters' folders, and how to load and condition them."""

    target: Path
    drafters: dict[str, Path]
    cond: Conditioning
    load: dict[str, object] = field(default_factory=dict)


def shallower_copy(source: Path, destination: Path, layers: int) -> Path:
    """``source`` with only its first ``layers`` decoder layers (weights and config): a deeper model's own
    first layers, final norm and head, which agree with it more often than a random drafter."""
    from safetensors.torch import load_file, save_file

    def keep(key: str) -> bool:  # not a decoder layer from ``layers`` on (Janus' vision encoder stays whole)
        found = re.search(r"(?:^|\.)layers\.(\d+)\.", key)
        return found is None or "vision_model" in key or int(found.group(1)) < layers

    shutil.copytree(source, destination)
    for path in destination.iterdir():
        if path.suffix == ".safetensors" and not path.name.startswith("vq"):
            state = load_file(str(path))
            save_file({k: v for k, v in state.items() if keep(k)}, str(path), metadata={"format": "pt"})
        elif path.suffix == ".pt" and not path.name.startswith("vq"):
            saved = torch.load(path, weights_only=False)
            saved["model"] = {k: v for k, v in saved["model"].items() if keep(k)}
            torch.save(saved, path)
    config_path = destination / "config.json"
    config = json.loads(config_path.read_text())
    if "text_config" in config:
        config["text_config"]["num_hidden_layers"] = layers
    elif "num_hidden_layers" in config:
        config["num_hidden_layers"] = layers
    config_path.write_text(json.dumps(config))
    return destination


def _llamagen_c2i(root: Path) -> Pair:
    target = tiny_model_dir(root / "target", tiny_gpt(0, n_layer=TARGET_LAYERS), 4, with_vq=False)
    narrower = tiny_model_dir(root / "narrower", tiny_gpt(1, dim=32, n_layer=1, n_head=2), 2, with_vq=False)
    return Pair(target, {"narrower": narrower}, Conditioning.classes([1, 4, 7]))


def _llamagen_t2i(root: Path) -> Pair:
    target = build_tiny_llamagen_t2i(root / "target", n_layer=TARGET_LAYERS)
    narrower = build_tiny_llamagen_t2i(root / "narrower", seed=1, dim=32, n_layer=1, n_head=2)
    return Pair(target, {"narrower": narrower}, Conditioning(prompts=PROMPTS))


def _janus(root: Path) -> Pair:
    target = build_tiny_janus(root / "target", layers=TARGET_LAYERS)
    narrower = build_tiny_janus(root / "narrower", seed=1, hidden_size=32, layers=1, heads=2)
    return Pair(target, {"narrower": narrower}, Conditioning(prompts=PROMPTS))


def _lumina(root: Path) -> Pair:
    target = build_tiny_chameleon(root / "Lumina-mGPT-target-128", lumina=True, layers=TARGET_LAYERS)
    narrower = build_tiny_chameleon(
        root / "Lumina-mGPT-narrower-128", lumina=True, seed=1, hidden_size=32, layers=1, heads=2
    )
    return Pair(target, {"narrower": narrower}, Conditioning(prompts=PROMPTS))


def _anole(root: Path) -> Pair:
    target = build_tiny_chameleon(root / "anole-target", lumina=False, layers=TARGET_LAYERS)
    narrower = build_tiny_chameleon(root / "anole-narrower", lumina=False, seed=1, hidden_size=32, layers=1, heads=2)
    return Pair(target, {"narrower": narrower}, Conditioning(prompts=PROMPTS), {"image_size": 128})


def _emu3(root: Path) -> Pair:
    target = build_tiny_emu3(root / "target", layers=TARGET_LAYERS)
    narrower = build_tiny_emu3(root / "narrower", seed=1, hidden_size=32, layers=1, heads=2, kv_heads=1)
    return Pair(target, {"narrower": narrower}, Conditioning(prompts=PROMPTS), {"image_size": 16})


FAMILIES: dict[str, Callable[[Path], Pair]] = {
    "llamagen-c2i": _llamagen_c2i,
    "llamagen-t2i": _llamagen_t2i,
    "janus": _janus,
    "lumina-mgpt": _lumina,
    "anole": _anole,
    "emu3": _emu3,
}
SIZES = ("narrower", "shallower")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Pair]:
    """A family's pair, built on first use (a test of one family builds only that family's)."""
    built: dict[str, Pair] = {}

    def get(family: str) -> Pair:
        if family not in built:
            root = tmp_path_factory.mktemp(family)
            made = FAMILIES[family](root)
            name = "Lumina-mGPT-shallower-128" if family == "lumina-mgpt" else "shallower"  # the size, in the name
            made.drafters["shallower"] = shallower_copy(made.target, root / name, layers=TARGET_LAYERS - 1)
            built[family] = made
        return built[family]

    return get


def _load(built: Pair, which: str) -> object:
    path = built.target if which == "target" else built.drafters[which]
    return load_model(path, device="cpu", dtype="fp32", **built.load)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_with_a_smaller_drafter_equals_plain_ar(pair: Callable[[str], Pair], family: str, size: str) -> None:
    built = pair(family)
    target, drafter = _load(built, "target"), _load(built, size)
    assert drafter.family == target.family and drafter.hidden_size <= target.hidden_size
    check_drafter_fits(target, drafter)
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=5)
    plain = generate(target, built.cond, settings)
    spec = generate(target, built.cond, settings, draft=DrafterModelDrafts(drafter, gamma=4))
    assert torch.equal(spec.tokens, plain.tokens)
    assert spec.finished and spec.target_forwards <= plain.target_forwards
    assert len(set(plain.tokens[0].tolist())) > 8  # the target does not repeat one code
    if size == "shallower":  # the target's own first layers agree with it often
        assert spec.acceptance_rate > 0.1 and spec.target_forwards < plain.target_forwards


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sampled_images_follow_the_target_distribution(pair: Callable[[str], Pair], family: str, size: str) -> None:
    """The randomised PIT of every token of 48 sampled images under the target's teacher-forced distribution
    is uniform (KS p > 0.001, as tests/test_lossless.py asks); both drafters are accepted sometimes, not always."""
    built = pair(family)
    target, drafter = _load(built, "target"), _load(built, size)
    settings = SamplingSettings(cfg_scale=3.0, top_k=40, seed=2024)
    if built.cond.class_ids is not None:
        cond = Conditioning.classes([i % 10 for i in range(48)])
    else:
        cond = Conditioning(prompts=tuple(PROMPTS[i % 2] for i in range(48)))
    result = generate(target, cond, settings, draft=DrafterModelDrafts(drafter, gamma=4))
    assert 0 < result.acceptance_rate < 1
    p = processed_distributions(target, cond, result.tokens, settings)
    assert ks_uniform(randomized_pit(p, result.tokens))[1] > 0.001


def _refusal(target: object, drafter: object) -> str:
    with pytest.raises(IncompatibleDrafterError) as caught:
        check_drafter_fits(target, drafter)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"drafter {drafter.name} does not fit target {target.name}: ")
    return message.split(": ", 1)[1]


def test_another_vocabulary_is_refused(pair: Callable[[str], Pair], tmp_path: Path) -> None:
    built = pair("llamagen-c2i")
    fewer_codes = tiny_model_dir(tmp_path / "d", tiny_gpt(1, vocab_size=32, dim=32), 4, False)
    assert _refusal(_load(built, "target"), load_model(fewer_codes, "cpu", "fp32")) == (
        "vocabulary 32 vs the target's 64"
    )


def test_another_image_token_map_is_refused(pair: Callable[[str], Pair], tmp_path: Path) -> None:
    """Chameleon and Emu3 codes are entries of the text vocabulary: the same 64 codes at other ids do not fit."""
    built = pair("lumina-mgpt")
    other = build_tiny_chameleon(tmp_path / "Lumina-mGPT-other-128", lumina=True, hidden_size=32, code_order_seed=7)
    assert _refusal(_load(built, "target"), load_model(other, "cpu", "fp32")) == (
        "its image codes are other tokens of its text vocabulary than the target's"
    )


def test_another_grid_is_refused(pair: Callable[[str], Pair]) -> None:
    """Emu3 at another image size: the grid line only (the prompt, which states the size, is not blamed)."""
    built = pair("emu3")
    smaller = load_model(built.drafters["narrower"], "cpu", "fp32", image_size=8)
    assert _refusal(_load(built, "target"), smaller) == "token grid (4, 4) vs the target's (8, 8)"


def test_another_tokenizer_is_refused(pair: Callable[[str], Pair], tmp_path: Path) -> None:
    built = pair("janus")
    other = build_tiny_janus(tmp_path / "d", hidden_size=32, layers=1, words=WORDS[::-1])
    target = _load(built, "target")
    assert (
        _refusal(target, load_model(other, "cpu", "fp32")) == "its tokenizer has another vocabulary than the target's"
    )
    twin = _load(built, "narrower")  # the same tokenizer under another prompt template
    twin.prompt_ids = lambda prompt: [twin.bos_id, *twin.tokenizer.encode(prompt), twin.boi_id]
    assert _refusal(target, twin) == (
        "it turns prompts into other token ids than the target (another tokenizer or prompt template)"
    )


def test_another_family_is_refused(pair: Callable[[str], Pair]) -> None:
    """Anole and Lumina-mGPT share Chameleon's code (and here every token) but not the prompt format
    or row layout; a Janus model cannot draft for Emu3 at all."""
    lumina = _load(pair("lumina-mgpt"), "target")
    anole = _load(pair("anole"), "narrower")
    assert _refusal(lumina, anole) == (
        "it is an Anole model and the target a Lumina-mGPT model (a drafter must be of the target's family)"
    )
    janus = _load(pair("janus"), "narrower")
    emu3 = _load(pair("emu3"), "target")
    assert _refusal(emu3, janus).startswith("it is a Janus model and the target an Emu3 model")


def test_another_dtype_is_refused_and_another_device_is_followed(pair: Callable[[str], Pair]) -> None:
    built = pair("llamagen-c2i")
    target = _load(built, "target")
    half = load_model(built.drafters["narrower"], "cpu", "bf16")
    assert _refusal(target, half) == "weights in bf16 vs the target's fp32 (load both with the same dtype)"
    with pytest.raises(IncompatibleDrafterError, match="bf16"):
        generate(target, built.cond, SamplingSettings(greedy=True), draft=DrafterModelDrafts(half))
    drafter = _load(built, "narrower")
    drafter.device = torch.device("meta")  # as a host that left it elsewhere would report it
    place_drafter(target, drafter)
    assert drafter.device == target.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_drafter_on_the_cpu_moves_to_a_gpu_target(pair: Callable[[str], Pair]) -> None:
    built = pair("janus")
    target = load_model(built.target, device="cuda", dtype="fp32")
    drafter = _load(built, "narrower")
    settings = SamplingSettings(cfg_scale=3.0, greedy=True)
    plain = generate(target, built.cond, settings)
    spec = generate(target, built.cond, settings, draft=DrafterModelDrafts(drafter, gamma=4))
    assert drafter.device.type == "cuda" and torch.equal(spec.tokens, plain.tokens)


def test_command_line_loads_a_smaller_drafter(pair: Callable[[str], Pair], tmp_path: Path) -> None:
    """``--drafter`` loads the drafter on the target's device and dtype; greedy images equal plain AR's."""
    from specar import cli

    built = pair("emu3")
    common = ["--model", str(built.target), "--image-size", "16", "--prompt", "a red cat", "--greedy"]
    common += ["--device", "cpu", "--dtype", "fp32", "--quiet"]
    assert cli.main(["generate", *common, "--draft", "none", "--out", str(tmp_path / "plain.png")]) == 0
    drafted = ["--draft", "model", "--drafter", str(built.drafters["narrower"]), "--gamma", "3"]
    assert cli.main(["generate", *common, *drafted, "--out", str(tmp_path / "drafted.png")]) == 0
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "drafted.png").read_bytes()


def test_drafter_model_node_runs_a_smaller_drafter(pair: Callable[[str], Pair]) -> None:
    """ComfyUI's Drafter Model node loads a smaller Janus from the model folder; the sampler puts it on the
    target's device and greedy images equal self-drafting's. A drafter node set to another dtype is refused."""
    from pack import load_pack, run_node

    load_pack()
    from specar_pack.engine.errors import IncompatibleDrafterError as PackIncompatibleDrafterError
    from specar_pack.nodes.host import LocalHost

    built = pair("janus")
    host = LocalHost([built.target.parent])
    loader = dict(dtype="fp32", family="auto", image_size=0, compile=False)
    (target,) = run_node("SpecARModelLoader", host, model=built.target.name, **loader)
    sampling = dict(prompt="a red cat", seed=3, batch_size=2, cfg=3.0, temperature=0.0, top_k=0)
    plain = run_node("SpecARSampler", host, model=target, **sampling)[0]
    drafter_node = dict(drafter=built.drafters["narrower"].name, gamma=4, shape="chain")
    (draft,) = run_node("SpecARDrafterModel", host, dtype="fp32", **drafter_node)
    drafted, _, stats, _ = run_node("SpecARSampler", host, model=target, draft=draft, **sampling)
    assert torch.equal(drafted, plain) and "acceptance" in stats
    (half,) = run_node("SpecARDrafterModel", host, dtype="bf16", **drafter_node)
    with pytest.raises(PackIncompatibleDrafterError, match=r"weights in bf16 vs the target's fp32"):
        run_node("SpecARSampler", host, model=target, draft=half, **sampling)
