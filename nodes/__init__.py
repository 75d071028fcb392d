"""ComfyUI nodes: thin wrappers that translate node inputs into engine calls.

Every node is a plain :class:`~nodes.schema.NodeSpec`; :mod:`nodes.comfy_v3` holds the ComfyUI V3
node class of each, imported when ComfyUI loads the pack.
"""

from .decoding_nodes import ACCEPTANCE_POLICY, JACOBI_DRAFTS
from .model_nodes import DRAFTER_MODEL, LOAD_MODEL, TREE_HEAD
from .preview_nodes import RELAXATION_PREVIEW
from .sampler_nodes import COMPARE, SAMPLER
from .schema import NodeSpec

NODES: tuple[NodeSpec, ...] = (
    LOAD_MODEL,
    JACOBI_DRAFTS,
    DRAFTER_MODEL,
    TREE_HEAD,
    ACCEPTANCE_POLICY,
    SAMPLER,
    COMPARE,
    RELAXATION_PREVIEW,
)
NODES_BY_ID: dict[str, NodeSpec] = {spec.node_id: spec for spec in NODES}

__all__ = ["NODES", "NODES_BY_ID", "NodeSpec"]
