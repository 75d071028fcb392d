"""Bad input gets a one-line error naming the field, outputs are written whole or not at all, and output paths
are checked before any model loads."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from specar import (
    AutoDrafts,
    Conditioning,
    DrafterModelDrafts,
    ImageTokenModel,
    JacobiDrafts,
    ModelOutput,
    CheckpointError,
    SettingsError,
    SpecARError,
    cli,
    generate,
    generate_continuous,
    load_model,
    make_policy,
    resolve_device,
)
from specar.cli_output import write_json
from specar.continuous.acceptance import GaussianAcceptance
from specar.continuous.registry import load_continuous_model
from specar.continuous.types import ContinuousSettings
from specar.heatmap import save_png
from specar.regions import mask_to_token_weights
from specar.drafts.tree_drafts import TreeShape
from specar.errors import NonFiniteOutputError, OutputError
from specar.types import SamplingSettings
from tiny import SWITCHING_COSTS, tiny_drafter, tiny_gpt, tiny_mar, tiny_model, tiny_model_dir, tiny_model_with_codes

BAD_SAMPLING = [  # (field, value, what the error says)
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number"),
    ("cfg_scale", float("inf"), "cfg_scale must be a finite number"),
    ("cfg_scale", -1.0, "cfg_scale must be in"),
    ("cfg_scale", "2", "cfg_scale must be a number"),
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("temperature", -0.5, "temperature must be in"),
    ("top_k", 2.5, "top_k must be a whole number"),
    ("top_k", True, "top_k must be a whole number"),
    ("top_k", -1, "top_k must be in"),
    ("top_p", float("nan"), "top_p must be a finite number"),
    ("top_p", 1.5, "top_p must be in"),
    ("seed", 2**70, "seed must be in"),
    ("seed", "7", "seed must be a whole number"),
    ("seed", 1.5, "seed must be a whole number"),
    ("greedy", "yes", "greedy must be True or False"),
]
BAD_CONTINUOUS = [
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number"),
    ("temperature", float("inf"), "temperature must be a finite number"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("num_iter", 2.5, "num_iter must be a whole number"),
    ("num_sampling_steps", 0, "num_sampling_steps must be in"),
    ("seed", -(2**70), "seed must be in"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_SAMPLING, ids=lambda v: repr(v)[:20])
def test_sampling_settings_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        SamplingSettings(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), BAD_CONTINUOUS, ids=lambda v: repr(v)[:20])
def test_continuous_settings_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ContinuousSettings(**{field: value})


def test_good_edge_values_pass() -> None:
    SamplingSettings(cfg_scale=0.0, temperature=0.0, greedy=True, top_k=0, top_p=1.0, seed=-(2**63))
    ContinuousSettings(num_iter=1, num_sampling_steps=1, seed=2**64 - 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cfg", "nan"], "error: cfg_scale must be a finite number, got nan"),
        (["--temperature", "inf"], "error: temperature must be a finite number, got inf"),
        (["--model", "mar-demo", "--cfg", "nan"], "error: cfg_scale must be a finite number, got nan"),
    ],
)
def test_the_cli_refuses_non_finite_settings_in_one_line(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["generate", "--out", str(tmp_path / "x.png"), "--quiet", *options])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and err == message
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["--out", "{d}/x.png", "--stats", "{d}/x.png"], "--out and --stats both name"),
        (["--out", "{d}/x.jpg"], "SpecAR writes PNG pictures; name the file .png"),
        (["--out", "{d}/x.png", "--heatmap", "{d}/file.txt/heat.png"], "is not a writable folder"),
        (["--out", "{d}"], "is a folder; name a file in it"),
    ],
)
def test_output_paths_are_checked_before_any_model_loads(
    outputs: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    (tmp_path / "file.txt").write_text("not a folder")

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "load_model", no_loading)
    code = cli.main(["generate", "--quiet", *(part.format(d=tmp_path) for part in outputs)])
    assert code == cli.EXIT_USAGE and message in capsys.readouterr().err


def test_a_failed_picture_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.png"
    save_png(Image.new("RGB", (4, 4), "red"), out)
    before = out.read_bytes()
    real_save = Image.Image.save

    def disk_full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        real_save(self, fp, *args, **kwargs)
        Path(str(fp)).write_bytes(Path(str(fp)).read_bytes()[:10])  # a truncated write, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OutputError, match=f"^cannot write {out}: No space left on device$"):
        save_png(Image.new("RGB", (4, 4), "blue"), out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_outputs_through_links_and_streams_stay_what_they_are(tmp_path: Path) -> None:
    """A link keeps naming its file, which gets the new contents; a named pipe is written in place (a rename
    over it would put a file where the pipe was); a failure is one line naming the path."""
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_json(str(link), {"a": 1})
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()
    write_json(str(pipe), {"b": 2})
    reader.join(timeout=10)
    assert stat.S_ISFIFO(pipe.stat().st_mode) and json.loads(received[0]) == {"b": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]

    if Path("/dev/full").exists():  # a device that refuses every write
        with pytest.raises(OutputError, match="^cannot write /dev/full: No space left on device$"):
            write_json("/dev/full", {"c": 3})
        assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)
    with pytest.raises(OutputError, match="it is a folder"):
        write_json(str(tmp_path), {"d": 4})


def test_stats_json_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_json(str(path), {"rate": float("nan"), "rows": [{"speed": math.inf}, 1.5], "name": "x"})

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "rate": None,
        "rows": [{"speed": None}, 1.5],
        "name": "x",
    }


def _poisoned(model: ImageTokenModel, after_calls: int) -> ImageTokenModel:
    """``model`` whose forwards return NaN logits from call ``after_calls`` on (as fp16 overflow would)."""
    real_forward, calls = model.forward, []

    def forward(*args: object, **kwargs: object) -> ModelOutput:
        out = real_forward(*args, **kwargs)
        calls.append(1)
        return ModelOutput(out.logits.fill_(float("nan")), out.hidden) if len(calls) > after_calls else out

    model.forward = forward
    return model


@pytest.mark.parametrize("source", ["ar", "jacobi"])
def test_a_target_returning_nan_stops_the_run_and_keeps_the_tokens_before_it(source: str) -> None:
    """The target returns NaN from its 6th block forward on: the run stops there with one line, and the tokens
    decided before it are exactly plain AR's (greedy), as on interrupt."""
    settings = SamplingSettings(greedy=True, cfg_scale=3.0)
    cond = Conditioning.classes([1, 2])
    clean = generate(tiny_model(0), cond, settings)
    draft = JacobiDrafts(window=4) if source == "jacobi" else None
    with pytest.raises(
        NonFiniteOutputError, match=r"^the target returned NaN or infinite logits at image token \d+"
    ) as failed:
        generate(_poisoned(tiny_model(0), after_calls=5), cond, settings, draft=draft)
    partial = failed.value.result
    assert "\n" not in str(failed.value) and not partial.finished
    assert 0 < int(partial.committed.min()) < partial.tokens.shape[1]
    for row, kept in enumerate(partial.committed.tolist()):
        assert torch.equal(partial.tokens[row, :kept], clean.tokens[row, :kept])


@pytest.mark.parametrize("source", ["drafter", "auto"])
def test_a_drafter_returning_nan_stops_a_sampled_run(source: str) -> None:
    """Sampled acceptance reads the drafter's probabilities, so NaN there would garble tokens: refused, also
    where auto drafts with it between blocks of Jacobi's."""
    drafter = _poisoned(tiny_drafter(), after_calls=6)
    draft = DrafterModelDrafts(drafter, gamma=3) if source == "drafter" else AutoDrafts(drafter, costs=SWITCHING_COSTS)
    with pytest.raises(NonFiniteOutputError, match="^the draft source returned NaN or infinite logits") as failed:
        generate(tiny_model(0), Conditioning.classes([1, 2]), SamplingSettings(), draft)
    assert not failed.value.result.finished and int(failed.value.result.committed.min()) > 0


def test_a_checkpoint_with_nan_weights_is_one_line_and_keeps_nothing_garbled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpt = tiny_gpt()
    with torch.no_grad():
        gpt.tok_embeddings.weight[3].fill_(float("nan"))  # code 3's embedding: NaN once an image draws it
        gpt.cls_embedding.embedding_table.weight.fill_(float("nan"))  # and every class: NaN at the first token
    folder = tiny_model_dir(tmp_path / "nan", gpt, 4, with_vq=True)
    code = cli.main(
        ["generate", "--model", str(folder), "--draft", "none", "--out", str(tmp_path / "x.png"), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and err.startswith(
        "error: the target returned NaN or infinite logits at image token 0"
    )
    assert "\n" not in err and (tmp_path / "x.png").is_file()  # black where nothing was decided


BAD_CONFIGS = [  # config.json changes -> what the one-line error says
    ({"n_head": "four"}, "config n_head must be a whole number, got 'four'"),
    ({"n_head": 4.5}, "config n_head must be a whole number, got 4.5"),
    ({"n_head": -4}, "config n_head must be in [1, any], got -4"),
    ({"grid_size": 0}, "config grid_size must be in [1, any], got 0"),
    ({"grid_size": 2000}, "LlamaGen grid_size must be in [1, 128], got 2000"),
    ({"grid_size": None, "image_size": "big"}, "config image_size must be a whole number, got 'big'"),
    ({"grid_size": None, "image_size": 256, "downsample": 0}, "config downsample must be in [1, any], got 0"),
    ({"grid_size": None, "image_size": 8}, "config image_size 8 is smaller than one token"),
    ({"norm_eps": -1}, "LlamaGen norm_eps must be > 0, got -1"),
    ({"rope_base": float("nan")}, "LlamaGen rope_base must be a finite number, got nan"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_a_bad_config_json_is_one_line(change: dict[str, object], message: str, tmp_path: Path) -> None:
    folder = tiny_model_dir(tmp_path / "model", tiny_gpt(), 4, with_vq=False)
    config = {**json.loads((folder / "config.json").read_text()), **change}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    with pytest.raises(CheckpointError) as refused:
        load_model(str(folder), device="cpu")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_api_mistakes_are_settings_errors_not_tracebacks() -> None:
    """Each call a user can get wrong through the Python API ends in a SpecARError naming the problem."""
    model, coded = tiny_model(0), tiny_model_with_codes(0)
    mistakes = [
        (lambda: load_model(None), "load_model needs a model name"),
        (lambda: load_model(""), "load_model needs a model name"),
        (lambda: Conditioning.classes([]), "at least one image"),
        (lambda: Conditioning.classes(["3"]), "a class id must be a whole number, got '3'"),
        (lambda: Conditioning(class_ids=(True,)), "class ids must be whole numbers"),
        (lambda: model.decode(torch.full((1, 64), 64)), "has codes 0..63; got codes from 64 to 64"),
        (lambda: model.decode(torch.full((1, 64), -1)), "has codes 0..63; got codes from -1 to -1"),
        (lambda: model.decode(torch.zeros(1, 64)), "decodes a tensor of integer codes"),
        (lambda: model.decode(torch.zeros(1, 10, dtype=torch.long)), "decodes codes \\[images, 64\\]"),
        (lambda: resolve_device("mps"), "device mps was asked for but this PyTorch sees no Apple GPU"),
        (lambda: GaussianAcceptance(1e308), "inner_temperature must be in \\[1, 10000\\]"),
        (lambda: mask_to_token_weights(np.full((4, 4), np.nan), (2, 2)), "finite numbers in 0..1"),
        (
            lambda: generate(
                tiny_model(0, vocab_size=32), Conditioning.classes([1]), policy=make_policy("gsd", 0.5, model=coded)
            ),
            "built for tiny \\(64 codes\\), not for tiny \\(32 codes\\)",
        ),
        (lambda: generate(model, Conditioning.classes([1]), draft="jacobi"), "generate's draft: expected DraftSource"),
        (
            lambda: generate(model, Conditioning.classes([1]), policy="gsd"),
            "generate's policy: expected AcceptancePolicy",
        ),
        (
            lambda: generate(model, Conditioning.classes([1]), {"seed": 1}),
            "generate's settings: expected SamplingSettings",
        ),
        (lambda: generate(model, [1]), "generate's cond: expected Conditioning \\(e.g. Conditioning.classes"),
        (lambda: generate(load_continuous_model("mar-demo"), Conditioning.classes([1])), "generate_continuous decodes"),
        (
            lambda: generate(model, Conditioning.classes([1]), prefix=torch.zeros(1, 3)),
            "integer codes, got torch.float32",
        ),
    ]
    for call, message in mistakes:
        with pytest.raises(SpecARError, match=message):
            call()
    assert mask_to_token_weights(np.ones((16, 16)), (8, 8)).shape == (1, 64)  # an array mask is fine


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["generate", "--draft", "model", "--window", "8"], "--window is not used by the drafter draft"),
        (
            ["generate", "--draft", "jacobi", "--jacobi-init", "row_above", "--q-init", "uniform"],
            "--q-init is not used",
        ),
        (["generate", "--draft", "none", "--gamma", "3"], "--gamma is not used by plain decoding"),
        (["generate", "--draft", "tree", "--tree-branching", "2,2"], "--tree-branching is not used by the tree draft"),
        (["generate", "--draft", "model", "--coupling"], "--coupling choose the Jacobi variant"),
        (["generate", "--mar-steps", "3"], "--mar-steps applies to continuous-token (MAR) models; demo is a discrete"),
        (["generate", "--model", "mar-demo", "--window", "4"], "--window applies to discrete-token models"),
        (["generate", "--model", "mar-demo", "--dtype", "bf16"], "--dtype applies to discrete-token models"),
        (["generate", "--model", "mar-demo", "--image-size", "64"], "--image-size applies to discrete-token models"),
        (["generate", "--image-size", "64"], "the bundled demo target draws the one image size it was trained for"),
        (["generate", "--draft", "model", "--drafter", "mar-demo-drafter"], "mar-demo-drafter is a continuous-token"),
        (["bench", "--methods", "jacobi-row", "--gamma", "3"], "--gamma is not used by --methods jacobi-row"),
    ],
)
def test_options_a_run_would_ignore_are_refused(
    command: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x.png")] if command[0] == "generate" else []
    code = cli.main([*command, *out, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and message in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "head.png"
    taken.write_bytes(b"not a folder")
    code = cli.main(["train-head", "--model", "demo", "--images", "4", "--steps", "1", "--out", str(taken)])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and err == f"error: --out {taken} is a file; name a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.png"]


def test_an_empty_method_list_is_refused_not_read_as_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--methods", " , "]) == cli.EXIT_USAGE
    assert "argument --methods: must list at least one entry; got ' , '" in capsys.readouterr().err


def test_a_count_option_must_be_whole_and_dtype_applies_to_the_demo() -> None:
    with pytest.raises(SettingsError, match="LANTERN neighbours must be a whole number, got 2.5"):
        make_policy("lantern", 0.5, model=tiny_model_with_codes(0), neighbours=2.5)
    assert make_policy("lantern", 0.5, model=tiny_model_with_codes(0), neighbours=2.0).neighbours == 2
    assert load_model("demo", device="cpu", dtype="bf16").dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TreeShape.parse_branching("64*64"), "the static tree '64\\*64' is too large"),
        (lambda: TreeShape.parse_branching("1*100000000"), "is too large"),
        (lambda: TreeShape.parse_branching("2,x"), "'' in '2,x' is not a number or NUMBER\\*DEPTHS"),
        (lambda: TreeShape.parse_branching("2,,1"), "'' in '2,,1' is not a number"),
        (lambda: TreeShape(kind="static", branching=(32, 32, 16)), "a static tree 32-32-16 is too large"),
        (lambda: TreeShape(top_k=64, depth=64, nodes=5000), "a dynamic tree of 5000 nodes is too large"),
        (lambda: JacobiDrafts(window=10**6), "a Jacobi window of 1,000,000 is too large"),
        (lambda: DrafterModelDrafts(tiny_drafter(), gamma=5000), "a drafter chain of 5,000 tokens is too large"),
    ],
)
def test_drafts_larger_than_one_forward_may_verify_are_refused(make, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        make()


def test_a_batch_over_the_free_memory_is_refused_before_any_layer_runs(monkeypatch) -> None:
    """The attention cache is sized before it is allocated: a request over the free memory (here the machine is
    told it has 1 MiB) ends in one line that says what to lower, and no layer has run."""
    monkeypatch.setattr("specar.memory.available_bytes", lambda device: 2**20)
    model = tiny_model(0)
    calls: list[int] = []
    model.gpt.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(
        SettingsError, match=r"the attention cache of 8 rows x \d+ positions needs .* free on cpu: draw"
    ):
        generate(model, Conditioning.classes([1, 2, 3, 4]), SamplingSettings(cfg_scale=2.0))
    assert calls == []
    assert TreeShape.parse_branching("2,2,1*30") == (2, 2) + (1,) * 30  # the documented forms still parse


def test_a_mar_target_returning_nan_stops_the_run_in_one_line() -> None:
    """The continuous loop stops at the first MAR step whose sampled tokens are not finite, keeping what came
    before (here the target's head returns NaN from its third pass on)."""
    model = tiny_mar(0)
    real, calls = model.head_sample, []

    def head_sample(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:
            out.tokens.fill_(float("nan"))
        return out

    model.head_sample = head_sample
    settings = ContinuousSettings(num_iter=6, num_sampling_steps=3, seed=1)
    with pytest.raises(
        NonFiniteOutputError, match="^the MAR target returned NaN or infinite values at step 3 of 6"
    ) as e:
        generate_continuous(model, [1, 2], settings)
    partial = e.value.result
    assert not partial.finished and 0 < int(partial.committed.min()) < partial.tokens.shape[1]
    assert bool(torch.isfinite(partial.tokens[partial.kinds >= 0]).all())


def test_ctrl_c_while_the_command_loads_is_quiet(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The entry point is running before torch loads (``import specar`` is light), so Ctrl-C during the imports
    ends with one line and the usual exit code, not a traceback."""
    import builtins

    from specar import entry

    real_import = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and name == "cli":
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry.main() == cli.EXIT_INTERRUPTED and capsys.readouterr().err == "interrupted\n"
    light = subprocess.run(
        [sys.executable, "-c", "import sys, specar, specar.entry; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert light.stdout.strip() == "False", light.stderr


def test_a_step_too_large_for_the_free_memory_is_refused_before_the_prefill(monkeypatch) -> None:
    """A step's distributions ([images x tokens per forward x codes], several of them) are sized from the draft
    source's largest block before anything runs."""
    monkeypatch.setattr("specar.memory.available_bytes", lambda device: 256 * 2**10)
    model = tiny_model(0)
    calls: list[int] = []
    model.gpt.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(SettingsError, match=r"one step's distributions \(4 images x 64 tokens x 64 codes\) needs"):
        generate(model, Conditioning.classes([1, 2, 3, 4]), draft=JacobiDrafts(window=64))
    assert calls == []
    assert JacobiDrafts(window=64).largest_block == 63 and DrafterModelDrafts(tiny_drafter(), 5).largest_block == 5
