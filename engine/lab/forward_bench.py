"""How long one target forward takes for 1, 4 and 16 new tokens and for a 60-node draft tree.

Speculative decoding turns tokens per forward into speed only as far as a forward of k tokens
costs about as much as a forward of one; this measures that on real-size random-weight models
(no checkpoint needed), through the same adapters and KV cache generation uses, with both CFG
halves. Weights are random (std 0.02), which does not change the time of a forward.

    specar forward-bench --models janus-pro-1b,llamagen-xl --device cuda --dtype bf16
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..checkpoints import allocate
from ..errors import SettingsError
from ..memory import check_fits
from ..timing import synchronize
from ..models.base import ImageTokenModel
from ..models.llamagen.gpt import GPTConfig
from ..types import Conditioning
from ..verify import tree_attention, tree_layout

BLOCKS = (1, 4, 16)
PROMPT_TOKENS = 32  # text tokens before the image for the text-to-image models


def sixty_node_tree() -> list[int]:
    """Parents of a static 60-node tree: 6 first guesses, 3 children each, 2 grandchildren each."""
    parents = [-1] * 6
    parents += [i for i in range(6) for _ in range(3)]
    parents += [6 + i for i in range(18) for _ in range(2)]
    return parents


class _FixedTokenizer:
    """Stands in for a tokenizer: every prompt is the same ``PROMPT_TOKENS`` ids."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(10, 10 + PROMPT_TOKENS))


def _random_init(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` (built on the meta device) with normal random weights of ``dtype`` on ``device``, made in that
    type, after checking the device can hold them."""
    module = module.to(dtype)  # still on the meta device
    parameters = sum(param.numel() for param in module.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))
    check_fits(
        f"a random model of {parameters / 1e9:.1f}B parameters in {str(dtype).removeprefix('torch.')}",
        nbytes,
        device,
        "time a smaller model (--models) or a narrower number format (--dtype)",
    )
    module = allocate(module, device)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.02)
    return module.eval().requires_grad_(False)


def _janus(text: dict[str, object], device: torch.device, dtype: torch.dtype) -> ImageTokenModel:
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    from ..models.janus import JanusImageModel

    hidden = int(text["hidden_size"])
    # the understanding tower never runs in generation: a minimal one that keeps the 24x24 grid
    vision = dict(
        image_size=384,
        patch_size=16,
        num_image_tokens=576,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=hidden,
        mlp_ratio=2,
    )
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=102400, max_position_embeddings=16384, **text),
        vision_config=vision,
        vq_config=dict(image_token_embed_dim=hidden, projection_dim=hidden),
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    model = _random_init(model, device, dtype)
    rotary = model.model.language_model.rotary_emb
    model.model.language_model.rotary_emb = type(rotary)(config=config.text_config).to(device)  # buffers were on meta
    model.generation_config = GenerationConfig(
        bos_token_id=100000, pad_token_id=100015, generation_kwargs={"boi_token_id": 100016}
    )
    return JanusImageModel(model, _FixedTokenizer(), "random Janus")


def _llamagen(config: GPTConfig, device: torch.device, dtype: torch.dtype) -> ImageTokenModel:
    from ..models.llamagen.adapter import LlamaGenModel
    from ..models.llamagen.gpt import GPT

    with torch.device("meta"):
        gpt = GPT(config)
    gpt = _random_init(gpt, device, dtype)
    gpt.reset_rope()
    return LlamaGenModel(gpt, None, "random LlamaGen")


# name -> builder(device, dtype); Janus-Pro sizes from its config.json, LlamaGen from its presets
MODELS: dict[str, Callable[[torch.device, torch.dtype], ImageTokenModel]] = {
    "janus-pro-1b": lambda d, t: _janus(
        dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
        ),
        d,
        t,
    ),
    "janus-pro-7b": lambda d, t: _janus(
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=30,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
        d,
        t,
    ),
    "llamagen-xl": lambda d, t: _llamagen(GPTConfig.preset("GPT-XL", grid_size=24), d, t),
    "llamagen-xxl": lambda d, t: _llamagen(GPTConfig.preset("GPT-XXL", grid_size=24), d, t),
    "llamagen-b": lambda d, t: _llamagen(GPTConfig.preset("GPT-B", grid_size=24), d, t),  # a drafter size for XL
    # small stand-ins that run the same code in seconds (tests, CPU smoke runs)
    "tiny-janus": lambda d, t: _janus(
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
        d,
        t,
    ),
    "tiny-llamagen": lambda d, t: _llamagen(GPTConfig(dim=64, n_layer=2, n_head=4, grid_size=24), d, t),
}


@dataclass
class ForwardTimes:
    model: str
    device: str
    dtype: str
    context: int  # image tokens already in the cache when a block is timed
    milliseconds: dict[str, float]  # "k=1", "k=4", "k=16", "tree-60" -> median time of one forward

    def relative(self, label: str) -> float:
        """Time of ``label`` in units of a one-token forward."""
        return self.milliseconds[label] / self.milliseconds["k=1"]


def _block(
    size: int | None, context: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokens, positions and tree mask of a chain of ``size`` tokens, or of the 60-node tree."""
    if size is not None:
        positions = torch.arange(context, context + size, device=device)[None]
        return torch.ones_like(positions), positions, None
    parents = sixty_node_tree()
    _, depth = tree_layout(parents)
    positions = context + torch.tensor([0, *depth], device=device)[None]
    return torch.ones_like(positions), positions, tree_attention(parents).to(device)


@torch.inference_mode()
def time_forwards(
    name: str, device: torch.device, dtype: torch.dtype, context: int = 256, repeats: int = 20
) -> ForwardTimes:
    """Median wall time of one target forward per block shape, after ``context`` cached image tokens."""
    if name not in MODELS:
        raise SettingsError(f"unknown model {name!r} for forward-bench (known: {', '.join(MODELS)})")
    model = MODELS[name](device, dtype)
    cond = Conditioning(prompts=("x",)) if model.conditioning_kind == "prompt" else Conditioning.classes([1])
    room = model.num_image_tokens - 20  # the timed blocks go after the context
    if context > room:
        tokens = model.num_image_tokens
        raise SettingsError(f"--context {context}: {name} has {tokens} image tokens; give at most {room}")
    model.prefill(cond, guided=True)
    model.forward(torch.ones(1, context, dtype=torch.long, device=device), torch.arange(context, device=device)[None])
    model.truncate(torch.tensor([context]))
    times: dict[str, float] = {}
    for label, size in [(f"k={k}", k) for k in BLOCKS] + [("tree-60", None)]:
        tokens, positions, mask = _block(size, context, device)
        samples = []
        for attempt in range(repeats + 3):  # the first forwards warm kernels and allocator up
            synchronize(device)
            start = time.perf_counter()
            model.forward(tokens, positions, mask)
            synchronize(device)
            if attempt >= 3:
                samples.append((time.perf_counter() - start) * 1000)
            model.truncate(torch.tensor([context]))
        times[label] = statistics.median(samples)
    model.release()
    return ForwardTimes(name, str(device), str(dtype).replace("torch.", ""), context, times)


def markdown_table(rows: list[ForwardTimes]) -> str:
    labels = [f"k={k}" for k in BLOCKS] + ["tree-60"]
    head = "| model | device | dtype | " + " | ".join(f"{label} ms (x k=1)" for label in labels) + " |"
    lines = [head, "|" + "---|" * (3 + len(labels))]
    for row in rows:
        cells = [f"{row.milliseconds[label]:.2f} ({row.relative(label):.2f}x)" for label in labels]
        lines.append(f"| {row.model} | {row.device} | {row.dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TREE_TOKENS = 1 + len(sixty_node_tree())  # the tree-60 forward reads the pending token and 60 nodes


def relative_cost(times: ForwardTimes, tokens: float) -> float:
    """Cost of a forward of ``tokens`` tokens in one-token forwards, interpolated between the timed
    blocks (1, 4, 16 and the 61 of the tree) and extended linearly past the largest. A forward is
    never dearer than a larger one can be run instead of it (a timing below a smaller block's is
    a slow matrix-product path for few rows, e.g. fp32 or bf16 on some CPUs), so each time is
    capped by the larger blocks' times first."""
    raw = [(float(k), times.milliseconds[f"k={k}"]) for k in BLOCKS] + [
        (float(TREE_TOKENS), times.milliseconds["tree-60"])
    ]
    capped = [(x, min(t for _, t in raw[i:])) for i, (x, _) in enumerate(raw)]
    points = [(x, t / capped[0][1]) for x, t in capped]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if tokens <= x1 or (x1, y1) == points[-1]:
            return max(y0, y0 + (tokens - x0) * (y1 - y0) / (x1 - x0))
    return points[-1][1]


def projected_speedup(row: dict[str, object], target: ForwardTimes, drafter: ForwardTimes | None) -> float | None:
    """Wall-clock speed-up over plain AR of a benchmark row's method on ``target``: its tokens per
    forward over the mean cost of the blocks it verifies, each forward priced at its own block size (a
    method that mixes plain steps with long blocks, as auto does, costs less than a forward of its mean
    block; a row without its sizes is priced at that mean), plus its drafter forwards at ``drafter``'s
    one-token cost (``None`` when the method drafts with a model and no drafter was timed).
    A projection: it leaves out the loop's own time and assumes the demo's acceptance."""
    per_forward = float(row["tokens_per_forward"])
    sizes = row.get("block_sizes") or {row.get("tokens_per_verify") or 1.0: 1}
    assert isinstance(sizes, dict)
    cost = sum(count * relative_cost(target, float(size)) for size, count in sizes.items()) / sum(sizes.values())
    drafter_calls = float(row.get("drafter_forwards_per_call") or 0.0)
    if drafter_calls:
        if drafter is None:
            return None
        forwards = float(row["target_forwards_per_image"]) * int(row["images"]) / int(row["calls"])
        cost += drafter_calls / forwards * min(drafter.milliseconds.values()) / min(target.milliseconds.values())
    return per_forward / cost


def projection_table(rows: list[dict[str, object]], targets: list[ForwardTimes], drafter: ForwardTimes | None) -> str:
    """Markdown: each benchmark method's projected speed-up on each timed model."""
    head = (
        "| method | demo tok/fwd | tokens per verify | "
        + " | ".join(f"{t.model} {t.device} {t.dtype}" for t in targets)
        + " |"
    )
    lines = [head, "|" + "---|" * (3 + len(targets))]
    for row in rows:
        if row["method"] in ("ar", "ar2"):
            continue
        cells = []
        for target in targets:
            speedup = projected_speedup(row, target, drafter)
            cells.append("needs --drafter-model" if speedup is None else f"{speedup:.2f}x")
        lines.append(
            f"| {row['method']} | {float(row['tokens_per_forward']):.2f} | "
            f"{float(row.get('tokens_per_verify') or 1.0):.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
