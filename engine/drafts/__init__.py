"""Draft sources: where the tokens a target forward verifies come from (see :mod:`.base`)."""
