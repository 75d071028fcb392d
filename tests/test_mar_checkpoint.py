"""MAR weights: our safetensors files, the official checkpoint layout, bad files, the demo trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specar.continuous.checkpoint import infer_config, read_mar, save_mar
from specar.continuous.diffusion import DiffusionNoise, GaussianDiffusion
from specar.checkpoints import save_safetensors
from specar.demo.training import train_mar
from specar.errors import CheckpointError
from tiny import tiny_mar


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(0))
    unknown = torch.zeros(2, 16, dtype=torch.bool)
    unknown[:, 5:] = True
    return tokens, unknown


def test_own_file_round_trip(tmp_path: Path) -> None:
    model = tiny_mar(0)
    path = tmp_path / "mar.safetensors"
    save_mar(model.mar, path, {"class_names": ["a", "b", "c"]}, half=False)
    loaded, meta = read_mar(path)
    assert meta["class_names"] == ["a", "b", "c"] and loaded.cfg == model.mar.cfg
    classes = model.mar.class_embedding(torch.tensor([0, 2]), 2)
    with torch.no_grad():
        assert torch.equal(loaded.condition(*_inputs(), classes), model.mar.condition(*_inputs(), classes))


def test_official_layout_loads_its_ema_weights(tmp_path: Path) -> None:
    plain, ema = tiny_mar(0), tiny_mar(1)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": plain.mar.state_dict(), "model_ema": ema.mar.state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="attention heads"):
        read_mar(path)  # width 32 is no published MAR size
    loaded, _ = read_mar(path, heads=2)
    assert loaded.cfg == ema.mar.cfg  # every size inferred from the tensors
    for key, value in ema.mar.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_published_sizes_are_inferred_with_their_head_counts() -> None:
    from specar.continuous.mar import MAR, PRESETS

    base = PRESETS["mar_base"]
    shapes = {
        k: v
        for k, v in MAR(base.__class__(**{**base.to_dict(), "encoder_depth": 1, "decoder_depth": 1, "head_depth": 2}))
        .state_dict()
        .items()
    }
    cfg = infer_config(shapes, "mar_base")
    assert (cfg.encoder_heads, cfg.token_dim, cfg.buffer_size, cfg.head_width, cfg.num_classes) == (
        12,
        16,
        64,
        1024,
        1000,
    )


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_safetensors({"w": torch.zeros(2)}, other, config={"kind": "something-else"})
    with pytest.raises(CheckpointError, match="not a SpecAR MAR file"):
        read_mar(other)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file: it may be damaged"):
        read_mar(corrupt)
    not_mar = tmp_path / "not-mar.pth"
    torch.save({"model": {"tok_embeddings.weight": torch.zeros(3, 3)}}, not_mar)
    with pytest.raises(CheckpointError, match="not a MAR checkpoint"):
        read_mar(not_mar)
    pickled = tmp_path / "objects.pth"
    torch.save({"model": tiny_mar(0).mar.state_dict(), "args": Path("x")}, pickled)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors .*does not unpickle"):
        read_mar(pickled)
    truncated = tmp_path / "truncated.safetensors"
    save_mar(tiny_mar(0).mar, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        read_mar(truncated)


def test_demo_trainer_lowers_the_loss_and_exports_a_loadable_file(tmp_path: Path) -> None:
    args_list = [
        "--role",
        "drafter",
        "--steps",
        "12",
        "--batch",
        "8",
        "--warmup",
        "2",
        "--out",
        str(tmp_path),
        "--no-bf16",
        "--lr",
        "3e-3",
    ]
    args = train_mar.parse_args(args_list)
    trainer = train_mar.MARTrainer(args)
    before = trainer.val_loss()
    trainer.run()
    assert trainer.val_loss() < before
    model, meta = read_mar(tmp_path / "mar_drafter.safetensors")
    assert meta["role"] == "drafter" and model.cfg == train_mar.ROLES["drafter"] and meta["pixels"] == "vae"
    for key, value in trainer.ema.state_dict().items():  # the file holds the moving average, in fp16
        assert torch.equal(model.state_dict()[key], value.half().float()), key
    resumed = train_mar.MARTrainer(train_mar.parse_args([*args_list, "--resume"]))
    resumed.run()  # the checkpoint is at the last step: restores and re-exports
    for key, value in trainer.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[key], value), key
    second = train_mar.MARTrainer(
        train_mar.parse_args(
            [
                "--role",
                "drafter",
                "--steps",
                "2",
                "--batch",
                "8",
                "--out",
                str(tmp_path / "phase2"),
                "--init",
                str(tmp_path / "mar_drafter.safetensors"),
                "--seed",
                "1",
            ]
        )
    )
    for key, value in model.state_dict().items():  # the second phase starts from the exported weights
        assert torch.equal(second.model.state_dict()[key], value), key


def test_diffusion_sampler_uses_the_given_noise() -> None:
    """Same noise, same tokens; the last step's Gaussian generated the token."""
    process = GaussianDiffusion(10)
    net = tiny_mar(0).mar.diffloss
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    noise = DiffusionNoise.draw(4, 10, 12, torch.Generator().manual_seed(2))
    a = net.sample(z, noise, process, clip_x0=1.0)
    b = net.sample(z, noise, process, clip_x0=1.0)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.tokens, a.mean + a.std * noise.steps[:, -1])
    other = net.sample(z, DiffusionNoise.draw(4, 10, 12, torch.Generator().manual_seed(3)), process, clip_x0=1.0)
    assert not torch.allclose(a.tokens, other.tokens)


def test_kl16_decoder_loads_the_official_layout_and_decodes(tmp_path: Path) -> None:
    """A small KL VAE in kl16.ckpt's layout (encoder weights included, as in the real file)."""
    from specar.continuous.kl_vae import KLDecoder, KLDecoderConfig, load_kl_vae

    vae = KLDecoder(KLDecoderConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1))
    state = {
        k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * 0.1
        for i, (k, v) in enumerate(vae.state_dict().items())
    }
    state["encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    state["quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    path = tmp_path / "kl16.ckpt"
    torch.save({"model": state}, path)
    loaded = load_kl_vae(path)
    assert [len(level.block) for level in loaded.decoder.up] == [2, 2]
    images = loaded(torch.randn(2, 9, 4), (3, 3))
    assert images.shape == (2, 6, 6, 3) and images.dtype == torch.uint8
    with pytest.raises(CheckpointError, match="not a KL VAE"):
        torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "bad.ckpt")
        load_kl_vae(tmp_path / "bad.ckpt")


def test_a_vae_file_with_a_bad_latent_scale_is_refused(tmp_path: Path) -> None:
    from specar.continuous.kl_vae import KLDecoder, KLDecoderConfig, load_kl_vae

    state = KLDecoder(KLDecoderConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)).state_dict()
    path = tmp_path / "vae.safetensors"
    save_safetensors(state, path, config={"latent_scale": 0.5, "latent_bound": 4})
    loaded = load_kl_vae(path)
    assert loaded.latent_scale == 0.5 and loaded.latent_bound == 4.0
    for name in ("latent_scale", "latent_bound"):
        for bad in (0, -1.0, "big", float("inf")):
            save_safetensors(state, path, config={name: bad})
            with pytest.raises(CheckpointError, match=f"{name} .* must be a positive number"):
                load_kl_vae(path)


def test_vae_trainer_exports_the_decoder_the_engine_loads_and_resumes(tmp_path: Path) -> None:
    from specar.continuous.kl_vae import load_kl_vae
    from specar.demo.training import train_vae

    args = ["--steps", "3", "--batch", "4", "--warmup", "1", "--out", str(tmp_path), "--log-seconds", "1000"]
    train_vae.main(args)
    exported = tmp_path / "mar_vae.safetensors"
    decoder = load_kl_vae(exported)
    assert decoder.cfg == train_vae.DEMO_VAE and 0 < decoder.latent_scale < float("inf") and decoder.latent_bound >= 1
    trained = train_vae.KLAutoencoder()
    train_mar.init_from(tmp_path / "mar_vae-state.safetensors", trained)
    pixels = train_vae.scene_pixels(2, 5)
    latents = trained.eval().encode(pixels)
    tokens = (latents * decoder.latent_scale).flatten(2).transpose(1, 2)
    images = decoder(tokens, (8, 8))
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.uint8
    expected = ((trained.pixels(latents).detach().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)
    assert (images.float() - expected).abs().max() <= 2  # the same network, read back from fp16 weights
    first = exported.read_bytes()
    train_vae.main([*args, "--resume"])  # the state is at the last step: restores and re-exports the same file
    assert exported.read_bytes() == first
