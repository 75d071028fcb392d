"""SpecAR engine: speculative decoding for autoregressive image models, in plain PyTorch.

    from specar import AutoDrafts, Conditioning, generate, load_model
    model = load_model("path/to/model")
    result = generate(model, Conditioning.classes([3]), draft=AutoDrafts())
    images = model.decode(result.tokens)

The engine never imports ComfyUI; the nodes and the ``specar`` CLI are its callers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names and the modules that define them, imported on first use: ``import specar`` stays cheap, so the
# command's entry point (``entry.py``) is running before torch loads and can answer Ctrl-C during that import.
_EXPORTS: dict[str, str] = {
    "generate_continuous": ".continuous.loop",
    "load_continuous_model": ".continuous.registry",
    "ContinuousResult": ".continuous.types",
    "ContinuousSettings": ".continuous.types",
    "CSpDSettings": ".continuous.types",
    "AutoDrafts": ".drafts.auto",
    "DecodeState": ".drafts.base",
    "DraftSource": ".drafts.base",
    "StepOutcome": ".drafts.base",
    "DrafterModelDrafts": ".drafts.drafter",
    "DrafterTreeDrafts": ".drafts.drafter_tree",
    "TreeHeadDrafts": ".drafts.tree_drafts",
    "TreeShape": ".drafts.tree_drafts",
    "TreeHead": ".drafts.tree_head",
    "load_tree_head": ".drafts.tree_head",
    "JacobiDrafts": ".drafts.jacobi",
    "CheckpointError": ".errors",
    "IncompatibleDrafterError": ".errors",
    "NonFiniteOutputError": ".errors",
    "OutputError": ".errors",
    "SettingsError": ".errors",
    "SpecARError": ".errors",
    "generate": ".loop",
    "score": ".scoring",
    "processed_distributions": ".scoring",
    "ImageTokenModel": ".models.base",
    "ModelOutput": ".models.base",
    "load_model": ".models.registry",
    "resolve_device": ".models.registry",
    "resolve_dtype": ".models.registry",
    "AcceptancePolicy": ".policies",
    "ExactPolicy": ".policies",
    "make_policy": ".policies",
    "Conditioning": ".types",
    "DraftBlock": ".types",
    "GenerationResult": ".types",
    "SamplingSettings": ".types",
    "StepEvent": ".types",
    "TokenKind": ".types",
    "Verdict": ".types",
}


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AcceptancePolicy",
    "AutoDrafts",
    "CheckpointError",
    "Conditioning",
    "ContinuousResult",
    "ContinuousSettings",
    "CSpDSettings",
    "DecodeState",
    "DraftBlock",
    "DraftSource",
    "DrafterModelDrafts",
    "DrafterTreeDrafts",
    "ExactPolicy",
    "GenerationResult",
    "ImageTokenModel",
    "load_tree_head",
    "NonFiniteOutputError",
    "OutputError",
    "IncompatibleDrafterError",
    "JacobiDrafts",
    "ModelOutput",
    "SamplingSettings",
    "SettingsError",
    "SpecARError",
    "StepEvent",
    "StepOutcome",
    "TokenKind",
    "TreeHead",
    "TreeHeadDrafts",
    "TreeShape",
    "Verdict",
    "generate",
    "generate_continuous",
    "load_continuous_model",
    "load_model",
    "make_policy",
    "processed_distributions",
    "score",
    "resolve_device",
    "resolve_dtype",
]
