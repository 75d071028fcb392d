"""Chameleon's VQGAN decoder against an independent functional taming decoder, plus loading errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_hf import save_tiny_vqgan, tiny_vqgan_state

from specar.errors import CheckpointError
from specar.models.chameleon_vqgan import load_chameleon_vqgan


def _reference_decode(
    state: dict[str, torch.Tensor],
    codes: torch.Tensor,
    side: int,
    levels: int,
    blocks: int,
    attention_levels: tuple[int, ...],
) -> torch.Tensor:
    """taming's Decoder written out with functional ops, straight from the state dict."""

    def conv(x, name, pad):
        return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=pad)

    def norm(x, name):
        return F.group_norm(x, 32, state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    def resblock(x, name):
        h = conv(F.silu(norm(x, f"{name}.norm1")), f"{name}.conv1", 1)
        h = conv(F.silu(norm(h, f"{name}.norm2")), f"{name}.conv2", 1)
        skip = conv(x, f"{name}.nin_shortcut", 0) if f"{name}.nin_shortcut.weight" in state else x
        return skip + h

    def attn(x, name):
        b, c, hh, ww = x.shape
        h = norm(x, f"{name}.norm")
        q, k, v = (conv(h, f"{name}.{p}", 0).reshape(b, c, hh * ww) for p in "qkv")
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c**0.5, dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hh, ww)
        return x + conv(out, f"{name}.proj_out", 0)

    z = state["quantize.embedding.weight"][codes].view(codes.shape[0], side, side, -1).permute(0, 3, 1, 2)
    h = conv(conv(z, "post_quant_conv", 0), "decoder.conv_in", 1)
    h = resblock(attn(resblock(h, "decoder.mid.block_1"), "decoder.mid.attn_1"), "decoder.mid.block_2")
    for level in reversed(range(levels)):
        for j in range(blocks + 1):
            h = resblock(h, f"decoder.up.{level}.block.{j}")
            if level in attention_levels:
                h = attn(h, f"decoder.up.{level}.attn.{j}")
        if level != 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{level}.upsample.conv", 1)
    return conv(F.silu(norm(h, "decoder.norm_out")), "decoder.conv_out", 1).clamp(-1, 1)


def test_decoder_matches_the_taming_reference_from_ckpt_and_safetensors(tmp_path: Path) -> None:
    ckpt = save_tiny_vqgan(tmp_path)
    state = tiny_vqgan_state()
    save_file(
        {k: v for k, v in state.items() if k.startswith(("decoder.", "quantize.", "post_quant"))},
        str(tmp_path / "vqgan.safetensors"),
    )
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    expected = _reference_decode(state, codes, 4, levels=2, blocks=1, attention_levels=(1,))
    for path in (ckpt, tmp_path / "vqgan.safetensors"):
        decoder = load_chameleon_vqgan(path)
        assert decoder.cfg.ch_mult == (1, 2) and decoder.cfg.attention_levels == (1,)
        images = decoder.decode(codes, (4, 4))
        assert images.shape == (2, 3, 8, 8)
        assert torch.allclose(images, expected, atol=1e-5)
        assert float(images.std()) > 0.05
        assert torch.equal(decoder.codebook_vectors(codes), state["quantize.embedding.weight"][codes])


def test_bad_vqgan_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_chameleon_vqgan(tmp_path / "vqgan.ckpt")
    torch.save({"state_dict": {"model.embed_tokens.weight": torch.zeros(4, 4)}}, tmp_path / "llm.ckpt")
    with pytest.raises(CheckpointError, match="language model, not the VQGAN"):
        load_chameleon_vqgan(tmp_path / "llm.ckpt")
    state = tiny_vqgan_state()
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"][:, :16]
    torch.save({"state_dict": state}, tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_chameleon_vqgan(tmp_path / "wrong.ckpt")
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "hook": print}))
    with pytest.raises(CheckpointError):
        load_chameleon_vqgan(tmp_path / "evil.ckpt")
