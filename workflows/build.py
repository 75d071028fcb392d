"""Writes the example workflows (ComfyUI's UI format, version 0.4) from the node specs.

    python workflows/build.py

Widget values are laid out from the same :mod:`nodes` specs that ComfyUI sees, so a renamed or
reordered input cannot leave a stale workflow behind (a test rebuilds and compares). Core nodes
the workflows use are described in :data:`CORE_NODES`; the real-ComfyUI test checks that
description against the running server's ``/object_info``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# type -> (widgets as (name, type), socket inputs as (name, type), outputs as (name, type)); virtual
# nodes (Note) exist only in the frontend and never reach the server.
CORE_NODES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "PreviewImage": ((), (("images", "IMAGE"),), (("images", "IMAGE"),)),
    "PreviewAny": ((), (("source", "*"),), (("STRING", "STRING"),)),
    "SolidMask": ((("value", "FLOAT"), ("width", "INT"), ("height", "INT")), (), (("MASK", "MASK"),)),
    "MaskComposite": (
        (("x", "INT"), ("y", "INT"), ("operation", "COMBO")),
        (("destination", "MASK"), ("source", "MASK")),
        (("MASK", "MASK"),),
    ),
}
VIRTUAL_NODES = {"Note": (("text", "STRING"),)}
SEED_CONTROL = "fixed"  # the frontend's "control after generate" value that follows a seed widget
TITLE_HEIGHT = 30  # the frontend draws a node's title bar above its position
SLOT_HEIGHT, WIDGET_HEIGHT, NODE_PADDING = 20, 24, 12  # a socket row and a widget row, as the frontend draws them
GAP = 20  # between one node's bottom and the next one's title bar
LEFT = 20  # the left column: loader, draft source, policy, note
MIDDLE = 500  # the sampler
RIGHT = 880  # its previews
DEMO_SCALE = 8  # the demo's 32x32 images, enlarged to 256x256 in the previews


def node_specs() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from pack import load_pack  # the repository imported as ComfyUI imports it

    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    return NODES_BY_ID


def recommended_relaxation(policy: str) -> float:
    """The policy's benchmark-chosen setting (the pack is loaded by :func:`node_specs` first)."""
    from specar_pack.engine.policies import recommended_relaxation as recommended

    return recommended(policy)


def widget_values(spec: Any, widgets: dict[str, Any]) -> list[Any]:
    """A SpecAR node's ``widgets_values`` as the frontend saves them: each widget's value (``widgets``, which
    this empties, else its default), a seed's "control after generate" after it, and a choice's own inputs
    right after the choice."""
    values: list[Any] = []
    for f in spec.widgets():
        values.append(widgets.pop(f.name, f.default))
        if f.seed:
            values.append(SEED_CONTROL)
        if f.cases:
            values.extend(widgets.pop(sub.name, sub.default) for sub in f.case(values[-1]).inputs)
    return values


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    widgets_values: list[Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    title: str | None = None
    color: str | None = None

    def to_json(self, order: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "pos": list(self.pos),
            "size": list(self.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "properties": {"Node name for S&R": self.type},
            "widgets_values": self.widgets_values,
        }
        if self.title:
            data["title"] = self.title
        if self.color:
            data["color"], data["bgcolor"] = self.color, self.color
        return data


@dataclass
class Graph:
    specs: dict[str, Any]
    nodes: list[Node] = field(default_factory=list)
    links: list[list[Any]] = field(default_factory=list)

    def add(
        self,
        type_: str,
        pos: tuple[int, int] | Node,
        size: tuple[int, int] = (320, 130),
        title: str | None = None,
        **widgets: Any,
    ) -> Node:
        """A node at ``pos``, or stacked under the node given as ``pos`` (same column, title bar clear)."""
        if isinstance(pos, Node):
            pos = (pos.pos[0], pos.pos[1] + pos.size[1] + GAP + TITLE_HEIGHT)
        if type_ in self.specs:
            spec = self.specs[type_]
            values = widget_values(spec, widgets)
            inputs = [{"name": f.name, "type": f.type, "link": None} for f in spec.sockets()]
            outputs = [(o.name, o.type) for o in spec.outputs]
        elif type_ in CORE_NODES:
            widget_fields, sockets, outs = CORE_NODES[type_]
            values = [widgets.pop(name) for name, _ in widget_fields]
            inputs = [{"name": name, "type": kind, "link": None} for name, kind in sockets]
            outputs = list(outs)
        else:
            values = [widgets.pop(name) for name, _ in VIRTUAL_NODES[type_]]
            inputs, outputs = [], []
        if widgets:
            raise ValueError(f"{type_} has no widgets {sorted(widgets)}")
        rows = max(len(inputs), len(outputs)) * SLOT_HEIGHT + len(values) * WIDGET_HEIGHT + NODE_PADDING
        size = (size[0], max(size[1], rows))  # as tall as the frontend draws it, so no node hides another
        node = Node(
            len(self.nodes) + 1,
            type_,
            pos,
            size,
            values,
            inputs,
            [{"name": name, "type": kind, "links": [], "slot_index": i} for i, (name, kind) in enumerate(outputs)],
            title,
            "#432" if type_ in VIRTUAL_NODES else None,
        )
        self.nodes.append(node)
        return node

    def connect(self, source: Node, output: int, target: Node, input_name: str) -> None:
        link_id = len(self.links) + 1
        slot = next(i for i, entry in enumerate(target.inputs) if entry["name"] == input_name)
        kind = source.outputs[output]["type"]
        self.links.append([link_id, source.id, output, target.id, slot, kind])
        source.outputs[output]["links"].append(link_id)
        target.inputs[slot]["link"] = link_id

    def to_json(self) -> dict[str, Any]:
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": [n.to_json(i) for i, n in enumerate(self.nodes)],
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }


def _sampler_with_previews(g: Graph, model: Node, draft: Node | None, policy: Node | None, **widgets: Any) -> Node:
    sampler = g.add("SpecARSampler", (MIDDLE, 60), (340, 560), **widgets)
    g.connect(model, 0, sampler, "model")
    if draft is not None:
        g.connect(draft, 0, sampler, "draft")
    if policy is not None:
        g.connect(policy, 0, sampler, "policy")
    images = g.add("PreviewImage", (RIGHT, 60), (300, 300), title="Images")
    heat = g.add("PreviewImage", images, (300, 300), title="Acceptance heatmap")
    stats = g.add("PreviewAny", (RIGHT + 330, 60), (320, 200), title="Stats")
    for index, target, name in ((0, images, "images"), (1, heat, "images"), (2, stats, "source")):
        g.connect(sampler, index, target, name)
    if policy is not None:
        why = g.add("PreviewImage", stats, (420, 400), title="Why accepted")
        g.connect(sampler, 3, why, "images")
    return sampler


def _start(
    specs: dict[str, Any], draft_type: str, draft_size: tuple[int, int] = (340, 160), **draft_widgets: Any
) -> tuple[Graph, Node, Node]:
    """A graph with the model loader and a draft-source node at the top of the left column."""
    g = Graph(specs)
    model = g.add("SpecARModelLoader", (LEFT, 60), (340, 160))
    draft = g.add(draft_type, model, draft_size, **draft_widgets)
    return g, model, draft


def _note(g: Graph, above: Node, text: str, height: int = 220) -> Node:
    """The workflow's explanation, at the bottom of the left column."""
    return g.add("Note", above, (360, height), text=text)


def demo_jacobi(specs: dict[str, Any]) -> Graph:
    g, model, draft = _start(specs, "SpecARJacobiDrafts")
    _note(
        g,
        draft,
        (
            "SpecAR demo: Jacobi self-drafting.\n\nThe bundled demo model draws 32x32 scenes of 16 classes: "
            "red/green/blue/yellow circle, square, triangle or ring. Type one in the prompt.\n\n"
            "The target guesses 15 tokens ahead and checks them in the same forward; the exact policy keeps "
            "the images' distribution identical to plain decoding. Watch the heatmap widget while it runs."
        ),
    )
    _sampler_with_previews(g, model, draft, None, prompt="red ring", batch_size=4, scale=DEMO_SCALE)
    return g


def demo_drafter(specs: dict[str, Any]) -> Graph:
    g, model, draft = _start(specs, "SpecARDrafterModel")
    _note(
        g,
        draft,
        (
            "SpecAR demo: a drafter model.\n\nA 0.5M-parameter drafter (shipped with the demo) proposes gamma tokens; "
            "the 2M-parameter target checks them in one forward. Exact acceptance: lossless.\n\n"
            "Your own drafters go in ComfyUI/models/specar/ and need the target's vocabulary and token grid."
        ),
        180,
    )
    _sampler_with_previews(g, model, draft, None, prompt="blue square", batch_size=4, seed=7, scale=DEMO_SCALE)
    return g


def relaxation_mask(specs: dict[str, Any]) -> Graph:
    g, model, draft = _start(specs, "SpecARJacobiDrafts")
    canvas = g.add("SolidMask", draft, (210, 110), title="Mask: black 32x32", value=0.0, width=32, height=32)
    top = g.add("SolidMask", canvas, (210, 110), title="Mask: white top half", value=1.0, width=32, height=16)
    mask = g.add("MaskComposite", (LEFT + 230, canvas.pos[1]), (210, 150), x=0, y=0, operation="add")
    g.connect(canvas, 0, mask, "destination")
    g.connect(top, 0, mask, "source")
    policy = g.add("SpecARAcceptancePolicy", top, (340, 150), policy="gsd", relaxation=recommended_relaxation("gsd"))
    g.connect(mask, 0, policy, "mask")
    _note(
        g,
        policy,
        (
            "SpecAR: relaxation limited to a region.\n\nThe mask is white on the top half of the 32x32 image: "
            "GSD's relaxed acceptance acts there (the slider sets how much), the bottom half stays lossless. The "
            "engine averages the mask over each token's pixels.\n\nRelaxation trades faithfulness for speed: "
            "compare the stats with relaxation 0. Averaged over seeds it saves forwards, but one seed can go "
            "either way (docs/benchmarks.md measures twelve); SpecAR Relaxation Preview shows a seed's trade-off."
        ),
    )
    _sampler_with_previews(g, model, draft, policy, prompt="green triangle", batch_size=4, seed=0, scale=DEMO_SCALE)
    return g


def compare(specs: dict[str, Any]) -> Graph:
    g, model, draft = _start(specs, "SpecARJacobiDrafts")
    _note(
        g,
        draft,
        (
            "SpecAR: plain AR against speculative decoding, same seed, same machine.\n\nThe picture shows "
            "plain AR, the "
            "speculative images and their acceptance heatmap; the stats give target forwards, tokens per "
            "forward and the "
            "measured wall-clock speed-up."
        ),
        160,
    )
    node = g.add("SpecARCompare", (MIDDLE, 60), (340, 560), prompt="yellow circle", batch_size=2, seed=11)
    g.connect(model, 0, node, "model")
    g.connect(draft, 0, node, "draft")
    picture = g.add("PreviewImage", (RIGHT, 60), (520, 420), title="Plain AR | speculative | heatmap")
    stats = g.add("PreviewAny", picture, (520, 200), title="Speed-up")
    g.connect(node, 0, picture, "images")
    g.connect(node, 1, stats, "source")
    return g


POLICY_NOTES = {
    "lantern": "LANTERN moves the target's probability of tokens that look like the draft (nearby code vectors) onto "
    "the draft, within a total-variation budget.",
    "gsd": "GSD accepts the draft together with a group of interchangeable tokens (close in rank, probability and "
    "code vector).",
    "csd": "CSD raises acceptance by the target's entropy where the draft already agrees with the target "
    "(smooth, uncertain regions).",
    "clusters": "Cluster acceptance tests the draft's group of look-alike codes: every group keeps exactly the "
    "target's probability, only the pick inside a group may follow the draft.",
}


POLICY_TITLES = {"lantern": "LANTERN", "gsd": "GSD", "csd": "CSD", "clusters": "look-alike clusters"}

# The drafts each workflow relaxes: those its policy's recommended setting was measured with (the policy's
# ``recommended_with``), since a relaxation's quality cost depends on the drafts it relaxes. CSD kept no setting
# inside plain AR's quality band, so it shows its mildest on the drafter's default chain.
POLICY_DRAFTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lantern": ("SpecARDrafterModel", {"gamma": 6}),
    "gsd": ("SpecARJacobiDrafts", {"window": 16, "initialisation": "row_above"}),
    "csd": ("SpecARDrafterModel", {"gamma": 6}),
    "clusters": ("SpecARDrafterModel", {"gamma": 32}),
}


def relaxed_policy(policy: str) -> Callable[[dict[str, Any]], Graph]:
    """A workflow with a relaxed acceptance policy at its recommended setting, on the drafts it was measured with."""

    def build(specs: dict[str, Any]) -> Graph:
        from specar_pack.engine.policies import recommendation

        draft_type, draft_widgets = POLICY_DRAFTS[policy]
        g, model, draft = _start(specs, draft_type, **draft_widgets)
        chosen = g.add(
            "SpecARAcceptancePolicy", draft, (340, 150), policy=policy, relaxation=recommended_relaxation(policy)
        )
        _note(
            g,
            chosen,
            (
                f"SpecAR: the {policy.upper()} relaxed acceptance policy.\n\n{POLICY_NOTES[policy]}\n\n"
                f"Relaxation {recommendation(policy)}: the benchmark's recommended setting; 0 gives exactly the "
                "lossless images. A relaxation's quality cost depends on the drafts it relaxes. 'Why accepted' maps "
                "what the policy decided on; docs/benchmarks.md lists measured speed and quality per setting."
            ),
        )
        _sampler_with_previews(g, model, draft, chosen, prompt="green ring", batch_size=4, seed=21, scale=DEMO_SCALE)
        return g

    return build


def _tree_workflow(
    specs: dict[str, Any],
    note: str,
    draft_type: str,
    draft_widgets: dict[str, Any],
    policy_widgets: dict[str, Any],
    prompt: str,
    seed: int,
) -> Graph:
    """A tree-drafting graph: note, model loader, draft source, acceptance policy and the sampler with previews."""
    g = Graph(specs)
    model = g.add("SpecARModelLoader", (LEFT, 60), (340, 160))
    draft = g.add(draft_type, model, (340, 210), **draft_widgets)
    chosen = g.add("SpecARAcceptancePolicy", draft, (340, 150), **policy_widgets)
    _note(g, chosen, note, 240)
    _sampler_with_previews(g, model, draft, chosen, prompt=prompt, batch_size=4, seed=seed, scale=DEMO_SCALE)
    return g


def tree_cascade(specs: dict[str, Any]) -> Graph:
    return _tree_workflow(
        specs,
        (
            "SpecAR: tree drafts with CASCADE relaxation.\n\nA one-layer head reads the target's hidden states "
            "and drafts "
            "a dynamic tree of guesses (EAGLE-2), here 16 deep with 80 nodes; the target checks the whole tree in one "
            "forward. CASCADE accepts a guess with the target's mass on its whole group of codes that look alike and "
            "that the target embeds alike, so every group keeps the target's probability: groups of 16 codes, 32 where "
            "the image has settled (the context's last two hidden states alike), and a sibling that leaves the target "
            "in nearly the same state joins the group; a code that says less about the prompt than its group is "
            "tested on its own. The tree offers one guess per group.\n\nRelaxation 0 = lossless "
            "tree decoding; towards 1 more guesses are accepted, at a quality cost that docs/benchmarks.md measures "
            "per setting."
        ),
        "SpecARTreeHead",
        dict(depth=16, nodes=80),
        dict(policy="cascade", relaxation=recommended_relaxation("cascade")),
        "red circle",
        5,
    )


def drafter_tree_cascade(specs: dict[str, Any]) -> Graph:
    return _tree_workflow(
        specs,
        (
            "SpecAR: CASCADE on a drafter model's tree.\n\nThe bundled drafter drafts a static tree: two guesses, two "
            "children each, then four single paths, 32 guesses deep (branching 2,2,1*30), sampled from its own "
            "distribution; the target checks the whole tree in one forward. CASCADE accepts a guess with the target's "
            "mass on its whole group of codes that look alike and that the target embeds alike, so every group keeps "
            "the target's probability; a code that says less about the prompt than its group is tested on its own."
            "\n\nRelaxation 0 = lossless. docs/benchmarks.md lists speed and quality per setting; on a CPU the deep "
            "tree costs wall time, on a GPU a forward of many tokens costs about what one of a few does."
        ),
        "SpecARDrafterModel",
        dict(shape="static tree"),
        dict(policy="cascade", relaxation=recommended_relaxation("cascade")),
        "green square",
        11,
    )


def tree_lantern_pp(specs: dict[str, Any]) -> Graph:
    return _tree_workflow(
        specs,
        (
            "SpecAR: LANTERN++.\n\nA static tree (4-2-1-1-1-1-1-1 children per depth, sampled from the head) keeps "
            "drafting deep even where the head is unsure, and LANTERN's latent relaxation accepts look-alike codes, "
            "bounded by lambda (ratio_bound: the relaxed probability stays below lambda x the target's) and by "
            "the neighbour count, as in the LANTERN++ paper's (k=10, lambda=5) setting."
        ),
        "SpecARTreeHead",
        dict(tree="static"),
        dict(
            policy="lantern",
            relaxation=recommended_relaxation("lantern"),
            neighbours=10,
            ratio_bound=5.0,
        ),
        "blue ring",
        9,
    )


def mar_cspd(specs: dict[str, Any]) -> Graph:
    g = Graph(specs)
    model = g.add("SpecARModelLoader", (LEFT, 60), (340, 160), model="mar-demo")
    draft = g.add("SpecARDrafterModel", model, (340, 160), drafter="mar-demo-drafter", gamma=4)
    chosen = g.add("SpecARAcceptancePolicy", draft, (340, 150), policy="cspd", relaxation=0.5)
    _note(
        g,
        chosen,
        (
            "SpecAR: continuous tokens (MAR) with continuous speculative decoding (CSpD).\n\nThe bundled MAR demo "
            "draws the same 16 scene classes from continuous tokens (the latents of a small VAE, as MAR uses its "
            "KL-16 VAE), each sampled by a small diffusion head. The drafter (a smaller MAR) runs gamma MAR "
            "steps; one target pass verifies all of them, accepting each token by the ratio of the two models' "
            "Gaussians (both denoise from the same noise) and resampling the rest.\n\nThe cspd policy's relaxation "
            "flattens that test (0 = exact Gaussian ratio) and lengthens the drafter's runs, so the target runs "
            "fewer passes; docs/benchmarks.md lists target passes, time and quality per setting."
        ),
        260,
    )
    _sampler_with_previews(
        g, model, draft, chosen, prompt="red circle", batch_size=4, seed=2, top_k=0, scale=DEMO_SCALE
    )
    return g


def relaxation_preview(specs: dict[str, Any]) -> Graph:
    g, model, draft = _start(specs, "SpecARDrafterModel")
    _note(
        g,
        draft,
        (
            "SpecAR: pick a relaxation by eye.\n\nThe preview draws the same seed at each relaxation of one policy "
            "and shows every image above its acceptance heatmap, with the target forwards and the time it took "
            "against relaxation 0 (lossless). Choose the highest setting whose picture still looks right, then "
            "set it on SpecAR Acceptance Policy. Here: LANTERN with the bundled drafter, whose quality "
            "docs/benchmarks.md measures per setting."
        ),
    )
    preview = g.add("SpecARRelaxationPreview", (MIDDLE, 60), (340, 560), policy="lantern", prompt="blue circle", seed=4)
    g.connect(model, 0, preview, "model")
    g.connect(draft, 0, preview, "draft")
    picture = g.add("PreviewImage", (RIGHT, 60), (860, 420), title="Relaxations side by side")
    stats = g.add("PreviewAny", picture, (860, 200), title="Stats")
    g.connect(preview, 0, picture, "images")
    g.connect(preview, 1, stats, "source")
    return g


# workflow name -> (family, folder under models/specar/ as the README lays it out, prompt, note)
FAMILY_WORKFLOWS = {
    "14 Janus Pro (needs downloaded weights)": (
        "janus",
        "Janus-Pro-7B",
        "a red fox sleeping in fresh snow, soft morning light",
        "Janus-Pro (1B or 7B) from a transformers checkpoint (deepseek-community/Janus-Pro-7B).",
    ),
    "15 Lumina mGPT (needs downloaded weights)": (
        "lumina-mgpt",
        "Lumina-mGPT-7B-768",
        "a lighthouse on a cliff at sunset, oil painting",
        "Lumina-mGPT with Chameleon's VQGAN (vqgan.ckpt in the folder). Size: the folder's number "
        "(768) unless image_size says otherwise.",
    ),
    "16 Anole (needs downloaded weights)": (
        "anole",
        "Anole-7b-v0.1-hf",
        "a bowl of ramen on a wooden table",
        "Anole (leloy/Anole-7b-v0.1-hf) with Chameleon's VQGAN (vqgan.ckpt in the folder); 512x512.",
    ),
    "17 Emu3 Gen (needs downloaded weights)": (
        "emu3",
        "Emu3-Gen-hf",
        "a portrait of a young woman with freckles, film grain",
        "Emu3-Gen (BAAI/Emu3-Gen-hf); 720x720 is 8,100 tokens, so expect minutes per image even when fast.",
    ),
    "18 LlamaGen text to image (needs downloaded weights)": (
        "llamagen",
        "LlamaGen-T2I-XL-512",
        "a cozy cabin in a snowy forest at night",
        "LlamaGen text-to-image (t2i_XL_stage2_512.pt) with its flan-t5-xl text encoder in the "
        "folder's t5/ sub-folder and vq_ds16_t2i.pt.",
    ),
}


def family_workflow(name: str) -> Callable[[dict[str, Any]], Graph]:
    """A real checkpoint of one family with lossless Jacobi drafts (no extra weights to download)."""
    family, folder, prompt, about = FAMILY_WORKFLOWS[name]

    def build(specs: dict[str, Any]) -> Graph:
        from specar_pack.engine.models.registry import family_defaults

        defaults = family_defaults(family)
        g = Graph(specs)
        model = g.add("SpecARModelLoader", (LEFT, 60), (340, 160), model=folder, family=family)
        draft = g.add("SpecARJacobiDrafts", model, (340, 140), window=16)
        _note(
            g,
            draft,
            (
                f"SpecAR: {about}\n\nPut the checkpoint in ComfyUI/models/specar/{folder}/ (README: Models) and "
                "pick it in the loader. Jacobi drafts need no extra weights and keep the output distribution exact; "
                "sampling settings are the authors' defaults. A GPU with bf16 is assumed."
            ),
            240,
        )
        _sampler_with_previews(
            g,
            model,
            draft,
            None,
            prompt=prompt,
            batch_size=1,
            seed=1,
            cfg=defaults.cfg_scale,
            temperature=defaults.temperature,
            top_k=defaults.top_k,
        )
        return g

    return build


# file name -> builder. The template browser shows each file name as the workflow's title, so the names say
# what each does, number the order to read them in, and mark the ones that need downloaded weights.
WORKFLOWS = {
    "01 Demo, Jacobi self drafting (lossless)": demo_jacobi,
    "02 Demo, a drafter model (lossless)": demo_drafter,
    "03 Demo, plain AR against speculative, timed": compare,
    **{
        f"{4 + i:02d} Demo, relaxed acceptance, {POLICY_TITLES[name]}": relaxed_policy(name)
        for i, name in enumerate(POLICY_NOTES)
    },
    "08 Demo, relaxation only in a masked region": relaxation_mask,
    "09 Demo, tree head drafts with CASCADE": tree_cascade,
    "10 Demo, drafter model tree with CASCADE": drafter_tree_cascade,
    "11 Demo, LANTERN++ on a static tree": tree_lantern_pp,
    "12 Demo, continuous tokens (MAR) with CSpD": mar_cspd,
    "13 Demo, pick a relaxation by eye": relaxation_preview,
    **{name: family_workflow(name) for name in FAMILY_WORKFLOWS},
}


def file_name(builder: Callable[[dict[str, Any]], Graph]) -> str:
    """The workflow file ``builder`` writes."""
    return next(f"{name}.json" for name, made_by in WORKFLOWS.items() if made_by is builder)


def render_all() -> dict[str, str]:
    specs = node_specs()
    return {f"{name}.json": json.dumps(build(specs).to_json(), indent=1) + "\n" for name, build in WORKFLOWS.items()}


def family_cards() -> dict[str, Any]:
    """Thumbnails of the workflows that need downloaded weights: what to download and where it goes."""
    from thumbnails import label_card

    return {
        f"{name}.jpg": label_card(name.split(" ", 1)[1], [about, f"Put it in ComfyUI/models/specar/{folder}/"])
        for name, (_, folder, _, about) in FAMILY_WORKFLOWS.items()
    }


def main() -> None:
    from thumbnails import save_jpeg

    for name, text in render_all().items():
        (HERE / name).write_text(text)
        print(f"wrote workflows/{name}")
    for name, card in family_cards().items():
        save_jpeg(card, HERE / name)
        print(f"wrote workflows/{name}")


if __name__ == "__main__":
    main()
