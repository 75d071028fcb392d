"""Adapter that runs a LlamaGen :class:`GPT` behind the engine's model protocol."""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ...compile import LARGEST_BUCKET, READ_WINDOW, CompiledForward, CompileFailed, static_buffers
from ...errors import SettingsError
from ...kv_cache import FixedCacheView, RaggedKVCache
from ...types import Conditioning, SamplingSettings
from ..base import FIT_TEST_PROMPT, ImageTokenModel, ModelOutput, PixelDecoder, attribute_networks, to_uint8
from ..tokenizers import vocabulary_fingerprint
from .gpt import GPT, default_capacity


class CaptionEncoder(Protocol):
    """Prompts -> LlamaGen caption features ``[B, T, C]`` and their mask ``[B, T]`` (t2i only)."""

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def to(self, device: torch.device) -> object: ...


C2I_DEFAULTS = SamplingSettings(cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)
T2I_DEFAULTS = SamplingSettings(cfg_scale=7.5, temperature=1.0, top_k=1000, top_p=1.0)


class LlamaGenModel(ImageTokenModel):
    """LlamaGen c2i or t2i with the paired CFG batch of ``generate.py``.

    c2i: the unconditional half uses the null class (row ``num_classes`` of the class table).
    t2i: captions arrive as text-encoder features ``[B, T, C]`` with a mask (or as prompts, which
    the ``text_encoder`` turns into them); the unconditional half uses the stored null caption,
    and the caption mask hides padded condition slots from both halves (each slot still sees
    itself), as LlamaGen does. The prefill returns the states at the caption positions before the
    last one as ``condition_hidden`` (LANTERN's t2i heads open their sequences with them).
    """

    def __init__(
        self,
        gpt: GPT,
        decoder: PixelDecoder | None,
        name: str = "llamagen",
        default_settings: SamplingSettings | None = None,
        text_encoder: CaptionEncoder | None = None,
    ) -> None:
        self.gpt = gpt.eval()
        self.cfg = gpt.cfg
        self.decoder = decoder
        self.name = name
        self.vocab_size = self.cfg.vocab_size
        self.grid = (self.cfg.grid_size, self.cfg.grid_size)
        self.hidden_size = self.cfg.dim
        param = next(gpt.parameters())
        self.device, self.dtype = param.device, param.dtype
        if default_settings is None:
            default_settings = C2I_DEFAULTS if self.cfg.model_type == "c2i" else T2I_DEFAULTS
        self.default_settings = default_settings
        self.text_encoder = text_encoder
        self.cache: RaggedKVCache | None = None
        self.compiled: CompiledForward | None = None
        self._spare_cache: RaggedKVCache | None = None
        self.batch = 0
        self.guided = False
        self._block_start = torch.zeros(0, dtype=torch.long)
        self._signature: dict[str, object] | None = None

    family = "llamagen"

    @property
    def conditioning_kind(self) -> str:
        if self.cfg.model_type == "c2i":
            return "class"
        return "prompt" if self.text_encoder is not None else "caption"

    @property
    def num_classes(self) -> int | None:
        return self.cfg.num_classes if self.cfg.model_type == "c2i" else None

    def fit_signature(self) -> dict[str, object]:
        """t2i: the caption features the GPT reads (given embeddings feed target and drafter alike) and, with a
        text encoder, how its tokenizer splits a prompt (the same T5 tokenizer)."""
        if self.cfg.model_type == "c2i":
            return {}
        if self._signature is None:
            self._signature = {"caption features": (self.cfg.cls_token_num, self.cfg.caption_dim)}
            tokenizer = getattr(self.text_encoder, "tokenizer", None)
            if tokenizer is not None:
                from .text_encoder import clean_prompt

                self._signature["prompt ids"] = tuple(tokenizer(clean_prompt(FIT_TEST_PROMPT))["input_ids"])
                self._signature["tokenizer"] = vocabulary_fingerprint(tokenizer)
        return self._signature

    def check_conditioning(self, cond: Conditioning) -> None:
        if self.cfg.model_type == "c2i":
            if cond.class_ids is None:
                raise SettingsError(f"{self.name} is class-conditional: give class ids, not prompts or captions")
            bad = [c for c in cond.class_ids if not 0 <= c < self.cfg.num_classes]
            if bad:
                raise SettingsError(
                    f"class id {bad[0]} is out of range for {self.name}: valid ids are 0..{self.cfg.num_classes - 1}"
                )
        elif cond.prompts is not None:
            if self.text_encoder is None:
                raise SettingsError(
                    f"{self.name} has no text encoder: put flan-t5-xl in a t5/ sub-folder of the "
                    "model folder, or give caption embeddings"
                )
        else:
            if cond.caption_embeddings is None:
                raise SettingsError(f"{self.name} is text-conditional: give prompts or caption embeddings")
            emb = cond.caption_embeddings
            if emb.dim() != 3 or emb.shape[1] != self.cfg.cls_token_num or emb.shape[2] != self.cfg.caption_dim:
                raise SettingsError(
                    f"caption embeddings must be [B, {self.cfg.cls_token_num}, {self.cfg.caption_dim}], got "
                    f"{list(emb.shape)}"
                )

    # -- compiled fast path ----------------------------------------------------------------------

    def set_compile(self, enabled: bool) -> None:
        """Run forwards through ``torch.compile`` (see :mod:`specar.compile`) or eagerly."""
        if not enabled:
            self.compiled = self._spare_cache = None
        elif self.compiled is None:
            self.compiled = _compiled_forward(self.gpt, self.device, self.name)

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds if self.compiled is not None else 0.0

    @property
    def pads_blocks(self) -> bool:
        return self.compiled is not None and self.compiled.active

    def _run_compiled(
        self, tokens: torch.Tensor, slots: torch.Tensor, tree_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The forward of rows ``tokens [R, k]`` at rotary rows ``slots`` in a padded bucket, or
        ``None`` where it must run eagerly (no bucket holds it, or compilation failed)."""
        assert self.cache is not None and self.compiled is not None
        k = tokens.shape[1]
        bucket = self.compiled.bucket(k)
        if bucket is None:
            return None
        pad = bucket - k
        if pad:
            tokens = torch.nn.functional.pad(tokens, (0, pad))
            slots = torch.cat([slots, slots[:, -1:].expand(-1, pad)], 1)
            if tree_mask is not None:
                tree_mask = _pad_tree_mask(tree_mask, pad)
        self.cache.plan(bucket, allowed=tree_mask)
        view = self.cache.view()
        try:
            logits, hidden = self.compiled(
                bucket,
                tokens,
                slots,
                view.slots,
                view.attention_mask,
                *view.keys,
                *view.values,
            )
        except CompileFailed:
            self.cache.lengths -= bucket
            return None
        self.cache.lengths -= pad
        return logits[:, :k], hidden[:, :k]

    def _fixed_cache(self, rows: int) -> RaggedKVCache:
        """The compiled path's cache: the previous generation's when it has as many rows."""
        spare, self._spare_cache = self._spare_cache, None
        if spare is not None and spare.rows == rows:
            spare.reset()
            return spare
        window = READ_WINDOW if self.device.type == "cpu" else None  # see _compiled_forward
        cache = self.gpt.new_cache(rows, default_capacity(self.cfg, LARGEST_BUCKET), fixed=True, window=window)
        static_buffers(cache.k + cache.v)
        return cache

    # -- cache ------------------------------------------------------------------------------------

    def _rows(self, per_image: torch.Tensor) -> torch.Tensor:
        """Repeat a per-image tensor for both CFG halves."""
        return torch.cat([per_image, per_image]) if self.guided else per_image

    @torch.inference_mode()
    def prefill(self, cond: Conditioning, guided: bool) -> ModelOutput:
        self.check_conditioning(cond)
        self.batch, self.guided = cond.batch_size, guided
        rows = 2 * self.batch if guided else self.batch
        if self.compiled is not None and self.compiled.active:
            self.cache = self._fixed_cache(rows)
        else:
            self.cache = self.gpt.new_cache(rows, default_capacity(self.cfg))
        key_valid = None
        if self.cfg.model_type == "c2i":
            ids = torch.tensor(cond.class_ids, dtype=torch.long, device=self.device)
            if guided:
                ids = torch.cat([ids, torch.full_like(ids, self.cfg.num_classes)])
            h = self.gpt.cls_embedding(ids)
        else:
            if cond.prompts is not None:
                assert self.text_encoder is not None
                captions, caption_mask = self.text_encoder.encode(list(cond.prompts))
                cond = Conditioning(caption_embeddings=captions, caption_mask=caption_mask)
            emb = cond.caption_embeddings.to(self.device, self.dtype)
            mask = cond.caption_mask
            mask = torch.ones(emb.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
            mask = mask.to(self.device)
            if guided:
                null = self.gpt.cls_embedding.uncond_embedding.to(self.dtype).expand_as(emb)
                emb, mask = torch.cat([emb, null]), torch.cat([mask, mask])
            h = self.gpt.cls_embedding(emb)
            key_valid = mask
        slots = torch.arange(self.cfg.cls_token_num, device=self.device).expand(rows, -1)
        self.cache.plan(self.cfg.cls_token_num, key_valid_new=key_valid)
        states = self.gpt.run_layers(h, slots, self.cache)
        hidden = states[:, -1:]
        condition = None if self.cfg.model_type == "c2i" else states[:, :-1]
        return ModelOutput(self.gpt.logits(hidden), hidden, condition)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None = None
    ) -> ModelOutput:
        assert self.cache is not None, "prefill() first"
        self._block_start = self.cache.lengths.clone()
        tokens = self._rows(tokens.to(self.device))
        slots = self._rows(positions.to(self.device)) + self.cfg.cls_token_num
        if tree_mask is not None and tree_mask.dim() == 3:
            tree_mask = self._rows(tree_mask)
        if self.compiled is not None and self.cache.fixed:
            out = self._run_compiled(tokens, slots, tree_mask)
            if out is not None:
                return ModelOutput(*out)
        self.cache.plan(tokens.shape[1], allowed=tree_mask)
        hidden = self.gpt.run_layers(self.gpt.tok_embeddings(tokens), slots, self.cache)
        return ModelOutput(self.gpt.logits(hidden), hidden)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.gpt.tok_embeddings(codes)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gpt.logits(hidden)

    def layer_shape(self) -> tuple[int, int]:
        return self.cfg.n_head, self.cfg.hidden_ffn

    def truncate(self, lengths: torch.Tensor) -> None:
        assert self.cache is not None
        per_image = [length + self.cfg.cls_token_num for length in lengths.tolist()]  # list work, no tensor ops
        self.cache.truncate(per_image * 2 if self.guided else per_image)

    @torch.inference_mode()
    def compact(self, keep: torch.Tensor, counts: torch.Tensor) -> None:
        assert self.cache is not None
        self.cache.compact(self._block_start, self._rows(keep), self._rows(counts.cpu()))

    def release(self) -> None:
        if self.cache is not None and self.cache.fixed:
            self._spare_cache = self.cache
        self.cache = None

    def networks(self) -> list[torch.nn.Module]:
        encoder = attribute_networks(self.text_encoder) if self.text_encoder is not None else []
        return [*super().networks(), *encoder]

    def to(self, device: torch.device) -> None:
        if device == self.device:
            return
        self.cache = self._spare_cache = None
        self.gpt.to(device)
        if self.compiled is not None:  # compiled code holds the weights where they were
            self.compiled = _compiled_forward(self.gpt, device, self.name)
        if self.decoder is not None:
            self.decoder = self.decoder.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        self.device = device

    # -- pixels -----------------------------------------------------------------------------------

    @property
    def can_decode(self) -> bool:
        return self.decoder is not None

    def _require_decoder(self) -> PixelDecoder:
        if self.decoder is None:
            raise SettingsError(
                f"{self.name} was loaded without a VQ decoder, so it cannot make pixels or code vectors"
            )
        return self.decoder

    @torch.inference_mode()
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self._require_decoder().codebook_vectors(codes)

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return to_uint8(self._require_decoder().decode(codes, self.grid))


def _compiled_forward(gpt: GPT, device: torch.device, name: str) -> CompiledForward:
    """On CPUs attention reads the cache only up to a window past the longest row, so the attention
    mask's last size (argument 3 of the step) varies; on GPUs it reads the whole fixed cache, whose
    static shapes CUDA graphs need."""
    varying = ((3, 3),) if device.type == "cpu" else ()
    return CompiledForward(_compiled_step(gpt), device, name, varying=varying)


def _compiled_step(gpt: GPT) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The forward that gets compiled: tokens, rotary rows, cache write slots, the planned mask
    and the cache buffers (keys of every layer, then values) in; logits and hidden states out."""

    def step(
        tokens: torch.Tensor,
        rope_rows: torch.Tensor,
        write_slots: torch.Tensor,
        mask: torch.Tensor,
        *buffers: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        half = len(buffers) // 2
        view = FixedCacheView(list(buffers[:half]), list(buffers[half:]), write_slots, mask)
        hidden = gpt.run_layers(gpt.tok_embeddings(tokens), rope_rows, view)
        return gpt.logits(hidden), hidden

    return step


def _pad_tree_mask(mask: torch.Tensor, pad: int) -> torch.Tensor:
    """A tree mask ``[..., k, k]`` grown by ``pad`` padding tokens that see only themselves."""
    k = mask.shape[-1]
    grown = torch.zeros(*mask.shape[:-2], k + pad, k + pad, dtype=torch.bool, device=mask.device)
    grown[..., :k, :k] = mask
    grown[..., range(k, k + pad), range(k, k + pad)] = True
    return grown
