"""Errors the engine raises on bad input.

Every error a user can cause (a wrong file, an impossible setting, a drafter that does not fit the
target) is a :class:`SpecARError` with a message that names the problem and, where possible, the
fix. Callers (CLI, ComfyUI nodes) show the message as is instead of a torch traceback.
"""

from __future__ import annotations


class SpecARError(ValueError):
    """Base class for user-facing engine errors."""


class CheckpointError(SpecARError):
    """A checkpoint is missing, unreadable, corrupt, or not the layout we expected."""


class SettingsError(SpecARError):
    """A sampling or decoding setting is out of range or contradicts another one."""


class OutputError(SpecARError):
    """An output file could not be written (a full disk, a read-only folder, no permission)."""


class IncompatibleDrafterError(SpecARError):
    """A drafter cannot draft for this target (vocabulary, grid or conditioning differ)."""


class NonFiniteOutputError(SpecARError):
    """A model returned NaN or infinite logits; ``result`` holds the tokens decided before it (as an
    interrupted run would), so callers can still show them."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


# Named where users import them from, so hosts that print an error's type (ComfyUI's error dialog) show
# "specar.SettingsError" rather than the file path a custom node pack is loaded from.
for _error in (SpecARError, CheckpointError, SettingsError, IncompatibleDrafterError, NonFiniteOutputError):
    _error.__module__ = "specar"
