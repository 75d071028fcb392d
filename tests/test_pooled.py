"""Pooling a setting's seed sets against every AR run: calibrated statistics, and `specar pareto` on real runs."""

from __future__ import annotations

import math
import statistics

import torch

from specar import cli
from specar.lab import pareto, pooled


def test_class_z_is_a_two_proportion_z_and_calibrated_under_no_difference() -> None:
    # by hand: 900 of 1,000 against 22,320 of 24,000 -> pooled 0.92880, standard error 0.008303
    assert math.isclose(pooled.class_z(0.9, 1000, 0.93, 24000), -3.613, abs_tol=0.002)
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    method = torch.binomial(torch.full((draws,), 3000.0), torch.full((draws,), 0.93), generator=generator) / 3000
    ar = torch.binomial(torch.full((draws,), 24000.0), torch.full((draws,), 0.93), generator=generator) / 24000
    z = torch.tensor([pooled.class_z(float(m), 3000, float(a), 24000) for m, a in zip(method, ar)])
    assert abs(float(z.mean())) < 0.1 and 0.93 < float(z.std()) < 1.07
    assert float((z.abs() > 2).float().mean()) < 0.07  # "within about 2": about 5 % of lossless settings fall outside


def test_fid_z_is_calibrated_when_the_setting_and_ar_share_one_distribution() -> None:
    # by hand: 3 runs averaging 7.0 against 24 AR runs of mean 6.5, sd 0.4 -> error 0.4 * sqrt(1/3 + 1/24) = 0.2449
    by_hand = pareto.QualityBand(24, 0.9, 0.95, 5.5, 7.5, fid_mean=6.5, fid_sd=0.4)
    assert math.isclose(pooled.fid_z(7.0, 3, by_hand), 2.041, abs_tol=0.002)
    generator = torch.Generator().manual_seed(1)
    z = []
    for _ in range(2000):
        ar_runs = (6.5 + 0.4 * torch.randn(24, generator=generator)).tolist()
        setting_runs = (6.5 + 0.4 * torch.randn(3, generator=generator)).tolist()
        band = pareto.QualityBand(
            24,
            0.9,
            0.95,
            min(ar_runs),
            max(ar_runs),
            fid_mean=statistics.fmean(ar_runs),
            fid_sd=statistics.stdev(ar_runs),
        )
        z.append(pooled.fid_z(statistics.fmean(setting_runs), 3, band))
    assert abs(statistics.fmean(z)) < 0.1 and 0.93 < statistics.stdev(z) < 1.12  # a t with 23 degrees of freedom


def test_pareto_pools_a_settings_seed_sets_against_all_ar_runs(tmp_path, capsys) -> None:
    paths = []
    for seed, methods in ((0, "ar2,drafter"), (7, "drafter")):  # AR seeds 0, 0 + offset and 7
        paths.append(tmp_path / f"seed{seed}.json")
        assert (
            cli.main(
                [
                    "bench",
                    "--images",
                    "2",
                    "--batch",
                    "2",
                    "--methods",
                    methods,
                    "--quality",
                    "--quiet",
                    "--seed",
                    str(seed),
                    "--json",
                    str(paths[-1]),
                ]
            )
            == 0
        )
    capsys.readouterr()
    points, band = pareto.collect(pareto.load_runs(paths))
    assert band.runs == 3 and band.images == 6 and sorted(p.seed for p in points) == [0, 7]
    assert band.class_low <= band.class_pooled <= band.class_high and band.fid_sd > 0
    (setting,) = pooled.pool(points, band)
    assert setting.seed_sets == 2 and setting.images == 4 and setting.speedup_over_exact == 1.0
    assert setting.class_accuracy == statistics.fmean(p.class_accuracy for p in points)
    assert setting.fid_lite == statistics.fmean(p.fid_lite for p in points)

    assert cli.main(["pareto", *map(str, paths)]) == 0
    text = capsys.readouterr().out
    assert "3 AR runs with different seeds; a lossless method's run clears each edge with probability 75%" in text
    assert "Pooled against all 3 AR runs (6 images" in text
    assert f"| drafter, gamma 6 | exact | 0 | 2 | {setting.tokens_per_forward:.2f} | 1.00x |" in text
    # two AR runs give no run-to-run spread to pool against: the table is left out
    assert pooled.pool(points, pareto.collect(pareto.load_runs(paths[:1]))[1]) == []
