"""Train the continuous demo's tokenizer: a small KL autoencoder from 32x32 scenes to 8x8x4 latents.

    python -m specar.demo.training.train_vae --steps 3000 --out out/mar-vae

MAR generates the latents of a KL-regularised autoencoder, not pixels: a 4-d latent per 4x4 patch
is a token a small diffusion head can model, and the decoder's convolutions draw the edges that
cross patch borders from the latents around them, which a head sampling each 48-value pixel patch
on its own could not. The layout is the LDM/MAR ``AutoencoderKL`` (``encoder.*``, ``quant_conv``,
``post_quant_conv``, ``decoder.*``) at a small width, so the engine decodes the demo with the same
:class:`~specar.continuous.kl_vae.KLDecoder` that decodes MAR's KL-16 latents. The loss is L1 plus
squared error on pixels plus a KL term strong enough to keep the posterior noisy, so the decoder
learns to forgive the small errors of generated latents. The exported file holds both halves (the
MAR trainer encodes with it) and, in its header, the scale that gives the latents unit variance.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoints import save_safetensors
from ...continuous.kl_vae import KLDecoder, KLDecoderConfig
from ...lab.training_state import Schedule, load_state, save_state, stream_seed
from ...models.vq16 import ResBlock, SpatialAttention, group_norm
from ..scenes import sample_scenes
from .train import init_from, log, param_groups

DEMO_VAE = KLDecoderConfig(embed_dim=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
TRAIN_STREAM, VAL_STREAM, NOISE_STREAM = 20, 21, 22
VAL_IMAGES = 256
SCALE_IMAGES = 2048  # scenes whose latent spread sets the exported scale


class Downsample(nn.Module):
    """A stride-2 3x3 convolution (the encoder's counterpart of the decoder's upsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class KLEncoder(nn.Module):
    """Pixels ``[B, 3, H, W]`` in [-1, 1] -> posterior moments ``[B, 2C, H/f, W/f]``."""

    def __init__(self, cfg: KLDecoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            previous = widths[max(i - 1, 0)]
            layers += [ResBlock(previous if j == 0 else width, width) for j in range(cfg.num_res_blocks)]
            if i < len(widths) - 1:
                layers.append(Downsample(width))
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(
            ResBlock(widths[-1], widths[-1]), SpatialAttention(widths[-1]), ResBlock(widths[-1], widths[-1])
        )
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.embed_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.mid(self.down(self.conv_in(x))))))


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of the diagonal Gaussian posterior (the reparameterisation, so gradients reach the encoder)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * logvar).exp() * noise


class KLAutoencoder(KLDecoder):
    """The engine's decoder plus an encoder, with the LDM ``AutoencoderKL`` parameter names."""

    def __init__(self, cfg: KLDecoderConfig = DEMO_VAE) -> None:
        super().__init__(cfg, latent_scale=1.0)
        self.encoder = KLEncoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)

    def moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``[B, C, h, w]``."""
        mean, logvar = self.quant_conv(self.encoder(pixels)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A posterior sample (the mean when ``generator`` is None), unscaled, ``[B, C, h, w]``."""
        mean, logvar = self.moments(pixels)
        return mean if generator is None else posterior_sample(mean, logvar, generator)

    def loss(self, pixels: torch.Tensor, kl_weight: float, generator: torch.Generator) -> torch.Tensor:
        mean, logvar = self.moments(pixels)
        recon = self.pixels(posterior_sample(mean, logvar, generator))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return (recon - pixels).abs().mean() + (recon - pixels).pow(2).mean() + kl_weight * kl


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """``uint8 [n, 32, 32, 3]`` -> ``[n, 3, 32, 32]`` in [-1, 1]."""
    return torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1.0


def scene_pixels(n: int, seed: int) -> torch.Tensor:
    """``n`` fresh scenes as ``[n, 3, 32, 32]`` in [-1, 1]."""
    return to_pixels(sample_scenes(n, seed)[0])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1]."""
    mse = float(((a.clamp(-1, 1) - b) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    model = KLAutoencoder()
    if args.init:
        init_from(Path(args.init), model)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    schedule = Schedule(args.lr, min(args.warmup, args.steps // 10), args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "mar_vae-state.safetensors"
    meta = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "vae": DEMO_VAE.to_dict()}
    step = 0
    if args.resume and state_path.is_file():
        saved = load_state(state_path, model, opt)
        if {k: saved.get(k) for k in meta} != meta:
            raise SystemExit(f"{state_path} was written by a different configuration; start a new --out")
        step = int(saved["step"])
        log(f"resumed at step {step}/{args.steps}")
    log(f"demo VAE: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {torch.get_num_threads()} threads")
    val = scene_pixels(VAL_IMAGES, stream_seed(0, VAL_STREAM))
    started = last_log = last_save = time.time()
    losses: list[float] = []
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = schedule.lr(step)
        pixels = scene_pixels(args.batch, stream_seed(args.seed, TRAIN_STREAM, step))
        loss = model.loss(
            pixels, args.kl_weight, torch.Generator().manual_seed(stream_seed(args.seed, NOISE_STREAM, step))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        now = time.time()
        if now - last_log >= args.log_seconds or step == args.steps:
            with torch.no_grad():
                quality = psnr(model.pixels(model.encode(val)), val)
            log(
                f"step {step}/{args.steps} loss {sum(losses) / len(losses):.4f} val PSNR {quality:.1f} dB "
                f"{(now - started) / 60:.1f} min"
            )
            losses, last_log = [], now
        if now - last_save >= args.save_minutes * 60:
            save_state(state_path, model, opt, {**meta, "step": step})
            last_save = time.time()
    save_state(state_path, model, opt, {**meta, "step": step})
    export(model, out / "mar_vae.safetensors", args)


@torch.no_grad()
def export(model: KLAutoencoder, path: Path, args: argparse.Namespace) -> None:
    """fp16 weights of both halves; the header holds the decoder config, the latent scale
    and the bound of the scaled latents."""
    model.eval()
    latents = model.encode(scene_pixels(SCALE_IMAGES, stream_seed(0, VAL_STREAM, 1)), torch.Generator().manual_seed(0))
    scale = 1.0 / float(latents.std())
    bound = math.ceil(float(latents.abs().max()) * scale)  # the range the sampler clips clean-latent estimates to
    val = scene_pixels(VAL_IMAGES, stream_seed(0, VAL_STREAM))
    quality = psnr(model.pixels(model.encode(val)), val)
    config = {
        "kind": "specar-kl-vae",
        **DEMO_VAE.to_dict(),
        "latent_scale": round(scale, 5),
        "latent_bound": bound,
        "train_steps": args.steps,
        "kl_weight": args.kl_weight,
        "val_psnr": round(quality, 2),
    }
    save_safetensors({k: v.half().contiguous() for k, v in model.state_dict().items()}, path, config=config)
    log(f"done: val PSNR {quality:.2f} dB, latent scale {scale:.4f} -> {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m specar.demo.training.train_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, required=True, help="optimizer steps (cosine schedule length)")
    p.add_argument("--out", default="out/mar-vae")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", default=None, help="start from these weights with a fresh optimizer and schedule")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-3, help="weight of the mean KL per latent value")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--log-seconds", type=float, default=60.0)
    p.add_argument("--save-minutes", type=float, default=3.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args)


if __name__ == "__main__":
    main()
