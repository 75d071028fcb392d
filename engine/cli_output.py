"""What both ``specar`` front ends (discrete and continuous models) share: JSON and picture
output, and the Ctrl-C handling that keeps what was decoded."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path
from types import FrameType

from .atomic import replace_atomically
from .errors import SettingsError
from .explain import explanation
from .heatmap import acceptance_heatmap, committed_mask, image_grid, save_png, side_by_side
from .models.base import ImageTokenModel
from .types import GenerationResult


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    replace_atomically(path, lambda partial: partial.write_text(text))


def write_json(path: str, data: dict[str, object]) -> None:
    """Strict JSON (no bare NaN or Infinity, which JSON readers refuse): undefined numbers become null."""
    write_text(path, json.dumps(_json_ready(data), indent=1, allow_nan=False) + "\n")


def _json_ready(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


PICTURE_OPTIONS = ("out", "heatmap", "compare", "explain")
FILE_OPTIONS = (*PICTURE_OPTIONS, "stats", "json", "plot", "table")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse output paths that would fail or clash, before any model loads or decodes: two options naming
    one file, a picture not named .png (SpecAR writes PNG), a folder that cannot be written."""
    given = {f"--{name}": Path(getattr(args, name)) for name in FILE_OPTIONS if getattr(args, name, None)}
    seen: dict[Path, str] = {}
    for option, path in given.items():
        resolved = path.resolve()
        if resolved in seen:
            raise SettingsError(f"{seen[resolved]} and {option} both name {path}: give each output its own file")
        seen[resolved] = option
        if path.is_dir():
            raise SettingsError(f"{option} {path} is a folder; name a file in it")
        if option.removeprefix("--") in PICTURE_OPTIONS + ("plot",) and path.suffix.lower() != ".png":
            raise SettingsError(f"{option} {path}: SpecAR writes PNG pictures; name the file .png")
        if path.exists() and not path.is_file():  # a stream (/dev/stdout, a named pipe): written in place
            if not os.access(path, os.W_OK):
                raise SettingsError(f"cannot write {option} {path}: it is not writable")
            continue
        _require_writable_folder(option, path, path.resolve().parents)


def check_output_folder(option: str, path: Path) -> None:
    """Refuse an output folder that is a file, or that could not be made or written, before any work."""
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{option} {path} is a file; name a folder")
    _require_writable_folder(option, path, [path.resolve(), *path.resolve().parents])


def _require_writable_folder(option: str, path: Path, folders: list[Path] | tuple[Path, ...]) -> None:
    """The first of ``folders`` (a path's own, then its parents') that exists must be a folder this user may write."""
    folder = next(candidate for candidate in folders if candidate.exists())
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise SettingsError(f"cannot write {option} {path}: {folder} is not a writable folder")


def require_an_output(args: argparse.Namespace) -> None:
    """Refuse a generation that would write nothing."""
    if not any(getattr(args, name, None) for name in (*PICTURE_OPTIONS, "stats")):
        raise SettingsError("nothing to write: give --out IMAGE.png for the images, --stats STATS.json for the tokens")


def refuse_pictures_without_pixels(args: argparse.Namespace, model: ImageTokenModel) -> None:
    """A model without a VQ tokenizer generates tokens (``--stats``) but cannot make the picture outputs."""
    if model.can_decode:
        return
    for name in PICTURE_OPTIONS:
        if getattr(args, name, None):
            raise SettingsError(
                f"--{name} needs pixels, and {model.name} has no VQ tokenizer to make them: put a vq*.pt or "
                "vq*.safetensors file beside the model weights (or pass --vq PATH), or write only the tokens with "
                "--stats STATS.json"
            )


class StopOnInterrupt:
    """The first Ctrl-C asks the loop (through its observer) to stop after the current forward;
    a second one interrupts at once. Outside the main thread signals cannot be caught: no-op."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None

    def __enter__(self) -> "StopOnInterrupt":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def write_pictures(args: argparse.Namespace, model: ImageTokenModel, result: GenerationResult) -> None:
    """The picture outputs asked for (none: nothing is decoded)."""
    if not any(getattr(args, name, None) for name in PICTURE_OPTIONS):
        return
    images = model.decode(result.tokens)
    size = (int(images.shape[1]), int(images.shape[2]))
    if not result.finished:
        images = images * committed_mask(result.kinds, model.grid, size)[..., None]
    ncols = math.ceil(math.sqrt(result.batch_size))
    if args.out:
        save_png(image_grid(images, ncols), args.out)
    heatmaps = acceptance_heatmap(result, model.grid, size)
    if args.heatmap:
        save_png(image_grid(heatmaps, ncols), args.heatmap)
    if args.compare:
        save_png(side_by_side(images, heatmaps, ncols), args.compare)
    if args.explain:
        save_png(explanation(images, result, model.grid), args.explain)
