"""The pack in a real ComfyUI, driven by a real browser (skipped unless SPECAR_COMFYUI is set).

    SPECAR_COMFYUI=/path/to/ComfyUI python -m pytest tests/test_comfyui_real.py -o addopts=""

runs in one process (``-o addopts=""`` drops the suite's parallel workers: it starts one ComfyUI with this
pack linked in). It needs a ComfyUI checkout (never part of this repository) whose Python environment runs
this test, with this package installed in it (``pip install --no-deps -e .``: the tests import ``specar``),
``playwright`` installed and Chromium at /usr/bin/chromium (or SPECAR_CHROMIUM). The test
links this repository into ``custom_nodes/``, starts ComfyUI with ``--cpu`` on 127.0.0.1, checks
``/object_info`` against the node specs, loads and queues every shipped workflow in the real
frontend, checks images and live heatmap messages, interrupts a run, and screenshots the widget
mid-run (to SPECAR_SCREENSHOT when set). With SPECAR_THUMBNAILS set, each demo workflow's run
writes its template-browser thumbnail (``workflows/<name>.jpg``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from pack import ROOT, load_pack
from workflow_layout import overlapping_pairs

sys.path.insert(0, str(ROOT / "workflows"))
from build import (  # noqa: E402
    FAMILY_WORKFLOWS,
    demo_drafter,
    demo_jacobi,
    drafter_tree_cascade,
    file_name,
    tree_lantern_pp,
    widget_values,
)
from thumbnails import demo_thumbnail, save_jpeg  # noqa: E402
from tiny_hf import build_tiny_chameleon, build_tiny_emu3, build_tiny_janus, build_tiny_llamagen_t2i

COMFY = os.environ.get("SPECAR_COMFYUI")
pytestmark = pytest.mark.skipif(
    not COMFY, reason="set SPECAR_COMFYUI to a ComfyUI checkout to run the real-ComfyUI test"
)
CHROMIUM = os.environ.get("SPECAR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
RUN_TIMEOUT = 240.0
DECODING_NODES = ("SpecARSampler", "SpecARCompare", "SpecARRelaxationPreview")  # the ones that draw live heatmaps
THUMBNAIL_ROWS = (  # preview titles, in order
    "Images",
    "Acceptance heatmap",
    "Plain AR | speculative | heatmap",
    "Relaxations side by side",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _post(url: str, data: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        return json.loads(body) if body else None


# family -> (tiny checkpoint builder, loader widgets to change so a tiny model draws quickly)
TINY_FAMILY_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {
    "janus": (build_tiny_janus, {}),
    "emu3": (build_tiny_emu3, {"image_size": 16}),
    "lumina-mgpt": (partial(build_tiny_chameleon, lumina=True, vqgan=True), {"image_size": 128}),
    "anole": (partial(build_tiny_chameleon, lumina=False, vqgan=True), {"image_size": 128}),
    "llamagen": (build_tiny_llamagen_t2i, {}),
}


def _tiny_loader_widgets(workflow_name: str) -> dict[str, Any]:
    """Loader widgets that make a family workflow draw quickly with its tiny model (none for the demos)."""
    family = FAMILY_WORKFLOWS.get(workflow_name, (None,))[0]
    return TINY_FAMILY_MODELS[family][1] if family else {}


def _install_tiny_family_models(comfy: Path) -> list[Path]:
    """Tiny random checkpoints under the folder names the family workflows pick (removed afterwards)."""
    made = []
    for family, folder_name, _, _ in FAMILY_WORKFLOWS.values():
        folder = comfy / "models" / "specar" / folder_name
        if not folder.exists():
            TINY_FAMILY_MODELS[family][0](folder)
            made.append(folder)
    return made


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    comfy = Path(COMFY or "")
    link = comfy / "custom_nodes" / "specar"
    made_link = not link.exists()
    if made_link:
        link.symlink_to(ROOT, target_is_directory=True)
    tiny_models = _install_tiny_family_models(comfy)
    work = tmp_path_factory.mktemp("comfy")
    log_path = work / "server.log"
    port = _free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "main.py",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--output-directory",
                str(work / "output"),
                "--temp-directory",
                str(work),
            ],
            cwd=comfy,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                _get(f"{url}/system_stats")
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        _post(f"{url}/settings/Comfy.TutorialCompleted", True)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        if made_link:
            link.unlink()
        for folder in tiny_models:
            shutil.rmtree(folder)


@pytest.fixture(scope="module")
def page(server: tuple[str, Path]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto(url)
        # Ready when the socket is open and node types (ours and the frontend's virtual Note) are registered.
        page.wait_for_function(
            """() => window.comfyAPI?.app?.app?.graph && window.comfyAPI.api.api.socket?.readyState === 1
            && window.LiteGraph?.registered_node_types?.SpecARSampler && window.LiteGraph.registered_node_types.Note""",
            timeout=120_000,
        )
        page.evaluate("""() => {
            const api = window.comfyAPI.api.api;
            window.__specar = { frames: [], finished: [] };
            api.addEventListener("specar.heatmap", ({ detail }) => window.__specar.frames.push(detail));
            for (const type of ["execution_success", "execution_error", "execution_interrupted"])
                api.addEventListener(type, ({ detail }) => window.__specar.finished.push({ type, ...detail }));
        }""")
        yield page
        browser.close()


def _check_declared(field: Any, declared: list[Any]) -> None:
    """One input as ``/object_info`` declares it against its spec (a choice: each case's own inputs too)."""
    kind, options = declared[0], declared[1] if len(declared) > 1 else {}
    if field.type == "COMBO":
        assert set(field.choices()) <= set(options.get("options", kind if isinstance(kind, list) else []))
    else:
        assert kind == field.type
    if field.cases:  # the default case first: the frontend opens a dynamic combo on its first option
        assert [case["key"] for case in options["options"]][0] == field.default
        assert sorted(case["key"] for case in options["options"]) == sorted(field.choices())
        for case in options["options"]:
            inputs = {**case["inputs"].get("required", {}), **case["inputs"].get("optional", {})}
            assert list(inputs) == [sub.name for sub in field.case(case["key"]).inputs]
            for sub in field.case(case["key"]).inputs:
                _check_declared(sub, inputs[sub.name])
    elif field.default is not None:
        assert options.get("default") == field.default


def test_pack_loads_and_object_info_matches_the_specs(server: tuple[str, Path]) -> None:
    url, log_path = server
    log = log_path.read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "specar" in line.lower())
    info = _get(f"{url}/object_info")
    load_pack()
    from specar_pack.nodes import NODES

    for spec in NODES:
        node = info[spec.node_id]
        assert node["display_name"] == spec.display_name
        assert node["search_aliases"] == list(spec.search_aliases)
        declared = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        assert list(declared) == [f.name for f in spec.inputs]
        for f in spec.inputs:
            _check_declared(f, declared[f.name])
        assert node["output"] == [o.type for o in spec.outputs]
    templates = _get(f"{url}/workflow_templates")
    assert sorted(templates["specar"]) == [p.stem for p in WORKFLOWS]  # the frontend's template browser lists them


def test_core_nodes_used_by_workflows_match_object_info(server: tuple[str, Path]) -> None:
    sys.path.insert(0, str(ROOT / "workflows"))
    from build import CORE_NODES

    info = _get(f"{server[0]}/object_info")
    for name, (widgets, sockets, outputs) in CORE_NODES.items():
        required = info[name]["input"]["required"]
        assert [n for n in required] == [n for n, _ in sockets] + [n for n, _ in widgets] or set(required) == {
            n for n, _ in sockets
        } | {n for n, _ in widgets}
        for socket_name, kind in sockets:
            assert required[socket_name][0] == kind
        assert info[name]["output"] == [kind for _, kind in outputs]


def _set_loader_widgets(workflow: dict[str, Any], changes: dict[str, Any]) -> None:
    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    names = [f.name for f in NODES_BY_ID["SpecARModelLoader"].widgets()]
    for node in workflow["nodes"]:
        if node["type"] == "SpecARModelLoader":
            for name, value in changes.items():
                node["widgets_values"][names.index(name)] = value


def _queue_workflow(page: Any, workflow: dict[str, Any]) -> None:
    page.evaluate(
        """async (workflow) => {
        window.__specar.frames = []; window.__specar.finished = [];
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(workflow);
        await app.queuePrompt(0, 1);
    }""",
        workflow,
    )


def _wait_finished(page: Any) -> dict[str, Any]:
    page.wait_for_function("() => window.__specar.finished.length > 0", timeout=RUN_TIMEOUT * 1000)
    return page.evaluate("() => window.__specar.finished[0]")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_runs_in_the_real_frontend(server: tuple[str, Path], page: Any, path: Path) -> None:
    url, _ = server
    workflow = json.loads(path.read_text())
    _set_loader_widgets(workflow, _tiny_loader_widgets(path.stem))
    _queue_workflow(page, workflow)
    finished = _wait_finished(page)
    assert finished["type"] == "execution_success", finished
    history = _get(f"{url}/history/{finished['prompt_id']}")[finished["prompt_id"]]
    pictures: dict[str, list[Any]] = {}  # preview title -> its images
    titles = {str(n["id"]): n.get("title", n["type"]) for n in workflow["nodes"]}
    for node_id, output in history["outputs"].items():
        for image in output.get("images", []):
            query = f"filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}"
            with urllib.request.urlopen(f"{url}/view?{query}") as response:
                data = response.read()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            pictures.setdefault(titles[node_id], []).append(Image.open(io.BytesIO(data)))
    assert pictures, "no images came out"
    if os.environ.get("SPECAR_THUMBNAILS") and path.stem not in FAMILY_WORKFLOWS:  # what the demo draws, as its card
        rows = [pictures[title] for title in THUMBNAIL_ROWS if title in pictures]
        save_jpeg(demo_thumbnail(path.stem.split(" ", 1)[1], rows), path.with_suffix(".jpg"))
    texts = [text for output in history["outputs"].values() for text in output.get("text", [])]
    assert any("tokens/forward" in text or "tokens/pass" in text for text in texts)  # discrete or MAR (CSpD)
    frames = page.evaluate("() => window.__specar.frames")
    sampler_ids = {str(n["id"]) for n in workflow["nodes"] if n["type"] in DECODING_NODES}
    assert frames and {f["node"] for f in frames} == sampler_ids
    assert frames[-1]["done"] and frames[-1]["committed"] == frames[-1]["total"]
    # The widget drew the last frame: its status line and committed count say so.
    widget = page.evaluate(
        """(id) => {
        const view = window.comfyAPI.app.app.graph.getNodeById(Number(id)).specarView;
        return { committed: view.root.dataset.committed, status: view.status.textContent };
    }""",
        sorted(sampler_ids)[0],
    )
    assert widget["committed"] == str(frames[-1]["total"]) and "tokens/forward" in widget["status"]


def test_the_tree_head_drafts_for_auto_in_the_real_frontend(server: tuple[str, Path], page: Any) -> None:
    """The Tree Head node set to auto: its head's chains or row-above Jacobi, chosen by measured cost; the
    stats line names both sources and the costs it chose by."""
    url, _ = server
    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    workflow = json.loads((ROOT / "workflows" / file_name(tree_lantern_pp)).read_text())
    head = next(n for n in workflow["nodes"] if n["type"] == "SpecARTreeHead")
    head["widgets_values"] = widget_values(NODES_BY_ID["SpecARTreeHead"], {"tree": "auto"})
    _queue_workflow(page, workflow)
    finished = _wait_finished(page)
    assert finished["type"] == "execution_success", finished
    history = _get(f"{url}/history/{finished['prompt_id']}")[finished["prompt_id"]]
    texts = [text for output in history["outputs"].values() for text in output.get("text", [])]
    assert any("auto (row-above Jacobi or tree head" in text and "tree head" in text for text in texts), texts


def test_interrupt_stops_a_run_between_forwards(server: tuple[str, Path], page: Any) -> None:
    workflow = json.loads((ROOT / "workflows" / file_name(demo_jacobi)).read_text())
    sampler = next(n for n in workflow["nodes"] if n["type"] == "SpecARSampler")
    sampler["widgets_values"][1] = 424242  # a new seed: an identical prompt would be served from the cache
    sampler["widgets_values"][3] = 128  # a long batch, so there is time to interrupt it
    _queue_workflow(page, workflow)
    page.wait_for_function(
        "() => window.__specar.frames.some((f) => 2 * f.committed >= f.total)", timeout=RUN_TIMEOUT * 1000
    )  # about half-way through the run
    screenshot = os.environ.get("SPECAR_SCREENSHOT")
    if screenshot:  # the widget mid-run, for the README
        page.screenshot(path=screenshot)
    _post(f"{server[0]}/interrupt", {})
    finished = _wait_finished(page)
    assert finished["type"] == "execution_interrupted", finished
    frames = page.evaluate("() => window.__specar.frames")
    assert frames[-1]["done"] and frames[-1]["committed"] < frames[-1]["total"]  # the widget shows where it stopped
    status = page.evaluate(
        "(id) => window.comfyAPI.app.app.graph.getNodeById(Number(id)).specarView.status.textContent",
        frames[-1]["node"],
    )
    assert "stopped" in status


def test_widget_clears_when_its_node_runs_again(server: tuple[str, Path], page: Any) -> None:
    """Runs after the interrupted run above: the widget still shows that run until the node starts
    again, then clears before the new run's first frame (nothing stale)."""
    node_id = page.evaluate("() => window.__specar.frames.at(-1).node")
    before = page.evaluate(
        "(id) => window.comfyAPI.app.app.graph.getNodeById(Number(id)).specarView.root.dataset.committed", node_id
    )
    assert int(before) > 0
    page.evaluate(
        """async (id) => {
        const app = window.comfyAPI.app.app;
        const node = app.graph.getNodeById(Number(id));
        window.__specar.onStart = null; window.__specar.frames = []; window.__specar.finished = [];
        // Registered after the extension's own listener, so it sees the widget right after it reacted.
        window.comfyAPI.api.api.addEventListener("executing", ({ detail }) => {
            const running = detail && typeof detail === "object" ? detail.display_node ?? detail.node : detail;
            if (String(running) === String(id) && window.__specar.onStart === null)
                window.__specar.onStart = { committed: node.specarView.root.dataset.committed,
                                            status: node.specarView.status.textContent };
        });
        node.widgets.find((w) => w.name === "seed").value = 777;
        await app.queuePrompt(0, 1);
    }""",
        node_id,
    )
    page.wait_for_function("() => window.__specar.frames.length > 0", timeout=RUN_TIMEOUT * 1000)
    assert page.evaluate("() => window.__specar.onStart") == {"committed": "0", "status": "sampling…"}
    _post(f"{server[0]}/interrupt", {})
    _wait_finished(page)


def test_the_widget_survives_malformed_frames_and_shows_failures(server: tuple[str, Path], page: Any) -> None:
    """Frames that are malformed (another version's, or corrupted) or that only report why a run failed leave a
    clear status line and raise nothing in the page."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    statuses = page.evaluate(
        """() => {
        const app = window.comfyAPI.app.app, api = window.comfyAPI.api.api;
        const node = app.graph._nodes.find((n) => n.type === "SpecARSampler");
        const id = String(node.id), seen = [];
        for (const detail of [
            { node: id, grid: "x" },
            { node: id, grid: [2, 2], cells: 5, committed: 1, total: 4 },
            { node: id, run: "r", done: true, error: "the target returned NaN" },
        ]) {
            api.dispatchEvent(new CustomEvent("specar.heatmap", { detail }));
            seen.push(node.specarView.status.textContent);
        }
        return seen;
    }"""
    )
    assert statuses == ["heatmap frame unreadable", "heatmap frame unreadable", "failed: the target returned NaN"]
    assert errors == []


def test_models_stay_loaded_between_runs_and_unload_on_request(server: tuple[str, Path], page: Any) -> None:
    """ComfyUI's model management holds the pack's models (target and drafter): a second run finds them
    loaded (no new load request in ComfyUI's log, so no copy), and an unload request frees them (the next
    run requests them again)."""
    url, log_path = server
    workflow = json.loads((ROOT / "workflows" / file_name(demo_drafter)).read_text())
    sampler = next(n for n in workflow["nodes"] if n["type"] == "SpecARSampler")

    def load_requests_after_a_run(seed: int) -> int:
        sampler["widgets_values"][1] = seed  # a new seed: an identical prompt would be served from the cache
        _queue_workflow(page, workflow)
        assert _wait_finished(page)["type"] == "execution_success"
        return log_path.read_text().count("Requested to load SpecARWeights")

    loaded = load_requests_after_a_run(515151)
    assert loaded >= 1
    assert load_requests_after_a_run(515152) == loaded
    _post(f"{url}/free", {"unload_models": True})
    time.sleep(2.0)  # the idle queue worker wakes on the flag and unloads before the next prompt arrives
    assert load_requests_after_a_run(515153) > loaded


def test_a_policy_choice_brings_its_own_widgets_in_the_frontend(server: tuple[str, Path], page: Any) -> None:
    """The policy is a dynamic combo: a saved workflow's values land on the chosen policy's own widgets,
    another choice swaps them for its own at their defaults, and the prompt sent to the server carries them."""
    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    choice = NODES_BY_ID["SpecARAcceptancePolicy"].field("policy")
    workflow = json.loads((ROOT / "workflows" / file_name(tree_lantern_pp)).read_text())
    saved = next(n for n in workflow["nodes"] if n["type"] == "SpecARAcceptancePolicy")
    shown = page.evaluate(
        """async ({ workflow, id, choices }) => {
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(workflow);
        const node = app.graph.getNodeById(id);
        const widgets = () => node.widgets.map((w) => [w.name, w.value]);
        const seen = [widgets()];
        for (const choice of choices) {
            node.widgets[0].value = choice;
            seen.push(widgets());
        }
        const prompt = (await app.graphToPrompt()).output[String(id)].inputs;
        return { seen, prompt };
    }""",
        {"workflow": workflow, "id": saved["id"], "choices": ["exact", "csd"]},
    )
    names = [sub.name for sub in choice.case("lantern").inputs]
    assert shown["seen"][0] == [
        ["policy", "lantern"],
        *([f"policy.{n}", v] for n, v in zip(names, saved["widgets_values"][1:])),
    ]
    assert shown["seen"][1] == [["policy", "exact"]]  # exact shows no relaxation slider
    csd = {sub.name: sub.default for sub in choice.case("csd").inputs}
    assert shown["seen"][2] == [["policy", "csd"], *([f"policy.{n}", v] for n, v in csd.items())]
    assert shown["prompt"]["policy"] == "csd" and shown["prompt"]["policy.tv_threshold"] == csd["tv_threshold"]


FLAT_LAYOUTS = {  # widget names in the order workflows saved them before choices brought their own widgets
    "SpecARAcceptancePolicy": ("policy", "relaxation", "expert_options"),
    "SpecARDrafterModel": ("drafter", "gamma", "dtype", "shape", "branching"),
    "SpecARTreeHead": ("head", "tree", "top_k", "depth", "nodes", "branching", "guidance"),
}
OLD_DEFAULTS = {"relaxation": 0.0, "expert_options": "", "gamma": 6, "branching": "2,2,1*30", "top_k": 10}
OLD_DEFAULTS |= {"depth": 8, "nodes": 48, "guidance": 0.0}


def _flattened(node: dict[str, Any], spec: Any) -> list[Any]:
    """The node's widget values as the flat layout saved them (its policy parameters as free text)."""
    values = list(node["widgets_values"])
    named: dict[str, Any] = {}
    for f in spec.widgets():
        named[f.name] = values.pop(0)
        for sub in f.case(named[f.name]).inputs if f.cases else ():
            named[sub.name] = values.pop(0)
    if node["type"] == "SpecARAcceptancePolicy":
        knobs = [sub for sub in spec.field("policy").case(named["policy"]).inputs if sub.name != "relaxation"]
        changed = [f"{sub.name}={named[sub.name]:g}" for sub in knobs if named[sub.name] != sub.default]
        named["expert_options"] = ", ".join(changed)
    return [named.get(name, OLD_DEFAULTS.get(name)) for name in FLAT_LAYOUTS[node["type"]]]


@pytest.mark.parametrize("maker", [tree_lantern_pp, drafter_tree_cascade], ids=lambda maker: maker.__name__)
def test_a_workflow_saved_with_flat_widgets_loads_onto_the_choices_widgets(
    server: tuple[str, Path], page: Any, maker: Any
) -> None:
    """A workflow saved before the policy, the drafter's shape and the tree kind brought their own widgets
    loads with every value on the widget it was set for (the free-text policy options on their own widgets)."""
    load_pack()
    from specar_pack.nodes import NODES_BY_ID

    workflow = json.loads((ROOT / "workflows" / file_name(maker)).read_text())
    current = {n["id"]: list(n["widgets_values"]) for n in workflow["nodes"] if n["type"] in FLAT_LAYOUTS}
    for node in workflow["nodes"]:
        if node["type"] in FLAT_LAYOUTS:
            node["widgets_values"] = _flattened(node, NODES_BY_ID[node["type"]])
    assert all(n["widgets_values"] != current[n["id"]] for n in workflow["nodes"] if n["id"] in current)
    loaded = page.evaluate(
        """async ({ workflow, ids }) => {
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(workflow);
        return ids.map((id) => app.graph.getNodeById(id).widgets.map((w) => w.value));
    }""",
        {"workflow": workflow, "ids": list(current)},
    )
    assert dict(zip(current, loaded)) == current


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_nodes_do_not_overlap_as_the_frontend_draws_them(page: Any, path: Path) -> None:
    """Node rectangles (title bar included) at the sizes the frontend gives them after loading and drawing."""
    rectangles = page.evaluate(
        """async (workflow) => {
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(workflow);
        app.graph.setDirtyCanvas(true, true);
        app.canvas.draw(true, true);
        await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        const title = window.LiteGraph.NODE_TITLE_HEIGHT;
        return app.graph._nodes.map((n) => ({
            node: `${n.id} ${n.title}`, x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title,
        }));
    }""",
        json.loads(path.read_text()),
    )
    assert overlapping_pairs(rectangles) == []


def test_the_template_browser_lists_every_workflow_with_its_thumbnail(server: tuple[str, Path]) -> None:
    url, _ = server
    listed = _get(f"{url}/workflow_templates")["specar"]
    assert sorted(listed) == [path.stem for path in WORKFLOWS]
    for name in listed:  # the addresses the template browser fetches a card's picture and workflow from
        for suffix, magic in ((".jpg", b"\xff\xd8\xff"), (".json", b"{")):
            address = f"{url}/api/workflow_templates/specar/{urllib.parse.quote(name + suffix)}"
            with urllib.request.urlopen(address) as response:
                assert response.read(len(magic)) == magic, address
