"""Every command the README and docs/ show runs, as written, at small sizes.

The fenced blocks are read from the Markdown: ``bash`` blocks run through bash (with this environment's
``specar`` and ``python``), ``python`` blocks run as scripts, ``text`` blocks are not commands. An unlabelled
block, or a whole command left inline in the prose instead of in a block, fails the test, so a command cannot
be added to the docs without being run here.

What changes before a block runs is listed in three tables: ``SIZE_LIMITS`` lowers image counts, batches and
steps (a bench that only times its methods draws one image; one that scores quality draws two, as FID-lite
needs); ``REPLACEMENTS`` swaps names of checkpoints that cannot exist here for the tiny random models the tests
build; ``SKIPPED`` names the blocks that do not run here, with the reason. Each document's blocks run in
order in one folder, in one test, so later commands read what earlier ones wrote; ``engine`` there links
to the package folder, for commands that name shipped files by their path in the repository, and
``docs/pareto`` is a copy of the benchmark runs the documents redraw their Pareto plot from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny import tiny_gpt, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/methods.md", "docs/models.md", "docs/benchmarks.md")
RUNNABLE = ("bash", "python")
FENCE = re.compile(r"^```(?P<language>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
# an inline span that would run something: a specar command, or a specar module, with arguments (--help aside)
WHOLE_COMMAND = re.compile(r"^(?:\w+=\S+\s+)*(?:specar\s+[\w-]+|python\s+-m\s+specar[\w.]*)\s+(?!--help$)\S")

SIZE_LIMITS = {  # option -> the most it gets here (each entry of a list such as --batch 1,4,16)
    "--images": 2,
    "--batch": 2,
    "--steps": 2,
    "--repeats": 2,
}
TIMING_BENCH_IMAGES = 1  # --images of a bench without --quality: its timings are not read here, its run is
TIMING_BENCH = re.compile(r"\bspecar\s+bench\b(?!.*--quality)", re.S)
LOGICAL_LINE = re.compile(r"(?:[^\n]*\\\n)*[^\n]*")  # a line with the lines it continues with a backslash
REPLACEMENTS = {  # text of a command -> what runs here instead
    "llamagen-xl": "tiny-llamagen",  # forward-bench: real-size random models take minutes and gigabytes
    "janus-pro-1b": "tiny-janus",
    "llamagen-b": "tiny-llamagen",
    "$(seq 0 19)": "$(seq 0 1)",  # twenty AR seed runs: two
    "for seed in range(12)": "for seed in range(2)",  # the masked-relaxation seeds: two
    "for trial in range(200)": "for trial in range(2)",  # auto's window over fresh calibrations: two
    "for trial in range(10)": "for trial in range(2)",  # calibrated against looped step costs at batch 4: two
    "for call in range(8):  # batches of 4": "for call in range(1):  # batches of 4",  # the windows at batch 4: one
    "for seed in range(24)": "for seed in range(2)",  # row-above SJD's acceptance in the first grid row: two images
    "images = 192  # at each batch size": "images = 16  # at each batch size",  # Jacobi's spread over a batch: one
    "models/specar/c2i_XL_384": "{tiny_model}",  # a downloaded LlamaGen checkpoint: the tests' tiny one
    "train_classifier --out": "train_classifier --train-size 64 --heldout-size 32 --reference-size 32 --epochs 1 --out",
    # a training step compiles for half a minute on a cold inductor cache; tests/test_compile.py compiles
    "--compile": "--no-compile",
}
SKIPPED = {  # the first line of a block -> why it does not run here
    'pip install "torch==2.13.0" -e . && specar generate': ".ci/run runs it as written, in a fresh environment",
    'pip install "torch==2.13.0" -e ".[test]"': ".ci/run runs it as written (this test is part of it)",
    "cd ComfyUI/custom_nodes": "clones into a ComfyUI checkout from GitHub; tests/test_comfyui_real.py installs "
    "the pack in a real ComfyUI",
    "OMP_NUM_THREADS=1 specar bench --images 12 --batch 1 --methods auto,jacobi-row,drafter --compile": "inductor "
    "compiles for over a minute on a cold cache; tests/test_compile.py runs --compile through the CLI",
    'OMP_NUM_THREADS=1 specar bench --images 12 --batch 1 --methods tree-static --tree-branching "1*8" \\': "the "
    "same: inductor compiles for over a minute on a cold cache",
}


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    body: str

    @property
    def first_line(self) -> str:
        return self.body.strip().splitlines()[0] if self.body.strip() else ""

    @property
    def skip_reason(self) -> str | None:
        return next((why for start, why in SKIPPED.items() if self.first_line.startswith(start)), None)

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def fenced_blocks(document: str) -> list[Block]:
    text = (ROOT / document).read_text()
    return [
        Block(document, text.count("\n", 0, m.start()) + 1, m["language"].strip(), m["body"])
        for m in FENCE.finditer(text)
    ]


def inline_commands(document: str) -> list[str]:
    prose = FENCE.sub("", (ROOT / document).read_text())
    spans = (" ".join(span.split()) for span in INLINE.findall(prose))
    return [span for span in spans if WHOLE_COMMAND.match(span)]


def limited(command: str, tiny_model: Path) -> str:
    """``command`` at the sizes and with the models this machine can run."""

    options = "|".join(map(re.escape, SIZE_LIMITS))
    sized = re.compile(rf"(?P<option>{options})(?P<space>[ =])(?P<sizes>\d+(?:,\d+)*)\b")

    def lower_line(line: re.Match[str]) -> str:
        caps = {**SIZE_LIMITS, "--images": TIMING_BENCH_IMAGES} if TIMING_BENCH.search(line[0]) else SIZE_LIMITS

        def lower(match: re.Match[str]) -> str:
            sizes = dict.fromkeys(min(int(size), caps[match["option"]]) for size in match["sizes"].split(","))
            return f"{match['option']}{match['space']}{','.join(map(str, sizes))}"

        return sized.sub(lower, line[0])

    command = LOGICAL_LINE.sub(lower_line, command)
    for written, here in REPLACEMENTS.items():
        command = re.sub(rf"(?<![\w-]){re.escape(written)}(?![\w-])", here.format(tiny_model=tiny_model), command)
    return command


ALL_BLOCKS = [block for document in DOCUMENTS for block in fenced_blocks(document)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.language in RUNNABLE]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaGen checkpoint folder with ImageNet's 1,000 classes, for snippets that draw ImageNet classes."""
    return tiny_model_dir(tmp_path_factory.mktemp("checkpoint") / "llamagen", tiny_gpt(num_classes=1000), 4, True)


def test_every_block_is_labelled_and_every_skip_names_a_block() -> None:
    unlabelled = [str(block) for block in ALL_BLOCKS if block.language not in (*RUNNABLE, "text")]
    assert unlabelled == [], "label each fenced block bash, python (both run here) or text"
    starts = [block.first_line for block in RUN_BLOCKS]
    stale = [start for start in SKIPPED if not any(line.startswith(start) for line in starts)]
    assert stale == [], "SKIPPED names blocks the docs no longer have"
    assert len(RUN_BLOCKS) >= 15  # the extraction finds the docs' commands (a broken pattern finds none)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_no_whole_command_hides_in_the_prose(document: str) -> None:
    """Runnable commands sit in fenced blocks (where this test runs them), not in inline code."""
    assert inline_commands(document) == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_blocks_run(document: str, tmp_path: Path, tiny_model: Path) -> None:
    """A document's blocks run in order in one folder (one test, so that no parallel worker splits them)."""
    blocks = [block for block in RUN_BLOCKS if block.document == document]
    assert blocks, f"{document} has no runnable block"
    (tmp_path / "engine").symlink_to(ROOT / "engine", target_is_directory=True)
    shutil.copytree(ROOT / "docs" / "pareto", tmp_path / "docs" / "pareto")  # the runs the Pareto plot is drawn from
    for block in blocks:
        if not block.skip_reason:  # SKIPPED says why
            run_block(block, tmp_path, tiny_model)


def command_environment(**extra: str) -> dict[str, str]:
    """This environment, with this interpreter's ``specar`` and ``python`` first on the PATH, and ``extra`` set."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def run_block(block: Block, folder: Path, tiny_model: Path) -> None:
    """Run ``block`` in ``folder`` at this machine's sizes and with the models it can load."""
    body = limited(block.body, tiny_model)
    env = command_environment()
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", body]
    else:
        script = folder / f"block_{block.line}.py"
        script.write_text(body)
        command = [sys.executable, str(script)]
    ran = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, f"{block} failed:\n{body}\n--- output ---\n{ran.stdout[-3000:]}{ran.stderr[-3000:]}"


def test_sizes_and_models_are_lowered_as_the_tables_say(tmp_path: Path) -> None:
    written = "specar bench --images 1000 --batch 1,4,16 --models llamagen-xl --drafter-model llamagen-b"
    assert (
        limited(written, tmp_path)
        == "specar bench --images 1 --batch 1,2 --models tiny-llamagen --drafter-model tiny-llamagen"
    )
    scored = "specar bench --images 1000 \\\n  --quality\nspecar train-head --images 500 --steps 3000"
    lowered = "specar bench --images 2 \\\n  --quality\nspecar train-head --images 2 --steps 2"
    assert limited(scored, tmp_path) == lowered  # quality needs two images; a continued line is one command
    assert limited('load_model("models/specar/c2i_XL_384")', tmp_path) == f'load_model("{tmp_path}")'
    assert WHOLE_COMMAND.match("specar bench --images 8") and WHOLE_COMMAND.match(
        "OMP_NUM_THREADS=1 specar bench --quality"
    )
    assert not WHOLE_COMMAND.match("specar generate --help") and not WHOLE_COMMAND.match("python -m specar")
