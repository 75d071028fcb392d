"""Reading weights safely, with errors that name the file and the problem.

``.safetensors`` is the default. Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are
only opened with ``torch.load(weights_only=True)``, which refuses arbitrary objects; the official
LlamaGen and Chameleon checkpoints are plain tensor dicts and load that way.
"""

from __future__ import annotations

import json
import re
import pickle
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("model", "module", "state_dict", "ema")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path, wrapper_keys: tuple[str, ...] = WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file on the CPU, unwrapped from trainer containers.

    Training scripts nest the weights under ``model`` (DDP), ``module`` (DeepSpeed), ``state_dict``
    (Lightning) or store them raw (FSDP); DDP and ``torch.compile`` prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        obj: object = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        obj = _load_pickle(path)
    else:
        raise CheckpointError(
            f"{path.name}: unsupported checkpoint type {suffix or '(no suffix)'}; "
            f"expected one of {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
        )
    return _unwrap(obj, path, wrapper_keys)


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` header (where our own files keep their config)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise _unreadable(Path(path)) from exc


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, config: Mapping[str, object] | None = None
) -> None:
    """Write tensors (made contiguous, on the CPU) with an optional JSON config in the header."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"config": json.dumps(config)} if config is not None else None
    save_file(clean, str(path), metadata=metadata)


def read_json(path: str | Path) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"config not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _unreadable(path: Path) -> CheckpointError:
    """A file that safetensors cannot read, in a user's words (the parser's reason stays on the exception's cause)."""
    return CheckpointError(
        f"{path.name} is not a readable safetensors file: it may be damaged or only partly downloaded; "
        "download it again"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise _unreadable(path) from exc


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} holds Python objects besides tensors ({_first_line(exc)}); SpecAR does not unpickle "
            "those: convert the file to .safetensors or re-save only its state dict"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{path.name} could not be read as a PyTorch checkpoint ({_first_line(exc)})") from None


UNSAFE_CONTENT = re.compile(r"Unsupported (?:global: GLOBAL [\w.]+|operand \d+)")  # what torch's refusal names


def _first_line(exc: Exception) -> str:
    """The cause in one line, without torch's advice (which may suggest loading unsafely)."""
    found = UNSAFE_CONTENT.search(str(exc))
    if found:
        return found[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")[:200]


def _unwrap(obj: object, path: Path, wrapper_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in wrapper_keys if k in obj), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path.name} holds no tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    for prefix in STRIPPED_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def allocate(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module``, built on the meta device, with uninitialised storage on ``device`` (``Module.to_empty``
    without its ``empty_like`` of meta tensors, whose first call imports torch's compiler stack: a second
    or more of a process's first model load)."""
    return module._apply(lambda tensor: torch.empty(tensor.shape, dtype=tensor.dtype, device=device))


def load_into(
    module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()
) -> None:
    """Copy ``tensors`` into ``module`` strictly, with one error listing every mismatch.

    Keys starting with an entry of ``ignore`` (stale buffers, parts we never run such as an
    encoder) are skipped.
    """
    own = module.state_dict()
    wanted = {k: v for k, v in tensors.items() if not k.startswith(ignore)}
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    bad_shapes = [
        f"{k}: file {tuple(wanted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(wanted))
        if wanted[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:4])})")
    if bad_shapes:
        problems.append("shape mismatch: " + "; ".join(bad_shapes[:4]))
    if problems:
        raise CheckpointError(f"{source} does not match the expected layout: " + "; ".join(problems))
    module.load_state_dict({k: v for k, v in wanted.items()}, strict=True)
