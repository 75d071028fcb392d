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
LlamaGen's 2D table indexed by image position; LANTERN's t2i heads put ``cls_token_num`` = 119
zero rows before it (their sequences start with 119 caption entries, see :class:`TreeHeadConfig`).
The output is the layer's output, with no final norm: the target's output head reads it directly.

LANTERN's Chameleon heads (``cnets_anole``, ``cnets_lumina_mgpt``; layout ``"chameleon"``) add an
``input_layernorm`` (RMSNorm) before attention and per-head q/k LayerNorms (``q_norm``/``k_norm``),
and turn 1D rotary angles of the target's text positions (transformers' half-split pairs).

An ``embed_tokens.weight`` in a LANTERN LlamaGen file is kept, and :meth:`TreeHead.embed` (the
embedding a drafter should feed the head) returns its rows: LANTERN's training copies it from the
target's folder, falling back to the target's ``lm_head.weight`` when the folder has no
``model.safetensors.index.json`` (as with the single-file LlamaGen-T2I conversions), so the head
may have learnt an embedding the target does not use. Our own heads read the target's embedding
instead of storing a copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..compile import READ_WINDOW, CompiledForward, CompileFailed, static_buffers
from ..checkpoints import load_into, read_safetensors_metadata, read_state_dict, save_safetensors
from ..errors import CheckpointError, IncompatibleDrafterError
from ..kv_cache import write_block
from ..models.base import ImageTokenModel
from ..models.chameleon import expand_qk_norms
from ..models.llamagen.gpt import RMSNorm, apply_rope, rope_table_2d

LAYOUTS = ("llamagen", "chameleon")
QK_NORM_EPS = 1e-5  # Chameleon's q/k LayerNorm eps, fixed in its code (not in the config)


@dataclass(frozen=True)
class TreeHeadConfig:
    """Architecture of a head; ``dim``/``vocab_size``/``grid_size`` must match its target.

    ``cls_token_num`` (``"llamagen"`` layout): zero rows before the 2D rotary table. LANTERN trains
    its t2i heads on sequences of 119 caption entries (token id 0 with the target's caption states)
    before the image entries, and their zero rows erase the caption entries' queries and keys (they
    still pass values). Positions given to :meth:`TreeHead.step` stay image-token indices; -119..-1
    address the caption entries. While drafting, :class:`~specar.drafts.tree_drafts.TreeHeadDrafts`
    feeds a head with ``cls_token_num`` > 0 these entries once per generation, before any image entry:
    entry j reads the target's state at caption position j (``DecodeState.condition_hidden``; LlamaGen
    t2i's 120 caption slots give 119, the last slot's state being the first image entry's feature),
    every CFG row its own caption's (the null caption's for unconditional rows), as LANTERN drafts.

    ``layout`` ``"chameleon"``: LANTERN's Chameleon heads (Anole, Lumina-mGPT). They read text-token
    ids, so ``vocab_size`` is the text vocabulary, and their 1D rotary angles know no grid
    (``grid_size`` 0).
    """

    dim: int
    n_head: int
    ffn_hidden: int
    vocab_size: int
    grid_size: int
    n_kv_head: int | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    cls_token_num: int = 0
    layout: str = "llamagen"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise CheckpointError(f"tree head layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def rotate_halves(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [R, k, H, D]`` by ``rope [R, k, D/2, 2]`` pairing dim ``i`` with ``i + D/2``
    (transformers' ``rotate_half``, the pairing of Chameleon's rotary embedding)."""
    a, b = x.float().chunk(2, dim=-1)
    cos, sin = rope[:, :, None, :, 0], rope[:, :, None, :, 1]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).type_as(x)


class HeadNorm(nn.Module):
    """Chameleon's q/k norm: a LayerNorm over each head's vector, then that head's own weight and bias."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS) * self.weight + self.bias


class HeadAttention(nn.Module):
    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm: HeadNorm | None = None
        self.k_norm: HeadNorm | None = None
        self.rotate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = apply_rope
        if cfg.layout == "chameleon":
            self.q_norm, self.k_norm = HeadNorm(cfg.n_head, cfg.head_dim), HeadNorm(cfg.kv_heads, cfg.head_dim)
            self.rotate = rotate_halves

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: "HeadCache | None",
        slots: torch.Tensor | int | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        R, k, _ = x.shape
        q = self.q_proj(x).view(R, k, self.n_head, self.hd)
        key = self.k_proj(x).view(R, k, self.n_kv, self.hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, key = self.q_norm(q), self.k_norm(key)
        q, key = self.rotate(q, rope).transpose(1, 2), self.rotate(key, rope).transpose(1, 2)
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
    """A Llama decoder layer; the ``"llamagen"`` layout has no input norm (the fc output goes straight
    into attention), the ``"chameleon"`` one keeps it."""

    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.layout == "chameleon" else None
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
        normed = x if self.input_layernorm is None else self.input_layernorm(x)
        h = x + self.self_attn(normed, rope, cache, slots, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class HeadCache:
    """Keys/values of the head's one layer, ``[R, kv_heads, capacity + 1, head_dim]``; the caller
    decides which slots a forward writes and what each query may read (a mask over slots). The
    last slot is scratch: a compiled step writes the entries it pads a block with there, and no
    entry reads it."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.k, self.v = keys, values

    @classmethod
    def empty(
        cls, rows: int, cfg: TreeHeadConfig, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> "HeadCache":
        shape = (rows, cfg.kv_heads, capacity + 1, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2]) - 1

    @property
    def scratch(self) -> int:
        return int(self.k.shape[2]) - 1

    def write(
        self, key: torch.Tensor, val: torch.Tensor, slots: torch.Tensor | int, read: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at ``slots [R, k]`` (or at ``slots .. slots + k`` in every row)."""
        if isinstance(slots, int):
            self.k[:, :, slots : slots + key.shape[2]] = key.to(self.k.dtype)
            self.v[:, :, slots : slots + val.shape[2]] = val.to(self.v.dtype)
        else:
            write_block(self.k, self.v, slots, key, val)
        return self.k[:, :, :read], self.v[:, :, :read]


class TreeHead(nn.Module):
    """The head network; :meth:`forward` trains on whole sequences, :meth:`step` drafts with a cache."""

    def __init__(self, cfg: TreeHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(2 * cfg.dim, cfg.dim, bias=True)
        self.layers = nn.ModuleList([HeadLayer(cfg)])
        self.embed_tokens: nn.Embedding | None = None  # the embedding a LANTERN LlamaGen head was trained with
        self.compiled: CompiledForward | None = None  # its compiled steps, while compiling is on
        self._held_cache: HeadCache | None = None
        if cfg.layout == "llamagen":
            table = rope_table_2d(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)
            self.register_buffer("rope", table, persistent=False)

    def embed(self, codes: torch.Tensor, target: ImageTokenModel) -> torch.Tensor:
        """Embeddings of ``codes`` as this head reads them: its stored table when it has one (LANTERN's
        LlamaGen heads), else the target's."""
        return target.embed_codes(codes) if self.embed_tokens is None else self.embed_tokens(codes)

    def _rope(self, positions: torch.Tensor) -> torch.Tensor:
        """Rotary cos/sin ``[R, k, head_dim/2, 2]``: rows of the 2D table (image-token index, shifted past
        the ``cls_token_num`` zero rows), or 1D angles of text positions, computed in float32 (positions
        reach thousands, beyond what a half-precision table resolves)."""
        if self.cfg.layout == "llamagen":
            return self.rope[(positions + self.cfg.cls_token_num).clamp(0, self.rope.shape[0] - 1)]
        hd = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_base ** (torch.arange(0, hd, 2, device=positions.device).float() / hd))
        angles = positions.float()[..., None] * inv_freq
        return torch.stack([angles.cos(), angles.sin()], dim=-1)

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
        return self.layers[0](h, self._rope(positions), cache, slots, mask)

    def networks(self) -> list[nn.Module]:
        """Itself: the head is one module (the interface hosts load models through)."""
        return [self]

    def forward(self, embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Causal pass for training: ``embeds[:, t]`` of token t and ``features[:, t]`` the target's
        state after token t-1 -> predicted state after token t, ``[R, N, D]``. Entry t sits at position
        t (image token t); LANTERN's t2i caption entries go through :meth:`step` at positions below 0."""
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
        ``positions [R, k]``: image-token indices (``"llamagen"``) or the target's text positions
        (``"chameleon"``; only their differences matter). Returns predicted states ``[R, k, D]``."""
        if self.compiled is not None and self.compiled.active:
            out = self._step_compiled((embeds, features, positions), cache, slots, mask)
            if out is not None:
                return out
        return self._run(embeds, features, positions, cache, slots, mask)

    def new_cache(self, rows: int, capacity: int) -> HeadCache:
        """A cache of ``capacity`` entries per row. A compiled head hands out the one it holds when that
        has the same shape (CUDA graphs replay on the addresses they were captured with), so it drafts
        for one generation at a time, as a model does."""
        weight = self.fc.weight
        held = self._held_cache
        if held is not None and held.k.shape[:3] == (rows, self.cfg.kv_heads, capacity + 1):
            if held.k.dtype == weight.dtype and held.k.device == weight.device:
                return held
        cache = HeadCache.empty(rows, self.cfg, capacity, weight.dtype, weight.device)
        if self.compiled is not None:
            static_buffers([cache.k, cache.v])
            self._held_cache = cache
        return cache

    # -- compiled fast path ----------------------------------------------------------------------

    def set_compile(self, enabled: bool) -> None:
        """Run :meth:`step` through ``torch.compile`` (see :mod:`specar.compile`) or eagerly; drafting
        for an eager target turns it off (:func:`place_head`)."""
        if not enabled:
            self.compiled = self._held_cache = None
        elif self.compiled is None:
            self.compiled = _compiled_step(self)

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds if self.compiled is not None else 0.0

    def _step_compiled(
        self,
        entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        cache: HeadCache,
        slots: torch.Tensor | int,
        mask: torch.Tensor,
    ) -> torch.Tensor | None:
        """:meth:`step` with its ``k`` entries (embeddings, features, positions) padded to a bucket, or
        ``None`` where it must run eagerly.

        Padding entries write to the cache's scratch slot and read slot 0, and their outputs are
        dropped. On GPUs every step reads the whole cache (CUDA graphs need static shapes); on CPUs
        the slots the mask covers, rounded up to a window (a size compiled as dynamic, and never 1,
        which the compiler would take as fixed)."""
        assert self.compiled is not None
        embeds, features, positions = entries
        rows, k = embeds.shape[:2]
        bucket = self.compiled.bucket(k)
        if bucket is None:
            return None
        dev = positions.device
        positions = positions.expand(rows, k)  # may come as one position per row for all its entries
        if isinstance(slots, int):
            slots = (slots + torch.arange(k, device=dev)).expand(rows, -1)
        read = mask.shape[-1]
        read = cache.capacity if dev.type == "cuda" else min(-(-read // READ_WINDOW) * READ_WINDOW, cache.capacity)
        pad = bucket - k
        padded_mask = F.pad(mask.expand(rows, k, -1), (0, read - mask.shape[-1], 0, pad))
        if pad:
            padded_mask[:, k:, 0] = True
            embeds = F.pad(embeds, (0, 0, 0, pad))
            features = F.pad(features, (0, 0, 0, pad))
            positions = F.pad(positions, (0, pad))
            slots = torch.cat([slots, torch.full((rows, pad), cache.scratch, dtype=slots.dtype, device=dev)], 1)
        try:
            out = self.compiled(bucket, embeds, features, positions, slots, padded_mask, cache.k, cache.v)
        except CompileFailed:
            return None
        assert isinstance(out, torch.Tensor)
        return out[:, :k]


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


# LANTERN's cnets_llamagen fixes the token grid and the caption entries by the config's input_type
# (block sizes 576, 256, 1024; cls_token_num 0, 119, 119), and the rotary base to 10000 whatever
# the file says.
LANTERN_GRIDS = {"c2i": 24, "t2i": 16, "t2i2": 32}
LANTERN_CLS_TOKENS = {"c2i": 0, "t2i": 119, "t2i2": 119}
LANTERN_ROPE_BASE = 10000.0


def _config_from_lantern(directory: Path) -> TreeHeadConfig:
    """A LlamaGen head (``input_type`` c2i/t2i/t2i2) or a Chameleon one (``model_type`` chameleon)."""
    source = directory / "config.json"
    raw = json.loads(source.read_text())
    chameleon = raw.get("model_type") == "chameleon"
    if not chameleon and raw.get("input_type") not in LANTERN_GRIDS:
        raise CheckpointError(
            f"{source}: input_type must be one of {sorted(LANTERN_GRIDS)} (LANTERN's LlamaGen heads) or "
            f"model_type 'chameleon' (its Anole and Lumina-mGPT heads), got {raw.get('input_type')!r}"
        )
    if chameleon and (raw.get("attention_bias") or raw.get("mlp_bias") or raw.get("rope_scaling")):
        raise CheckpointError(f"{source}: attention/MLP biases and rotary scaling are not supported in tree heads")
    try:
        shape = {
            "dim": int(raw["hidden_size"]),
            "n_head": int(raw["num_attention_heads"]),
            "n_kv_head": int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
            "ffn_hidden": int(raw["intermediate_size"]),
            "vocab_size": int(raw["vocab_size"]),
            "norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        }
        if chameleon:
            return TreeHeadConfig(
                **shape, grid_size=0, rope_base=float(raw.get("rope_theta", 10000.0)), layout="chameleon"
            )
        kind = raw["input_type"]
        return TreeHeadConfig(
            **shape, grid_size=LANTERN_GRIDS[kind], cls_token_num=LANTERN_CLS_TOKENS[kind], rope_base=LANTERN_ROPE_BASE
        )
    except KeyError as exc:
        raise CheckpointError(f"{source} is not a LANTERN head config: {exc} is missing") from None


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
    if cfg.layout == "chameleon":
        # LANTERN copies the target's own model.embed_tokens here (Chameleon checkpoints are sharded, so
        # its loader finds it through the index): the target embeds image codes identically through its
        # code -> text-id map, and the copy (65536 x 4096) need not be held twice.
        state.pop("embed_tokens.weight", None)
        state = expand_qk_norms(dict(state), cfg.n_head, cfg.kv_heads)  # Lumina-mGPT: [shards, head_dim]
    else:
        state = {k: v for k, v in state.items() if not k.startswith("layers.0.input_layernorm")}
    if "embed_tokens.weight" in state:
        head.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
    load_into(head, {k: v.float() for k, v in state.items()}, path.name)
    head.eval()
    return head if target is None else place_head(head, target)


def place_head(head: TreeHead, target: ImageTokenModel) -> TreeHead:
    """``head`` checked against ``target`` and on its device and dtype (hosts move targets between runs).

    A head compiles with its target on GPUs, where a CUDA graph replays a step's few dozen kernel
    launches as one, and never without it. On CPUs a compiled head step costs about what an eager one
    does (one layer leaves little to fuse) and a padded catch-up costs more (docs/benchmarks.md), so
    there it compiles only when asked (:meth:`TreeHead.set_compile`)."""
    check_head_fits(head.cfg, target, "in use")
    weight = head.fc.weight
    if weight.device != torch.device(target.device) or weight.dtype != target.dtype:
        head.set_compile(False)  # compiled code holds the weights as they were
        head = head.to(target.device, target.dtype)
    if not target.pads_blocks:
        head.set_compile(False)
    elif torch.device(target.device).type == "cuda":
        head.set_compile(True)
    return head


def _compiled_step(head: TreeHead) -> CompiledForward:
    """The step that gets compiled: entries, features, positions, cache write slots and read mask, and the
    cache buffers (written in place) in; predicted states out."""

    def step(
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> torch.Tensor:
        return head._run(embeds, features, positions, HeadCache(keys, values), slots, mask)

    device = head.fc.weight.device
    varying = ((4, 2),) if device.type == "cpu" else ()  # the mask's read size (see _step_compiled)
    return CompiledForward(step, device, "tree head", varying=varying)


BUNDLED_HEAD = "demo-tree-head"


def resolve_tree_head(name: str | Path, target: ImageTokenModel | None = None) -> TreeHead:
    """``demo-tree-head`` (the bundled head of the demo target) or a head file/folder, checked against ``target``."""
    if str(name) == BUNDLED_HEAD:
        from ..demo.model import demo_tree_head_path

        return load_tree_head(demo_tree_head_path(), target)
    return load_tree_head(name, target)


def check_head_fits(cfg: TreeHeadConfig, target: ImageTokenModel, name: str) -> None:
    """A Chameleon-layout head has no grid (1D rotary angles) and a text vocabulary (it embeds through
    the target), so only its width is checked."""
    problems = []
    if cfg.dim != target.hidden_size:
        problems.append(f"width {cfg.dim} vs the target's hidden size {target.hidden_size}")
    if cfg.layout == "llamagen" and cfg.vocab_size != target.vocab_size:
        problems.append(f"vocabulary {cfg.vocab_size} vs the target's {target.vocab_size}")
    if cfg.layout == "llamagen" and (cfg.grid_size != target.grid[0] or target.grid[0] != target.grid[1]):
        problems.append(f"token grid {cfg.grid_size}x{cfg.grid_size} vs the target's {target.grid[0]}x{target.grid[1]}")
    pairs = 4 if cfg.layout == "llamagen" else 2  # a 2D rotary turns pairs per axis
    if cfg.dim % cfg.n_head or cfg.head_dim % pairs:
        problems.append(
            f"width {cfg.dim} does not split into {cfg.n_head} heads of a size divisible by {pairs} (rotary pairs)"
        )
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
