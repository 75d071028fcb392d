"""SpecAR as a ComfyUI custom node pack (ComfyUI imports this file).

The nodes arrive with the ComfyUI issue; the engine is usable on its own through ``engine``.
Nothing here runs outside ComfyUI, so importing the engine never needs ComfyUI.
"""

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
