"""Train the demo's EAGLE-style tree head on the demo target's own samples.

    python -m specar.demo.training.tree_head_data --images 10240 --out out/tree-head-data-10k
    python -m specar.demo.training.train_tree_head --data out/tree-head-data-10k --steps 3000 --threads 2 \\
        --out out/tree-head
    python -m specar.demo.training.train_tree_head --data out/tree-head-data-10k --steps 3000 --redundancy 0.9 \\
        --out out/tree-head-redundancy

(the first two lines made the shipped head: 44 minutes on two CPU threads).

Every batch runs the frozen target teacher-forced over the sampled images (both CFG halves: the
class and the null class), which gives the features the head reads and the states and
next-token distributions it must reproduce. The loss is EAGLE-1's: smooth-L1 on the predicted
hidden state plus 0.1 x the cross-entropy of the read-out against the target's distribution,
with uniform noise (width 0.2) on the input features so the head tolerates its own errors when
it drafts deeper.

``--redundancy TAU`` is CASCADE's drafter-training variant (our reconstruction, see
engine/policies/cascade.py): for every position the target's top ``--alternatives`` tokens are
fed beside the real one (each seeing the same prefix), and those whose target hidden state has
cosine similarity >= TAU with the real token's are treated as interchangeable with it: their
probability is moved onto the real token in the soft target (class half only). The head then
learns the target's distribution up to tokens the target itself cannot tell apart.

Checkpoints (head, AdamW moments, step) go to ``--out/tree-head-state.safetensors`` every few
minutes; ``--resume`` continues. The result is ``--out/tree_head.safetensors`` (fp16).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...checkpoints import read_state_dict, save_safetensors
from ...errors import SettingsError, SpecARError
from ...drafts.tree_head import TreeHead, TreeHeadConfig, save_tree_head
from ..model import load_demo
from .train import Schedule, load_state, log, save_state, stream_seed
from .tree_head_data import read_chunks

FEATURE_NOISE = 0.2  # EAGLE's uniform noise width on input features
CLASS_LOSS_WEIGHT = 0.1  # EAGLE-1: v_loss + 0.1 * p_loss
HEAD_HEADS, HEAD_FFN = 6, 512  # the demo target's head count and feed-forward width


def target_states(target, class_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced target states ``[2B, N + 1, D]`` for the class rows then the null-class rows:
    slot 0 is the state after the condition, slot t + 1 the state after image token t."""
    gpt = target.gpt
    ids = torch.cat([class_ids, torch.full_like(class_ids, gpt.cfg.num_classes)])
    h = torch.cat([gpt.cls_embedding(ids)[:, : gpt.cfg.cls_token_num], gpt.tok_embeddings(tokens.repeat(2, 1))], 1)
    slots = torch.arange(h.shape[1]).expand(h.shape[0], -1)
    return gpt.run_layers(h, slots, None)[:, gpt.cfg.cls_token_num - 1 :]


def interchangeable_tokens(
    target,
    class_ids: torch.Tensor,
    tokens: torch.Tensor,
    states: torch.Tensor,
    p: torch.Tensor,
    alternatives: int,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top ``alternatives`` other tokens at every position (``p [B, N, V]``, slot t
    predicting image token t, class half) and which of them are interchangeable with the real
    token: fed in its place after the same prefix, they leave the target in a state with cosine
    similarity >= ``tau`` to the real one. Returns ``alt [B, N, m]`` and ``similar [B, N, m]``."""
    gpt = target.gpt
    B, N = tokens.shape
    m = alternatives
    alt = p.masked_fill(F.one_hot(tokens, p.shape[-1]).bool(), -1.0).topk(m, dim=-1).indices
    cls_slots = gpt.cfg.cls_token_num
    real_length = cls_slots + N - 1
    real = torch.cat([gpt.cls_embedding(class_ids)[:, :cls_slots], gpt.tok_embeddings(tokens[:, :-1])], 1)
    h = torch.cat([real, gpt.tok_embeddings(alt.flatten(1))], 1)
    slot_of_position = cls_slots + torch.arange(N)  # the slot image token t occupies in the real sequence
    alt_slot = slot_of_position.repeat_interleave(m)
    rope = torch.cat([torch.arange(real_length), alt_slot])
    mask = torch.zeros(real_length + N * m, real_length + N * m, dtype=torch.bool)
    mask[:real_length, :real_length] = torch.ones(real_length, real_length, dtype=torch.bool).tril()
    alt_rows = real_length + torch.arange(N * m)
    mask[alt_rows, :real_length] = torch.arange(real_length)[None, :] < alt_slot[:, None]  # the prefix before t
    mask[alt_rows, alt_rows] = True
    hidden = gpt.run_layers(h, rope.expand(B, -1), None, mask.expand(B, 1, -1, -1))
    alt_states = hidden[:, real_length:].view(B, N, m, -1)
    real_states = states[:B, 1:]  # [B, N, D] state after the real image token t
    similar = F.cosine_similarity(alt_states, real_states[:, :, None], dim=-1) >= tau
    return alt, similar


def merge_interchangeable(
    p: torch.Tensor, tokens: torch.Tensor, alt: torch.Tensor, similar: torch.Tensor
) -> torch.Tensor:
    """``p`` with the mass of the tokens interchangeable with the real token moved onto it."""
    moved = (p.gather(-1, alt) * similar).sum(-1)
    soft = p.scatter(-1, alt, p.gather(-1, alt) * ~similar)
    return soft.scatter_add(-1, tokens[..., None], moved[..., None])


class HeadTrainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.target = load_demo(device="cpu")
        self.target.gpt.requires_grad_(False)
        self.tokens, self.class_ids = read_chunks(Path(args.data))
        cfg = self.target.cfg
        self.cfg = TreeHeadConfig(
            dim=cfg.dim,
            n_head=HEAD_HEADS,
            ffn_hidden=HEAD_FFN,
            vocab_size=cfg.vocab_size,
            grid_size=cfg.grid_size,
            norm_eps=cfg.norm_eps,
            rope_base=cfg.rope_base,
        )
        torch.manual_seed(args.seed)
        self.head = TreeHead(self.cfg)
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.out = Path(args.out)
        self.state_path = self.out / "tree-head-state.safetensors"
        self.step, self.total = 0, args.steps
        n = self.tokens.shape[0]
        if not 0 < args.val_images < n:
            raise SettingsError(
                f"{args.data} holds {n} images: --val-images {args.val_images} must leave some to train on "
                "(draw more with tree_head_data --images, or hold out fewer)"
            )
        self.val_index = torch.arange(n - args.val_images, n)
        self.train_count = n - args.val_images

    def batch(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.args.seed, 0, self.step))
        return torch.randint(0, self.train_count, (self.args.batch,), generator=gen)

    @torch.no_grad()
    def redundancy_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Interchangeable alternatives of every training image, computed once and cached in --out."""
        args = self.args
        path = self.out / f"redundancy-tau{args.redundancy}-m{args.alternatives}.safetensors"
        if path.is_file():
            cached = read_state_dict(path)
            return cached["alt"], cached["similar"]
        alts, similars = [], []
        for index in torch.arange(self.tokens.shape[0]).split(32):
            ids, tokens = self.class_ids[index], self.tokens[index]
            states = target_states(self.target, ids, tokens)
            p_cls = F.softmax(self.target.gpt.logits(states[: len(index), :-1]), dim=-1)
            alt, similar = interchangeable_tokens(
                self.target, ids, tokens, states, p_cls, args.alternatives, args.redundancy
            )
            alts.append(alt.to(torch.int16))
            similars.append(similar.to(torch.uint8))
        result = torch.cat(alts), torch.cat(similars)
        save_safetensors({"alt": result[0], "similar": result[1]}, path)
        log(
            f"redundancy targets: {float(result[1].float().mean()):.3f} of the top-{args.alternatives} alternatives "
            f"are interchangeable at tau {args.redundancy} -> {path}"
        )
        return result

    def loss(
        self, class_ids: torch.Tensor, tokens: torch.Tensor, noise: bool, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """EAGLE-1's loss on images ``index`` of the data (the redundancy targets are looked up by it)."""
        target = self.target
        with torch.no_grad():
            states = target_states(target, class_ids, tokens)  # [2B, N + 1, D]
            p = F.softmax(target.gpt.logits(states[:, 1:-1]), dim=-1)  # [2B, N - 1, V]: slot t predicts token t + 1
            stats: dict[str, float] = {}
            if index is not None and self.redundancy is not None:
                B = tokens.shape[0]
                alt, similar = (t[index].long() for t in self.redundancy)
                p_cls = F.softmax(target.gpt.logits(states[:B, :-1]), dim=-1)  # slot t predicts token t
                soft = merge_interchangeable(p_cls, tokens, alt, similar.bool())
                p = torch.cat([soft[:, 1:], p[B:]])
                stats["interchangeable"] = float(similar.float().mean())
        features = states[:, :-1]
        if noise:
            features = features + (torch.rand(features.shape, generator=None) - 0.5) * FEATURE_NOISE
        embeds = target.gpt.tok_embeddings(tokens).repeat(2, 1, 1).detach()
        predicted = self.head(embeds, features)  # [2B, N, D]: state after token t
        regression = F.smooth_l1_loss(predicted, states[:, 1:])
        log_q = F.log_softmax(target.gpt.logits(predicted[:, :-1]), dim=-1)
        classification = -(p * log_q).sum(-1).mean()
        accuracy = (log_q.argmax(-1) == p.argmax(-1)).float().mean()
        stats.update(regression=regression.item(), classification=classification.item(), top1=accuracy.item())
        return regression + CLASS_LOSS_WEIGHT * classification, stats

    def train_step(self) -> dict[str, float]:
        schedule = Schedule(self.args.lr, self.args.warmup, self.total)
        for group in self.opt.param_groups:
            group["lr"] = schedule.lr(self.step)
        index = self.batch()
        loss, stats = self.loss(self.class_ids[index], self.tokens[index], noise=True, index=index)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), 0.5)
        self.opt.step()
        self.step += 1
        return stats

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.head.eval()
        stats = [
            self.loss(self.class_ids[i], self.tokens[i], noise=False, index=i)[1] for i in self.val_index.split(32)
        ]
        self.head.train()
        return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}

    def meta(self) -> dict[str, object]:
        return {
            "step": self.step,
            "total_steps": self.total,
            "seed": self.args.seed,
            "batch": self.args.batch,
            "redundancy": self.args.redundancy,
            "head": self.cfg.to_dict(),
        }

    def run(self) -> None:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.redundancy = self.redundancy_targets() if args.redundancy is not None else None
        if args.resume and self.state_path.is_file():
            meta = load_state(self.state_path, self.head, self.opt)
            self.step = int(meta["step"])
            log(f"resumed at step {self.step}")
        log(
            f"tree head {sum(p.numel() for p in self.head.parameters()) / 1e6:.2f}M params, {self.train_count} "
            f"training images, batch {args.batch}, {self.total} steps, redundancy {args.redundancy}"
        )
        started = last_log = last_save = time.time()
        window: list[dict[str, float]] = []
        while self.step < self.total:
            window.append(self.train_step())
            now = time.time()
            if now - last_log >= args.log_seconds or self.step == self.total:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                log(
                    f"step {self.step}/{self.total} "
                    + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                    + f" {(now - started) / 60:.1f} min"
                )
                window, last_log = [], now
            if now - last_save >= args.save_minutes * 60:
                save_state(self.state_path, self.head, self.opt, self.meta())
                last_save = time.time()
        val = self.validate()
        save_state(self.state_path, self.head, self.opt, self.meta())
        final = self.out / "tree_head.safetensors"
        save_tree_head(
            self.head,
            final,
            {
                "train_steps": self.step,
                "seed": args.seed,
                "batch": args.batch,
                "redundancy": args.redundancy,
                "validation": {k: round(v, 4) for k, v in val.items()},
            },
        )
        log(f"done: {self.step} steps, validation {json.dumps(val)} -> {final}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m specar.demo.training.train_tree_head", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", type=Path, default=Path("out/tree-head-data"))
    p.add_argument("--out", type=Path, default=Path("out/tree-head"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--redundancy",
        type=float,
        default=None,
        metavar="TAU",
        help="CASCADE variant: cosine threshold of interchangeable tokens (off by default)",
    )
    p.add_argument("--alternatives", type=int, default=4, help="alternative tokens scored per position (--redundancy)")
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--log-seconds", type=float, default=60.0)
    p.add_argument("--save-minutes", type=float, default=5.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        HeadTrainer(args).run()
    except SpecARError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
