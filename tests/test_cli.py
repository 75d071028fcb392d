"""The ``specar`` command end to end on tiny random models written in the official file layouts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from specar import cli
from specar.heatmap import (
    COLOR_ACCEPTED_LONG,
    COLOR_ACCEPTED_SHORT,
    COLOR_NOT_COMMITTED,
    COLOR_PLAIN,
    acceptance_heatmap,
    run_lengths,
    side_by_side,
)
from specar.drafts.tree_head import save_tree_head
from specar.progress import ProgressBar
from specar.session import class_for_prompt
from specar.types import GenerationResult, TokenKind
from tiny import TINY_DRAFTER, tiny_gpt, tiny_model, tiny_model_dir, tiny_tree_head

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIDE = 8 * 2  # 8x8 tokens, 2x upsampling in the tiny VQ decoder
FAST = ["--cfg", "1", "--quiet"]  # no CFG pair: half the work per forward
SHORT_WINDOW = ["--window", "6"]  # Jacobi methods only (other drafts refuse the option)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    head = root / "head.safetensors"
    save_tree_head(tiny_tree_head(tiny_model(0)), head)
    return {
        "head": head,
        "model": tiny_model_dir(root / "target", tiny_gpt(), 4, with_vq=True),
        "drafter": tiny_model_dir(root / "drafter", tiny_gpt(1, **TINY_DRAFTER), 2, with_vq=False),
        "bad_drafter": tiny_model_dir(
            root / "bad", tiny_gpt(1, **{**TINY_DRAFTER, "vocab_size": 32}), 2, with_vq=False
        ),
    }


def _generate(dirs: dict[str, Path], out: Path, *extra: str) -> tuple[int, dict]:
    stats = out / "stats.json"
    code = cli.main(
        [
            "generate",
            "--model",
            str(dirs["model"]),
            "--out",
            str(out / "img.png"),
            "--stats",
            str(stats),
            *FAST,
            *(SHORT_WINDOW if "jacobi" in extra else []),
            *extra,
        ]
    )
    return code, json.loads(stats.read_text()) if stats.exists() else {}


def test_generate_writes_image_heatmap_and_stats(dirs: dict[str, Path], tmp_path: Path) -> None:
    code, stats = _generate(
        dirs,
        tmp_path,
        "--draft",
        "jacobi",
        "--class-id",
        "3",
        "--seed",
        "5",
        "--heatmap",
        str(tmp_path / "heat.png"),
        "--compare",
        str(tmp_path / "both.png"),
    )
    assert code == 0
    assert Image.open(tmp_path / "img.png").size == (IMAGE_SIDE, IMAGE_SIDE)
    assert Image.open(tmp_path / "heat.png").size == (IMAGE_SIDE, IMAGE_SIDE)
    assert Image.open(tmp_path / "both.png").width >= 2 * IMAGE_SIDE
    for key in ("tokens", "target_forwards", "tokens_per_forward", "acceptance_rate", "wall_seconds"):
        assert key in stats
    assert stats["finished"] and stats["method"] == "jacobi" and stats["conditioning"] == {"class_ids": [3]}
    assert stats["settings"]["seed"] == 5 and stats["settings"]["cfg_scale"] == 1.0
    assert len(stats["tokens"][0]) == 64 and stats["target_forwards"] < 64

    again_code, again = _generate(dirs, tmp_path / "again", "--draft", "jacobi", "--class-id", "3", "--seed", "5")
    assert again_code == 0 and again["tokens"] == stats["tokens"]


def test_greedy_jacobi_equals_plain_decoding(dirs: dict[str, Path], tmp_path: Path) -> None:
    args = ("--greedy", "--class-id", "1", "2")
    _, jacobi = _generate(
        dirs, tmp_path / "jacobi", *args, "--draft", "jacobi", "--jacobi-init", "row_above", "--coupling"
    )
    _, plain = _generate(dirs, tmp_path / "plain", *args, "--draft", "none")
    assert plain["method"] == "ar" and jacobi["method"] == "mcsjd-row"
    assert jacobi["tokens"] == plain["tokens"]
    assert Image.open(tmp_path / "plain" / "img.png").size == (2 * IMAGE_SIDE, IMAGE_SIDE)


def test_greedy_tree_drafts_equal_plain_decoding(dirs: dict[str, Path], tmp_path: Path) -> None:
    args = ("--greedy", "--class-id", "1", "2", "--tree-head", str(dirs["head"]))
    _, plain = _generate(dirs, tmp_path / "plain", "--greedy", "--class-id", "1", "2", "--draft", "none")
    _, dynamic = _generate(
        dirs,
        tmp_path / "dynamic",
        *args,
        "--draft",
        "tree",
        "--tree-top-k",
        "3",
        "--tree-depth",
        "4",
        "--tree-nodes",
        "9",
    )
    _, static = _generate(dirs, tmp_path / "static", *args, "--draft", "tree-static", "--tree-branching", "3,2,1")
    _, auto = _generate(dirs, tmp_path / "auto", *args)  # auto, the default, drafts with a head it is given
    assert dynamic["tokens"] == plain["tokens"] == static["tokens"] == auto["tokens"]
    assert auto["method"] == "auto" and "tree head" in auto["draft_choices"]
    assert dynamic["method"] == "tree" and dynamic["method_options"]["nodes"] == 9
    assert static["method_options"]["branching"] == [3, 2, 1] and static["drafter_forwards"] > 0
    code, cascade = _generate(
        dirs,
        tmp_path / "cascade",
        "--class-id",
        "1",
        "--tree-head",
        str(dirs["head"]),
        "--draft",
        "tree",
        "--policy",
        "cascade",
        "--relax",
        "0.5",
    )
    assert code == 0 and cascade["policy"] == "cascade" and cascade["relaxation"] == 0.5


def test_drafter_trees_equal_plain_decoding_and_take_cascade(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, plain = _generate(dirs, tmp_path / "plain", "--greedy", "--class-id", "1", "2", "--draft", "none")
    code, tree = _generate(
        dirs,
        tmp_path / "tree",
        "--greedy",
        "--class-id",
        "1",
        "2",
        "--drafter",
        str(dirs["drafter"]),
        "--draft",
        "drafter-tree",
        "--tree-branching",
        "2,2,1*3",
    )
    assert code == 0 and tree["tokens"] == plain["tokens"] and tree["method"] == "drafter-tree"
    assert tree["method_options"] == {"branching": [2, 2, 1, 1, 1]} and tree["drafter_forwards"] > 0
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench",
            "--model",
            str(dirs["model"]),
            "--drafter",
            str(dirs["drafter"]),
            "--methods",
            "drafter-tree,drafter-tree:cascade=1",
            "--tree-branching",
            "2,1*4",
            "--images",
            "2",
            "--batch",
            "2",
            "--json",
            str(out),
            *FAST,
        ]
    )
    assert code == 0 and "drafter-tree:cascade=1" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["ar", "drafter-tree", "drafter-tree:cascade=1"]
    assert all(r["tokens_per_forward"] > 1 for r in rows[1:])


def test_generate_with_drafter(dirs: dict[str, Path], tmp_path: Path) -> None:
    code, stats = _generate(dirs, tmp_path, "--drafter", str(dirs["drafter"]), "--draft", "model", "--gamma", "3")
    assert code == 0 and stats["method"] == "drafter" and stats["method_options"] == {"gamma": 3}
    assert stats["drafter_forwards"] > 0 and stats["finished"]


def test_generate_drafts_automatically_by_default(dirs: dict[str, Path], tmp_path: Path) -> None:
    code, stats = _generate(dirs, tmp_path, "--drafter", str(dirs["drafter"]))
    assert code == 0 and stats["method"] == "auto" and stats["finished"]
    assert stats["draft_choices"].startswith("auto chose") and "target forward" in stats["draft_choices"]


def test_ctrl_c_keeps_the_tokens_decoded_so_far(
    dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def press_ctrl_c(self: ProgressBar, event) -> None:
        if event.target_forwards == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(ProgressBar, "__call__", press_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    code, stats = _generate(dirs, tmp_path, "--draft", "none", "--heatmap", str(tmp_path / "heat.png"))
    assert code == cli.EXIT_INTERRUPTED
    assert stats["finished"] is False and stats["target_forwards"] == 3
    heat = Image.open(tmp_path / "heat.png")
    assert (
        heat.getpixel((0, 0)) == COLOR_PLAIN and heat.getpixel((IMAGE_SIDE - 1, IMAGE_SIDE - 1)) == COLOR_NOT_COMMITTED
    )
    assert Image.open(tmp_path / "img.png").getpixel((IMAGE_SIDE - 1, IMAGE_SIDE - 1)) == (0, 0, 0)
    assert signal.getsignal(signal.SIGINT) is handler


def test_bench_prints_a_row_per_method_and_writes_json(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench",
            "--model",
            str(dirs["model"]),
            "--drafter",
            str(dirs["drafter"]),
            "--methods",
            "jacobi-row,mcsjd,drafter",
            "--images",
            "2",
            "--batch",
            "2",
            "--json",
            str(out),
            *FAST,
            *SHORT_WINDOW,
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("") + 1 :]
    assert table[0].split()[:3] == ["method", "images", "fwd/img"]
    assert [line.split()[0] for line in table[1:]] == ["ar", "jacobi-row", "mcsjd", "drafter"]
    assert "counted per image" in "\n".join(lines)
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["ar", "jacobi-row", "mcsjd", "drafter"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["acceptance_rate"] is None and rows[0]["tokens_per_forward"] == 1.0
    assert all(r["images"] == 2 and r["calls"] == 1 for r in rows)
    assert rows[3]["drafter_forwards_per_call"] > 0 and rows[1]["tokens_per_forward"] > 1.0


def test_bench_records_which_tree_head_drafted(dirs: dict[str, Path], tmp_path: Path) -> None:
    """Runs with different heads carry different fingerprints, and the Pareto labels tell them apart."""
    from specar.lab import pareto
    from specar.drafts.tree_head import head_fingerprint, load_tree_head

    other = tmp_path / "other.safetensors"
    save_tree_head(tiny_tree_head(tiny_model(0), seed=5), other)
    records = []
    for head in (dirs["head"], other):
        out = tmp_path / f"{head.stem}.json"
        assert (
            cli.main(
                [
                    "bench",
                    "--model",
                    str(dirs["model"]),
                    "--methods",
                    "tree",
                    "--tree-head",
                    str(head),
                    "--tree-depth",
                    "3",
                    "--tree-nodes",
                    "6",
                    "--images",
                    "1",
                    "--batch",
                    "1",
                    "--json",
                    str(out),
                    *FAST,
                ]
            )
            == 0
        )
        record = json.loads(out.read_text())["options"]
        assert record["tree_head"] == head_fingerprint(load_tree_head(head))
        records.append(record)
    assert records[0]["tree_head"] != records[1]["tree_head"]
    labels = {pareto._source_label("tree", record) for record in records}
    assert labels == {f"tree head {r['tree_head']}, dynamic k6 d3 n6" for r in records}
    guided = {**records[0], "tree": {**records[0]["tree"], "guidance": 4.0}}
    assert pareto._source_label("tree", guided).endswith("n6, guidance 4")


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--model", "/no/such/model", "--out", "x.png"], "not found"),
        (["generate", "--model", "{model}", "--out", "x.png", "--class-id", "99"], "class id 99"),
        (["generate", "--model", "{model}", "--out", "x.png", "--drafter", "{bad_drafter}"], "vocabulary 32"),
        (["generate", "--model", "{model}", "--out", "x.png", "--draft", "model"], "--drafter"),
        (
            [
                "generate",
                "--model",
                "{model}",
                "--out",
                "x.png",
                "--draft",
                "drafter-tree",
                "--drafter",
                "{bad_drafter}",
            ],
            "vocabulary 32",
        ),
        (
            [
                "generate",
                "--model",
                "{model}",
                "--out",
                "x.png",
                "--draft",
                "drafter-tree",
                "--drafter",
                "{drafter}",
                "--tree-branching",
                "2,1*x",
            ],
            "branching",
        ),
        (["generate", "--model", "{model}", "--out", "x.png", "--prompt", "a dog"], "--class-id"),
        (["generate", "--model", "{model}", "--out", "x.png", "--class-id", "1", "2", "--batch", "3"], "--batch 3"),
        (["generate", "--model", "{model}", "--out", "x.png", "--window", "0"], "--window"),
        (["bench", "--model", "{model}", "--methods", "jacobi,fast"], "'fast'"),
        (["bench", "--model", "{model}", "--methods", "drafter"], "--drafter"),
        (["generate", "--model", "{model}", "--out", "x.png", "--policy", "cascade"], "siblings of a draft tree"),
        (["generate", "--model", "{model}", "--out", "x.png", "--draft", "tree"], "needs a tree head"),
        (
            ["generate", "--model", "{model}", "--out", "x.png", "--draft", "jacobi", "--tree-head", "{head}"],
            "--draft tree, tree-static or auto",
        ),
        (
            [
                "generate",
                "--model",
                "{model}",
                "--out",
                "x.png",
                "--draft",
                "tree-static",
                "--tree-head",
                "{head}",
                "--tree-branching",
                "2,0",
            ],
            "branching",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_problem(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = [a.format(**{k: str(v) for k, v in dirs.items()}) for a in args]
    argv = [str(tmp_path / a) if a == "x.png" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_prompt_picks_a_class_by_name() -> None:
    model = tiny_model()
    model.class_names = [f"class {i}, alias {i}" for i in range(10)]
    assert class_for_prompt(model, "Alias 7") == 7
    assert class_for_prompt(model, "CLASS 2, alias 2") == 2
    with pytest.raises(cli.SpecARError, match="class 0, alias 0"):
        class_for_prompt(model, "a dog")


def _result(kinds: list[int], forward_index: list[int]) -> GenerationResult:
    n = len(kinds)
    return GenerationResult(
        tokens=torch.zeros(1, n, dtype=torch.long),
        kinds=torch.tensor([kinds], dtype=torch.int8),
        forward_index=torch.tensor([forward_index], dtype=torch.int32),
        committed=torch.tensor([sum(k >= 0 for k in kinds)]),
        target_forwards=max(forward_index) + 1,
        drafter_forwards=0,
        drafted=0,
        accepted=0,
        wall_seconds=1.0,
        model_seconds=0.5,
    )


def test_heatmap_colours_cells_by_how_they_were_committed() -> None:
    A, C, B, P = int(TokenKind.ACCEPTED), int(TokenKind.CORRECTED), int(TokenKind.BONUS), int(TokenKind.PLAIN)
    # forward 0: token 0; forward 1: one accepted + correction; forward 2: 16 accepted (run of 17); rest not committed
    kinds = [P, A, C] + [A] * 16 + [B] + [-1] * 44
    forward_index = [0, 1, 1] + [2] * 17 + [-1] * 44
    result = _result(kinds, forward_index)
    assert run_lengths(result.forward_index)[0, :4].tolist() == [1, 2, 2, 17]
    heat = acceptance_heatmap(result, (8, 8), (16, 16))
    assert heat.shape == (1, 16, 16, 3) and heat.dtype == torch.uint8
    cell = lambda t: heat[0, 2 * (t // 8), 2 * (t % 8)].tolist()  # noqa: E731
    assert cell(0) == list(COLOR_PLAIN)
    assert cell(1) == list(COLOR_ACCEPTED_SHORT)
    assert cell(3) == list(COLOR_ACCEPTED_LONG)
    assert cell(63) == list(COLOR_NOT_COMMITTED)
    assert side_by_side(heat, heat).height > 16


def test_python_m_engine_help_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "specar", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "generate" in done.stdout and "bench" in done.stdout


def test_forward_bench_times_every_block_shape(tmp_path: Path) -> None:
    """The GPU timing command, on tiny stand-ins that run the same code (real sizes need a GPU)."""
    from specar.lab.forward_bench import sixty_node_tree

    assert len(sixty_node_tree()) == 60
    table = tmp_path / "times.md"
    code = cli.main(
        [
            "forward-bench",
            "--models",
            "tiny-janus,tiny-llamagen",
            "--device",
            "cpu",
            "--repeats",
            "2",
            "--context",
            "40",
            "--table",
            str(table),
        ]
    )
    lines = table.read_text().splitlines()
    assert code == 0 and len(lines) == 4 and "tree-60" in lines[0]
    assert lines[2].startswith("| tiny-janus | cpu | float32 | ") and "(1.00x)" in lines[2]


def test_forward_bench_projects_a_benchmark(tmp_path: Path) -> None:
    """--project turns the demo's tokens per forward into speed-ups on the timed model: tokens per
    forward over the cost of the verified block (plus drafter forwards at the drafter's cost)."""
    from specar.lab.forward_bench import ForwardTimes, projected_speedup, relative_cost

    times = ForwardTimes("m", "cpu", "float32", 40, {"k=1": 10.0, "k=4": 12.0, "k=16": 20.0, "tree-60": 60.0})
    assert relative_cost(times, 1) == 1.0 and relative_cost(times, 10) == pytest.approx(1.6)
    assert relative_cost(times, 61) == 6.0 and relative_cost(times, 106) == pytest.approx(10.0)
    jacobi = {
        "method": "jacobi-row",
        "tokens_per_forward": 4.0,
        "tokens_per_verify": 16.0,
        "drafter_forwards_per_call": 0.0,
    }
    assert projected_speedup(jacobi, times, None) == pytest.approx(2.0)
    # a mix of plain steps and 16-token blocks is priced forward by forward, not as a forward of its mean block
    flat = ForwardTimes("m", "cpu", "float32", 40, {"k=1": 10.0, "k=4": 10.0, "k=16": 20.0, "tree-60": 60.0})
    mixed = {**jacobi, "tokens_per_verify": 8.5, "block_sizes": {"1": 1, "16": 1}}  # as JSON keys
    assert projected_speedup(mixed, flat, None) == pytest.approx(4.0 / 1.5)
    assert projected_speedup({**mixed, "block_sizes": {}}, flat, None) == pytest.approx(4.0 / 1.375)  # its mean
    drafter = {
        "method": "drafter",
        "tokens_per_forward": 3.0,
        "tokens_per_verify": 4.0,
        "drafter_forwards_per_call": 300.0,
        "target_forwards_per_image": 100.0,
        "images": 2,
        "calls": 2,
    }
    assert projected_speedup(drafter, times, None) is None
    small = ForwardTimes("d", "cpu", "float32", 40, {"k=1": 2.0, "k=4": 2.0, "k=16": 3.0, "tree-60": 5.0})
    assert projected_speedup(drafter, times, small) == pytest.approx(3.0 / (1.2 + 3 * 0.2))

    bench = tmp_path / "bench.json"
    assert (
        cli.main(
            ["bench", "--model", "demo", "--images", "1", "--methods", "jacobi-row", "--json", str(bench), "--quiet"]
        )
        == 0
    )
    table = tmp_path / "projection.md"
    code = cli.main(
        [
            "forward-bench",
            "--models",
            "tiny-llamagen",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--context",
            "40",
            "--project",
            str(bench),
            "--table",
            str(table),
        ]
    )
    text = table.read_text()
    assert code == 0 and "Projected wall-clock speed-up" in text
    row = next(line for line in text.splitlines() if line.startswith("| jacobi-row |"))
    assert row.count("x |") == 1 and float(row.split("|")[3]) > 2  # tokens per verify: the window's blocks
    record = json.loads(bench.read_text())["rows"][1]
    assert sum(record["block_sizes"].values()) == record["target_forwards_per_image"] - 1  # every forward's size


def test_forward_bench_refuses_what_it_cannot_read_or_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --project file that is no benchmark result, a context longer than the model's image, and a model the
    memory could not hold are one line each (the last before any weights are made)."""
    picture, other = tmp_path / "x.png", tmp_path / "other.json"
    picture.write_bytes(b"\x89PNG\r\n")
    other.write_text('{"a": 1}')
    for path, message in ((picture, "cannot read benchmark results"), (other, "holds no benchmark results")):
        assert cli.main(["forward-bench", "--models", "tiny-llamagen", "--project", str(path)]) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert cli.main(["forward-bench", "--models", "tiny-llamagen", "--context", "600"]) == cli.EXIT_USAGE
    assert "--context 600: tiny-llamagen has 576 image tokens; give at most 556" in capsys.readouterr().err
    monkeypatch.setattr("specar.memory.available_bytes", lambda device: 2**30)
    assert cli.main(["forward-bench", "--models", "llamagen-xl", "--device", "cpu"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "a random model of 0.8B parameters in float32 needs 2.9 GiB, more than the 1.0 GiB free" in err


def test_installed_under_the_name_specar_only(tmp_path: Path) -> None:
    """The package folder is engine/, but it installs as ``specar``: nothing named ``engine`` is importable
    from outside the repository (a name that would collide in a shared ComfyUI environment)."""
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import specar, importlib.util as u; print(specar.generate.__module__, u.find_spec('engine') is None)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["specar.loop", "True"]


LAB_PACKAGES = ("specar.lab", "specar.demo.training")


def _product_modules() -> list[str]:
    """Every module of the installed package outside the lab and the training scripts."""
    import specar

    root = Path(specar.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        name = ".".join(("specar", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        if not name.startswith(LAB_PACKAGES) and not name.endswith("__main__"):
            names.append(name)
    return names


def test_the_product_never_imports_the_lab(tmp_path: Path) -> None:
    """Every product module (the loop, sessions, draft sources, policies, models, the CLI's generate and the
    ComfyUI-facing code) imports without the lab (benchmarks, statistics, evaluator) or the training scripts,
    which only the CLI's lab commands and the tests load; a lab command does load them."""
    modules = _product_modules()
    assert "specar.cli" in modules and "specar.loop" in modules and "specar.lab.bench" not in modules
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"print(sorted(m for m in sys.modules if m.startswith({LAB_PACKAGES!r})))"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    lab_code = (
        "import sys, contextlib, io; from specar import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()): cli.main(['pareto', 'missing.json'])\n"
        "print('specar.lab.commands' in sys.modules)"
    )
    ran = subprocess.run([sys.executable, "-c", lab_code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.stdout.strip() == "True", ran.stderr
    nodes = Path(__file__).resolve().parents[1] / "nodes"
    lab_imports = [
        f"{path.name}: {line.strip()}"
        for path in nodes.rglob("*.py")
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("from ", "import ")) and re.search(r"\.(lab|demo\.training)\b", line)
    ]
    assert lab_imports == []


def test_loading_and_sampling_the_demo_never_imports_the_compiler(tmp_path: Path) -> None:
    """Loading a LlamaGen checkpoint builds it on the meta device; the few meta-tensor operations that import
    torch's compiler stack (a second or more of every command's start) are kept out of loading and sampling."""
    code = (
        "import sys, specar; target = specar.load_model('demo'); specar.load_model('demo-drafter')\n"
        "specar.generate(target, specar.Conditioning.classes([1]), target.default_settings)\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_a_bench_stopped_part_way_keeps_the_finished_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (or an error) in the third image: the two images every method finished are printed and
    written, marked as stopped, and the run exits as interrupted."""
    from specar.lab import bench

    real_call, calls = bench.run_call, []

    def call_then_stop(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2 + 2 * 2 + 1:  # warm-up (ar, jacobi-row), two images, then the third image's AR
            raise KeyboardInterrupt
        return real_call(*args, **kwargs)

    monkeypatch.setattr(bench, "run_call", call_then_stop)
    out = tmp_path / "partial.json"
    code = cli.main(
        [
            "bench",
            "--model",
            "demo",
            "--methods",
            "jacobi-row",
            "--images",
            "4",
            "--batch",
            "1",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == cli.EXIT_INTERRUPTED
    written = json.loads(out.read_text())
    assert written["images"] == 2 and written["stopped"] == "KeyboardInterrupt"
    assert [row["method"] for row in written["rows"]] == ["ar", "jacobi-row"] and written["rows"][1]["images"] == 2
    assert "jacobi-row" in capsys.readouterr().out


def test_a_model_without_a_vq_writes_tokens_and_refuses_only_pictures(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drafter folder has no VQ tokenizer: its tokens go to --stats; each picture output is refused in one line
    that says why, before any decoding; a run that would write nothing is refused too."""
    base = ["generate", "--model", str(dirs["drafter"]), "--class-id", "2", *FAST]
    stats = tmp_path / "tokens.json"
    assert cli.main([*base, "--stats", str(stats)]) == 0
    tokens = json.loads(stats.read_text())["tokens"]
    assert len(tokens) == 1 and len(tokens[0]) == 64 and not list(tmp_path.glob("*.png"))
    for option in ("--out", "--heatmap", "--compare", "--explain"):
        assert cli.main([*base, "--stats", str(stats), option, str(tmp_path / "x.png")]) != 0
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"error: {option} needs pixels") and "--stats" in error[0]
    assert cli.main(base) != 0
    assert capsys.readouterr().err.strip() == (
        "error: nothing to write: give --out IMAGE.png for the images, --stats STATS.json for the tokens"
    )
