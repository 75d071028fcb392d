"""The bundled demo model: procedural scenes, a patch-codebook tokenizer, and a small trained
LlamaGen target and drafter that run on a CPU with no download (see ``model.load_demo``)."""

from .model import DEMO_SETTINGS, load_demo, load_demo_drafter
from .scenes import CLASS_NAMES, parse_prompt

__all__ = ["CLASS_NAMES", "DEMO_SETTINGS", "load_demo", "load_demo_drafter", "parse_prompt"]
