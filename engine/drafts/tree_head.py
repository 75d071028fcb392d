"""The EAGLE-style drafter head (Li et al., arXiv 2401.15077; LANTERN's LlamaGen heads, arXiv 2410.03355).

One decoder layer that reads ``[embedding of token t, target hidden state after token t-1]`` and
predicts the target's hidden state after token t; the target's own output head turns that into
a distribution over token t+1. Drafting deeper feeds the head its own predicted states. Because
it starts from the target's features, a head of one layer drafts better than a separate small
model, and it costs a fraction of one target layer.

Layout (the parameter names of LANTERN's ``cnets_llamagen``, so their published heads load as
they are): ``fc`` (Linear 2D -> D with bias) over ``cat[embedding, feature]``, then
``layers.0`` = Llama attention (``self_attn.{q,k,v,o}_proj``) without an input norm, and a SwiGLU
MLP (``mlp.{gate,up,down}_proj``) after ``post_attention_layernorm``. Rotary angles are
LlamaGen's 2D table indexed by image position (LANTERN's ``cls_token_num`` 0 table for c2i).
An ``embed_tokens.weight`` in the file (LANTERN stores a frozen copy of the target's) is used
when present; our own heads read the target's embedding instead of storing a copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_into, read_safetensors_metadata, read_state_dict, save_safetensors
from ..errors import CheckpointError, IncompatibleDrafterError
from ..models.base import ImageTokenModel
from ..models.llamagen.gpt import RMSNorm, apply_rope, rope_table_2d


@dataclass(frozen=True)
class TreeHeadConfig:
    """Architecture of a head; ``dim``/``vocab_size``/``grid_size`` must match its target."""

    dim: int
    n_head: int
    ffn_hidden: int
    vocab_size: int
    grid_size: int
    n_kv_head: int | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class HeadAttention(nn.Module):
    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: "HeadCache | None",
        slots: torch.Tensor | int | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        R, k, _ = x.shape
        q = apply_rope(self.q_proj(x).view(R, k, self.n_head, self.hd), rope).transpose(1, 2)
        key = apply_rope(self.k_proj(x).view(R, k, self.n_kv, self.hd), rope).transpose(1, 2)
        val = self.v_proj(x).view(R, k, self.n_kv, self.hd).transpose(1, 2)
        if cache is not None:
            assert slots is not None and mask is not None
            key, val = cache.write(key, val, slots, mask.shape[-1])
        if self.n_kv != self.n_head:
            key = key.repeat_interleave(self.n_head // self.n_kv, dim=1)
            val = val.repeat_interleave(self.n_head // self.n_kv, dim=1)
        attn_mask = None if mask is None else mask[:, None]
        out = F.scaled_dot_product_attention(q, key, val, attn_mask=attn_mask, is_causal=mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(R, k, -1))


class HeadMLP(nn.Module):
    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HeadLayer(nn.Module):
    """A Llama decoder layer without the input norm (the fc output goes straight into attention)."""

    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.self_attn = HeadAttention(cfg)
        self.mlp = HeadMLP(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: "HeadCache | None",
        slots: torch.Tensor | int | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = x + self.self_attn(x, rope, cache, slots, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class HeadCache:
    """Keys/values of the head's one layer, ``[R, kv_heads, capacity, head_dim]``; the caller
    decides which slots a forward writes and what each query may read (a mask over slots)."""

    def __init__(self, rows: int, cfg: TreeHeadConfig, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (rows, cfg.kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])

    def write(
        self, key: torch.Tensor, val: torch.Tensor, slots: torch.Tensor | int, read: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at ``slots [R, k]`` (or at ``slots .. slots + k`` in every row)."""
        if isinstance(slots, int):
            self.k[:, :, slots : slots + key.shape[2]] = key.to(self.k.dtype)
            self.v[:, :, slots : slots + val.shape[2]] = val.to(self.v.dtype)
        else:
            index = slots[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[3])
            self.k.scatter_(2, index, key.to(self.k.dtype))
            self.v.scatter_(2, index, val.to(self.v.dtype))
        return self.k[:, :, :read], self.v[:, :, :read]


class TreeHead(nn.Module):
    """The head network; :meth:`forward` trains on whole sequences, :meth:`step` drafts with a cache."""

    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(2 * cfg.dim, cfg.dim, bias=True)
        self.layers = nn.ModuleList([HeadLayer(cfg)])
        self.embed_tokens: nn.Embedding | None = None  # a stored copy of the target's embedding (LANTERN files)
        self.register_buffer("rope", rope_table_2d(cfg.grid_size, cfg.head_dim, cfg.rope_base, 0), persistent=False)

    def _run(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadCache | None,
        slots: torch.Tensor | int | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.fc(torch.cat([embeds.to(features.dtype), features], dim=-1))
        rope = self.rope[positions.clamp(0, self.rope.shape[0] - 1)]
        return self.layers[0](h, rope, cache, slots, mask)

    def networks(self) -> list[nn.Module]:
        """Itself: the head is one module (the interface hosts load models through)."""
        return [self]

    def forward(self, embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Causal pass for training: ``embeds[:, t]`` of token t and ``features[:, t]`` the target's
        state after token t-1 -> predicted state after token t, ``[R, N, D]``."""
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        return self._run(embeds, features, positions, None, None, None)

    def step(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadCache,
        slots: torch.Tensor | int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Append ``k`` entries per row at cache ``slots [R, k]`` (an int: the same slots in every
        row); ``mask [R, k, read]`` says which slots each new entry attends to (itself included).
        Returns predicted states ``[R, k, D]``."""
        return self._run(embeds, features, positions, cache, slots, mask)

    def new_cache(self, rows: int, capacity: int) -> HeadCache:
        weight = self.fc.weight
        return HeadCache(rows, self.cfg, capacity, weight.dtype, weight.device)


# -- files ----------------------------------------------------------------------------------------


def save_tree_head(head: TreeHead, path: str | Path, extra: dict[str, object] | None = None) -> None:
    """fp16 weights with the config (and ``extra`` training notes) in the safetensors header."""
    tensors = {k: v.half() for k, v in head.state_dict().items()}
    save_safetensors(tensors, path, config={"kind": "specar-tree-head", **head.cfg.to_dict(), **(extra or {})})


def head_fingerprint(head: TreeHead) -> str:
    """A short hash of the head's weights (8 hex digits): benchmark records name the head they drafted
    with, so runs of different heads are never pooled by mistake (a file name can be reused)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


# LANTERN's cnets fix the token grid by the config's input_type (block sizes 576, 256, 1024).
LANTERN_GRIDS = {"c2i": 24, "t2i": 16, "t2i2": 32}


def _config_from_lantern(directory: Path) -> TreeHeadConfig:
    raw = json.loads((directory / "config.json").read_text())
    if raw.get("input_type") not in LANTERN_GRIDS:
        raise CheckpointError(
            f"{directory / 'config.json'}: input_type must be one of {sorted(LANTERN_GRIDS)} "
            f"(LANTERN's LlamaGen heads), got {raw.get('input_type')!r}"
        )
    try:
        return TreeHeadConfig(
            dim=int(raw["hidden_size"]),
            n_head=int(raw["num_attention_heads"]),
            n_kv_head=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
            ffn_hidden=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_base=float(raw.get("rope_base", 10000.0)),
            grid_size=LANTERN_GRIDS[raw["input_type"]],
        )
    except KeyError as exc:
        raise CheckpointError(f"{directory / 'config.json'} is not a LANTERN head config: {exc} is missing") from None


def _lantern_weights(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} holds no model.safetensors or pytorch_model.bin for the head")


def load_tree_head(path: str | Path, target: ImageTokenModel | None = None) -> TreeHead:
    """A head from our ``.safetensors`` file or from a LANTERN drafter folder (``config.json`` +
    weights), checked against ``target`` and placed on its device when one is given. Pickled
    weights load with ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"tree head not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder without config.json: not a LANTERN head folder")
        cfg, weights = _config_from_lantern(path), _lantern_weights(path)
    else:
        weights = path
        header = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
        raw = json.loads(header.get("config", "{}"))
        if raw.get("kind") != "specar-tree-head":
            raise CheckpointError(f"{path.name} is not a tree head (no specar-tree-head config in its header)")
        fields = TreeHeadConfig.__dataclass_fields__
        cfg = TreeHeadConfig(**{k: v for k, v in raw.items() if k in fields})
    if target is not None:
        check_head_fits(cfg, target, path.name)
    state = read_state_dict(weights)
    head = TreeHead(cfg)
    if "embed_tokens.weight" in state:
        head.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
    state = {k: v for k, v in state.items() if not k.startswith("layers.0.input_layernorm")}
    load_into(head, {k: v.float() for k, v in state.items()}, path.name)
    head.eval()
    return head if target is None else place_head(head, target)


def place_head(head: TreeHead, target: ImageTokenModel) -> TreeHead:
    """``head`` checked against ``target`` and on its device and dtype (hosts move targets between runs)."""
    check_head_fits(head.cfg, target, "in use")
    return head.to(target.device, target.dtype)


BUNDLED_HEAD = "demo-tree-head"


def resolve_tree_head(name: str | Path, target: ImageTokenModel | None = None) -> TreeHead:
    """``demo-tree-head`` (the bundled head of the demo target) or a head file/folder, checked against ``target``."""
    if str(name) == BUNDLED_HEAD:
        from ..demo.model import demo_tree_head_path

        return load_tree_head(demo_tree_head_path(), target)
    return load_tree_head(name, target)


def check_head_fits(cfg: TreeHeadConfig, target: ImageTokenModel, name: str) -> None:
    problems = []
    if cfg.dim != target.hidden_size:
        problems.append(f"width {cfg.dim} vs the target's hidden size {target.hidden_size}")
    if cfg.vocab_size != target.vocab_size:
        problems.append(f"vocabulary {cfg.vocab_size} vs the target's {target.vocab_size}")
    if cfg.grid_size != target.grid[0] or target.grid[0] != target.grid[1]:
        problems.append(f"token grid {cfg.grid_size}x{cfg.grid_size} vs the target's {target.grid[0]}x{target.grid[1]}")
    if cfg.dim % cfg.n_head or cfg.head_dim % 4:
        problems.append(f"width {cfg.dim} does not split into {cfg.n_head} heads of a size divisible by 4 (2D RoPE)")
    if problems:
        raise IncompatibleDrafterError(f"tree head {name} does not fit target {target.name}: " + "; ".join(problems))


__all__ = [
    "TreeHead",
    "TreeHeadConfig",
    "HeadCache",
    "load_tree_head",
    "save_tree_head",
    "check_head_fits",
    "resolve_tree_head",
    "place_head",
    "BUNDLED_HEAD",
]
