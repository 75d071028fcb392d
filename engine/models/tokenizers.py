"""Text tokenizers from a local model directory, with one-line errors.

transformers' ``AutoTokenizer`` reads the usual files (``tokenizer.json``, ``tokenizer_config.json``,
SentencePiece models). Chameleon-family checkpoints (Lumina-mGPT's ``ckpts/chameleon/tokenizer``)
ship a bare ``text_tokenizer.json`` instead, which the ``tokenizers`` library reads directly.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError


class BareTokenizer:
    """A ``tokenizers.Tokenizer`` with the two methods the adapters use."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.inner = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise CheckpointError(f"{path}: not a readable tokenizer file ({exc})") from exc

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.inner.encode(text, add_special_tokens=add_special_tokens).ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.inner.get_vocab(with_added_tokens=True))


def load_tokenizer(directory: str | Path, bare_names: tuple[str, ...] = ()) -> object:
    """The tokenizer in ``directory``: a bare ``tokenizers`` file named in ``bare_names`` if one
    exists there, else transformers' ``AutoTokenizer``."""
    directory = Path(directory)
    for candidate in bare_names:
        if (directory / candidate).is_file():
            return BareTokenizer(directory / candidate)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: no usable tokenizer files ({first_line})") from exc


def vocabulary_fingerprint(tokenizer: object) -> int | None:
    """A number that differs between tokenizers with different vocabularies (token -> id, added tokens
    included), so two models can be checked for one tokenizer without keeping both vocabularies;
    ``None`` for a tokenizer that does not list its vocabulary."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return None
    return hash(frozenset(get_vocab().items()))
