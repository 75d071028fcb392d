"""Bad input gets a clear error naming the problem, never a crash deep in torch."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from tiny import save_official_pt, tiny_drafter, tiny_gpt, tiny_model

from specar import (
    CheckpointError,
    Conditioning,
    DrafterModelDrafts,
    IncompatibleDrafterError,
    JacobiDrafts,
    SamplingSettings,
    SettingsError,
    generate,
    load_model,
    make_policy,
)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_corrupt_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match="not a readable safetensors file: it may be damaged"):
        load_model(bad, device="cpu")


def test_truncated_pt(tmp_path: Path) -> None:
    path = save_official_pt(tiny_gpt(), tmp_path / "c2i.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_model(path, device="cpu")


class Payload:
    """An arbitrary object: a pickle that would run code on load."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"model": Payload()}, handle)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors") as refused:
        load_model(path, device="cpu")
    message = str(refused.value)
    assert "\n" not in message and "does not unpickle" in message and "weights_only=False" not in message


def test_wrong_kind_of_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"model": {"encoder.conv.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="not a LlamaGen GPT"):
        load_model(path, device="cpu")


def test_missing_and_misshapen_keys(tmp_path: Path) -> None:
    state = dict(tiny_gpt().state_dict())
    del state["layers.1.ffn_norm.weight"]
    state["norm.weight"] = torch.ones(3)
    (tmp_path / "config.json").write_text('{"n_head": 4, "grid_size": 8}')
    torch.save({"model": state}, tmp_path / "c2i.pt")
    with pytest.raises(
        CheckpointError, match=r"missing 1 keys.*layers\.1\.ffn_norm\.weight.*shape mismatch: norm\.weight"
    ):
        load_model(tmp_path / "c2i.pt", device="cpu")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint type"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("window", [0, -3])
def test_window_below_one(window: int) -> None:
    with pytest.raises(SettingsError, match="window must be an integer >= 1"):
        JacobiDrafts(window=window)


def test_bad_draft_options() -> None:
    with pytest.raises(SettingsError, match="gamma"):
        DrafterModelDrafts(tiny_drafter(), gamma=0)
    with pytest.raises(SettingsError, match="init"):
        JacobiDrafts(init="diagonal")
    with pytest.raises(SettingsError, match="unknown acceptance policy"):
        make_policy("magic")


def test_drafter_with_another_vocabulary() -> None:
    with pytest.raises(IncompatibleDrafterError, match="vocabulary 32 vs the target's 64"):
        generate(
            tiny_model(),
            Conditioning.classes([1]),
            SamplingSettings(),
            draft=DrafterModelDrafts(tiny_drafter(vocab_size=32)),
        )


def test_drafter_with_another_grid() -> None:
    with pytest.raises(IncompatibleDrafterError, match="token grid"):
        generate(
            tiny_model(),
            Conditioning.classes([1]),
            SamplingSettings(),
            draft=DrafterModelDrafts(tiny_drafter(grid_size=4)),
        )


def test_class_id_out_of_range() -> None:
    with pytest.raises(SettingsError, match="class id 10 is out of range.*0..9"):
        generate(tiny_model(), Conditioning.classes([1, 10]), SamplingSettings())


def test_prompt_for_a_class_model() -> None:
    with pytest.raises(SettingsError, match="class-conditional"):
        generate(tiny_model(), Conditioning(prompts=("a cat",)), SamplingSettings())


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(cfg_scale=-1.0)])
def test_impossible_sampling_settings(bad: dict) -> None:
    with pytest.raises(SettingsError):
        SamplingSettings(**bad)


def test_bad_prefix() -> None:
    with pytest.raises(SettingsError, match="prefix"):
        generate(
            tiny_model(), Conditioning.classes([1]), SamplingSettings(), prefix=torch.zeros(2, 3, dtype=torch.long)
        )


def test_interrupted_generation_keeps_what_was_committed() -> None:
    result = generate(
        tiny_model(),
        Conditioning.classes([1, 2]),
        SamplingSettings(cfg_scale=2.0),
        draft=JacobiDrafts(window=4),
        observer=lambda event: event.target_forwards < 5,
    )
    assert not result.finished and result.target_forwards == 5
    assert 5 <= int(result.committed.min()) < 64
    committed = result.kinds >= 0
    assert committed.sum(1).tolist() == result.committed.tolist()


def test_errors_are_named_where_users_import_them() -> None:
    """Hosts that print an error's type (ComfyUI's error dialog) show ``specar.SettingsError``, not a file path;
    the errors still pickle (the name resolves)."""
    import pickle

    import specar

    for name in ("SpecARError", "CheckpointError", "SettingsError", "IncompatibleDrafterError", "NonFiniteOutputError"):
        error_type = getattr(specar, name)
        assert f"{error_type.__module__}.{error_type.__qualname__}" == f"specar.{name}"
        assert type(pickle.loads(pickle.dumps(error_type("why")))) is error_type
