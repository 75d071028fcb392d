"""SpecAR as a ComfyUI custom node pack (ComfyUI imports this file).

ComfyUI calls :func:`comfy_entrypoint` (V3 nodes, see :mod:`nodes.comfy_v3`) and serves ``web/``.
Importing this file needs no ComfyUI, and the engine (``engine/``) never needs it. The nodes are
imported only when ComfyUI calls the entry point: pytest may import this file on its own (not as a
package) while collecting the tests, where a relative import at the top would fail.
"""

from typing import Any

WEB_DIRECTORY = "./web"


async def comfy_entrypoint() -> Any:
    from .nodes.comfy_v3 import comfy_entrypoint as node_pack_entrypoint

    return await node_pack_entrypoint()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
