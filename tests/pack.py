"""Import the repository as ComfyUI does: as one package (here ``specar_pack``) whose ``nodes``
reach ``engine`` by relative imports. The top-level ``engine`` used by other tests is a
separate copy; node tests use only this package's objects."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "specar_pack"


def load_pack() -> ModuleType:
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def run_node(node_id: str, host: object, **inputs: object) -> tuple:
    """A node run as ComfyUI makes it: widgets the caller leaves out keep their defaults, and a choice
    with inputs of its own (``policy="csd", relaxation=0.5``) reaches the run as ComfyUI hands it over,
    one dict holding the choice and its case's inputs."""
    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    spec = NODES_BY_ID[node_id]
    values = {}
    for f in spec.inputs:
        if f.cases:
            choice = f.defaults(inputs.pop(f.name, None))
            values[f.name] = {**choice, **{name: inputs.pop(name) for name in choice if name in inputs}}
        elif f.name in inputs:
            values[f.name] = inputs.pop(f.name)
        elif f.is_widget:
            values[f.name] = f.default
    assert not inputs, f"{node_id} has no input {', '.join(inputs)} (with the choices made)"
    return spec.run(host, **values)
