"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838).

A masked autoregressive model over continuous tokens: an MAE-style bidirectional encoder sees the
class embedding (in ``buffer_size`` slots) and the *known* tokens only; a decoder fills every
unknown position with a learned mask token and returns, per position, the condition ``z`` of the
per-token diffusion head (:mod:`.diffloss`). There is no KV cache: every generation step
recomputes everything, which is why one target pass can verify several draft steps (CSpD).

Parameter names follow MAR's ``models/mar.py`` with timm ``Block`` layers (``norm1``,
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so the official checkpoints
load without renaming. Dropout is left out: it is off at inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError
from .diffloss import DiffLoss, HeadConfig

LN_EPS = 1e-6
MASK_RATIO_MIN = 0.7  # training masks between 70 % and 100 % of the tokens (truncated normal around 1)
MASK_RATIO_STD = 0.25


@dataclass(frozen=True)
class MARConfig:
    """Sizes of one MAR model. ``token_dim`` is the channels of one token (VAE channels x patch^2)."""

    seq_h: int = 16
    seq_w: int = 16
    token_dim: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_dim: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    buffer_size: int = 64
    head_width: int = 1024
    head_depth: int = 6
    label_drop: float = 0.1
    diffusion_batch_mul: int = 4

    @property
    def seq_len(self) -> int:
        return self.seq_h * self.seq_w

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, object]) -> "MARConfig":
        known = {k: v for k, v in data.items() if k in MARConfig.__dataclass_fields__}
        return MARConfig(**known)


# The published ImageNet 256 models (MAR README: diffloss depth/width per size); VAE kl16 tokens.
PRESETS: dict[str, MARConfig] = {
    "mar_base": MARConfig(),
    "mar_large": MARConfig(
        encoder_dim=1024,
        encoder_depth=16,
        encoder_heads=16,
        decoder_dim=1024,
        decoder_depth=16,
        decoder_heads=16,
        head_width=1280,
        head_depth=8,
    ),
    "mar_huge": MARConfig(
        encoder_dim=1280,
        encoder_depth=20,
        encoder_heads=16,
        decoder_dim=1280,
        decoder_depth=20,
        decoder_heads=16,
        head_width=1536,
        head_depth=12,
    ),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise SettingsError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm layout), bidirectional."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAR(nn.Module):
    """Encoder over known tokens, decoder over all positions, diffusion head per token."""

    def __init__(self, cfg: MARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e, d, n = cfg.encoder_dim, cfg.decoder_dim, cfg.seq_len + cfg.buffer_size
        self.class_emb = nn.Embedding(cfg.num_classes, e)
        self.fake_latent = nn.Parameter(torch.zeros(1, e))
        self.z_proj = nn.Linear(cfg.token_dim, e)
        self.z_proj_ln = nn.LayerNorm(e, eps=LN_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n, e))
        self.encoder_blocks = nn.ModuleList(
            Block(e, cfg.encoder_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(e, eps=LN_EPS)
        self.decoder_embed = nn.Linear(e, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n, d))
        self.decoder_blocks = nn.ModuleList(
            Block(d, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, cfg.seq_len, d))
        self.diffloss = DiffLoss(HeadConfig(cfg.token_dim, d, cfg.head_width, cfg.head_depth))

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """MAR's initialisation (N(0, 0.02) embeddings, Xavier linears), then the head's own."""
        for p in (
            self.class_emb.weight,
            self.fake_latent,
            self.mask_token,
            self.encoder_pos_embed_learned,
            self.decoder_pos_embed_learned,
            self.diffusion_pos_embed_learned,
        ):
            nn.init.normal_(p, std=0.02, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.diffloss.net.init_weights(generator)

    def class_embedding(self, class_ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Rows ``[B, D]``: the class embeddings, or the learned "no class" latent where ids are None/-1."""
        fake = self.fake_latent.expand(batch, -1)
        if class_ids is None:
            return fake
        ids = class_ids.to(self.fake_latent.device)
        embedded = self.class_emb(ids.clamp(min=0))
        return torch.where((ids < 0).unsqueeze(-1), fake, embedded)

    def condition(self, tokens: torch.Tensor, unknown: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """The head's condition ``z [B, L, D_dec]`` for every position.

        ``tokens [B, L, C]``; ``unknown [B, L]`` bool, True where a token is not known yet (every
        image must have the same number of known tokens, as in MAR's schedule).
        """
        cfg = self.cfg
        b = tokens.shape[0]
        known_with_buffer = torch.cat(
            [torch.ones(b, cfg.buffer_size, dtype=torch.bool, device=tokens.device), ~unknown], 1
        )
        counts = known_with_buffer.sum(1)
        if not bool((counts == counts[0]).all()):
            raise SettingsError("every image in a MAR batch must have the same number of known tokens")
        x = self.z_proj(tokens.to(self.z_proj.weight.dtype))
        x = torch.cat([class_embedding.to(x.dtype).unsqueeze(1).expand(-1, cfg.buffer_size, -1), x], 1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        x = x[known_with_buffer].view(b, -1, cfg.encoder_dim)
        for block in self.encoder_blocks:
            x = block(x)
        x = self.decoder_embed(self.encoder_norm(x))
        full = self.mask_token.to(x.dtype).expand(b, known_with_buffer.shape[1], -1).clone()
        full[known_with_buffer] = x.reshape(-1, cfg.decoder_dim)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, cfg.buffer_size :]
        return x + self.diffusion_pos_embed_learned

    def training_loss(
        self, tokens: torch.Tensor, class_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """MAR's objective: mask a random order's first 70-100 % of tokens, diffusion loss on them.

        ``class_ids`` of -1 train the unconditional branch (the caller drops labels for CFG).
        """
        cfg = self.cfg
        b, n, _ = tokens.shape
        orders = torch.argsort(torch.rand(b, n, device=tokens.device, generator=generator), dim=1)
        ratio = _truncated_normal_ratio(generator)
        masked = torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
        masked.scatter_(1, orders[:, : math.ceil(n * ratio)], True)
        z = self.condition(tokens, masked, self.class_embedding(class_ids, b))
        target, cond = tokens[masked], z[masked]
        mul = cfg.diffusion_batch_mul
        return self.diffloss.loss(target.repeat(mul, 1).float(), cond.repeat(mul, 1), generator)


def _truncated_normal_ratio(generator: torch.Generator | None) -> float:
    """A draw of N(1, 0.25) truncated to [0.7, 1]; by rejection, as the interval holds 46 % of the mass."""
    while True:
        r = 1.0 + MASK_RATIO_STD * float(torch.randn(1, generator=generator))
        if MASK_RATIO_MIN <= r <= 1.0:
            return r


__all__ = ["MAR", "MARConfig", "PRESETS"]
