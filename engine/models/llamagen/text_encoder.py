"""LlamaGen text-to-image captions: flan-t5-xl encoder features, as LlamaGen's sampler makes them.

LlamaGen (``language/t5.py``, ``autoregressive/sample/sample_t2i.py``) tokenises each prompt to
120 slots (padding to the maximum, truncating, EOS added), runs the T5 *encoder*, and keeps the
last hidden state with the attention mask. The sampler then left-pads: each caption's valid
features are rotated to the end of the 120 slots, the mask is flipped to match, and padded slots
are zeroed. The GPT was trained on exactly that layout, so it is reproduced here.

LlamaGen also runs a caption clean-up (lower case, URL/HTML/markup removal via ``ftfy`` and
``bs4``) before tokenising; for ordinary prompts that is lower-casing and whitespace tidying,
which is what :func:`clean_prompt` does. The encoder runs in the model's dtype (bf16 on GPUs, as
LlamaGen's sampler does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...checkpoints import read_json
from ...errors import CheckpointError
from ..hf_backbone import load_pretrained
from ..tokenizers import load_tokenizer

TOKEN_SLOTS = 120


def clean_prompt(text: str) -> str:
    """Lower case, single spaces, no surrounding blanks (LlamaGen's clean-up on plain prompts)."""
    return " ".join(text.lower().split())


def left_pad(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid (leading) slots to the end and zero the rest, as ``sample_t2i.py`` does."""
    valid = mask.long().sum(1)
    slots = features.shape[1]
    # row b takes slot (j + valid_b) mod T for output j: the valid prefix lands at the end
    source = (torch.arange(slots, device=features.device)[None, :] + valid[:, None]) % slots
    rotated = features.gather(1, source[..., None].expand(-1, -1, features.shape[2]))
    new_mask = mask.bool().flip(1)
    return rotated * new_mask[..., None].to(rotated.dtype), new_mask


class T5CaptionEncoder:
    """A transformers T5 encoder and its tokenizer turning prompts into LlamaGen caption features."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: object, token_slots: int = TOKEN_SLOTS) -> None:
        self.encoder, self.tokenizer, self.token_slots = encoder, tokenizer, token_slots
        self.feature_dim = int(encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, token_slots, feature_dim]`` features (left-padded, zeros in padding) and the
        ``[B, token_slots]`` mask."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            max_length=self.token_slots,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        features = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return left_pad(features, mask)

    def to(self, device: torch.device) -> "T5CaptionEncoder":
        self.encoder.to(device)
        return self


def load_t5_caption_encoder(
    directory: str | Path, device: torch.device, dtype: torch.dtype, token_slots: int = TOKEN_SLOTS
) -> T5CaptionEncoder:
    """flan-t5-xl (or any T5) from a local transformers directory, on ``device``."""
    from transformers import T5EncoderModel

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"text encoder folder not found: {directory}")
    config = read_json(directory / "config.json")
    if config.get("model_type") not in ("t5", "umt5", "mt5"):
        raise CheckpointError(
            f"{directory}: config.json has model_type {config.get('model_type')!r}, expected a T5 "
            "encoder (google/flan-t5-xl)"
        )
    encoder = load_pretrained(T5EncoderModel, str(directory), dtype, "T5 text encoder", attention=None)
    return T5CaptionEncoder(encoder, load_tokenizer(directory), token_slots).to(device)
