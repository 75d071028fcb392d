"""Tiny random-weight LlamaGen (and MAR) models in the official layouts, built by the tests themselves.

Weights use init std 0.2: with LlamaGen's 0.02 a random model repeats one token, which would
make speculative tests pass trivially.
"""

from __future__ import annotations

from pathlib import Path

import json

import torch

from specar.checkpoints import save_safetensors
from specar.continuous.mar import MAR, MARConfig
from specar.continuous.model import MARTokenModel, PatchPixels
from specar.demo.codebook import PatchCodebook
from specar.drafts.auto import CALIBRATION_BLOCKS, AutoDrafts, ChainCost, ForwardCosts
from specar.drafts.tree_head import TreeHead
from specar.models.llamagen.adapter import LlamaGenModel
from specar.models.llamagen.gpt import GPT, GPTConfig
from specar.models.vq16 import VQ16Config, VQ16Decoder

TINY = dict(vocab_size=64, dim=64, n_layer=2, n_head=4, num_classes=10, grid_size=8)
TINY_DRAFTER = dict(vocab_size=64, dim=32, n_layer=1, n_head=2, num_classes=10, grid_size=8)
TINY_VQ = VQ16Config(codebook_size=64, codebook_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def tiny_gpt(seed: int = 0, **overrides: object) -> GPT:
    cfg = GPTConfig(**{**TINY, **overrides})
    gpt = GPT(cfg)
    gpt.init_weights(0.2, torch.Generator().manual_seed(seed))
    return gpt.eval()


def tiny_model(seed: int = 0, name: str = "tiny", **overrides: object) -> LlamaGenModel:
    return LlamaGenModel(tiny_gpt(seed, **overrides), None, name)


def tiny_model_with_codes(seed: int = 0) -> LlamaGenModel:
    """A tiny model whose codes have vectors (a random 2x2-patch codebook), for policies that group codes."""
    centroids = torch.rand(TINY["vocab_size"], 12, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return LlamaGenModel(tiny_gpt(seed), PatchCodebook(centroids), "tiny")


def tiny_drafter(seed: int = 1, **overrides: object) -> LlamaGenModel:
    return tiny_model(seed, "tiny-drafter", **{**TINY_DRAFTER, **overrides})


# a verify of n tokens costs 1 + n/8 one-token forwards, a drafter or head step a tenth of one: under these
# costs row-above Jacobi and the tiny drafter (and the tiny head) all draft, switching within an image
SWITCHING_COSTS = ForwardCosts(
    {n: 1.0 + n / 8 for n in CALIBRATION_BLOCKS}, padded=False, drafter=ChainCost(0.1), head=ChainCost(0.1)
)


def tiny_auto_drafts(head: bool = False) -> AutoDrafts:
    """Auto drafting with the tiny drafter (and a tiny head for ``tiny_model(0)``) under fixed costs (the
    same choices on every machine)."""
    return AutoDrafts(tiny_drafter(), tiny_tree_head(tiny_model(0)) if head else None, costs=SWITCHING_COSTS)


def save_official_pt(gpt: GPT, path: Path, wrapper: str | None = "model", stale_rope: bool = True) -> Path:
    """Save like LlamaGen's trainers: a state dict under ``wrapper`` (or raw), with a stale freqs_cis."""
    state = dict(gpt.state_dict())
    if stale_rope:
        state["freqs_cis"] = torch.randn(3, 2)
    obj: object = {wrapper: state, "steps": 10} if wrapper else state
    torch.save(obj, path)
    return path


def tiny_model_dir(root: Path, gpt: torch.nn.Module, n_head: int, with_vq: bool) -> Path:
    """A LlamaGen model folder as users lay it out: official ``.pt`` weights, ``config.json`` and (optionally)
    a VQ tokenizer, so ``load_model(root)`` and ``specar --model root`` read it like a real checkpoint."""
    root.mkdir()
    save_official_pt(gpt, root / "c2i_tiny.pt")
    (root / "config.json").write_text(json.dumps({"family": "llamagen", "n_head": n_head, "grid_size": 8}))
    if with_vq:
        torch.manual_seed(0)
        torch.save({"model": VQ16Decoder(TINY_VQ).state_dict()}, root / "vq_tiny.pt")
    return root


def save_own_safetensors(gpt: GPT, path: Path) -> Path:
    save_safetensors(gpt.state_dict(), path, config={"family": "llamagen", **gpt.cfg.to_dict()})
    return path


def tiny_tree_head(target: LlamaGenModel, seed: int = 2, std: float = 0.2, cls_token_num: int = 0) -> TreeHead:
    """A random EAGLE-style head for ``target`` (one layer, the target's width); ``cls_token_num`` > 0 opens
    its sequences with that many caption entries (LANTERN's t2i layout)."""
    from specar.drafts.tree_head import TreeHeadConfig

    cfg = TreeHeadConfig(
        dim=target.hidden_size,
        n_head=4,
        ffn_hidden=96,
        vocab_size=target.vocab_size,
        grid_size=target.grid[0],
        cls_token_num=cls_token_num,
    )
    head = TreeHead(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if not name.endswith("norm.weight"):
                param.normal_(0.0, std, generator=gen)
    return head.eval()


def tiny_mar(seed: int = 0, std: float = 0.15, perturb: float = 0.0, **overrides: object) -> MARTokenModel:
    """A random MAR on a 4x4 grid of 12-d patch tokens in [-1, 1] (its head clips the clean estimate).

    ``perturb`` adds noise of that std to every weight: a draft close to
    the seed's model, which CSpD's exact test accepts sometimes (about 40 % at 3e-4).
    """
    sizes: dict[str, object] = dict(
        seq_h=4,
        seq_w=4,
        token_dim=12,
        encoder_dim=32,
        encoder_depth=1,
        encoder_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        num_classes=3,
        buffer_size=2,
        head_width=32,
        head_depth=2,
    )
    mar = MAR(MARConfig(**{**sizes, **overrides}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mar.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std + torch.randn(p.shape, generator=gen) * perturb)
    return MARTokenModel(mar, PatchPixels(), name=f"tiny-mar-{seed}", class_names=("a", "b", "c"), clip_x0=1.0)
