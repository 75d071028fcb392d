"""The model adapter: everything the loop needs from an image-token model, and nothing more.

An adapter owns the network, its KV cache and its pixel decoder, and hides what is specific to
one family: how the unconditional half of the CFG batch is built, where structural tokens go, how
positions map onto its rotary table. The loop, draft sources and policies see only this class.

Rows: with guidance the adapter runs a paired batch ``[cond rows; uncond rows]`` of ``2B`` rows
and returns raw logits in that order; the distribution processor combines them. Both halves
always receive the same tokens and are rolled back together.

Positions are image-token indices: an input token at position ``t`` is image token ``t`` and its
output row predicts token ``t + 1``.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ..errors import SettingsError
from ..types import Conditioning, SamplingSettings

# A drafter must turn prompts into the target's token ids; this one (punctuation, digits, accents, CJK) shows
# a different tokenizer or prompt template (see ImageTokenModel.fit_signature).
FIT_TEST_PROMPT = "A photo of a red cat on the grass, 2 dogs; the sky (blue) at 5:30 - café «déjà vu» 東京の空"


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [R, k, V] float32 raw logits, cond rows then uncond rows
    hidden: torch.Tensor  # [R, k, D] last-layer hidden states (after the final norm)
    # Prefill of a condition that spans C > 1 positions (LlamaGen t2i captions): the states [R, C - 1, D] at the
    # condition positions before the last one (whose state is ``hidden``). Tree heads trained on sequences that
    # open with the condition (LANTERN's t2i heads) read them; None where the condition is one position.
    condition_hidden: torch.Tensor | None = None


class PixelDecoder(Protocol):
    """Turns image codes into pixels and exposes the code vectors (for latent-proximity policies)."""

    def codebook_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Latent vector of every code in ``codes`` (any shape) -> ``[..., C]``."""

    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codes ``[B, h*w]`` in raster order -> float images ``[B, 3, H, W]`` in [-1, 1]."""

    def to(self, device: torch.device) -> "PixelDecoder":
        """The decoder on ``device`` (``self`` moved, or a moved copy)."""


class ImageTokenModel(ABC):
    """Adapter protocol for discrete-token AR image models (target or drafter)."""

    name: str
    vocab_size: int
    grid: tuple[int, int]
    hidden_size: int
    default_settings: SamplingSettings
    device: torch.device
    dtype: torch.dtype

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def conditioning_kind(self) -> str:
        """``"class"``, ``"prompt"`` or ``"caption"``: what :class:`Conditioning` field it reads."""
        return "class"

    @property
    def num_classes(self) -> int | None:
        """Number of classes for class-conditional models, else ``None``."""
        return None

    @property
    def can_decode(self) -> bool:
        """Whether :meth:`decode` can make pixels (a GPT loaded without its VQ cannot)."""
        return True

    def describe(self) -> str:
        return f"{self.name} ({self.grid[0]}x{self.grid[1]} tokens, vocab {self.vocab_size})"

    @property
    def family(self) -> str:
        """The model family (``llamagen``, ``janus``, ``lumina-mgpt``, ``anole``, ``emu3``): a drafter must be
        of its target's."""
        return type(self).__name__

    def fit_signature(self) -> dict[str, object]:
        """What a drafter of this family must share with its target besides vocabulary size, grid and
        conditioning, by name (:data:`specar.drafts.drafter.FIT_PROBLEMS` says each in words): how prompts
        become token ids, which text tokens the image codes are, the row-end token. Computed once."""
        return {}

    @abstractmethod
    def prefill(self, cond: Conditioning, guided: bool) -> ModelOutput:
        """Start a new generation: reset the cache, run the condition, and return the outputs
        ``[R, 1, ...]`` whose logits predict image token 0 (and, for a condition of several positions,
        the states at the others: :attr:`ModelOutput.condition_hidden`). ``guided`` adds the unconditional half."""

    @abstractmethod
    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None = None
    ) -> ModelOutput:
        """Append ``tokens [B, k]`` at ``positions [B, k]`` to the cache and return their outputs.

        ``tree_mask`` (bool, ``[k, k]`` for every image or ``[B, k, k]`` per image) says which new
        tokens each new token may attend to (ancestors and itself); ``None`` is causal.
        """

    @abstractmethod
    def truncate(self, lengths: torch.Tensor) -> None:
        """Roll the cache back to ``lengths[b]`` image tokens per image (both CFG halves)."""

    @abstractmethod
    def compact(self, keep: torch.Tensor, counts: torch.Tensor) -> None:
        """After a tree forward, keep block nodes ``keep[b, :counts[b]]`` (increasing) right after
        the tokens cached before that forward, and drop the rest of the block."""

    def constrain(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Model-specific restrictions of guided logits ``[B, k, V]`` predicting ``positions``."""
        return logits

    @property
    def constraint(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """:meth:`constrain` where this model restricts its logits, ``None`` where it does not (a
        processor then skips the call, and its caller the positions it would need)."""
        return None if type(self).constrain is ImageTokenModel.constrain else self.constrain

    @abstractmethod
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of ``codes`` (what latent-proximity relaxations compare)."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, N]`` -> ``uint8`` images ``[B, H, W, 3]`` on the CPU; codes that are not this model's
        (wrong shape or type, outside the vocabulary) are refused rather than decoded into garbage."""
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise SettingsError(f"{self.name} decodes a tensor of integer codes, got {type(codes).__name__}")
        if codes.dim() != 2 or codes.shape[1] != self.num_image_tokens or codes.shape[0] == 0:
            raise SettingsError(
                f"{self.name} decodes codes [images, {self.num_image_tokens}], got shape {list(codes.shape)}"
            )
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.vocab_size:
            raise SettingsError(f"{self.name} has codes 0..{self.vocab_size - 1}; got codes from {low} to {high}")
        return self.decode_codes(codes)

    @abstractmethod
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` of codes already checked to be this model's."""

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings of image codes ``[R, n]`` (what a tree head reads besides hidden states)."""
        raise SettingsError(f"{self.name} does not expose its code embeddings, so a tree head cannot draft for it")

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over image codes from last-layer hidden states (a tree head's read-out)."""
        raise SettingsError(f"{self.name} does not expose its output head, so a tree head cannot draft for it")

    def layer_shape(self) -> tuple[int, int]:
        """``(attention heads, feed-forward width)`` of one decoder layer: the shape a tree head of
        one layer copies, as EAGLE's and LANTERN's heads do."""
        raise SettingsError(f"{self.name} does not expose its layer shape, so no tree head can be built for it")

    def check_conditioning(self, cond: Conditioning) -> None:
        """Raise :class:`~specar.errors.SettingsError` if ``cond`` cannot drive this model."""

    def require_pixels(self) -> None:
        """Fail before decoding, not after it, when there is no VQ decoder to make pixels."""
        if not self.can_decode:
            raise SettingsError(
                f"{self.name} has no VQ tokenizer to turn tokens into pixels: put a vq*.pt or "
                "vq*.safetensors file beside the model weights (or pass --vq PATH on the command line)"
            )

    def set_compile(self, enabled: bool) -> None:
        """Run forwards through ``torch.compile`` (:mod:`specar.compile`) or eagerly. Families
        without a compiled path stay eager and say so once."""
        if enabled:
            print(f"specar: {self.name}: no compiled forward for this family yet; running eagerly", file=sys.stderr)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling forwards so far (first calls of each compiled shape)."""
        return 0.0

    @property
    def pads_blocks(self) -> bool:
        """Whether a block of k tokens runs padded to a compiled bucket (its cost is the bucket's)."""
        return False

    def release(self) -> None:
        """Free the cache (models stay loaded); called when a generation ends."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the network and pixel decoder to ``device`` (hosts offload models between runs)."""

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules that hold this model's weights: what a host that accounts for memory (ComfyUI's
        model management) sizes, loads and offloads. :meth:`to` still follows, for state kept outside them."""
        return attribute_networks(self)


def attribute_networks(owner: object) -> list[torch.nn.Module]:
    """The torch modules among ``owner``'s attributes, each once."""
    found: dict[int, torch.nn.Module] = {}
    for value in vars(owner).values():
        if isinstance(value, torch.nn.Module):
            found.setdefault(id(value), value)
    return list(found.values())


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images ``[B, 3, H, W]`` in [-1, 1] -> ``uint8 [B, H, W, 3]`` on the CPU."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()
