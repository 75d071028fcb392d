"""VQ-16 decoder: official checkpoint layout, equality with transformers' JanusVQVAE, bad files."""

from __future__ import annotations

import math
import re

import pytest
import torch

from specar.checkpoints import save_safetensors
from specar.errors import CheckpointError
from specar.models.vq16 import VQ16Config, VQ16Decoder, infer_vq16_config, load_vq16

# Smallest layout that still has every part: two levels (one upsample), GroupNorm-friendly widths.
TINY = VQ16Config(codebook_size=64, codebook_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random values scaled so activations stay O(1) and the decoded images are not saturated."""
    if name.endswith("codebook_used"):
        return torch.zeros(shape)
    if "norm" in name and name.endswith("weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("bias"):
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) == 4 else 1
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def official_state(cfg: VQ16Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict spelled like LlamaGen's ``VQModel`` (decoder, codebook and unused parts).

    Written from the official layout, not from our module, so that it checks our key names.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (cout, cin, k, k), (cout,)

    def norm(prefix: str, c: int) -> None:
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (c,), (c,)

    def res(prefix: str, cin: int, cout: int) -> None:
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cin, cout, 3)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.nin_shortcut", cin, cout, 1)

    def attn(prefix: str, c: int) -> None:
        norm(f"{prefix}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.{part}", c, c, 1)

    widths = [cfg.ch * m for m in cfg.ch_mult]
    top = len(widths) - 1
    # Parts the decoder never runs; the loader must skip them.
    conv("encoder.conv_in", 3, cfg.ch, 3)
    conv("encoder.conv_out", widths[top], cfg.z_channels, 3)
    conv("quant_conv", cfg.z_channels, cfg.codebook_dim, 1)
    shapes["quantize.codebook_used"] = (65536,)
    # Decoding path.
    shapes["quantize.embedding.weight"] = (cfg.codebook_size, cfg.codebook_dim)
    conv("post_quant_conv", cfg.codebook_dim, cfg.z_channels, 1)
    conv("decoder.conv_in", cfg.z_channels, widths[top], 3)
    res("decoder.mid.0", widths[top], widths[top])
    attn("decoder.mid.1", widths[top])
    res("decoder.mid.2", widths[top], widths[top])
    cin = widths[top]
    for i, level in enumerate(reversed(range(len(widths)))):
        for j in range(cfg.num_res_blocks + 1):
            res(f"decoder.conv_blocks.{i}.res.{j}", cin, widths[level])
            cin = widths[level]
            if level == top:
                attn(f"decoder.conv_blocks.{i}.attn.{j}", cin)
        if level != 0:
            conv(f"decoder.conv_blocks.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", widths[0])
    conv("decoder.conv_out", widths[0], 3, 3)
    gen = torch.Generator().manual_seed(seed)
    return {name: _fill(name, shape, gen) for name, shape in shapes.items()}


def random_codes(batch: int, grid: tuple[int, int], size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, size, (batch, grid[0] * grid[1]), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vq16")
    state = official_state(TINY)
    pt, st = root / "vq_ds16_c2i.pt", root / "vq_tiny.safetensors"
    torch.save({"model": state, "steps": 1000}, pt)
    save_safetensors(state, st)
    return state, pt, st


def test_official_layout_loads_and_decodes(tiny_files) -> None:
    state, pt, st = tiny_files
    assert infer_vq16_config(state) == TINY
    from_pt, from_st = load_vq16(pt), load_vq16(st)
    assert not from_pt.training and from_pt.downsample == 2
    decoder_keys = {k for k in state if not k.startswith(("encoder.", "quant_conv.", "quantize.codebook_used"))}
    assert set(from_pt.state_dict()) == decoder_keys

    codes = random_codes(2, (8, 8), TINY.codebook_size, seed=1)
    images = from_pt.decode(codes, (8, 8))
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.abs().max() <= 1.0
    assert (images.abs() < 1.0).float().mean() > 0.5  # not saturated: the checks below mean something
    assert torch.equal(images, from_st.decode(codes, (8, 8)))
    assert (images[0] - images[1]).abs().max() > 1e-2  # different codes, different pixels
    other = codes.clone()
    other[0, 0] = (other[0, 0] + 1) % TINY.codebook_size
    assert not torch.equal(from_pt.decode(other, (8, 8))[0], images[0])

    vectors = from_pt.codebook_vectors(codes)
    assert vectors.shape == (2, 64, TINY.codebook_dim)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2, 64))


def test_non_square_grid_and_bad_codes(tiny_files) -> None:
    model = load_vq16(tiny_files[2])
    assert model.decode(random_codes(1, (4, 6), TINY.codebook_size, seed=2), (4, 6)).shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="for a 8x8 grid"):
        model.decode(random_codes(1, (4, 4), TINY.codebook_size, seed=2), (8, 8))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 16), 64), (4, 4))


def test_default_config_is_official_vq16() -> None:
    with torch.device("meta"):  # shapes only; skips initialising 42M parameters
        model = VQ16Decoder(VQ16Config())
    assert model.downsample == 16
    assert infer_vq16_config(model.state_dict()) == VQ16Config()
    assert len(model.decoder.conv_blocks[0].attn) == 3 and model.decoder.conv_blocks[0].res[0].conv1.out_channels == 512
    assert model.decoder.conv_blocks[-1].upsample is None


# --- oracle: transformers' JanusVQVAE is the same network under other key names -----------------


def janus_to_official(name: str) -> str:
    """transformers' Janus key names -> LlamaGen's (the inverse of their converter's renames)."""
    name = re.sub(r"^decoder\.up\.", "decoder.conv_blocks.", name)
    name = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", name)
    name = re.sub(r"(conv_blocks\.\d+)\.block\.", r"\1.res.", name)
    for index, part in enumerate(("block_1", "attn_1", "block_2")):
        name = name.replace(f".mid.{part}.", f".mid.{index}.")
    return name


def test_matches_transformers_janus_vqvae(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.JanusVQVAEConfig(
        embed_dim=TINY.codebook_dim,
        num_embeddings=TINY.codebook_size,
        latent_channels=TINY.z_channels,
        base_channels=TINY.ch,
        channel_multiplier=list(TINY.ch_mult),
        num_res_blocks=TINY.num_res_blocks,
        num_patches=8,
    )
    oracle = transformers.JanusVQVAE(config).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in oracle.state_dict().items():
            tensor.copy_(_fill(name, tuple(tensor.shape), gen))
    path = tmp_path / "janus_vq.safetensors"
    save_safetensors({janus_to_official(k): v for k, v in oracle.state_dict().items()}, path)
    ours = load_vq16(path)  # strict: every decoder key of the renamed oracle must land in our module
    assert infer_vq16_config({janus_to_official(k): v for k, v in oracle.state_dict().items()}) == TINY

    codes = random_codes(2, (8, 8), TINY.codebook_size, seed=4)
    with torch.no_grad():
        expected = oracle.decode(codes)
        latent = ours.codebook_vectors(codes).view(2, 8, 8, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(latent, oracle.quantize.get_codebook_entry(codes))
        raw = ours.decoder(ours.post_quant_conv(latent))
    assert expected.shape == (2, 3, 16, 16) and (expected.abs() < 1.0).float().mean() > 0.5
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.decode(codes, (8, 8)), expected.clamp(-1, 1), rtol=1e-4, atol=1e-5)


# --- bad input ----------------------------------------------------------------------------------


def test_corrupt_file_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "vq.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a readable safetensors file: it may be damaged"):
        load_vq16(path)


def test_gpt_checkpoint_is_rejected(tmp_path) -> None:
    path = tmp_path / "c2i_B_256.pt"
    torch.save(
        {
            "model": {
                "tok_embeddings.weight": torch.zeros(16, 8),
                "layers.0.attention.wqkv.weight": torch.zeros(24, 8),
                "output.weight": torch.zeros(16, 8),
            }
        },
        path,
    )
    with pytest.raises(CheckpointError, match=r"c2i_B_256\.pt: not a LlamaGen VQ16.*GPT.*quantize\.embedding\.weight"):
        load_vq16(path)


def test_missing_decoder_keys_are_named(tmp_path) -> None:
    state = official_state(TINY)
    del state["decoder.conv_blocks.0.attn.1.q.weight"]
    path = tmp_path / "partial.safetensors"
    save_safetensors(state, path)
    with pytest.raises(
        CheckpointError, match=r"partial\.safetensors.*missing 1 keys.*decoder\.conv_blocks\.0\.attn\.1\.q\.weight"
    ):
        load_vq16(path)

    encoder_only = {k: v for k, v in official_state(TINY).items() if not k.startswith("decoder.")}
    save_safetensors(encoder_only, path)
    with pytest.raises(CheckpointError, match=r"missing decoder\.conv_in\.weight"):
        load_vq16(path)


def test_inconsistent_levels_are_named() -> None:
    state = official_state(TINY)
    for key in [k for k in state if k.startswith("decoder.conv_blocks.1.")]:
        state[key.replace("conv_blocks.1.", "conv_blocks.2.")] = state.pop(key)
    with pytest.raises(CheckpointError, match=r"not numbered 0\.\.n-1 \(found levels \[0, 2\]\)"):
        infer_vq16_config(state)
