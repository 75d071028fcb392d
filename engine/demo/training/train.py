"""Train the demo target or drafter (LlamaGen architecture) on procedural scenes.

    python -m specar.demo.training.train --role target --threads 1 --minutes 100 --out out/demo-target

Every batch is rendered on the fly from ``(seed, step)``, so the data never repeats, needs no
disk, and a resumed run sees exactly the batches an uninterrupted one would. The codebook is
read from ``--codebook`` or fitted there first. Checkpoints (model, AdamW moments, step, the
schedule) are one safetensors file in ``--out``, rewritten every few minutes; ``--resume``
continues from it, and ``--init`` starts a second phase (a new schedule) from earlier weights.
The final weights go to ``--out/<role>.safetensors`` in fp16 with the GPTConfig and class names
in the header; copy them (and the codebook) to ``engine/demo/weights/`` to ship them.

``--teacher`` distils the drafter from a trained target: the loss is the cross-entropy against the
teacher's next-token distribution instead of the data token. The acceptance rate of speculative
decoding is one minus the total variation between the two models' distributions, so matching the
teacher (not the data) is what a drafter is for; the validation loss stays on data tokens.

``--minutes`` fixes the number of steps from the speed of the first steps (the cosine schedule
needs a known length); the log prints the resulting ``--steps`` that reproduces the run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...checkpoints import load_into, read_state_dict, save_safetensors
from ...models.llamagen.checkpoint import read_gpt
from ...models.llamagen.gpt import GPT, GPTConfig
from ..codebook import PatchCodebook, fit_codebook
from ..scenes import CLASS_NAMES, NUM_CLASSES, sample_scenes
from ...lab.training_state import Schedule, load_state, save_state, stream_seed
from ..paths import WEIGHTS_DIR
from . import native_bf16

GRID = 16
# Architecture and peak learning rate per role.
ROLES: dict[str, dict[str, int]] = {
    "target": {"n_layer": 4, "dim": 192, "n_head": 6, "ffn_hidden": 512},
    "drafter": {"n_layer": 2, "dim": 128, "n_head": 4, "ffn_hidden": 344},
}
ROLE_LR = {"target": 2e-3, "drafter": 3e-3}
# Independent random streams derived from the run seed.
TRAIN_STREAM, VAL_STREAM, CODEBOOK_STREAM, DROPOUT_STREAM = 0, 1, 2, 3
CODEBOOK_IMAGES = 20_000
VAL_BATCH = 64
VAL_SEED = 0
CALIBRATION_STEPS = 10  # timed steps that set the step count of a --minutes run
BUDGET_MARGIN = 0.97  # share of the --minutes budget given to training steps (the rest: evals, saves)


def load_or_fit_codebook(path: Path, size: int, seed: int) -> PatchCodebook:
    """The shipped codebook, or a freshly fitted one saved at ``path`` (deterministic in seed)."""
    if path.is_file():
        return PatchCodebook.load(path)
    images, _ = sample_scenes(CODEBOOK_IMAGES, stream_seed(seed, CODEBOOK_STREAM))
    started = time.time()
    codebook = fit_codebook(images, k=size, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    codebook.save(path)
    log(f"fitted a {size}-code patch codebook in {time.time() - started:.1f}s -> {path}")
    return codebook


def scene_tokens(codebook: PatchCodebook, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh scenes as (class ids [n], codes [n, 256])."""
    images, ids = sample_scenes(n, seed)
    return torch.from_numpy(ids), codebook.encode(images)


def drop_classes(ids: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Replace a ``rate`` share of class ids by the null class, so the model also learns p(x) for CFG."""
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(ids.shape, generator=gen) < rate, torch.full_like(ids, NUM_CLASSES), ids)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay matrices and embeddings, not norm gains (as LlamaGen does)."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def init_from(path: Path, model: torch.nn.Module) -> None:
    """Warm-start ``model`` from a training state or an exported file (a second phase of training)."""
    tensors = read_state_dict(path)
    if any(k.startswith("model.") for k in tensors):
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_into(model, {k: v.float() for k, v in tensors.items()}, path.name)


def export_weights(path: Path, model: GPT, extra: dict[str, object]) -> None:
    """The shipped file: fp16 weights, GPTConfig and class names in the header."""
    tensors = {k: v.half() for k, v in model.state_dict().items()}
    config = {"family": "llamagen", **model.cfg.to_dict(), "class_names": list(CLASS_NAMES), **extra}
    save_safetensors(tensors, path, config=config)


def log(message: str) -> None:
    print(message, flush=True)


class Trainer:
    """One training run: model, optimizer, data streams and the step loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.amp = native_bf16(self.device) if args.bf16 is None else args.bf16
        self.codebook = load_or_fit_codebook(Path(args.codebook), args.codebook_size, args.seed)
        arch = {k: getattr(args, k) or v for k, v in ROLES[args.role].items()}
        self.peak_lr = args.lr or ROLE_LR[args.role]
        self.cfg = GPTConfig(
            vocab_size=self.codebook.size, model_type="c2i", num_classes=NUM_CLASSES, grid_size=GRID, **arch
        )
        torch.manual_seed(args.seed)
        self.model = GPT(self.cfg)
        self.model.init_weights(0.02, generator=torch.Generator().manual_seed(args.seed))
        if args.init:
            init_from(Path(args.init), self.model)
        self.model.to(self.device)
        self.opt = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=self.peak_lr, betas=(0.9, 0.95))
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.teacher = self.load_teacher(Path(args.teacher)) if args.teacher else None
        # The same held-out scenes whatever the run seed, so phases and runs compare.
        self.val = scene_tokens(self.codebook, args.val_images, stream_seed(VAL_SEED, VAL_STREAM))
        self.step = 0
        self.total: int | None = args.steps
        self.warmup = min(args.warmup, max(1, args.steps // 10)) if args.steps else args.warmup
        self.out = Path(args.out)
        self.state_path = self.out / f"{args.role}-state.safetensors"

    def load_teacher(self, path: Path) -> GPT:
        """A frozen trained model over the same codebook, classes and grid as the one trained."""
        teacher = read_gpt(path, {})
        mismatched = [
            k
            for k in ("vocab_size", "num_classes", "grid_size", "model_type")
            if getattr(teacher.cfg, k) != getattr(self.cfg, k)
        ]
        if mismatched:
            raise SystemExit(f"--teacher {path} differs from the model being trained in {', '.join(mismatched)}")
        teacher = teacher.to(self.device, torch.float32).eval().requires_grad_(False)
        teacher.reset_rope()
        return teacher

    def loss(self, ids: torch.Tensor, codes: torch.Tensor, net: torch.nn.Module, distil: bool = False) -> torch.Tensor:
        ids, codes = ids.to(self.device), codes.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = net(ids, codes)
            if distil and self.teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(self.teacher(ids, codes).float(), dim=-1)
                return -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        return F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())

    def train_step(self) -> float:
        args = self.args
        ids, codes = scene_tokens(self.codebook, args.batch, stream_seed(args.seed, TRAIN_STREAM, self.step))
        ids = drop_classes(ids, args.class_dropout, stream_seed(args.seed, DROPOUT_STREAM, self.step))
        schedule = Schedule(self.peak_lr, self.warmup, self.total or 10**9)
        for group in self.opt.param_groups:
            group["lr"] = schedule.lr(self.step)
        loss = self.loss(ids, codes, self.forward, distil=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean loss on the held-out scenes, run eagerly (a compiled graph would recompile for it)."""
        self.model.eval()
        ids, codes = self.val
        losses = [float(self.loss(i, c, self.model)) for i, c in zip(ids.split(VAL_BATCH), codes.split(VAL_BATCH))]
        self.model.train()
        return sum(losses) / len(losses)

    def meta(self) -> dict[str, object]:
        return {
            "step": self.step,
            "total_steps": self.total,
            "warmup": self.warmup,
            "peak_lr": self.peak_lr,
            "role": self.args.role,
            "seed": self.args.seed,
            "batch": self.args.batch,
            "gpt": self.cfg.to_dict(),
            "teacher": Path(self.args.teacher).name if self.args.teacher else None,
        }

    def resume(self) -> None:
        meta = load_state(self.state_path, self.model, self.opt)
        if meta["gpt"] != self.cfg.to_dict() or meta["seed"] != self.args.seed or meta["batch"] != self.args.batch:
            raise SystemExit(f"{self.state_path} was written by a different configuration; start a new --out")
        self.step, self.total, self.warmup = int(meta["step"]), meta["total_steps"], int(meta["warmup"])
        self.peak_lr = float(meta["peak_lr"])
        log(f"resumed {self.state_path} at step {self.step}/{self.total}")

    def calibrate(self, started: float, losses: list[float]) -> None:
        """Fix the step count of a --minutes run from the time of the steps after warm-up."""
        for _ in range(2):  # the first steps include compilation and allocator warm-up
            losses.append(self.train_step())
        t0 = time.time()
        for _ in range(CALIBRATION_STEPS):
            losses.append(self.train_step())
        per_step = (time.time() - t0) / CALIBRATION_STEPS
        left = self.args.minutes * 60 * BUDGET_MARGIN - (time.time() - started)
        self.total = max(self.step + int(left / per_step), 2 * self.warmup)
        log(
            f"{per_step:.2f}s/step -> {self.total} steps in {self.args.minutes} min "
            f"(reproduce with --steps {self.total} --warmup {self.warmup})"
        )

    def run(self) -> None:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in self.model.parameters())
        log(
            f"{args.role}: {n_params / 1e6:.2f}M params {self.cfg.to_dict()} on {self.device}, "
            f"{torch.get_num_threads()} threads, batch {args.batch}, peak lr {self.peak_lr}, "
            f"{'bf16 autocast' if self.amp else 'fp32'}"
        )
        if args.resume and self.state_path.is_file():
            self.resume()
        started = last_log = last_save = last_eval = time.time()
        losses: list[float] = []
        tokens_per_step = args.batch * self.cfg.num_image_tokens
        if self.total is None:
            self.calibrate(started, losses)
        assert self.total is not None
        while self.step < self.total:
            losses.append(self.train_step())
            now = time.time()
            if now - last_log >= args.log_seconds or self.step == self.total:
                rate = len(losses) * tokens_per_step / (now - last_log)
                log(
                    f"step {self.step}/{self.total} loss {sum(losses) / len(losses):.4f} "
                    f"lr {self.opt.param_groups[0]['lr']:.2e} {rate:.0f} tok/s {(now - started) / 60:.1f} min"
                )
                losses, last_log = [], now
            if now - last_eval >= args.eval_minutes * 60:
                log(f"step {self.step} val loss {self.val_loss():.4f}")
                last_eval = time.time()
            if now - last_save >= args.save_minutes * 60:
                save_state(self.state_path, self.model, self.opt, self.meta())
                last_save = time.time()
        self.finish()

    def finish(self) -> None:
        val = self.val_loss()
        save_state(self.state_path, self.model, self.opt, self.meta())
        final = self.out / f"{self.args.role}.safetensors"
        export_weights(
            final,
            self.model,
            {
                "role": self.args.role,
                "train_steps": self.step,
                "seed": self.args.seed,
                "batch": self.args.batch,
                "val_loss": round(val, 4),
            },
        )
        log(f"done: {self.step} steps, val loss {val:.4f} -> {final}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m specar.demo.training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=sorted(ROLES), required=True)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock budget; fixes the step count after a few timed steps")
    budget.add_argument("--steps", type=int, help="exact number of optimizer steps (reproducible schedule)")
    p.add_argument("--out", default="out/demo", help="checkpoint and output directory")
    p.add_argument("--resume", action="store_true", help="continue from <out>/<role>-state.safetensors if present")
    p.add_argument(
        "--init",
        default=None,
        help="start from these weights (a state or exported file) with a fresh optimizer and schedule; "
        "give a new --seed so the batches differ from the first phase",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="distil from this trained model's safetensors (the drafter from the shipped target)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 for background runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per role)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--val-images", type=int, default=256, help="held-out scenes for the validation loss")
    p.add_argument(
        "--codebook",
        default=str(WEIGHTS_DIR / "codebook.safetensors"),
        help="patch codebook file; fitted and written there if missing",
    )
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for matmuls (fp32 weights and optimizer); default: where the device multiplies bf16 "
        "natively (emulated bf16 is many times slower than fp32)",
    )
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    p.add_argument("--n-layer", dest="n_layer", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--n-head", dest="n_head", type=int, default=None)
    p.add_argument("--ffn-hidden", dest="ffn_hidden", type=int, default=None)
    p.add_argument("--log-seconds", type=float, default=60.0)
    p.add_argument("--eval-minutes", type=float, default=5.0)
    p.add_argument("--save-minutes", type=float, default=5.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Trainer(args).run()


if __name__ == "__main__":
    main()
