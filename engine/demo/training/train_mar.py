"""Train the continuous demo pair: small MAR models over the demo VAE's 8x8x4 latents.

    python -m specar.demo.training.train_vae --steps 2500 --out out/mar-vae
    python -m specar.demo.training.train_mar --role target --steps 6000 --lr 1.5e-3 \
        --vae out/mar-vae/mar_vae.safetensors --out out/mar-target
    python -m specar.demo.training.train_mar --role target --steps 6000 --lr 6e-4 --seed 1 \
        --init out/mar-target/mar_target-state.safetensors --vae out/mar-vae/mar_vae.safetensors \
        --out out/mar-target-2
    python -m specar.demo.training.train_mar --role drafter --steps 6000 --lr 2e-3 --seed 1 --threads 1 \
        --vae out/mar-vae/mar_vae.safetensors --out out/mar-drafter

A 32x32 scene becomes 8x8 continuous tokens: the scaled posterior samples of the demo's KL VAE
(:mod:`.train_vae`), four values per 4x4 patch, as MAR trains on its KL-16 latents. Both models
are trained on the data independently, as CSpD pairs independently trained MAR sizes; the
exported weights are the exponential moving average of the trained ones, as MAR evaluates. The
target's second phase (``--init``, a fresh schedule at a lower rate) is what sharpens its edges.
Batches are rendered on the fly from ``(seed, step)`` (as in :mod:`.train`); checkpoints are
rewritten every few minutes and ``--resume`` continues. The exported file (fp16, config and class
names in the header) goes to ``--out/mar_<role>.safetensors``; copy it and the VAE to
``engine/demo/weights/`` to ship them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ...checkpoints import read_safetensors_metadata
from ...continuous.checkpoint import save_mar
from ...continuous.mar import MAR, MARConfig
from ..paths import WEIGHTS_DIR
from ..scenes import CLASS_NAMES, NUM_CLASSES, sample_scenes
from ...lab.training_state import Schedule, load_state, save_state, stream_seed
from . import native_bf16
from .train import init_from, log, param_groups
from .train_vae import DEMO_VAE, KLAutoencoder, to_pixels

GRID = 32 // DEMO_VAE.downsampling


def demo_mar(width: int, depth: int, head_width: int) -> MARConfig:
    """A demo MAR on the 8x8 latent grid: ``depth`` encoder and decoder blocks of ``width``, a 3-block head."""
    return MARConfig(
        seq_h=GRID,
        seq_w=GRID,
        token_dim=DEMO_VAE.embed_dim,
        encoder_dim=width,
        encoder_depth=depth,
        encoder_heads=4,
        decoder_dim=width,
        decoder_depth=depth,
        decoder_heads=4,
        num_classes=NUM_CLASSES,
        buffer_size=16,
        head_width=head_width,
        head_depth=3,
        diffusion_batch_mul=2,
    )


ROLES: dict[str, MARConfig] = {"target": demo_mar(128, 3, 256), "drafter": demo_mar(64, 2, 128)}
TRAIN_STREAM, VAL_STREAM, DROP_STREAM, NOISE_STREAM, LATENT_STREAM = 10, 11, 12, 13, 14
VAL_IMAGES = 128


class SceneLatents:
    """Fresh scenes as MAR tokens: the frozen VAE's scaled posterior samples."""

    def __init__(self, vae_path: Path) -> None:
        self.vae = KLAutoencoder()
        init_from(vae_path, self.vae)
        self.vae.eval().requires_grad_(False)
        self.scale = float(json.loads(read_safetensors_metadata(vae_path)["config"])["latent_scale"])

    @torch.no_grad()
    def batch(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(class ids ``[n]``, tokens ``[n, 64, C]``) of ``n`` scenes rendered from ``seed``."""
        images, ids = sample_scenes(n, seed)
        latents = self.vae.encode(to_pixels(images), torch.Generator().manual_seed(stream_seed(seed, LATENT_STREAM)))
        return torch.from_numpy(ids), (latents * self.scale).flatten(2).transpose(1, 2).contiguous()


class MARTrainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.amp = native_bf16(torch.device("cpu")) if args.bf16 is None else args.bf16
        self.cfg = ROLES[args.role]
        torch.manual_seed(args.seed)
        self.model = MAR(self.cfg)
        self.model.init_weights(torch.Generator().manual_seed(args.seed))
        if args.init:
            init_from(Path(args.init), self.model)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
        self.schedule = Schedule(args.lr, min(args.warmup, args.steps // 10), args.steps)
        self.step = 0
        self.out = Path(args.out)
        self.state_path = self.out / f"mar_{args.role}-state.safetensors"
        self.latents = SceneLatents(Path(args.vae))
        self.val = self.latents.batch(VAL_IMAGES, stream_seed(0, VAL_STREAM))

    def loss(self, ids: torch.Tensor, tokens: torch.Tensor, seed: int, model: MAR | None = None) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            return (model or self.model).training_loss(tokens, ids, torch.Generator().manual_seed(seed))

    def train_step(self) -> float:
        args = self.args
        ids, tokens = self.latents.batch(args.batch, stream_seed(args.seed, TRAIN_STREAM, self.step))
        drop = torch.rand(
            ids.shape, generator=torch.Generator().manual_seed(stream_seed(args.seed, DROP_STREAM, self.step))
        )
        ids = torch.where(drop < args.class_dropout, torch.full_like(ids, -1), ids)
        for group in self.opt.param_groups:
            group["lr"] = self.schedule.lr(self.step)
        loss = self.loss(ids, tokens, stream_seed(args.seed, NOISE_STREAM, self.step))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of the weights; its decay ramps up over the first steps so early weights fade fast."""
        decay = min(self.args.ema, (1 + self.step) / (10 + self.step))
        for averaged, current in zip(self.ema.parameters(), self.model.parameters()):
            averaged.lerp_(current, 1 - decay)

    @torch.no_grad()
    def val_loss(self, model: MAR | None = None) -> float:
        """Loss on fixed held-out scenes with fixed masks and noise, so evaluations compare."""
        return float(self.loss(*self.val, seed=stream_seed(0, VAL_STREAM, 1), model=model))

    def meta(self) -> dict[str, object]:
        return {
            "step": self.step,
            "role": self.args.role,
            "seed": self.args.seed,
            "batch": self.args.batch,
            "steps": self.args.steps,
            "mar": self.cfg.to_dict(),
            "init": self.args.init,
            "ema": self.args.ema,
        }

    def run(self) -> None:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in self.model.parameters())
        log(
            f"mar {args.role}: {n_params / 1e6:.2f}M params, {torch.get_num_threads()} threads, batch {args.batch}, "
            f"{'bf16 autocast' if self.amp else 'fp32'}"
        )
        if args.resume and self.state_path.is_file():
            meta = load_state(self.state_path, self.model, self.opt, self.ema)
            if meta["mar"] != self.cfg.to_dict() or meta["steps"] != args.steps or meta["batch"] != args.batch:
                raise SystemExit(f"{self.state_path} was written by a different configuration; start a new --out")
            self.step = int(meta["step"])
            log(f"resumed at step {self.step}/{args.steps}")
        started = last_log = last_save = time.time()
        losses: list[float] = []
        while self.step < args.steps:
            losses.append(self.train_step())
            now = time.time()
            if now - last_log >= args.log_seconds or self.step == args.steps:
                log(
                    f"step {self.step}/{args.steps} loss {sum(losses) / len(losses):.4f} "
                    f"lr {self.opt.param_groups[0]['lr']:.2e} {(now - started) / 60:.1f} min"
                )
                losses, last_log = [], now
            if now - last_save >= args.save_minutes * 60:
                save_state(self.state_path, self.model, self.opt, self.meta(), self.ema)
                log(f"step {self.step} val loss {self.val_loss():.4f}, EMA {self.val_loss(self.ema):.4f}")
                last_save = time.time()
        val = self.val_loss(self.ema)
        save_state(self.state_path, self.model, self.opt, self.meta(), self.ema)
        final = self.out / f"mar_{args.role}.safetensors"
        save_mar(
            self.ema,
            final,
            {
                "class_names": list(CLASS_NAMES),
                "pixels": "vae",
                "role": args.role,
                "train_steps": self.step,
                "batch": args.batch,
                "seed": args.seed,
                "val_loss": round(val, 4),
                "init": Path(args.init).name if args.init else None,
            },
        )
        log(f"done: {self.step} steps, val loss {val:.4f} -> {final}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m specar.demo.training.train_mar", description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=sorted(ROLES), required=True)
    p.add_argument("--vae", default=str(WEIGHTS_DIR / "mar_vae.safetensors"), help="the demo VAE (train_vae's output)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps (cosine schedule length)")
    p.add_argument("--out", default="out/mar")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--init",
        default=None,
        help="start from these weights (a state or exported file) with a fresh "
        "optimizer and schedule; give a new --seed so the batches differ",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999, help="decay of the exported moving average of the weights")
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (fp32 weights and optimizer); default: where the CPU multiplies bf16 natively "
        "(emulated bf16 is many times slower than fp32)",
    )
    p.add_argument("--log-seconds", type=float, default=60.0)
    p.add_argument("--save-minutes", type=float, default=5.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    MARTrainer(args).run()


if __name__ == "__main__":
    main()
