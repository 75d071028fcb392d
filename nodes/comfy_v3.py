"""NodeSpecs -> ComfyUI V3 node classes (``comfy_api.latest``), built when ComfyUI calls the entry point.

Nothing here is imported outside ComfyUI: the classes must subclass ``io.ComfyNode``, which only
exists there, so they are made on demand from the plain specs.
"""

from __future__ import annotations

from typing import Any

from . import NODES
from .host import ComfyHost, comfy_model_folders, register_comfy_model_folder
from .schema import BOOLEAN, CATEGORY, COMBO, FLOAT, IMAGE, INT, MASK, STRING, Field, NodeSpec, Output


def _input(io: Any, field: Field) -> Any:
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
    if field.type == MASK:
        return io.Mask.Input(field.name, **common)
    if field.type == IMAGE:
        return io.Image.Input(field.name, **common)
    return io.Custom(field.type).Input(field.name, **common)


def _output(io: Any, output: Output) -> Any:
    kind = {IMAGE: io.Image, STRING: io.String, MASK: io.Mask}.get(output.type) or io.Custom(output.type)
    return kind.Output(display_name=output.name, tooltip=output.tooltip)


def node_class(io: Any, spec: NodeSpec) -> type:
    """A V3 node class whose ``execute`` runs ``spec.run`` with a :class:`ComfyHost`."""

    def define_schema(cls: type) -> Any:
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category=CATEGORY,
            description=spec.description,
            inputs=[_input(io, f) for f in spec.inputs],
            outputs=[_output(io, o) for o in spec.outputs],
            hidden=[io.Hidden.unique_id] if spec.needs_node_id else [],
            is_output_node=spec.is_output_node,
        )

    def execute(cls: type, **inputs: Any) -> Any:
        host = ComfyHost(str(cls.hidden.unique_id) if spec.needs_node_id else None)
        return io.NodeOutput(*spec.run(host, **inputs))

    return type(
        spec.node_id,
        (io.ComfyNode,),
        {"define_schema": classmethod(define_schema), "execute": classmethod(execute), "__doc__": spec.description},
    )


async def comfy_entrypoint() -> Any:
    from comfy_api.latest import ComfyExtension, io

    register_comfy_model_folder()
    classes = [node_class(io, spec) for spec in NODES]

    class SpecARExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return classes

    return SpecARExtension()
