"""Train the continuous demo pair: small MAR models over 4x4 RGB patches (48-d tokens).

    python -m specar.demo.training.train_mar --role target --steps 6000 --lr 1.5e-3 --threads 1 --out out/mar-target
    python -m specar.demo.training.train_mar --role drafter --steps 6000 --lr 2e-3 --seed 1 --threads 1 \
        --out out/mar-drafter

A 32x32 scene becomes 8x8 continuous tokens, each the 48 values of a 4x4 patch in [-1, 1], so no
VAE is needed and decoding is a reshape. Large patches keep the grid small: an object covers a
handful of tokens that a few MAR steps decide together, where 2x2 patches left hundreds of tokens
to be sampled in parallel, each on its own, and a shape came out as a cloud of dots. Both models
are trained on the data independently, as CSpD pairs independently trained MAR sizes; the
exported weights are the exponential moving average of the trained ones, as MAR evaluates.
Batches are rendered on the fly from ``(seed, step)`` (as in :mod:`.train`); checkpoints are
rewritten every few minutes and ``--resume`` continues. The exported file (fp16, config, patch
size and class names in the header) goes to ``--out/mar_<role>.safetensors``; copy it to
``engine/demo/weights/`` to ship it.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from ...continuous.checkpoint import save_mar
from ...continuous.mar import MAR, MARConfig
from ...continuous.model import PatchPixels
from ..scenes import CLASS_NAMES, NUM_CLASSES, sample_scenes
from ...lab.training_state import Schedule, load_state, save_state, stream_seed
from .train import init_from, log, param_groups

PATCH = 4  # pixels per token side: 32x32 scenes become 8x8 tokens of 48 values
GRID = 32 // PATCH


def demo_mar(width: int, depth: int, head_width: int) -> MARConfig:
    """A demo MAR on the 8x8 patch grid: ``depth`` encoder and decoder blocks of ``width``, a 3-block head."""
    return MARConfig(
        seq_h=GRID,
        seq_w=GRID,
        token_dim=3 * PATCH * PATCH,
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
TRAIN_STREAM, VAL_STREAM, DROP_STREAM, NOISE_STREAM = 10, 11, 12, 13
VAL_IMAGES = 128


def scene_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh scenes as (class ids ``[n]``, tokens ``[n, 64, 48]``)."""
    images, ids = sample_scenes(n, seed)
    return torch.from_numpy(ids), PatchPixels(PATCH).tokens(torch.from_numpy(images))


class MARTrainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
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
        self.val = scene_batch(VAL_IMAGES, stream_seed(0, VAL_STREAM))

    def loss(self, ids: torch.Tensor, tokens: torch.Tensor, seed: int, model: MAR | None = None) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.args.bf16):
            return (model or self.model).training_loss(tokens, ids, torch.Generator().manual_seed(seed))

    def train_step(self) -> float:
        args = self.args
        ids, tokens = scene_batch(args.batch, stream_seed(args.seed, TRAIN_STREAM, self.step))
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
        log(f"mar {args.role}: {n_params / 1e6:.2f}M params, {torch.get_num_threads()} threads, batch {args.batch}")
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
                "patch": PATCH,
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
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
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
