"""Node definitions as plain data, independent of ComfyUI.

Each node is a :class:`NodeSpec` (inputs, outputs, texts) plus a ``run(host, **inputs)`` function.
:mod:`nodes.comfy_v3` turns specs into ComfyUI V3 classes inside a running ComfyUI; tests read the
same specs to check node logic and every shipped workflow without a ComfyUI install, and the
real-ComfyUI test checks that ``/object_info`` says what the specs say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..engine.errors import SettingsError

# Socket types that only SpecAR nodes produce and consume.
MODEL = "SPECAR_MODEL"
DRAFT = "SPECAR_DRAFT"
POLICY = "SPECAR_POLICY"
# ComfyUI's own types.
IMAGE, MASK, STRING, INT, FLOAT, BOOLEAN, COMBO = "IMAGE", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"
# A combo whose choice brings its own inputs (ComfyUI's DynamicCombo): the run gets one dict, the choice
# under the field's own name and the chosen case's inputs under theirs.
CHOICE = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = (INT, FLOAT, STRING, BOOLEAN, COMBO, CHOICE)

CATEGORY = "SpecAR"


@dataclass(frozen=True)
class Case:
    """One choice of a :data:`CHOICE` field and the inputs that appear with it."""

    key: str
    inputs: tuple[Field, ...] = ()


@dataclass(frozen=True)
class Field:
    """One input: a widget (INT, FLOAT, STRING, BOOLEAN, COMBO, CHOICE) or a socket (any other type)."""

    name: str
    type: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    # COMBO choices; a callable gets the host's model folders and is re-read whenever ComfyUI asks.
    options: Sequence[str] | Callable[[list[Path]], Sequence[str]] | None = None
    optional: bool = False
    multiline: bool = False
    slider: bool = False
    seed: bool = False  # ComfyUI offers "control after generate" (randomize, increment, ...)
    cases: tuple[Case, ...] = ()  # CHOICE: the choices, each with its own inputs

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def choices(self, folders: list[Path] | None = None) -> list[str]:
        if self.cases:
            return [case.key for case in self.cases]
        options = self.options(folders or []) if callable(self.options) else self.options
        return list(options or ())

    def case(self, key: str) -> Case:
        """The case chosen by ``key`` (a workflow saved by another version may name one this one lacks)."""
        found = next((case for case in self.cases if case.key == key), None)
        if found is None:
            raise SettingsError(f"{self.name} {key!r} is not one of {', '.join(self.choices())}")
        return found

    def defaults(self, key: str | None = None) -> dict[str, Any]:
        """A :data:`CHOICE` field's value as ComfyUI hands it to a run: ``key`` (else the default) and
        that case's inputs at their defaults."""
        key = key or self.default
        return {self.name: key, **{f.name: f.default for f in self.case(key).inputs}}


@dataclass(frozen=True)
class Output:
    type: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[Field, ...]
    outputs: tuple[Output, ...]
    run: Callable[..., tuple[Any, ...]] = field(compare=False)
    search_aliases: tuple[str, ...] = ()  # other words an artist may search the node by
    needs_node_id: bool = False  # the run gets the node's id in the graph (live widget messages)
    is_output_node: bool = False

    def field(self, name: str) -> Field:
        return next(f for f in self.inputs if f.name == name)

    def widgets(self) -> list[Field]:
        return [f for f in self.inputs if f.is_widget]

    def sockets(self) -> list[Field]:
        return [f for f in self.inputs if not f.is_widget]
