"""Run a transformers decoder (Janus' Llama, Chameleon, Emu3) behind the engine's model protocol.

transformers' own caches keep one length for the whole batch and roll back with ``crop``, but
speculative rows each keep a different number of tokens. So the decoder reads and writes our
:class:`~specar.kv_cache.RaggedKVCache` instead: its attention layers only ever call
``past_key_values.update(key, value, layer_idx)``, and when a 4D attention mask and explicit
position ids are given, nothing else of the cache is used. The mask carries per-row lengths,
left padding of the prompts, tree attention and the padding slots of row-end expansion.

A family adapter subclasses :class:`TransformersImageModel` and says how prompts become token
rows, how codes and text ids become input embeddings, and how hidden states become code logits.
"""

from __future__ import annotations

import inspect

from abc import abstractmethod

import torch
from torch import nn

from ..errors import CheckpointError, SettingsError
from ..kv_cache import RaggedKVCache
from ..types import Conditioning, SamplingSettings
from .base import FIT_TEST_PROMPT, ImageTokenModel, ModelOutput
from .row_layout import ExpandedBlock, RowLayout
from .tokenizers import vocabulary_fingerprint

DRAFT_HEADROOM = 64  # cache slots past the image for the last draft blocks, so the cache need not regrow there


class _CacheBridge:
    """The one cache method transformers' attention layers call, served by a :class:`RaggedKVCache`."""

    def __init__(self, cache: RaggedKVCache) -> None:
        self.cache = cache

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_: object, **__: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # transformers passes extra cache arguments whose name changes between releases
        # (cache_kwargs before 5.24, kwargs since); a ragged cache needs none of them.
        return self.cache.update(layer_idx, key_states, value_states)


def cache_argument(decoder: torch.nn.Module) -> str:
    """The keyword a transformers decoder takes its cache by: ``cache`` since 5.24, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def attention_shape(config: object) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a transformers decoder config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return int(config.num_hidden_layers), kv_heads, int(head_dim)


def load_pretrained(
    model_class: type, directory: str, dtype: torch.dtype, what: str, attention: str | None = "sdpa"
) -> nn.Module:
    """``model_class.from_pretrained`` from a local directory, with one-line errors.

    SDPA attention is forced for decoders the engine drives: it passes 4D masks, which
    flash-attention kernels ignore. ``attention=None`` keeps the model's default.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # hosts show their own progress
    try:
        options = {"attn_implementation": attention} if attention else {}
        model = model_class.from_pretrained(directory, dtype=dtype, local_files_only=True, **options)
    except Exception as exc:  # transformers and safetensors raise many types for a bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: cannot load the {what} weights ({first_line})") from exc
    return model.eval().requires_grad_(False)


def vocabulary_id(vocabulary: dict[str, int], token: str, name: str, family: str) -> int:
    """The id of a named special token, or a :class:`CheckpointError` that says what is wrong."""
    if token not in vocabulary:
        raise CheckpointError(f"{name}: the vocabulary has no {token} token; is this a {family} checkpoint?")
    return int(vocabulary[token])


class CodesInTextVocabulary:
    """Image codes that are entries of a text vocabulary (Chameleon, Emu3).

    ``code_bpe[c]`` is the text id of code ``c``. The logits of the image rows, gathered in code
    order once, are the engine's vocabulary: guiding them and then normalising equals guiding the
    full vocabulary and masking everything else, at a fraction of the head's cost.
    """

    def __init__(self, embed_tokens: nn.Embedding, lm_head: nn.Linear, code_bpe: torch.Tensor) -> None:
        self.embed_tokens, self.lm_head = embed_tokens, lm_head
        self.code_bpe = code_bpe
        self.move_to(lm_head.weight.device)

    def __len__(self) -> int:
        return int(self.code_bpe.numel())

    def move_to(self, device: torch.device) -> None:
        """Follow the network to ``device`` (call after moving it)."""
        self.code_bpe = self.code_bpe.to(device)
        self.head_rows = self.lm_head.weight[self.code_bpe]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(self.code_bpe[codes])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.head_rows.T


class TransformersImageModel(ImageTokenModel):
    """Shared plumbing: prompt prefill with left padding, per-row positions, row-end expansion.

    ``network`` is the whole transformers model (moved between devices as one), ``decoder`` its
    text decoder. ``row_end_token`` (with a :class:`RowLayout`) inserts that text token after
    every image row.
    """

    def __init__(
        self,
        network: nn.Module,
        decoder: nn.Module,
        text_config: object,
        name: str,
        vocab_size: int,
        grid: tuple[int, int],
        default_settings: SamplingSettings,
        row_end_token: int | None = None,
    ) -> None:
        self.network = network
        self.decoder = decoder
        self.text_config = text_config
        self.name = name
        self.vocab_size = vocab_size
        self.grid = grid
        self.hidden_size = int(text_config.hidden_size)
        self.default_settings = default_settings
        self.row_end_token = row_end_token
        self.layout = RowLayout(grid[1], grid[0]) if row_end_token is not None else None
        param = next(decoder.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._row_end_id = torch.tensor([[row_end_token or 0]], device=self.device)
        self.cache: RaggedKVCache | None = None
        self.batch, self.guided, self.prefix_slots = 0, False, 0
        self.image_start = torch.zeros(0, dtype=torch.long)
        self._block_start = torch.zeros(0, dtype=torch.long)
        self._expanded: ExpandedBlock | None = None
        self._valid_slots: torch.Tensor | None = None  # [R] slots before a row-end forward's padding
        self._signature: dict[str, object] | None = None

    # -- what a family provides ------------------------------------------------------------------

    @abstractmethod
    def prefix_rows(self, cond: Conditioning, guided: bool) -> list[list[int]]:
        """Token ids before image token 0: one row per image, then (guided) one unconditional row each."""

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of text/structural token ids ``[R, n]``."""
        return self.decoder.embed_tokens(ids)

    @abstractmethod
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings of image codes ``[R, n]``."""

    @abstractmethod
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over image codes ``[..., vocab_size]`` from last-layer hidden states."""

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float()

    def layer_shape(self) -> tuple[int, int]:
        return int(self.text_config.num_attention_heads), int(self.text_config.intermediate_size)

    @property
    def conditioning_kind(self) -> str:
        return "prompt"

    def fit_signature(self) -> dict[str, object]:
        if self._signature is None:
            rows = self.prefix_rows(Conditioning(prompts=(FIT_TEST_PROMPT,)), guided=True)
            self._signature = {
                "prompt ids": tuple(tuple(row) for row in rows),  # template, special tokens, unconditional rows
                "tokenizer": vocabulary_fingerprint(getattr(self, "tokenizer", None)),
                "row end": self.row_end_token,
                **self.family_signature(),
            }
        return self._signature

    def family_signature(self) -> dict[str, object]:
        """Hook: what else a drafter of this family must share (see :meth:`fit_signature`)."""
        return {}

    def check_conditioning(self, cond: Conditioning) -> None:
        if cond.prompts is None:
            raise SettingsError(
                f"{self.name} is a text-to-image model: give prompts, not class ids or caption embeddings"
            )

    # -- the protocol ----------------------------------------------------------------------------

    def _rows(self, per_image: torch.Tensor) -> torch.Tensor:
        return torch.cat([per_image, per_image]) if self.guided else per_image

    def _run(
        self, embeds: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None, valid: torch.Tensor | None
    ) -> torch.Tensor:
        assert self.cache is not None, "prefill() first"
        plan = self.cache.plan(embeds.shape[1], allowed=allowed, key_valid_new=valid)
        mask = plan.full_mask()
        additive = torch.zeros(mask.shape, dtype=embeds.dtype, device=self.device)
        additive.masked_fill_(~mask, torch.finfo(embeds.dtype).min)
        cache = {cache_argument(self.decoder): _CacheBridge(self.cache)}
        out = self.decoder(
            inputs_embeds=embeds, attention_mask=additive, position_ids=positions, use_cache=True, **cache
        )
        return out.last_hidden_state

    @torch.inference_mode()
    def prefill(self, cond: Conditioning, guided: bool) -> ModelOutput:
        self.check_conditioning(cond)
        self.batch, self.guided = cond.batch_size, guided
        rows = self.prefix_rows(cond, guided)
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, row in enumerate(rows):  # left padding: every row's last prefix token is aligned
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            valid[r, width - len(row) :] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        self.image_start = valid.sum(1)
        self.prefix_slots = width
        self._valid_slots = None
        layers, kv_heads, head_dim = attention_shape(self.text_config)
        image_slots = self.num_image_tokens + (self.grid[0] if self.layout else 0)
        self.cache = RaggedKVCache(
            layers,
            len(rows),
            kv_heads,
            head_dim,
            self.dtype,
            self.device,
            capacity=width + image_slots + DRAFT_HEADROOM,
        )
        hidden = self._run(self.embed_text(ids), positions, None, valid)[:, -1:]
        return ModelOutput(self.head(hidden).float(), hidden)

    def _drop_row_end_padding(self) -> None:
        """Roll back the padding slots a row-end forward appended, unless a truncate or compact
        already did: a forward straight after another (a drafter's steps, a prefix) must start
        right after the last real slot, or image lengths would no longer map onto slots."""
        if self._valid_slots is not None and self.cache is not None:
            self.cache.truncate(self._valid_slots.cpu())  # no-op for a chain's, computed on the host
        self._valid_slots = None

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None = None
    ) -> ModelOutput:
        assert self.cache is not None, "prefill() first"
        self._drop_row_end_padding()
        self._block_start = self.cache.lengths.clone()
        codes, image_positions = self._rows(tokens.to(self.device)), self._rows(positions.to(self.device))
        if tree_mask is not None and tree_mask.dim() == 3:
            tree_mask = self._rows(tree_mask.to(self.device))
        if self.layout is None:
            embeds = self.embed_codes(codes)
            hidden = self._run(embeds, self.image_start[:, None] + image_positions, tree_mask, None)
        else:
            block = self.layout.expand(codes, image_positions, tree_mask)
            self._expanded = block
            row_end = self.embed_text(self._row_end_id)
            embeds = torch.where(block.is_row_end[..., None], row_end, self.embed_codes(block.codes))
            hidden = self._run(embeds, self.image_start[:, None] + block.offsets, block.allowed, block.valid)
            if tree_mask is None:  # a chain continues the cache: its slots follow on the host
                start = self.layout.image_lengths(self._block_start - self.prefix_slots)
                self._valid_slots = self._block_start + self.layout.chain_slots(start, codes.shape[1])
            else:  # a tree's row ends depend on its depths: read only if a forward follows without a compact
                self._valid_slots = self._block_start.to(self.device) + block.valid.sum(1)
            hidden = hidden.gather(1, block.output_slot[..., None].expand(-1, -1, hidden.shape[-1]))
        return ModelOutput(self.head(hidden).float(), hidden)

    def truncate(self, lengths: torch.Tensor) -> None:
        assert self.cache is not None
        self._valid_slots = None
        lengths = lengths.cpu()
        slots = self.layout.cached_slots(lengths) if self.layout else lengths
        self.cache.truncate(self._rows(slots) + self.prefix_slots)

    @torch.inference_mode()
    def compact(self, keep: torch.Tensor, counts: torch.Tensor) -> None:
        assert self.cache is not None
        keep, counts = self._rows(keep), self._rows(counts.cpu())
        self._valid_slots = None
        if self.layout is not None:
            assert self._expanded is not None
            keep, counts = RowLayout.kept_slots(self._expanded, keep.to(self.device), counts)
        self.cache.compact(self._block_start, keep, counts)

    def release(self) -> None:
        self.cache = None
        self._expanded = None
        self._valid_slots = None

    def to(self, device: torch.device) -> None:
        if device == self.device:
            return
        self.release()
        self.network.to(device)
        self._row_end_id = self._row_end_id.to(device)
        self.device = device
        self.moved_to(device)

    def moved_to(self, device: torch.device) -> None:
        """Hook: move what lives outside ``network`` (index tables, a separate pixel decoder)."""


class TextVocabularyImageModel(TransformersImageModel):
    """A family whose image codes are entries of the text vocabulary (Chameleon, Emu3).

    Subclasses set ``image_vocab`` before calling ``__init__``.
    """

    image_vocab: CodesInTextVocabulary

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.image_vocab.embed(codes)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.image_vocab.logits(hidden)

    def family_signature(self) -> dict[str, object]:
        return {"image tokens": tuple(self.image_vocab.code_bpe.tolist())}

    def moved_to(self, device: torch.device) -> None:
        self.image_vocab.move_to(device)
