"""Lumina-mGPT (arXiv 2408.02657) and Anole (arXiv 2407.06135) on transformers' Chameleon backbone.

transformers' ``ChameleonForConditionalGeneration.forward`` masks every image token out of its
logits, so generation runs the backbone (``model.model``) and reads image logits from the
``lm_head`` rows of the image tokens ourselves. Those rows, taken in VQ-code order, are the
engine's vocabulary: restricting to image tokens *after* classifier-free guidance (as Lumina's
processors do) is the same as guiding the gathered rows, and it never meets ``-inf - -inf``.

Image tokens are BPE entries named ``IMGIMG<letters>Z``; the letters A-J spell the VQ code's
digits, so BPE order is not code order and the map is read from the config's vocabulary.

Lumina-mGPT writes an image as ``<racm3:break> <h> <w>`` then rows of codes, each followed by
a newline token; the unconditional CFG branch sees only that image part (no text), at its own
positions. Both are reproduced: resolution tokens are forced (the size you ask for), newlines are
inserted by :class:`~specar.models.row_layout.RowLayout`, and the unconditional rows are
left-padded into the paired batch. Anole draws a fixed 32x32 grid after ``<racm3:break>``, guided
against ``BOS <racm3:break>`` as GAIR's text-to-image script (for a text-only prompt) and LANTERN do.
Lumina samples its resolution tokens (the prompt states the size); here they are forced, so the
grid is the one asked for.

Lumina's checkpoints store the per-head q/k LayerNorm weights as ``[1, head_dim]`` (an older
Chameleon copy repeats them over heads at run time); the loader repeats them to
``[heads, head_dim]`` and drops the training-only config keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import read_json, read_state_dict
from ..errors import CheckpointError, SettingsError
from ..types import Conditioning, SamplingSettings
from .base import PixelDecoder, to_uint8
from .hf_backbone import CodesInTextVocabulary, TextVocabularyImageModel, vocabulary_id
from .tokenizers import load_tokenizer

TRAINING_ONLY_KEYS = ("z_loss_weight", "mask_image_logits")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
GRID_UNIT_PX = 32  # one Lumina resolution unit = 2 image tokens per side
PIXELS_PER_CODE = 16  # the Chameleon VQGAN downsamples by 16


@dataclass(frozen=True)
class ImageSyntax:
    """How one Chameleon-family model spells an image request and an image."""

    family: str
    prompt_template: str
    resolution_tokens: bool  # <h> <w> after <racm3:break> (Lumina-mGPT)
    newline_after_rows: bool
    unconditional_bos: bool  # the unconditional branch starts with BOS (Anole) or at <racm3:break> (Lumina)
    defaults: SamplingSettings
    default_size: int  # pixels per side


LUMINA = ImageSyntax(
    family="lumina-mgpt",
    prompt_template="Generate an image of {width}x{height} according to the following prompt:\n{prompt}",
    resolution_tokens=True,
    newline_after_rows=True,
    unconditional_bos=False,
    defaults=SamplingSettings(cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0),
    default_size=768,
)
ANOLE = ImageSyntax(
    family="anole",
    prompt_template="{prompt}",
    resolution_tokens=False,
    newline_after_rows=False,
    unconditional_bos=True,
    defaults=SamplingSettings(cfg_scale=3.0, temperature=1.0, top_k=2000, top_p=1.0),
    default_size=512,
)
SYNTAXES = {s.family: s for s in (LUMINA, ANOLE)}


def image_code(name: str) -> int:
    """VQ code of an image-token name: ``IMGIMGBAZ`` -> digits ``1 0`` -> 10."""
    digits = name[len("IMGIMG") : -1]
    if not digits or any(not "A" <= c <= "J" for c in digits):
        raise CheckpointError(f"unexpected image-token name {name!r} in the vocabulary map")
    return int("".join(str(ord(c) - ord("A")) for c in digits))


def code_to_bpe(vocabulary: dict[str, int]) -> torch.Tensor:
    """``[codes]`` BPE id of every VQ code, from the config's ``vocabulary_map``."""
    pairs = {image_code(name): int(bpe) for name, bpe in vocabulary.items() if name.startswith("IMGIMG")}
    if not pairs:
        raise CheckpointError("the config's vocabulary_map has no image tokens (names starting with IMGIMG)")
    if sorted(pairs) != list(range(len(pairs))):
        raise CheckpointError(f"image tokens do not cover codes 0..{len(pairs) - 1} exactly")
    return torch.tensor([pairs[c] for c in range(len(pairs))], dtype=torch.long)


class ChameleonImageModel(TextVocabularyImageModel):
    """A Lumina-mGPT or Anole checkpoint generating images through the engine."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        decoder: PixelDecoder | None,
        syntax: ImageSyntax,
        side: int,
        name: str,
    ) -> None:
        self.chameleon, self.tokenizer, self.pixel_decoder, self.syntax = model, tokenizer, decoder, syntax
        vocabulary: dict[str, int] = dict(model.config.vocabulary_map or {})
        self.image_vocab = CodesInTextVocabulary(model.model.embed_tokens, model.lm_head, code_to_bpe(vocabulary))
        self.ids = {t: vocabulary_id(vocabulary, t, name, "Chameleon") for t in ("<racm3:break>", "<reserved08706>")}
        self.bos_id = int(model.config.bos_token_id)
        row_end = (
            vocabulary_id(vocabulary, "<reserved08799>", name, "Lumina-mGPT") if syntax.newline_after_rows else None
        )
        self.resolution_base = (
            vocabulary_id(vocabulary, "<reserved08800>", name, "Lumina-mGPT") if syntax.resolution_tokens else 0
        )
        super().__init__(
            model,
            model.model,
            model.config,
            name,
            vocab_size=len(self.image_vocab),
            grid=(side, side),
            default_settings=syntax.defaults,
            row_end_token=row_end,
        )

    @property
    def family(self) -> str:
        return self.syntax.family

    @property
    def image_pixels(self) -> int:
        return self.grid[0] * PIXELS_PER_CODE

    def _image_start(self) -> list[int]:
        start = [self.ids["<racm3:break>"]]
        if self.syntax.resolution_tokens:
            units = self.grid[0] // 2
            start += [self.resolution_base + units, self.resolution_base + units]
        return start

    def prompt_ids(self, prompt: str) -> list[int]:
        size = self.image_pixels
        text = self.syntax.prompt_template.format(prompt=prompt, width=size, height=size)
        words = self.tokenizer.encode(text, add_special_tokens=False)
        return [self.bos_id, *words, self.ids["<reserved08706>"], *self._image_start()]

    def prefix_rows(self, cond: Conditioning, guided: bool) -> list[list[int]]:
        rows = [self.prompt_ids(p) for p in cond.prompts or ()]
        if guided:  # the unconditional branch sees only the image part
            start = [self.bos_id] * self.syntax.unconditional_bos + self._image_start()
            rows += [start for _ in cond.prompts or ()]
        return rows

    @property
    def can_decode(self) -> bool:
        return self.pixel_decoder is not None

    def _require_decoder(self) -> PixelDecoder:
        if self.pixel_decoder is None:
            raise SettingsError(
                f"{self.name} was loaded without its VQGAN (vqgan.ckpt), so it cannot make pixels "
                "or code vectors; put vqgan.ckpt in the model directory"
            )
        return self.pixel_decoder

    @torch.inference_mode()
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self._require_decoder().codebook_vectors(codes.to(self.device))

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return to_uint8(self._require_decoder().decode(codes.to(self.device), self.grid))

    def moved_to(self, device: torch.device) -> None:
        super().moved_to(device)
        if self.pixel_decoder is not None:
            self.pixel_decoder = self.pixel_decoder.to(device)


def chameleon_variant(path: Path, config: dict[str, object]) -> str:
    """Lumina-mGPT or Anole: Lumina's configs keep its training keys, and its names say so."""
    if any(k in config for k in TRAINING_ONLY_KEYS) or "lumina" in path.name.lower():
        return "lumina-mgpt"
    return "anole"


def expand_qk_norms(state: dict[str, torch.Tensor], heads: int, kv_heads: int) -> dict[str, torch.Tensor]:
    """Repeat Lumina's ``[shards, head_dim]`` q/k LayerNorm weights to ``[heads, head_dim]``."""
    for key, value in state.items():
        match = re.search(r"self_attn\.(q|k)_norm\.(weight|bias)$", key)
        if match is None:
            continue
        wanted = heads if match.group(1) == "q" else kv_heads
        if value.shape[0] != wanted:
            if value.dim() != 2 or wanted % value.shape[0]:
                raise CheckpointError(f"{key} has shape {list(value.shape)}, which does not spread over {wanted} heads")
            state[key] = value.repeat_interleave(wanted // value.shape[0], 0)
    return state


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(
        p for p in directory.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES and not p.name.lower().startswith("vq")
    )
    if not files:
        raise CheckpointError(f"{directory} holds no model weights (*.safetensors shards)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_dict(file, wrapper_keys=()))
    return state


def _find_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (directory, directory / "tokenizer"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def build_chameleon(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    """A ``ChameleonForConditionalGeneration`` from a Lumina or Anole directory, without its VQ encoder."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    raw = read_json(directory / "config.json")
    try:
        config = ChameleonConfig(**{k: v for k, v in raw.items() if k not in TRAINING_ONLY_KEYS})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json is not a Chameleon config ({exc})") from exc
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = ChameleonForConditionalGeneration(config)
    state = expand_qk_norms(
        _read_weights(directory), config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    )
    state = {k: v.to(dtype) for k, v in state.items() if not k.startswith("model.vqmodel.")}
    try:
        missing, _ = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: weights do not fit config.json ({str(exc).splitlines()[0]})") from exc
    missing = [k for k in missing if not k.startswith("model.vqmodel.")]
    if missing:
        raise CheckpointError(f"{directory}: weights lack {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
    model.model.vqmodel = None  # the image encoder; generation never runs it
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers are not in checkpoints
    return model.eval().requires_grad_(False)


def load_chameleon(
    directory: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    variant: str = "lumina-mgpt",
    image_size: int | None = None,
    name: str | None = None,
) -> ChameleonImageModel:
    """A Lumina-mGPT or Anole directory (weights, config.json, tokenizer, ``vqgan.ckpt``) on ``device``.

    ``image_size`` (pixels; 16 per code) defaults to Anole's 512, and for Lumina-mGPT to the size
    in the directory name (``Lumina-mGPT-7B-768``), else 768.
    """
    directory = Path(directory)
    if variant not in SYNTAXES:
        raise SettingsError(f"unknown Chameleon variant {variant!r} (use {', '.join(SYNTAXES)})")
    syntax = SYNTAXES[variant]
    side = _side(syntax, directory, image_size)
    model = build_chameleon(directory, dtype)
    tokenizer_file = _find_file(directory, ("text_tokenizer.json",))
    tokenizer = load_tokenizer(tokenizer_file.parent if tokenizer_file else directory, ("text_tokenizer.json",))
    vqgan = _find_file(directory, ("vqgan.ckpt", "vqgan.safetensors"))
    decoder = None
    if vqgan is not None:
        from .chameleon_vqgan import load_chameleon_vqgan

        decoder = load_chameleon_vqgan(vqgan)
    adapter = ChameleonImageModel(model, tokenizer, decoder, syntax, side, name or directory.name)
    adapter.to(device)
    return adapter


def _side(syntax: ImageSyntax, directory: Path, image_size: int | None) -> int:
    """Codes per image side for the requested (or the checkpoint's usual) size in pixels."""
    unit = GRID_UNIT_PX if syntax.resolution_tokens else PIXELS_PER_CODE
    if image_size is None:
        sizes = [int(n) for n in re.findall(r"(?<!\d)(\d{3,4})(?!\d)", directory.name) if int(n) % unit == 0]
        image_size = sizes[-1] if sizes and syntax.resolution_tokens else syntax.default_size
    if image_size <= 0 or image_size % unit:
        raise SettingsError(f"{syntax.family} image size must be a positive multiple of {unit} px, got {image_size}")
    return image_size // PIXELS_PER_CODE
