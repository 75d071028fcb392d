"""SpecAR as a ComfyUI custom node pack (ComfyUI imports this file).

ComfyUI calls :func:`comfy_entrypoint` (V3 nodes, see :mod:`nodes.comfy_v3`) and serves ``web/``.
Importing this file needs no ComfyUI, and the engine (``engine/``) never needs it.
"""

from .nodes.comfy_v3 import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
