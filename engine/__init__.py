"""SpecAR engine: speculative decoding for autoregressive image models, in plain PyTorch.

    from specar import AutoDrafts, Conditioning, generate, load_model
    model = load_model("path/to/model")
    result = generate(model, Conditioning.classes([3]), draft=AutoDrafts())
    images = model.decode(result.tokens)

The engine never imports ComfyUI; the nodes and the ``specar`` CLI are its callers.
"""

from .continuous.loop import generate_continuous
from .continuous.registry import load_continuous_model
from .continuous.types import ContinuousResult, ContinuousSettings, CSpDSettings
from .drafts.auto import AutoDrafts
from .drafts.base import DecodeState, DraftSource, StepOutcome
from .drafts.drafter import DrafterModelDrafts
from .drafts.jacobi import JacobiDrafts
from .errors import CheckpointError, IncompatibleDrafterError, SettingsError, SpecARError
from .loop import generate
from .models.base import ImageTokenModel, ModelOutput
from .models.registry import load_model, resolve_device, resolve_dtype
from .policies import AcceptancePolicy, ExactPolicy, make_policy
from .types import Conditioning, DraftBlock, GenerationResult, SamplingSettings, StepEvent, TokenKind, Verdict

__version__ = "0.1.0"

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
    "ExactPolicy",
    "GenerationResult",
    "ImageTokenModel",
    "IncompatibleDrafterError",
    "JacobiDrafts",
    "ModelOutput",
    "SamplingSettings",
    "SettingsError",
    "SpecARError",
    "StepEvent",
    "StepOutcome",
    "TokenKind",
    "Verdict",
    "generate",
    "generate_continuous",
    "load_continuous_model",
    "load_model",
    "make_policy",
    "resolve_device",
    "resolve_dtype",
]
