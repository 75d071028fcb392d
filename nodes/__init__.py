"""ComfyUI nodes: thin wrappers that translate node inputs into engine calls (see the ComfyUI issue)."""
