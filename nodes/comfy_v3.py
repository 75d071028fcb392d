"""The pack's ComfyUI V3 node classes (``comfy_api.latest``), one per node.

This module is imported only inside a running ComfyUI (by the entry point in ``__init__.py``): the
classes subclass ``io.ComfyNode``, which exists only there. Each class names its
:class:`~nodes.schema.NodeSpec`, which holds the inputs, outputs and texts and a plain ``run``
function that CI tests without ComfyUI; the class turns the spec into ComfyUI's schema and hands
``execute`` to ``run`` with a :class:`~nodes.host.ComfyHost`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from comfy_api.latest import ComfyExtension, io

from .decoding_nodes import ACCEPTANCE_POLICY, JACOBI_DRAFTS
from .host import ComfyHost, comfy_model_folders, register_comfy_model_folder
from .model_nodes import DRAFTER_MODEL, LOAD_MODEL, TREE_HEAD
from .preview_nodes import RELAXATION_PREVIEW
from .sampler_nodes import COMPARE, SAMPLER
from .schema import BOOLEAN, CATEGORY, CHOICE, COMBO, FLOAT, IMAGE, INT, MASK, STRING, Field, NodeSpec, Output


def _input(field: Field) -> Any:
    common = {"optional": field.optional, "tooltip": field.tooltip}
    numbers = {"default": field.default, "min": field.min, "max": field.max, "step": field.step}
    if field.type == INT:
        return io.Int.Input(field.name, control_after_generate=field.seed or None, **numbers, **common)
    if field.type == FLOAT:
        slider = io.NumberDisplay.slider if field.slider else None
        return io.Float.Input(field.name, display_mode=slider, **numbers, **common)
    if field.type == STRING:
        return io.String.Input(field.name, default=field.default, multiline=field.multiline, **common)
    if field.type == BOOLEAN:
        return io.Boolean.Input(field.name, default=field.default, **common)
    if field.type == COMBO:
        return io.Combo.Input(field.name, options=field.choices(comfy_model_folders()), default=field.default, **common)
    if field.type == CHOICE:  # the default case comes first: ComfyUI shows a dynamic combo's first option
        cases = sorted(field.cases, key=lambda case: case.key != field.default)
        options = [io.DynamicCombo.Option(case.key, [_input(f) for f in case.inputs]) for case in cases]
        return io.DynamicCombo.Input(field.name, options=options, **common)
    if field.type == MASK:
        return io.Mask.Input(field.name, **common)
    if field.type == IMAGE:
        return io.Image.Input(field.name, **common)
    return io.Custom(field.type).Input(field.name, **common)


def _output(output: Output) -> Any:
    kind = {IMAGE: io.Image, STRING: io.String, MASK: io.Mask}.get(output.type) or io.Custom(output.type)
    return kind.Output(display_name=output.name, tooltip=output.tooltip)


class SpecARNode(io.ComfyNode):
    """A SpecAR node: its schema and its run come from :attr:`SPEC`."""

    SPEC: ClassVar[NodeSpec]

    @classmethod
    def define_schema(cls) -> io.Schema:
        spec = cls.SPEC
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            search_aliases=list(spec.search_aliases),
            category=CATEGORY,
            description=spec.description,
            inputs=[_input(f) for f in spec.inputs],
            outputs=[_output(o) for o in spec.outputs],
            hidden=[io.Hidden.unique_id] if spec.needs_node_id else [],
            is_output_node=spec.is_output_node,
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        host = ComfyHost(str(cls.hidden.unique_id) if cls.SPEC.needs_node_id else None)
        return io.NodeOutput(*cls.SPEC.run(host, **inputs))


class SpecARModelLoader(SpecARNode):
    SPEC = LOAD_MODEL


class SpecARJacobiDrafts(SpecARNode):
    SPEC = JACOBI_DRAFTS


class SpecARDrafterModel(SpecARNode):
    SPEC = DRAFTER_MODEL


class SpecARTreeHead(SpecARNode):
    SPEC = TREE_HEAD


class SpecARAcceptancePolicy(SpecARNode):
    SPEC = ACCEPTANCE_POLICY


class SpecARSampler(SpecARNode):
    SPEC = SAMPLER


class SpecARCompare(SpecARNode):
    SPEC = COMPARE


class SpecARRelaxationPreview(SpecARNode):
    SPEC = RELAXATION_PREVIEW


NODE_CLASSES: tuple[type[SpecARNode], ...] = (
    SpecARModelLoader,
    SpecARJacobiDrafts,
    SpecARDrafterModel,
    SpecARTreeHead,
    SpecARAcceptancePolicy,
    SpecARSampler,
    SpecARCompare,
    SpecARRelaxationPreview,
)


class SpecARExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


MINIMUM_COMFYUI = "0.11"  # the first release whose V3 schema has both dynamic combos and search aliases


def _missing_features() -> list[str]:
    """What this ComfyUI's V3 API lacks of what the nodes use (an older release: the pack will not load)."""
    missing = [] if hasattr(io, "DynamicCombo") else ["DynamicCombo"]
    return missing + ([] if "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}) else ["search_aliases"])


async def comfy_entrypoint() -> SpecARExtension:
    missing = _missing_features()
    if missing:
        raise RuntimeError(
            f"SpecAR needs ComfyUI {MINIMUM_COMFYUI} or newer (this one lacks {' and '.join(missing)}): update ComfyUI"
        )
    register_comfy_model_folder()
    return SpecARExtension()
