"""Janus and Janus-Pro (DeepSeek, arXiv 2501.17811) through transformers' ``JanusForConditionalGeneration``.

Image generation in Janus is a Llama decoder with a separate image path: codes enter through
``generation_embeddings`` + ``generation_aligner`` and leave through ``generation_head`` (16384
codes), and the LlamaGen VQ-16 tokenizer (``vqmodel``) turns 24x24 codes into 384x384 pixels.

The prompt follows DeepSeek's text-to-image recipe: ``<|User|>: {prompt}\\n\\n<|Assistant|>:``
after BOS, then ``<begin_of_image>``. The unconditional half is the same row with every token
except BOS and ``<begin_of_image>`` replaced by the pad token, as transformers'
``generate(generation_mode="image")`` builds it, so both halves share positions.

Expected model directory: a transformers Janus checkpoint (``deepseek-community/Janus-Pro-1B``
or ``-7B``): ``config.json``, ``generation_config.json``, ``model*.safetensors``, tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import read_json
from ..errors import CheckpointError
from ..types import Conditioning, SamplingSettings
from .base import to_uint8
from .hf_backbone import TransformersImageModel, load_pretrained
from .tokenizers import load_tokenizer

# DeepSeek's generation_inference.py: cfg_weight 5, temperature 1, plain sampling (no top-k).
JANUS_DEFAULTS = SamplingSettings(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0)
PROMPT_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


class JanusImageModel(TransformersImageModel):
    """A Janus(-Pro) checkpoint generating images through the engine."""

    family = "janus"

    def __init__(self, model: torch.nn.Module, tokenizer: object, name: str) -> None:
        self.janus = model
        self.tokenizer = tokenizer
        vq = model.config.vq_config
        side = int(vq.num_patches)
        super().__init__(
            model,
            model.model.language_model,
            model.config.text_config,
            name,
            vocab_size=int(vq.num_embeddings),
            grid=(side, side),
            default_settings=JANUS_DEFAULTS,
        )
        self.bos_id, self.pad_id, self.boi_id = _special_ids(model, tokenizer, name)

    def prompt_ids(self, prompt: str) -> list[int]:
        text = PROMPT_TEMPLATE.format(prompt=prompt)
        return [self.bos_id, *self.tokenizer.encode(text, add_special_tokens=False), self.boi_id]

    def prefix_rows(self, cond: Conditioning, guided: bool) -> list[list[int]]:
        rows = [self.prompt_ids(p) for p in cond.prompts or ()]
        if guided:
            rows += [[t if t in (self.bos_id, self.boi_id) else self.pad_id for t in row] for row in rows]
        return rows

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.janus.prepare_embeddings_for_image_generation(codes)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.janus.model.generation_head(hidden)

    @torch.inference_mode()
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """The VQ's l2-normalised codebook rows (what its quantizer compared during training)."""
        table = self.janus.model.vqmodel.quantize.embedding
        return F.normalize(table(codes.to(self.device)).float(), p=2, dim=-1)

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        pixels = self.janus.decode_image_tokens(codes.to(self.device))  # [B, H, W, 3] in [-1, 1]
        return to_uint8(pixels.permute(0, 3, 1, 2))


def _special_ids(model: torch.nn.Module, tokenizer: object, name: str) -> tuple[int, int, int]:
    """BOS, pad and ``<begin_of_image>`` ids from the generation config, else from the tokenizer."""
    gen = model.generation_config
    extra = getattr(gen, "generation_kwargs", None) or {}
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    found = {
        "bos": gen.bos_token_id if gen.bos_token_id is not None else vocab.get("<｜begin▁of▁sentence｜>"),
        "pad": gen.pad_token_id if gen.pad_token_id is not None else vocab.get("<｜▁pad▁｜>"),
        "<begin_of_image>": extra.get("boi_token_id", vocab.get("<begin_of_image>")),
    }
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise CheckpointError(
            f"{name}: generation_config.json lacks the {', '.join(missing)} token id(s) "
            "(a transformers Janus checkpoint has bos_token_id, pad_token_id and "
            "generation_kwargs.boi_token_id)"
        )
    return int(found["bos"]), int(found["pad"]), int(found["<begin_of_image>"])


def load_janus(
    directory: str | Path, device: torch.device, dtype: torch.dtype, name: str | None = None
) -> JanusImageModel:
    """A transformers Janus(-Pro) directory, ready on ``device``."""
    from transformers import JanusForConditionalGeneration

    directory = Path(directory)
    config = read_json(directory / "config.json")
    if config.get("model_type") != "janus":
        raise CheckpointError(f"{directory}: config.json has model_type {config.get('model_type')!r}, expected 'janus'")
    model = load_pretrained(JanusForConditionalGeneration, str(directory), dtype, "Janus")
    adapter = JanusImageModel(model, load_tokenizer(directory), name or directory.name)
    adapter.to(device)
    return adapter
