"""The draft-source registry: every source builds, names itself and records its options."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_drafter, tiny_model, tiny_model_with_codes, tiny_tree_head

from specar.drafts import DRAFTS, DraftOptions, check_policy_fits, jacobi_method, make_draft
from specar.drafts.base import DraftSource
from specar.errors import SettingsError
from specar.policies import make_policy


@pytest.mark.parametrize("name", sorted(DRAFTS))
def test_every_source_builds_and_describes_itself(name: str) -> None:
    kind = DRAFTS[name]
    options = DraftOptions(tree_head=tiny_tree_head(tiny_model(0)))
    drafter = tiny_drafter() if kind.takes_drafter else None
    assert isinstance(make_draft(name, options, drafter), DraftSource)
    assert kind.label(options, "") and kind.summary
    json.dumps(kind.record(options))
    if kind.needs == "drafter":
        with pytest.raises(SettingsError, match="needs a drafter"):
            make_draft(name, options, None)
    if kind.needs == "tree head":
        with pytest.raises(SettingsError, match="needs a tree head"):
            make_draft(name, DraftOptions(), None)


def test_names_policies_and_jacobi_variants() -> None:
    with pytest.raises(SettingsError, match="unknown draft source"):
        make_draft("fast", DraftOptions())
    assert jacobi_method("row_above", False) == "jacobi-row" and jacobi_method("random", True) == "mcsjd"
    cascade = make_policy("cascade", 1.0, model=tiny_model_with_codes())
    check_policy_fits(cascade, "drafter-tree")
    with pytest.raises(SettingsError, match="siblings of a draft tree"):
        check_policy_fits(cascade, "jacobi")
