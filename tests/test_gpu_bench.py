"""``.ci/gpu-bench`` runs through on a CPU at the docs test's small sizes.

A GPU is lent for minutes, rarely: the script must run the first time it meets one. Here it runs as
written except for what only a GPU (or a GPU's time) allows, listed in ``ON_A_CPU``, and the sizes and
real-size models the docs test lowers (``test_docs_commands.limited``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from safetensors.torch import load_file
import torch

from test_docs_commands import ROOT, command_environment, limited
from tiny import TINY

SCRIPT = ROOT / ".ci" / "gpu-bench"
ON_A_CPU = {  # text of the script -> what runs here instead
    'cd "$(dirname "$0")/.."': f"cd '{ROOT}'",  # the script is run from a copy
    "sys.exit(0 if torch.cuda.is_available() else": "sys.exit(0 if True else",
    "--device cuda": "--device cpu",
    " --compile": " --no-compile",  # inductor compiles for minutes on a cold cache; tests/test_compile.py compiles
    'GPTConfig.preset("GPT-XL", grid_size=24)': f"GPTConfig(**{TINY!r})",
    "--draw-batch 64": "--draw-batch 2",
}


def test_the_gpu_script_runs_through_on_a_cpu_at_small_sizes(tmp_path: Path) -> None:
    script = SCRIPT.read_text()
    for written, here in ON_A_CPU.items():
        assert written in script, f"ON_A_CPU names {written!r}, which .ci/gpu-bench no longer has"
        script = script.replace(written, here)
    copy = tmp_path / "gpu-bench"
    copy.write_text(limited(script, tmp_path))
    out = tmp_path / "out"
    env = command_environment(OMP_NUM_THREADS="1")  # one thread: the other test worker has the other core
    ran = subprocess.run(["bash", str(copy), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, f"{ran.stdout[-3000:]}{ran.stderr[-3000:]}"
    for name in ("demo-eager.json", "demo-compiled.json", "demo-head-compiled.json", "demo-batches.json"):
        assert (out / name).stat().st_size > 0, name
    assert "Projected wall-clock speed-up" in (out / "projection-bf16.md").read_text()
    # the random model the head trains on is filled: a head trained on garbage states times nothing real
    head = load_file(out / "train-head-xl" / "tree_head.safetensors")
    assert head and all(bool(torch.isfinite(weight.float()).all()) for weight in head.values())
    assert " nan" not in (out / "train-head-xl.log").read_text()
