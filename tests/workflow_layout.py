"""Node rectangles of a workflow and the pairs that overlap (the unit and the real-ComfyUI tests share it)."""

from __future__ import annotations

import sys
from itertools import combinations
from typing import Any

from pack import ROOT

sys.path.insert(0, str(ROOT / "workflows"))
from build import TITLE_HEIGHT  # noqa: E402


def rectangles(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """Each node's rectangle as saved in the workflow, title bar included."""
    return [
        {
            "node": f"{n['id']} {n.get('title', n['type'])}",
            "x": n["pos"][0],
            "y": n["pos"][1] - TITLE_HEIGHT,
            "w": n["size"][0],
            "h": n["size"][1] + TITLE_HEIGHT,
        }
        for n in workflow["nodes"]
    ]


def overlapping_pairs(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The names of every two rectangles that share area (touching edges do not count)."""

    def apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
        side_by_side = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
        one_above_the_other = a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
        return side_by_side or one_above_the_other

    return [(a["node"], b["node"]) for a, b in combinations(boxes, 2) if not apart(a, b)]
