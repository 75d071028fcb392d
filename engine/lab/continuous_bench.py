"""Benchmarks of continuous-token models: plain MAR sampling against CSpD, same images and seeds.

Method names:

* ``mar``: the target alone, ``num_iter`` steps (the baseline); ``mar2``: the same with other seeds,
  the seed-to-seed spread quality is read against;
* ``mar@N``: the target alone with ``N`` steps, e.g. as many as CSpD's target passes: the honest
  control, since a MAR target with fewer steps is also "fewer target passes";
* ``draft``: the draft model alone;
* ``cspd``: CSpD with the exact Gaussian test (relaxation 0); ``cspd=R``: relaxation ``R`` in [0, 1]
  (inner temperature ``42^R``, 1 being the reference code's 42, and longer draft runs:
  :meth:`specar.continuous.types.CSpDSettings.relaxed`).

Rows are :class:`specar.bench.BenchRow`, so tables, JSON and the quality columns read like the
discrete benchmark's; "tokens per forward" is image tokens per *target pass*.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .bench import SECOND_SEED_OFFSET, BenchRow, summarize
from ..errors import SettingsError
from ..continuous.acceptance import inner_temperature_for
from ..continuous.loop import check_draft_fits, generate_continuous
from ..continuous.model import ContinuousTokenModel
from ..continuous.types import ContinuousResult, ContinuousSettings, CSpDSettings

BASELINE = "mar"
Evaluate = Callable[[torch.Tensor, list[int]], dict[str, float]]


def parse_continuous_methods(text: str) -> list[str]:
    """``"cspd, cspd=0.5"`` -> ``["mar", "cspd", "cspd=0.5"]`` (checked; the baseline always runs first)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        _describe(name)
    return list(dict.fromkeys([BASELINE, *names]))


def _describe(method: str) -> tuple[str, float | int | None]:
    base, _, value = method.partition("@") if "@" in method else method.partition("=")
    try:
        if base in ("mar", "mar2", "draft", "cspd") and not value:
            return base, None
        if base == "mar" and "@" in method:
            return base, int(value)
        if base == "cspd":
            relax = float(value)
            inner_temperature_for(relax)
            return base, relax
    except ValueError:
        pass
    raise SettingsError(f"unknown continuous method {method!r}; use mar, mar2, mar@STEPS, draft, cspd or cspd=RELAX")


def run_method(
    target: ContinuousTokenModel,
    draft: ContinuousTokenModel | None,
    method: str,
    classes: list[int],
    settings: ContinuousSettings,
    speculation: CSpDSettings,
) -> ContinuousResult:
    """One call of ``method`` on ``classes`` with ``settings`` (its seed)."""
    base, value = _describe(method)
    if base == "mar2":
        return generate_continuous(target, classes, settings.with_(seed=settings.seed + SECOND_SEED_OFFSET))
    if base == "mar":
        steps = settings.num_iter if value is None else int(value)
        return generate_continuous(target, classes, settings.with_(num_iter=steps))
    if draft is None:
        raise SettingsError(f"method {method!r} needs a draft model")
    if base == "draft":
        return generate_continuous(draft, classes, settings)
    return generate_continuous(target, classes, settings, draft, speculation.relaxed(float(value or 0.0)))


def run_continuous_bench(
    target: ContinuousTokenModel,
    draft: ContinuousTokenModel | None,
    methods: Sequence[str],
    classes: list[int],
    batch: int,
    settings: ContinuousSettings,
    speculation: CSpDSettings = CSpDSettings(),
    evaluate: Evaluate | None = None,
    log: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Every method on the same calls (the call starting at image ``i`` uses seed ``seed + i``)."""
    methods = list(dict.fromkeys([BASELINE, *methods]))
    for method in methods:
        _describe(method)
        if _describe(method)[0] in ("draft", "cspd") and draft is None:
            raise SettingsError(f"method {method!r} needs a draft model")
    if draft is not None:
        check_draft_fits(target, draft)
    if batch < 1 or not classes:
        raise SettingsError("a benchmark needs at least one image and a batch size >= 1")
    results: dict[str, list[ContinuousResult]] = {m: [] for m in methods}
    for start in range(0, len(classes), batch):
        call_settings = settings.with_(seed=settings.seed + start)
        for method in methods:
            results[method].append(
                run_method(target, draft, method, classes[start : start + batch], call_settings, speculation)
            )
        if log is not None:
            log(f"{min(start + batch, len(classes))}/{len(classes)} images done by every method")
    baseline = summarize(BASELINE, list(results[BASELINE]), None)
    rows = [baseline] + [summarize(m, list(results[m]), baseline.seconds_per_image) for m in methods[1:]]
    for row in rows:
        if _describe(row.method)[0] != "cspd":
            row.acceptance_rate = None  # nothing was drafted
    if evaluate is not None:
        for row in rows:
            images = torch.cat([target.decode(r.tokens) for r in row.results])
            row.quality = evaluate(images, classes)
    return rows


__all__ = ["run_continuous_bench", "parse_continuous_methods", "run_method"]
