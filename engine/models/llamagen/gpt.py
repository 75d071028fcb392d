"""LlamaGen's GPT (Sun et al. 2024, arXiv 2406.06525) written for speculative decoding.

Same architecture and parameter names as FoundationVision/LlamaGen ``autoregressive/models/gpt.py``
so official checkpoints load without renames: Llama-style pre-RMSNorm blocks with a fused
``wqkv``, SwiGLU feed-forward, no biases, untied ``output`` head, a class (``c2i``) or caption
(``t2i``) embedding as the first ``cls_token_num`` positions, and LlamaGen's 2D rotary embedding.

What differs from the original is only the inference plumbing: attention reads and writes a
:class:`~specar.kv_cache.RaggedKVCache` (a length per row, any block size, tree masks) and every
token carries its own rotary row, so drafts, trees and ragged batches run in one forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from ...validation import positive_number, whole_number
from ...kv_cache import FixedCacheView, RaggedKVCache

# name: (n_layer, n_head, dim) as in LlamaGen's GPT_models table.
GPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}


def _round_up(n: int, multiple: int) -> int:
    return n if n % multiple == 0 else n + multiple - n % multiple


MAX_GRID_SIZE = 128  # tokens per side: 2048 px at LlamaGen's 16x downsampling (its largest is 32)


@dataclass
class GPTConfig:
    """Architecture of one LlamaGen GPT. ``grid_size`` is image tokens per side."""

    vocab_size: int = 16384
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_hidden: int | None = None  # explicit SwiGLU width; None derives it as LlamaGen does
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    model_type: str = "c2i"  # "c2i" (class ids) or "t2i" (caption embeddings)
    num_classes: int = 1000
    cls_token_num: int = 1
    caption_dim: int = 2048
    grid_size: int = 16

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layer", "n_head", "multiple_of", "cls_token_num", "caption_dim"):
            whole_number(f"LlamaGen {name}", getattr(self, name), low=1, error=CheckpointError)
        whole_number("LlamaGen num_classes", self.num_classes, low=0, error=CheckpointError)
        whole_number("LlamaGen grid_size", self.grid_size, low=1, high=MAX_GRID_SIZE, error=CheckpointError)
        for name in ("n_kv_head", "ffn_hidden"):
            if getattr(self, name) is not None:
                whole_number(f"LlamaGen {name}", getattr(self, name), low=1, error=CheckpointError)
        for name in ("rope_base", "norm_eps") + (
            ("ffn_dim_multiplier",) if self.ffn_dim_multiplier is not None else ()
        ):
            positive_number(f"LlamaGen {name}", getattr(self, name), error=CheckpointError)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.model_type not in ("c2i", "t2i"):
            raise CheckpointError(f"LlamaGen model_type must be 'c2i' or 't2i', got {self.model_type!r}")
        if self.dim % self.n_head or (self.dim // self.n_head) % 4:
            raise CheckpointError(
                f"dim {self.dim} must split into {self.n_head} heads of a size divisible by 4 (2D RoPE)"
            )
        if self.n_head % self.n_kv_head:
            raise CheckpointError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def hidden_ffn(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return _round_up(hidden, self.multiple_of)

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @staticmethod
    def preset(name: str, **overrides: object) -> "GPTConfig":
        if name not in GPT_PRESETS:
            raise CheckpointError(f"unknown LlamaGen size {name!r}; known: {', '.join(GPT_PRESETS)}")
        n_layer, n_head, dim = GPT_PRESETS[name]
        return GPTConfig(n_layer=n_layer, n_head=n_head, dim=dim, **overrides)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def rope_table_2d(grid_size: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """LlamaGen's 2D rotary table ``[cls_token_num + grid², head_dim/2, 2]`` (cos, sin).

    The first head_dim/4 rotary pairs turn with the row index, the last head_dim/4 with the
    column index, each with frequencies ``base^(-2i / (head_dim/2))``. Condition positions get
    cos = sin = 0, which zeroes their queries and keys: in LlamaGen the condition contributes only
    through its values. We reproduce that exactly, since checkpoints were trained with it.

    Computed on the CPU even where a meta device is the default (checkpoints are built on it before their
    weights are read): arithmetic on meta tensors imports torch's compiler stack, a second or more.
    """
    half = head_dim // 2
    cpu = torch.device("cpu")
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=cpu)[: half // 2].float() / half))
    steps = torch.outer(torch.arange(grid_size, device=cpu).float(), freqs)  # [g, hd/4]
    rows = steps[:, None, :].expand(-1, grid_size, -1)
    cols = steps[None, :, :].expand(grid_size, -1, -1)
    angles = torch.cat([rows, cols], dim=-1).flatten(0, 1)  # [g*g, hd/2]
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device=cpu), table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x [R, k, H, D]`` by ``rope [R, k, D/2, 2]`` (cos, sin).

    Eager code turns each pair as a complex number, one kernel instead of a dozen (most of the
    cost at the few tokens a decoding step feeds); compiled code spells the product out in real
    arithmetic, which the compiler fuses and cannot do for complex tensors."""
    if torch.compiler.is_compiling():
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        cos, sin = rope[:, :, None, :, 0], rope[:, :, None, :, 1]
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(3).type_as(x)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    turns = torch.view_as_complex(rope.float())[:, :, None]
    return torch.view_as_real(pairs * turns).flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one kernel
        return F.rms_norm(x.float(), self.weight.shape, eps=self.eps).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_ffn, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_ffn, bias=False)
        self.w2 = nn.Linear(cfg.hidden_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, int(cfg.n_kv_head or cfg.n_head), cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: RaggedKVCache | FixedCacheView | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        R, k, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        heads = self.n_head + self.n_kv_head
        qk, val = self.wqkv(x).split([heads * self.head_dim, kv], dim=-1)
        qk = apply_rope(qk.view(R, k, heads, self.head_dim), rope)  # queries and keys turned at once
        q, key = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)
        val = val.view(R, k, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is None:
            causal = mask is None
        else:
            key, val = cache.update(self.layer, key, val)
            mask, causal = cache.attention_mask, False
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            key, val = key.repeat_interleave(rep, dim=1), val.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, key, val, attn_mask=mask, is_causal=causal)
        return self.wo(out.transpose(1, 2).reshape(R, k, -1))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.attention = Attention(cfg, layer)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: RaggedKVCache | FixedCacheView | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, mask)
        return h + self.feed_forward(self.ffn_norm(h))


def unfilled_embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding table left unfilled: a checkpoint or :meth:`GPT.init_weights` fills it.

    ``nn.Embedding`` would fill it with normal noise first, and on the meta device (where checkpoints are
    built before their weights are read) that fill imports torch's compiler stack, a second or more of
    every process's first model load."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class LabelEmbedder(nn.Module):
    """Class embedding; row ``num_classes`` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = unfilled_embedding(num_classes + 1, dim)

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(class_ids).unsqueeze(1)


class CaptionMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """Projects text-encoder features; ``uncond_embedding`` is the stored null caption."""

    def __init__(self, caption_dim: int, dim: int, token_num: int) -> None:
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim**0.5)

    def forward(self, captions: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(captions)


class GPT(nn.Module):
    """The LlamaGen transformer. Inference goes through :meth:`step`; training through :meth:`forward`."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = unfilled_embedding(cfg.vocab_size, cfg.dim)
        if cfg.model_type == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(cfg.num_classes, cfg.dim)
        else:
            self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim, cfg.cls_token_num)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("rope", torch.empty(0), persistent=False)
        self.reset_rope()

    def reset_rope(self) -> None:
        """(Re)build the rotary table on the model's device; it is derived, never stored."""
        cfg = self.cfg
        table = rope_table_2d(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)
        self.rope = table.to(self.output.weight.device)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Normal(0, std) for every matrix and embedding; norms stay at one; a t2i model's stored
        null caption is drawn again from ``generator`` too, so one generator fixes the whole model.

        Tests build random models with std about 0.2: with LlamaGen's 0.02 a random model emits
        one code over and over, which would make speculative tests pass trivially.
        """
        with torch.no_grad():
            for name, param in self.named_parameters():
                if not name.endswith("norm.weight"):
                    param.normal_(0.0, std, generator=generator)
            if isinstance(self.cls_embedding, CaptionEmbedder):
                null = self.cls_embedding.uncond_embedding
                null.normal_(0.0, null.shape[-1] ** -0.5, generator=generator)

    def new_cache(self, rows: int, capacity: int, fixed: bool = False, window: int | None = None) -> RaggedKVCache:
        p = next(self.parameters())
        return RaggedKVCache(
            self.cfg.n_layer,
            rows,
            int(self.cfg.n_kv_head or self.cfg.n_head),
            self.cfg.head_dim,
            p.dtype,
            p.device,
            capacity,
            fixed,
            window,
        )

    def run_layers(
        self,
        h: torch.Tensor,
        rope_rows: torch.Tensor,
        cache: RaggedKVCache | FixedCacheView | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Blocks and final norm over embeddings ``h [R, k, dim]``; returns the last hidden states.

        Without a cache, ``mask [R, 1, k, k]`` (bool) replaces the causal mask (training-time
        analyses that score alternative tokens beside a sequence)."""
        rope = self.rope[rope_rows.clamp(0, self.rope.shape[0] - 1)]
        for layer in self.layers:
            h = layer(h, rope, cache, mask)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden).float()

    def forward(self, condition: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for training: ``condition`` are class ids [B] (c2i) or caption
        features [B, T, C] (t2i); ``tokens [B, N]``. Returns logits ``[B, N, V]`` predicting every
        image token from the condition and the tokens before it."""
        cond = self.cls_embedding(condition)[:, : self.cfg.cls_token_num]
        h = torch.cat([cond, self.tok_embeddings(tokens[:, :-1])], dim=1)
        slots = torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1)
        hidden = self.run_layers(h, slots, None)
        return self.logits(hidden[:, self.cfg.cls_token_num - 1 :])


def default_capacity(cfg: GPTConfig, margin: int = 80) -> int:
    """Cache slots for one image: condition, all image tokens, and room for one draft block
    of ``margin`` tokens."""
    return cfg.cls_token_num + cfg.num_image_tokens + margin


__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "rope_table_2d", "apply_rope", "default_capacity"]
