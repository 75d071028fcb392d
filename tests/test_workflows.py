"""Every shipped workflow against the node definitions: types exist, widget values are valid,
links are type-correct, required sockets are connected, and the files are what build.py makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pack import ROOT, load_pack

load_pack()
from specar_pack.nodes import NODES_BY_ID  # noqa: E402
from specar_pack.nodes.schema import BOOLEAN, CHOICE, COMBO, FLOAT, INT, STRING  # noqa: E402

sys.path.insert(0, str(ROOT / "workflows"))
from build import CORE_NODES, FAMILY_WORKFLOWS, SEED_CONTROL, VIRTUAL_NODES, render_all  # noqa: E402
from workflow_layout import overlapping_pairs, rectangles  # noqa: E402
from thumbnails import SIZE  # noqa: E402

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
DOCUMENTED_FOLDERS = {folder for _, folder, _, _ in FAMILY_WORKFLOWS.values()}


def _check_widget(field: Any, value: Any) -> None:
    if field.type == INT:
        assert isinstance(value, int) and not isinstance(value, bool) and field.min <= value <= field.max, (
            field.name,
            value,
        )
    elif field.type == FLOAT:
        assert isinstance(value, (int, float)) and field.min <= value <= field.max, (field.name, value)
    elif field.type == BOOLEAN:
        assert isinstance(value, bool), (field.name, value)
    elif field.type == STRING:
        assert isinstance(value, str), (field.name, value)
    elif field.type == COMBO and callable(field.options):  # model folders: the user's, or one the README documents
        assert value in field.choices() or value in DOCUMENTED_FOLDERS, (field.name, value)
    elif field.type in (COMBO, CHOICE):
        assert value in field.choices(), (field.name, value)


def _inputs_and_outputs(node: dict[str, Any]) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """Socket inputs (name -> (type, optional)) and output types the definitions give this node."""
    kind = node["type"]
    if kind in NODES_BY_ID:
        spec = NODES_BY_ID[kind]
        values = list(node["widgets_values"])
        for f in spec.widgets():
            value = values.pop(0)
            _check_widget(f, value)
            if f.seed:
                assert values.pop(0) in SEED_CONTROLS
            for sub in f.case(value).inputs if f.cases else ():  # a choice's own widgets follow it
                _check_widget(sub, values.pop(0))
        assert not values, (kind, node["widgets_values"])
        return {f.name: (f.type, f.optional) for f in spec.sockets()}, [o.type for o in spec.outputs]
    if kind in CORE_NODES:
        widgets, sockets, outputs = CORE_NODES[kind]
        assert len(node["widgets_values"]) == len(widgets), kind
        return {name: (t, False) for name, t in sockets}, [t for _, t in outputs]
    assert kind in VIRTUAL_NODES, f"unknown node type {kind}"
    return {}, []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_matches_node_definitions(path: Path) -> None:
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    assert any(n["type"] in ("SpecARSampler", "SpecARCompare", "SpecARRelaxationPreview") for n in nodes.values())
    assert any(n["type"] == "Note" for n in nodes.values()), "every workflow explains itself in a note"
    for node in nodes.values():
        sockets, outputs = _inputs_and_outputs(node)
        assert [o["type"] for o in node["outputs"]] == outputs
        for index, entry in enumerate(node["inputs"]):
            kind, optional = sockets[entry["name"]]
            assert entry["type"] == kind
            if entry["link"] is None:
                assert optional, f"{node['type']}.{entry['name']} is required but not connected"
                continue
            _, source, slot, target, target_slot, link_type = links[entry["link"]]
            assert (target, target_slot) == (node["id"], index)
            source_type = nodes[source]["outputs"][slot]["type"]
            assert link_type == source_type and kind in (source_type, "*"), (node["type"], entry["name"])
            assert entry["link"] in nodes[source]["outputs"][slot]["links"]
        assert {e["name"] for e in node["inputs"]} == set(sockets), node["type"]


def test_workflows_are_what_build_makes() -> None:
    rendered = render_all()
    assert sorted(rendered) == [p.name for p in WORKFLOWS]
    for name, text in rendered.items():
        assert (ROOT / "workflows" / name).read_text() == text, f"{name} is stale: run python workflows/build.py"


def test_seed_control_value_is_a_frontend_choice() -> None:
    assert SEED_CONTROL in SEED_CONTROLS


def test_every_family_workflow_folder_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for family, folder, _, _ in FAMILY_WORKFLOWS.values():
        assert f"models/specar/{folder}/" in readme, folder


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_no_two_nodes_overlap(path: Path) -> None:
    """As saved; the real-ComfyUI test checks the sizes the frontend draws them at."""
    assert overlapping_pairs(rectangles(json.loads(path.read_text()))) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_has_its_template_thumbnail(path: Path) -> None:
    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (SIZE, SIZE)


def test_workflow_names_number_the_demos_first() -> None:
    names = [path.stem for path in WORKFLOWS]
    numbers = [int(name.split(" ", 1)[0]) for name in names]
    assert numbers == list(range(1, len(names) + 1))
    needs_weights = [name.endswith("(needs downloaded weights)") for name in names]
    assert needs_weights == sorted(needs_weights) and sum(needs_weights) == len(FAMILY_WORKFLOWS)
    assert all(name.split(" ", 1)[1].startswith("Demo,") != weights for name, weights in zip(names, needs_weights))
