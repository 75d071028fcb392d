"""Emu3-Gen (BAAI, arXiv 2409.18869) through transformers' ``Emu3ForConditionalGeneration``.

An Emu3 image is ``<|image start|>{h}*{w}<|image token|>`` then ``h`` rows of ``w`` visual
tokens, each row closed by ``<|extra_200|>``; the model's recipe forces those end-of-line tokens
with ``prefix_allowed_tokens_fn``. Here the engine sees codes only and the adapter inserts the
end-of-line after each row (:class:`~specar.models.row_layout.RowLayout`).

Guidance follows the official Emu3 sampler: the unconditional branch is the same template
around a negative prompt (``NEGATIVE_PROMPT`` by default). transformers' unbatched CFG mixes
log-softmaxed logits, which differs from mixing raw logits by a per-row constant only, so the
guided distribution is the same; it is run here as a left-padded paired batch.

Expected model directory: ``BAAI/Emu3-Gen-hf`` (``config.json``, safetensors shards, tokenizer
files, optional ``preprocessor_config.json`` for the pixel range).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import read_json
from ..errors import CheckpointError, SettingsError
from ..types import Conditioning, SamplingSettings
from .base import to_uint8
from .hf_backbone import CodesInTextVocabulary, TextVocabularyImageModel, load_pretrained, vocabulary_id
from .tokenizers import load_tokenizer

# Emu3's image_generation.py: classifier-free guidance 3.0, top-k 2048, sampling at temperature 1.
EMU3_DEFAULTS = SamplingSettings(cfg_scale=3.0, temperature=1.0, top_k=2048, top_p=1.0)
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry."
)
DEFAULT_IMAGE_SIZE = 720  # the processor's image_area 518400 at ratio 1:1
VISUAL_PREFIX = "<|visual token "


def visual_code_to_bpe(vocabulary: dict[str, int]) -> torch.Tensor:
    """``[codes]`` BPE id of every visual token ``<|visual token 000123|>`` (code 123)."""
    pairs = {
        int(name[len(VISUAL_PREFIX) : -2]): int(bpe)
        for name, bpe in vocabulary.items()
        if name.startswith(VISUAL_PREFIX)
    }
    if not pairs or sorted(pairs) != list(range(len(pairs))):
        raise CheckpointError("the config's vocabulary_map does not hold visual tokens 0..n-1")
    return torch.tensor([pairs[c] for c in range(len(pairs))], dtype=torch.long)


class Emu3ImageModel(TextVocabularyImageModel):
    """An Emu3-Gen checkpoint generating images through the engine."""

    family = "emu3"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        side: int,
        name: str,
        pixel_mean: tuple[float, ...] = (0.5,),
        pixel_std: tuple[float, ...] = (0.5,),
        negative_prompt: str = NEGATIVE_PROMPT,
    ) -> None:
        self.emu3, self.tokenizer, self.negative_prompt = model, tokenizer, negative_prompt
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        vocabulary: dict[str, int] = dict(model.config.vocabulary_map or {})
        self.image_vocab = CodesInTextVocabulary(
            model.model.text_model.embed_tokens, model.lm_head, visual_code_to_bpe(vocabulary)
        )
        self.ids = {
            t: vocabulary_id(vocabulary, t, name, "Emu3-Gen")
            for t in ("<|image start|>", "<|image token|>", "<|extra_200|>")
        }
        bos = model.config.text_config.bos_token_id
        if bos is None:
            raise CheckpointError(f"{name}: config.json has no bos_token_id")
        self.bos_id = int(bos)
        super().__init__(
            model,
            model.model.text_model,
            model.config.text_config,
            name,
            vocab_size=len(self.image_vocab),
            grid=(side, side),
            default_settings=EMU3_DEFAULTS,
            row_end_token=self.ids["<|extra_200|>"],
        )

    def prompt_ids(self, prompt: str) -> list[int]:
        """``BOS prompt <|image start|> h*w <|image token|>``, as Emu3's processor writes it."""
        encode = self.tokenizer.encode
        h, w = self.grid
        return [
            self.bos_id,
            *encode(prompt, add_special_tokens=False),
            self.ids["<|image start|>"],
            *encode(f"{h}*{w}", add_special_tokens=False),
            self.ids["<|image token|>"],
        ]

    def prefix_rows(self, cond: Conditioning, guided: bool) -> list[list[int]]:
        prompts = list(cond.prompts or ())
        rows = [self.prompt_ids(p) for p in prompts]
        if guided:
            rows += [self.prompt_ids(self.negative_prompt)] * len(prompts)
        return rows

    @torch.inference_mode()
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self.emu3.model.vqmodel.quantize.embedding(codes.to(self.device)).float()

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        pixels = self.emu3.model.vqmodel.decode(codes.to(self.device).view(-1, h, w)).float()
        mean = torch.tensor(self.pixel_mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.pixel_std, device=pixels.device).view(1, -1, 1, 1)
        unit = pixels * std + mean  # [0, 1]
        return to_uint8(unit * 2 - 1)


def _pixel_range(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std the VQ's pixels were normalised with (0.5 unless the processor says otherwise)."""
    path = directory / "preprocessor_config.json"
    config = read_json(path) if path.is_file() else {}

    def channels(value: object) -> tuple[float, ...]:
        return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)

    return channels(config.get("image_mean", 0.5)), channels(config.get("image_std", 0.5))


def load_emu3(
    directory: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    image_size: int | None = None,
    name: str | None = None,
) -> Emu3ImageModel:
    """A transformers Emu3-Gen directory on ``device``; ``image_size`` in pixels (default 720)."""
    from transformers import Emu3ForConditionalGeneration

    directory = Path(directory)
    config = read_json(directory / "config.json")
    if config.get("model_type") != "emu3":
        raise CheckpointError(f"{directory}: config.json has model_type {config.get('model_type')!r}, expected 'emu3'")
    model = load_pretrained(Emu3ForConditionalGeneration, str(directory), dtype, "Emu3")
    factor = int(model.model.vqmodel.spatial_scale_factor)
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if size <= 0 or size % factor:
        raise SettingsError(f"Emu3 image size must be a positive multiple of {factor} px, got {size}")
    mean, std = _pixel_range(directory)
    adapter = Emu3ImageModel(model, load_tokenizer(directory), size // factor, name or directory.name, mean, std)
    adapter.to(device)
    return adapter
