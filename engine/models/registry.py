"""From a name or a path to a ready model adapter.

A path may be a weights file or a model directory. A LlamaGen directory holds the weights,
optionally a ``config.json`` (``{"family": "llamagen", "n_head": ..., "image_size": ...}``), the VQ
tokenizer (a file whose name starts with ``vq``) and, for text-to-image, flan-t5 in ``t5/``. A
transformers checkpoint (Janus-Pro, Lumina-mGPT, Anole, Emu3-Gen) is recognised by the
``model_type`` of its ``config.json``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, SettingsError
from ..types import SamplingSettings
from .base import ImageTokenModel

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else Apple MPS, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise SettingsError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device cuda was asked for but this PyTorch sees no CUDA GPU (use --device cpu or auto)")
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise SettingsError("device mps was asked for but this PyTorch sees no Apple GPU (use --device cpu or auto)")
    return resolved


DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")  # what users pick; auto: bf16 on GPUs that support it, else fp32


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on GPUs that support it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in names:
        raise SettingsError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_CHOICES)})")
    return names[dtype]


def _weights_in(directory: Path) -> tuple[Path, Path | None]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
    vq = [p for p in files if p.name.lower().startswith("vq")]
    main = [p for p in files if p not in vq]
    if not main:
        raise CheckpointError(f"{directory} holds no model weights ({', '.join(WEIGHT_SUFFIXES)})")
    if len(main) > 1:
        raise CheckpointError(
            f"{directory} holds several weight files ({', '.join(p.name for p in main)}); keep one per model directory"
        )
    return main[0], (vq[0] if vq else None)


def load_llamagen(
    path: str | Path,
    vq_path: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    name: str | None = None,
) -> ImageTokenModel:
    """A LlamaGen GPT (file or directory) with its VQ16 decoder, ready on ``device``."""
    from .llamagen.adapter import LlamaGenModel
    from .llamagen.checkpoint import read_config_json, read_gpt

    path = Path(path)
    hints: dict[str, object] = {}
    if path.is_dir():
        hints = read_config_json(path)
        weights, found_vq = _weights_in(path)
        vq_path = vq_path or found_vq
    elif path.is_file():
        weights = path
        hints = read_config_json(path.parent) if (path.parent / "config.json").is_file() else {}
    else:
        raise CheckpointError(f"model not found: {path}")
    if vq_path and "downsample" not in hints and (match := re.search(r"ds(8|16)", Path(vq_path).name)):
        hints = {**hints, "downsample": int(match.group(1))}  # vq_ds8_c2i.pt: 8 pixels per token
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    gpt = read_gpt(weights, hints).to(dev, dt)
    gpt.reset_rope()
    decoder = None
    if vq_path:
        from .vq16 import load_vq16

        decoder = load_vq16(vq_path, device=dev, dtype=torch.float32)
    text_encoder = None
    encoder_folder = (
        next((path / n for n in TEXT_ENCODER_FOLDERS if (path / n).is_dir()), None) if path.is_dir() else None
    )
    if gpt.cfg.model_type == "t2i" and encoder_folder is not None:
        from .llamagen.text_encoder import load_t5_caption_encoder

        text_encoder = load_t5_caption_encoder(encoder_folder, dev, dt, token_slots=gpt.cfg.cls_token_num)
    return LlamaGenModel(gpt, decoder, name=name or path.stem, text_encoder=text_encoder)


TEXT_ENCODER_FOLDERS = ("t5", "flan-t5-xl", "text_encoder")  # where a t2i folder keeps flan-t5-xl
BUNDLED = {"demo": "the bundled demo target", "demo-drafter": "the bundled demo drafter"}


LLAMAGEN_MODEL_TYPES = ("c2i", "t2i")  # the model_type of LlamaGen's own model_args, not a transformers one
# transformers ``model_type`` -> our family name (Chameleon checkpoints are told apart in ``_family``).
HF_FAMILIES = {"janus": "janus", "chameleon": "chameleon", "emu3": "emu3"}
FAMILY_NAMES = {  # family -> its name in messages
    "llamagen": "LlamaGen",
    "janus": "Janus",
    "lumina-mgpt": "Lumina-mGPT",
    "anole": "Anole",
    "emu3": "Emu3",
}
FAMILIES = tuple(FAMILY_NAMES)
SIZED_FAMILIES = ("lumina-mgpt", "anole", "emu3")  # the families that draw several image sizes


def check_image_size(model: str, image_size: int | None) -> None:
    """Refuse an image size for ``model`` (its name or family, in words) when its family draws one size only:
    ignoring the request would hand back images of another size without a word."""
    if image_size is not None:
        raise SettingsError(
            f"{model} draws the one image size it was trained for; an image size applies only to "
            f"{', '.join(FAMILY_NAMES[family] for family in SIZED_FAMILIES)} (leave it out, or 0 in the loader node)"
        )


def load_model(
    spec: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    vq_path: str | Path | None = None,
    family: str = "auto",
    image_size: int | None = None,
) -> ImageTokenModel:
    """Load a bundled model by name (``demo``, ``demo-drafter``) or any model by path.

    ``family="auto"`` recognises the family from ``config.json`` (transformers' ``model_type``
    or our ``family`` key) or from the weights. ``image_size`` (pixels) picks the resolution of
    families that offer several (Lumina-mGPT, Emu3); others have one.
    """
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise SettingsError(f"load_model needs a model name (demo, demo-drafter) or a path, got {spec!r}")
    from ..continuous.registry import DEMO_ROLES

    if str(spec) in DEMO_ROLES:
        raise SettingsError(
            f"{spec} is a continuous-token (MAR) model: it cannot draft for, or stand in for, a discrete-token model"
        )
    if str(spec) in BUNDLED:
        from ..demo.model import load_demo, load_demo_drafter

        check_image_size(BUNDLED[str(spec)], image_size)
        return (load_demo if spec == "demo" else load_demo_drafter)(device=device, dtype=dtype)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"model {str(spec)!r} not found (give a weights file or a model directory)")
    if family == "auto":
        family = _family(path)
    if family in FAMILIES and family not in SIZED_FAMILIES:
        check_image_size(f"a {FAMILY_NAMES[family]} model", image_size)
    if family == "llamagen":
        return load_llamagen(path, vq_path, device, dtype)
    if family not in FAMILIES:
        raise SettingsError(f"unknown model family {family!r} (known: auto, {', '.join(FAMILIES)})")
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: a {family} model is a directory (config.json, weights, tokenizer), not a single file"
        )
    _require_transformers(family)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if family == "janus":
        from .janus import load_janus

        return load_janus(path, dev, dt)
    if family == "emu3":
        from .emu3 import load_emu3

        return load_emu3(path, dev, dt, image_size=image_size)
    from .chameleon import load_chameleon

    return load_chameleon(path, dev, dt, variant=family, image_size=image_size)


def _require_transformers(family: str) -> None:
    """Janus, Chameleon and Emu3 run on transformers (ComfyUI ships it; standalone installs add it)."""
    if importlib.util.find_spec("transformers") is None:
        raise SettingsError(
            f"{family} models need the transformers library: pip install 'transformers>=5.0' "
            "(or install SpecAR with the [families] extra)"
        )


def family_defaults(family: str) -> SamplingSettings:
    """The sampling settings each family's authors use (the sampler's defaults for that family)."""
    if family == "llamagen":
        from .llamagen.adapter import T2I_DEFAULTS

        return T2I_DEFAULTS
    if family == "janus":
        from .janus import JANUS_DEFAULTS

        return JANUS_DEFAULTS
    if family == "emu3":
        from .emu3 import EMU3_DEFAULTS

        return EMU3_DEFAULTS
    from .chameleon import SYNTAXES

    if family not in SYNTAXES:
        raise SettingsError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return SYNTAXES[family].defaults


def _family(path: Path) -> str:
    """The family named by the ``config.json`` beside or inside ``path`` (LlamaGen when none)."""
    from ..checkpoints import read_json

    config_path = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config_path.is_file():
        return "llamagen"
    config = read_json(config_path)
    if "family" in config:
        return str(config["family"])
    model_type = config.get("model_type")
    if model_type is None or model_type in LLAMAGEN_MODEL_TYPES:
        return "llamagen"
    if model_type not in HF_FAMILIES:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not an image-generation family "
            f"SpecAR supports (supported: {', '.join(FAMILIES)})"
        )
    if HF_FAMILIES[model_type] == "chameleon":
        from .chameleon import chameleon_variant

        return chameleon_variant(path, config)
    return HF_FAMILIES[model_type]


def find_models(folders: list[Path]) -> dict[str, Path]:
    """Models under ``folders`` by display name (relative path, ``/``-separated, first folder wins).

    A weights file directly in a folder is a single-file model; a sub-directory that holds weights
    is a model directory (its files are not listed on their own). Tokenizer files (``vq*``) are
    never models. Unreadable folders are skipped: a missing ``models/specar`` just lists nothing.
    """
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.is_dir() and path != folder and _holds_weights(path):
                if not any(parent in found.values() for parent in path.parents):
                    found.setdefault(relative.as_posix(), path)
            elif path.is_file() and path.parent == folder and _is_weights(path):
                found.setdefault(relative.as_posix(), path)
    return found


def _is_weights(path: Path) -> bool:
    return path.suffix.lower() in WEIGHT_SUFFIXES and not path.name.lower().startswith("vq")


def _holds_weights(directory: Path) -> bool:
    return any(_is_weights(p) for p in directory.iterdir() if p.is_file())
