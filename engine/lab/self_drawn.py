"""Images a target draws itself, kept on disk in chunks: the training data of a self-distilled head.

EAGLE- and LANTERN-style heads learn to predict what the target does at its own sampling settings,
so they train on the target's own samples rather than on a dataset. The target draws them plainly
(no drafts) for the user's class ids or prompts, image ``i`` taking condition ``i`` modulo their
number; each chunk holds the tokens and the index of the condition of every image in it. Chunks
already on disk are kept, so an interrupted draw resumes where it stopped, and a draw asked with
other settings than the chunks were drawn with is refused rather than mixed in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import replace_atomically
from ..checkpoints import read_state_dict, save_safetensors
from ..errors import SettingsError
from ..loop import generate
from ..models.base import ImageTokenModel
from ..progress import CountBar
from ..types import Conditioning, SamplingSettings
from .training_state import stream_seed

DRAW_STREAM = 10  # the random stream of the drawing seeds (training streams use 0..9)
MANIFEST = "manifest.json"
# what a manifest entry is, in the words of the command that set it
MANIFEST_OPTIONS = {
    "model": "--model",
    "plan": "--class-id or --prompts",
    "settings": "the model's sampling settings",
    "seed": "--seed",
    "chunk": "--draw-batch",
}


@dataclass(frozen=True)
class DrawPlan:
    """What the target is asked to draw: class ids or prompts, image ``i`` taking entry ``i`` mod their number."""

    class_ids: tuple[int, ...] = ()
    prompts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.class_ids) or len(self.prompts)

    def condition(self, indices: Sequence[int]) -> Conditioning:
        """Conditioning of the images whose condition indices are ``indices``."""
        if self.class_ids:
            return Conditioning.classes([self.class_ids[i] for i in indices])
        return Conditioning(prompts=tuple(self.prompts[i] for i in indices))


def plan_for(model: ImageTokenModel, class_ids: Sequence[int] | None, prompts_file: Path | None) -> DrawPlan:
    """The draw plan a user's ``--class-id``/``--prompts`` give for ``model`` (every class when neither is given)."""
    kind = model.conditioning_kind
    if kind == "class":
        if prompts_file is not None:
            raise SettingsError(f"{model.name} is class-conditional: give --class-id numbers, not --prompts")
        count = model.num_classes or 1
        ids = tuple(class_ids) if class_ids else tuple(range(count))
        wrong = [c for c in ids if not 0 <= c < count]
        if wrong:
            raise SettingsError(f"{model.name} has classes 0..{count - 1}; got {wrong[0]}")
        return DrawPlan(class_ids=ids)
    if kind != "prompt":
        raise SettingsError(
            f"{model.name} reads caption features: put its text encoder (a t5 folder) beside the weights so it can "
            "read --prompts"
        )
    if class_ids:
        raise SettingsError(f"{model.name} draws from text: give --prompts FILE (one prompt per line), not --class-id")
    if prompts_file is None:
        raise SettingsError(f"{model.name} draws from text: give --prompts FILE with one prompt per line")
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the prompt file {prompts_file}: {exc}") from None
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise SettingsError(f"the prompt file {prompts_file} holds no prompt (one per line)")
    return DrawPlan(prompts=prompts)


def chunk_path(directory: Path, index: int) -> Path:
    return directory / f"chunk_{index:05d}.safetensors"


def draw_images(
    model: ImageTokenModel,
    plan: DrawPlan,
    images: int,
    directory: Path,
    settings: SamplingSettings,
    seed: int,
    chunk: int,
) -> None:
    """Have ``model`` draw ``images`` images into ``directory`` in chunks of ``chunk`` (existing chunks kept)."""
    manifest = {
        "model": model.name,
        "plan": asdict(plan),
        "settings": asdict(settings.with_(seed=0)),
        "seed": seed,
        "chunk": chunk,
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back (tuples become lists)
    directory.mkdir(parents=True, exist_ok=True)
    written = directory / MANIFEST
    if written.is_file():
        before = json.loads(written.read_text())
        if before != manifest:
            changed = [MANIFEST_OPTIONS[k] for k in manifest if before.get(k) != manifest[k]]
            raise SettingsError(
                f"{directory} holds images drawn with another {', '.join(changed)}: "
                "choose another --out, or delete that folder to draw again"
            )
    else:
        replace_atomically(written, lambda partial: partial.write_text(json.dumps(manifest, indent=1)))
    chunks = -(-images // chunk)
    bar = CountBar("drawing images", images)
    for index in range(chunks):
        path = chunk_path(directory, index)
        first, count = index * chunk, min(chunk, images - index * chunk)
        if not path.is_file():
            conditions = [(first + i) % len(plan) for i in range(count)]
            result = generate(
                model, plan.condition(conditions), settings.with_(seed=stream_seed(seed, DRAW_STREAM, index))
            )
            tokens = result.tokens.to(torch.int32)
            condition = torch.tensor(conditions, dtype=torch.long)
            replace_atomically(path, lambda p: save_safetensors({"tokens": tokens, "condition": condition}, p))
        bar.update(first + count)


def read_drawn(directory: Path, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``images`` drawn images of ``directory``: tokens ``[n, N]`` and condition indices ``[n]`` (long)."""
    tokens, conditions, index = [], [], 0
    while sum(len(t) for t in tokens) < images:
        path = chunk_path(directory, index)
        if not path.is_file():
            raise SettingsError(f"{directory} is missing {path.name}: run the command again to draw it")
        part = read_state_dict(path)
        tokens.append(part["tokens"].long())
        conditions.append(part["condition"].long())
        index += 1
    return torch.cat(tokens)[:images], torch.cat(conditions)[:images]
