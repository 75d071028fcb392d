"""Train an EAGLE-style tree head for a discrete-token target by self-distillation (EAGLE, LANTERN).

The target first draws its own images (:mod:`.self_drawn`). The head, one decoder layer of the
target's own shape, reads ``[embedding of token t, target state after token t-1]`` and learns to
predict the target's state after token t. The loss is EAGLE-1's: smooth-L1 on the predicted state
plus 0.1 x the cross-entropy of its read-out (through the target's own output head) against the
target's next-token distribution, with uniform noise on the input features so the head tolerates its
own errors when it drafts deeper. Both guidance halves train it, since it drafts for both. Every
step reads the target teacher-forced over its batch, which is cheaper than storing hidden states.

Everything lives in ``--out``: the drawn images (``data/``), a checkpoint rewritten every few
minutes (``--resume`` continues it exactly), and the result ``tree_head.safetensors`` (fp16, with
its config, the validation agreement with the target and a drafting check in the header), which
``--tree-head`` and the Tree Head node load. ``--redundancy TAU`` trains CASCADE's variant
(:mod:`.redundancy`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ContextManager

import torch
import torch.nn.functional as F

from ..atomic import replace_atomically
from ..checkpoints import read_state_dict, save_safetensors
from ..drafts.tree_drafts import TreeHeadDrafts, TreeShape
from ..drafts.tree_head import TreeHead, TreeHeadConfig, check_head_fits, place_head, save_tree_head
from ..errors import SettingsError
from ..loop import generate
from ..memory import check_fits
from ..models.base import ImageTokenModel
from ..progress import CountBar
from ..scoring import teacher_forced_states
from .redundancy import interchangeable_tokens, merge_interchangeable
from .self_drawn import DrawPlan
from .training_state import Schedule, load_state, save_state, stream_seed

FEATURE_NOISE = 0.2  # EAGLE's uniform noise on input features: width 0.2, U(-0.1, 0.1)
CLASS_LOSS_WEIGHT = 0.1  # EAGLE-1: v_loss + 0.1 * p_loss
GRAD_CLIP = 0.5
BATCH_STREAM = 0  # the random stream that picks each step's images
STATE_FILE = "train-head-state.safetensors"
HEAD_FILE = "tree_head.safetensors"


@dataclass(frozen=True)
class HeadTrainingOptions:
    """The knobs of one training run (stored in its checkpoint: a resumed run must match them)."""

    steps: int = 3000
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 100
    seed: int = 0
    val_images: int = 256
    redundancy: float | None = None  # CASCADE's cosine threshold; None trains plain EAGLE targets
    alternatives: int = 4
    save_minutes: float = 5.0
    check_images: int = 4  # held-out conditions the finished head drafts as a check (0: no check)


def check_held_out(images: int, val_images: int) -> None:
    """Refuse a split that leaves no image to validate on or none to train on."""
    if not 0 < val_images < images:
        raise SettingsError(
            f"{images} drawn images and --val-images {val_images}: hold out at least one image "
            "and leave at least one to train on (draw more with --images, or hold out fewer)"
        )


def head_config(model: ImageTokenModel) -> TreeHeadConfig:
    """A head of one decoder layer shaped like the target's, checked to fit it."""
    heads, ffn = model.layer_shape()
    cfg = TreeHeadConfig(
        dim=model.hidden_size, n_head=heads, ffn_hidden=ffn, vocab_size=model.vocab_size, grid_size=model.grid[0]
    )
    check_head_fits(cfg, model, "to train")
    return cfg


def step_bytes(model: ImageTokenModel, cfg: TreeHeadConfig, batch: int, guided: bool) -> int:
    """Memory of one training step besides the target's weights: the teacher-forced outputs and the
    distributions built from them, the head's activations and gradients, its weights and AdamW moments."""
    rows, n = (2 if guided else 1) * batch, model.num_image_tokens + 1
    outputs = 6 * rows * n * (model.vocab_size + cfg.dim) * 4
    layer = 2 * rows * n * (8 * cfg.dim + 3 * cfg.ffn_hidden) * 4
    params = sum(p.numel() for p in TreeHead(cfg).parameters())
    return outputs + layer + 16 * params


class HeadTrainer:
    """One training run of a head for ``model`` on images it drew (``tokens``, ``conditions``)."""

    def __init__(
        self,
        model: ImageTokenModel,
        plan: DrawPlan,
        tokens: torch.Tensor,
        conditions: torch.Tensor,
        options: HeadTrainingOptions,
        out: Path,
    ) -> None:
        self.model, self.plan, self.options, self.out = model, plan, options, out
        self.tokens, self.conditions = tokens, conditions
        check_held_out(tokens.shape[0], options.val_images)
        self.train_count = tokens.shape[0] - options.val_images
        self.guided = model.default_settings.uses_cfg
        self.cfg = head_config(model)
        device = torch.device(model.device)
        check_fits(
            f"a training step of {options.batch} images",
            step_bytes(model, self.cfg, options.batch, self.guided),
            device,
            "lower --batch",
        )
        for network in model.networks():
            network.requires_grad_(False)
        torch.manual_seed(options.seed)
        self.head = TreeHead(self.cfg).to(device)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=options.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.schedule = Schedule(options.lr, options.warmup, options.steps)
        self.step = 0
        self.redundancy: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- data -------------------------------------------------------------------------------------

    def batch_images(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.options.seed, BATCH_STREAM, self.step))
        return torch.randint(0, self.train_count, (self.options.batch,), generator=gen)

    def autocast(self) -> ContextManager[object]:
        """bf16 autocast on GPUs that support it (the head's master weights stay fp32)."""
        device = torch.device(self.model.device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def redundancy_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image's interchangeable alternatives (:mod:`.redundancy`), computed once and kept in ``--out``."""
        options = self.options
        assert options.redundancy is not None
        path = self.out / f"redundancy-tau{options.redundancy}-m{options.alternatives}.safetensors"
        if path.is_file():
            kept = read_state_dict(path)
            if kept["alt"].shape[0] == self.tokens.shape[0]:
                return kept["alt"].long(), kept["similar"].bool()
        alts, similars = [], []
        bar = CountBar("finding interchangeable tokens", self.tokens.shape[0])
        for index in torch.arange(self.tokens.shape[0]).split(8):
            cond = self.plan.condition(self.conditions[index].tolist())
            alt, similar = interchangeable_tokens(
                self.model, cond, self.tokens[index], options.alternatives, options.redundancy
            )
            alts.append(alt.cpu().to(torch.int32))
            similars.append(similar.cpu().to(torch.uint8))
            bar.update(int(index[-1]) + 1)
        alt, similar = torch.cat(alts), torch.cat(similars)
        replace_atomically(path, lambda partial: save_safetensors({"alt": alt, "similar": similar}, partial))
        return alt.long(), similar.bool()

    # -- the loss ---------------------------------------------------------------------------------

    def loss(self, index: torch.Tensor, noise: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """EAGLE-1's loss on drawn images ``index`` (with their interchangeable alternatives, if any)."""
        model, device = self.model, torch.device(self.model.device)
        cond = self.plan.condition(self.conditions[index].tolist())
        tokens = self.tokens[index].to(device)
        with torch.no_grad():
            read = teacher_forced_states(model, cond, tokens, self.guided)
            states = read.hidden.float().clone()  # [R, N + 1, D]; cloned out of inference mode
            p = read.logits[:, 1:-1].float().softmax(-1)  # [R, N - 1, V]: slot t + 1 predicts token t + 1
            if self.redundancy is not None:
                batch = tokens.shape[0]
                alt, similar = (t[index].to(device) for t in self.redundancy)
                p_cond = read.logits[:batch, :-1].float().softmax(-1)  # slot t predicts token t
                p = torch.cat([merge_interchangeable(p_cond, tokens, alt, similar)[:, 1:], p[batch:]])
            embeds = model.embed_codes(tokens.repeat(states.shape[0] // tokens.shape[0], 1)).float().clone()
        features = states[:, :-1]
        if noise:
            features = features + (torch.rand(features.shape, device=device) - 0.5) * FEATURE_NOISE
        with self.autocast():
            predicted = self.head(embeds, features)  # [R, N, D]: the state after token t
            regression = F.smooth_l1_loss(predicted.float(), states[:, 1:])
            logits = model.logits_from_hidden(predicted[:, :-1].to(model.dtype)).float()
        log_q = logits.log_softmax(-1)
        classification = -(p * log_q).sum(-1).mean()
        top1 = (log_q.argmax(-1) == p.argmax(-1)).float().mean()
        stats = {"regression": regression.item(), "classification": classification.item(), "top1": top1.item()}
        if not math.isfinite(stats["regression"] + stats["classification"]):  # before it reaches the head's weights
            raise SettingsError(
                f"the head's loss became NaN or infinite at step {self.step + 1}: training diverged (lower --lr) or "
                f"{self.model.name} returns NaN or infinite states (its weights); start again in a new --out"
            )
        return regression + CLASS_LOSS_WEIGHT * classification, stats

    def train_step(self) -> dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = self.schedule.lr(self.step)
        loss, stats = self.loss(self.batch_images(), noise=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), GRAD_CLIP)
        self.opt.step()
        self.step += 1
        return stats

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss terms and top-1 agreement with the target over the held-out images."""
        self.head.eval()
        held_out = torch.arange(self.train_count, self.tokens.shape[0])
        parts = [self.loss(index, noise=False)[1] for index in held_out.split(self.options.batch)]
        self.head.train()
        return {key: round(sum(part[key] for part in parts) / len(parts), 4) for key in parts[0]}

    def drafting_check(self) -> dict[str, float]:
        """A copy of the head drafts a few held-out conditions with the default dynamic tree: tokens per target
        forward, the figure that says whether the head pays (1.0: every draft rejected)."""
        if self.options.check_images == 0:
            return {}
        head = place_head(copy.deepcopy(self.head).eval(), self.model)
        index = torch.arange(self.train_count, self.tokens.shape[0])[: self.options.check_images]
        cond = self.plan.condition(self.conditions[index].tolist())
        result = generate(self.model, cond, self.model.default_settings, TreeHeadDrafts(head, TreeShape()))
        return {"images": len(index), "tokens_per_forward": round(result.tokens_per_forward, 3)}

    # -- the run ----------------------------------------------------------------------------------

    def meta(self) -> dict[str, object]:
        return {"step": self.step, "options": asdict(self.options), "head": self.cfg.to_dict()}

    def resume(self, state: Path) -> None:
        meta = load_state(state, self.head, self.opt)
        if meta.get("options") != asdict(self.options) or meta.get("head") != self.cfg.to_dict():
            raise SettingsError(
                f"{state} is a run with other settings: resume with the same options, or choose another --out"
            )
        self.step = int(str(meta["step"]))

    def run(self, resume: bool) -> tuple[Path, dict[str, object]]:
        """Train (or continue), validate, check drafting, and write the head; returns its path and record."""
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.out / STATE_FILE
        if state.is_file() and not resume:
            raise SettingsError(
                f"{self.out} already holds a head in training: add --resume to continue it, or choose another --out"
            )
        if resume and state.is_file():
            self.resume(state)
        if self.options.redundancy is not None:
            self.redundancy = self.redundancy_targets()
        bar = CountBar("training the head", self.options.steps)
        bar.update(self.step)
        last_save = time.monotonic()
        while self.step < self.options.steps:
            stats = self.train_step()
            bar.update(self.step, f"state loss {stats['regression']:.4f}, top-1 {stats['top1']:.3f}")
            if time.monotonic() - last_save >= self.options.save_minutes * 60:
                save_state(state, self.head, self.opt, self.meta())
                last_save = time.monotonic()
        save_state(state, self.head, self.opt, self.meta())
        record: dict[str, object] = {
            "target": self.model.name,
            "images": int(self.tokens.shape[0]),
            "train_steps": self.step,
            "batch": self.options.batch,
            "seed": self.options.seed,
            "redundancy": self.options.redundancy,
            "validation": self.validate(),
            "drafting_check": self.drafting_check(),
        }
        path = self.out / HEAD_FILE
        replace_atomically(path, lambda partial: save_tree_head(self.head, partial, record))
        replace_atomically(self.out / "training.json", lambda partial: partial.write_text(json.dumps(record, indent=1)))
        return path, record
