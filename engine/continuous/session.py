"""One continuous-token sampling job as a host application (the ComfyUI nodes) asks for it.

The recipes are the discrete ones (:class:`specar.session.DraftRecipe`, ``PolicyRecipe``) so the
same nodes drive both kinds of model: a drafter recipe holding a continuous draft model means CSpD
with ``gamma`` draft MAR steps per verification; the policy ``cspd`` relaxes the Gaussian test
and lengthens the draft runs (:meth:`CSpDSettings.relaxed`), ``exact`` (or no policy) keeps it exact.
"""

from __future__ import annotations

from ..errors import SettingsError
from ..progress import summary_line
from ..session import DraftRecipe, JobOutput, PolicyRecipe, class_for_prompt, job_output
from ..types import Observer
from .acceptance import GaussianAcceptance
from .loop import generate_continuous
from .model import ContinuousTokenModel, is_continuous_model
from .types import CONTINUOUS_POLICIES, ContinuousResult, ContinuousSettings, CSpDSettings


def class_ids_for(model: ContinuousTokenModel, prompt: str, batch: int) -> list[int]:
    """A class name (any case, with suggestions when misspelt) or number, repeated ``batch`` times."""
    text = prompt.strip()
    class_id = int(text) if text.isdigit() else class_for_prompt(model, text)
    if not 0 <= class_id < model.num_classes:
        raise SettingsError(f"{model.name} has classes 0..{model.num_classes - 1}, not {class_id}")
    return [class_id] * batch


def speculation_for(draft: DraftRecipe, policy: PolicyRecipe | None) -> CSpDSettings:
    """CSpD settings from the recipes: ``gamma`` draft steps per target pass and the exact Gaussian test,
    moved along the policy's relaxation (``inner_temperature`` overrides the test's temperature)."""
    policy = policy or PolicyRecipe()
    if policy.name not in CONTINUOUS_POLICIES:
        raise SettingsError(
            f"continuous (MAR) models accept drafts with CSpD's Gaussian test: use the policy cspd "
            f"(or exact), not {policy.name}"
        )
    if policy.mask is not None:
        raise SettingsError("region masks relax discrete policies; CSpD relaxes every token alike")
    options = dict(policy.options)
    unknown = sorted(set(options) - {"inner_temperature", "max_tries"})
    if unknown:
        raise SettingsError(f"the cspd policy takes inner_temperature and max_tries, not {', '.join(unknown)}")
    acceptance = GaussianAcceptance(max_tries=int(options.get("max_tries", GaussianAcceptance().max_tries)))
    speculation = CSpDSettings(draft_steps=draft.gamma, acceptance=acceptance).relaxed(policy.relaxation)
    if "inner_temperature" in options:
        speculation = speculation.with_inner_temperature(float(options["inner_temperature"]))
    return speculation


def summarize(result: ContinuousResult, draft: ContinuousTokenModel | None, speculation: CSpDSettings) -> str:
    setup = (
        f"CSpD with {draft.name} ({speculation.draft_steps} draft steps, inner temperature "
        f"{speculation.acceptance.inner_temperature:.3g})"
        if draft is not None
        else "plain MAR"
    )
    return summary_line(result, setup, ("pass", "passes"))


def run_continuous_job(
    model: ContinuousTokenModel,
    prompt: str,
    batch: int,
    settings: ContinuousSettings,
    draft: DraftRecipe | None = None,
    policy: PolicyRecipe | None = None,
    observer: Observer | None = None,
) -> JobOutput:
    """Draw ``batch`` images of ``prompt`` (plainly, or with CSpD when the recipe holds a draft model)."""
    if batch < 1:
        raise SettingsError(f"batch size must be >= 1, got {batch}")
    draft = draft or DraftRecipe()
    drafter = draft.drafter
    if draft.method not in ("ar", "drafter") or (drafter is not None and not is_continuous_model(drafter)):
        raise SettingsError(
            f"{model.name} generates continuous tokens: draft with a smaller continuous model "
            f"(SpecAR Drafter Model), not {draft.describe()}"
        )
    speculation = speculation_for(draft, policy)
    result = generate_continuous(model, class_ids_for(model, prompt, batch), settings, drafter, speculation, observer)
    return job_output(model, result, summarize(result, drafter, speculation))


__all__ = ["run_continuous_job", "is_continuous_model", "speculation_for", "CONTINUOUS_POLICIES"]
