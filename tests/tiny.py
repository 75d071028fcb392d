"""Tiny random-weight LlamaGen models in the official layout, built by the tests themselves.

Weights use init std 0.2: with LlamaGen's 0.02 a random model repeats one token, which would
make speculative tests pass trivially.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.checkpoints import save_safetensors
from engine.drafts.tree_head import TreeHead
from engine.models.llamagen.adapter import LlamaGenModel
from engine.models.llamagen.gpt import GPT, GPTConfig

TINY = dict(vocab_size=64, dim=64, n_layer=2, n_head=4, num_classes=10, grid_size=8)
TINY_DRAFTER = dict(vocab_size=64, dim=32, n_layer=1, n_head=2, num_classes=10, grid_size=8)


def tiny_gpt(seed: int = 0, **overrides: object) -> GPT:
    cfg = GPTConfig(**{**TINY, **overrides})  # type: ignore[arg-type]
    gpt = GPT(cfg)
    gpt.init_weights(0.2, torch.Generator().manual_seed(seed))
    return gpt.eval()


def tiny_model(seed: int = 0, name: str = "tiny", **overrides: object) -> LlamaGenModel:
    return LlamaGenModel(tiny_gpt(seed, **overrides), None, name)


def tiny_drafter(seed: int = 1, **overrides: object) -> LlamaGenModel:
    return tiny_model(seed, "tiny-drafter", **{**TINY_DRAFTER, **overrides})


def save_official_pt(gpt: GPT, path: Path, wrapper: str | None = "model", stale_rope: bool = True) -> Path:
    """Save like LlamaGen's trainers: a state dict under ``wrapper`` (or raw), with a stale freqs_cis."""
    state = dict(gpt.state_dict())
    if stale_rope:
        state["freqs_cis"] = torch.randn(3, 2)
    obj: object = {wrapper: state, "steps": 10} if wrapper else state
    torch.save(obj, path)
    return path


def save_own_safetensors(gpt: GPT, path: Path) -> Path:
    save_safetensors(gpt.state_dict(), path, config={"family": "llamagen", **gpt.cfg.to_dict()})
    return path


def tiny_tree_head(target: LlamaGenModel, seed: int = 2, std: float = 0.2) -> TreeHead:
    """A random EAGLE-style head for ``target`` (one layer, the target's width)."""
    from engine.drafts.tree_head import TreeHeadConfig

    cfg = TreeHeadConfig(dim=target.hidden_size, n_head=4, ffn_hidden=96, vocab_size=target.vocab_size,
                         grid_size=target.grid[0])
    head = TreeHead(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if not name.endswith("norm.weight"):
                param.normal_(0.0, std, generator=gen)
    return head.eval()
