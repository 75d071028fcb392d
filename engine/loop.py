"""The one decoding loop: any draft source, any acceptance policy; plain AR is no draft source.

    prefill -> token 0
    until every row has all its tokens:
        the draft source proposes a block (chain or tree)
        one target forward over [pending token, block]
        the processor turns logits into p; the policy's verdict picks the accepted path
        the cache keeps the pending token and the accepted path; tokens are committed
        the draft source sees the outcome; the observer sees the step (and may stop it)

Rows advance independently (each keeps its own cache length); a row that is done rides along
until the others finish, and nothing it computes is kept. The loop syncs with the device once
per target forward, to learn how far each row advanced.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .continuous.model import is_continuous_model
from .errors import NonFiniteOutputError, SettingsError
from .memory import check_fits
from .policies.evidence import code_evidence
from .drafts.base import DecodeState, DraftSource, StepOutcome
from .models.base import ImageTokenModel
from .policies import AcceptancePolicy, ExactPolicy
from .sampling import DistributionProcessor, make_generator, sample
from .types import Conditioning, DraftBlock, GenerationResult, Observer, SamplingSettings, StepEvent, TokenKind, Verdict
from .timing import Clock, synchronize
from .verify import TreeLayout, block_tree_layout, plain_step, verify_chain, verify_tree


STEP_TENSORS = 5  # [B, k, V] float32 tensors one step holds at once: two halves of logits, p, q, a residual


def step_bytes(batch: int, block: int, vocab: int) -> int:
    """Memory of one step's raw logits (both guidance halves), distributions and drafts, in float32, for
    ``batch`` images and forwards of at most ``block`` tokens."""
    return STEP_TENSORS * batch * block * vocab * 4


def _block_inputs(
    block: DraftBlock,
    layout: TreeLayout | None,
    pending: torch.Tensor,
    start: torch.Tensor,
    last: int,
    steps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Inputs, input positions, tree mask and node positions for one target forward.

    ``start [B]`` is the pending token's position; ``layout`` a tree's (:func:`block_tree_layout`;
    ``None`` for a chain, whose offsets are the run's ``steps`` 0, 1, ...). Positions past the
    image (rows that are done) are clamped, as their outputs are discarded.
    """
    if not block.size:  # a plain step: the pending token alone, at a position inside the image
        positions = start[:, None]
        return pending, positions, None, positions[:, 1:]
    inputs = torch.cat([pending, block.tokens], dim=1)
    if layout is None:
        offsets = steps[: block.size + 1]
        mask = None
    else:
        _, depth, mask = layout
        offsets = torch.cat([torch.zeros(depth.shape[0], 1, dtype=torch.long, device=depth.device), depth], 1)
        offsets, mask = offsets.to(pending.device), mask.to(pending.device)
    positions = (start[:, None] + offsets).clamp(max=last)
    return inputs, positions, mask, positions[:, 1:]


@torch.inference_mode()
def generate(
    model: ImageTokenModel,
    cond: Conditioning,
    settings: SamplingSettings | None = None,
    draft: DraftSource | None = None,
    policy: AcceptancePolicy | None = None,
    observer: Observer | None = None,
    precise_timing: bool = False,
    prefix: torch.Tensor | None = None,
) -> GenerationResult:
    """Generate ``cond.batch_size`` images' tokens with ``model`` as the target.

    ``draft=None`` is plain autoregressive decoding; ``policy`` defaults to lossless acceptance.
    ``precise_timing`` synchronises the GPU around model calls so the time split between model
    and loop is exact (benchmarks); it costs a little speed. ``prefix [B, P]`` fixes the first
    ``P`` tokens (continuing an interrupted image, or pinning a context in tests); they are
    read in one extra target forward.
    """
    _check_arguments(model, cond, settings, draft, policy, prefix)
    settings = settings or model.default_settings
    policy = (policy or ExactPolicy()).for_model(model)
    model.check_conditioning(cond)
    policy.check_sampling(settings)
    policy.check_model(model)
    B, N, dev = cond.batch_size, model.num_image_tokens, model.device
    largest = draft.largest_block if draft is not None else 0  # drafts per target forward, at most
    check_fits(  # raw logits (both guidance halves), the distributions and the drafts' of one step, in float32
        f"one step's distributions ({B} images x {largest + 1} tokens x {model.vocab_size:,} codes)",
        step_bytes(B, largest + 1, model.vocab_size),
        torch.device(dev),
        "draw fewer images at once (batch), or draft fewer tokens per forward",
    )
    generator = make_generator(settings.seed, dev)
    processor = DistributionProcessor(settings, model.constraint)
    clock = Clock(dev if precise_timing else None)
    if draft is not None:
        draft.clock = Clock(dev if precise_timing else None)
    on_host = torch.device(dev).type == "cpu"  # the host's tensors serve the model as they are
    tokens = torch.zeros(B, N + 1, dtype=torch.long, device=dev)  # column N: scratch for rows that are done
    # How each token came and in which forward: on the host, marked from each step's sync
    kinds = torch.full((B, N), -1, dtype=torch.int8)
    forward_index = torch.full((B, N), -1, dtype=torch.int32)
    marks = (kinds.numpy(), forward_index.numpy())  # the same memory, written without tensor operations
    diagnostics: dict[str, torch.Tensor] = {}  # name -> [B, N + 1], filled by _record
    started = time.perf_counter()
    if draft is not None:
        draft.prepare(model, cond, settings)

    out = clock.run(lambda: model.prefill(cond, settings.uses_cfg))
    p0 = processor(out.logits, torch.zeros(B, 1, dtype=torch.long, device=dev))
    prefill_health = _health(out.logits)  # read with the first step's sync
    nothing = torch.zeros(0, device=dev)  # a part with nothing to check
    # Built once per run, not per step (each small tensor op costs microseconds against a forward's milliseconds):
    offsets = torch.arange(largest + 1, device=dev)  # of a chain's tokens from its pending token
    no_drafts = DraftBlock.empty(B, model.vocab_size, dev)  # plain AR's block
    zeros = torch.zeros(B, dtype=torch.long, device=dev)  # a plain step's accepted counts and next kinds
    tokens[:, 0] = sample(p0[:, 0], generator)
    kinds[:, 0] = int(TokenKind.PLAIN)
    forward_index[:, 0] = 0
    committed = torch.ones(B, dtype=torch.long)
    context_hidden, condition_hidden = out.hidden, out.condition_hidden
    target_forwards, drafted, accepted_total, finished = 1, 0, 0, True
    failure = ""  # why the run stopped early on non-finite model output
    block_sizes: dict[int, int] = {}  # forwards by the tokens each fed per row (pending token and drafts)
    if prefix is not None and prefix.shape[1] > 0:
        P = _check_prefix(prefix, B, N, model.vocab_size)
        tokens[:, :P] = prefix.to(dev)
        kinds[:, :P] = int(TokenKind.PLAIN)
        forward_index[:, :P] = 0
        committed.fill_(P)
        if P > 1:
            positions = torch.arange(P - 1, device=dev).expand(B, -1)
            read = clock.run(lambda: model.forward(tokens[:, : P - 1], positions))
            context_hidden = torch.cat([context_hidden, read.hidden], 1)
            target_forwards += 1
    state = DecodeState(
        model,
        cond,
        settings.uses_cfg,
        processor,
        generator,
        tokens,
        committed,
        N - 2,
        context_hidden,
        policy.sibling_groups(),
        condition_hidden,
    )

    def notify() -> bool:
        if observer is None:
            return True
        event = StepEvent(
            target_forwards - 1,
            tokens[:, :N],
            committed.clone(),
            kinds,
            forward_index,
            target_forwards,
            N,
        )
        return observer(event) is not False

    try:
        if draft is not None:
            draft.begin(state)
        keep_going = notify()
        counts = committed.tolist()  # the host's copy, kept in step with ``committed``
        # Each row's last committed token, fed first in the next forward: after a step, the token it drew
        # (for a row already done, whatever it drew: its outputs are discarded).
        pending = tokens.gather(1, committed.to(dev)[:, None] - 1)
        while keep_going and (least := min(counts)) < N:
            state.max_drafts = N - 1 - least
            block = draft.propose(state) if draft is not None else no_drafts
            if block.size > largest:
                raise ValueError(f"{draft.name} proposed {block.size} drafts; its largest_block is {largest}")
            committed_dev = committed if on_host else committed.to(dev)
            start = committed_dev - 1  # each row's pending token: the last one committed
            layout = None if block.is_chain else block_tree_layout(block.parents, block.max_depth, block.max_children)
            inputs, positions, mask, node_positions = _block_inputs(block, layout, pending, start, N - 1, offsets)
            out = clock.run(lambda: model.forward(inputs, positions, mask))
            block_sizes[inputs.shape[1]] = block_sizes.get(inputs.shape[1], 0) + 1
            predicted = (positions + 1).clamp(max=N - 1) if processor.constrain is not None else positions
            p = processor(out.logits, predicted)  # positions matter only to a model's constraint
            if not block.size:
                verdict = plain_step(p, generator, zeros)
            else:
                read_evidence = policy.needs_code_evidence and settings.uses_cfg  # needs both guidance halves
                evidence = code_evidence(out.logits) if read_evidence else None
                # Drafts a row may still accept, 0 once it is done; a chain needs no caps while every row has room
                room = N - 1 - max(counts)
                limit = None if layout is None and room >= block.size else (N - 1 - committed_dev).clamp(min=0)
                if layout is None:
                    verdict = verify_chain(policy, p, block, node_positions, limit, generator, evidence)
                else:
                    verdict = verify_tree(
                        policy, p, block, node_positions, limit, generator, out.hidden[:B], layout[:2], evidence
                    )

            health = [
                prefill_health,
                _health(out.logits),
                _health(block.q) if block.size and not block.q_checked else nothing,
            ]
            prefill_health = nothing
            # The one sync (as floats). A plain step's counts are known (nothing accepted, next kind PLAIN).
            outcome = [verdict.accepted, verdict.next_kind] if block.size else []
            parts = outcome + [part for part in health if part.numel()]
            synced = parts[0] if len(parts) == 1 else torch.cat(parts)
            numbers = synced.tolist() if block.size else [0] * (2 * B) + synced.tolist()
            if not math.isfinite(sum(numbers[2 * B :])):  # rare: find which rows, and whose output
                sums = (synced[2 * B :] if block.size else synced).cpu()
                finite = _finite_rows(sums, [len(part) for part in health], B) | (committed == N)
                failure = _non_finite(finite, committed, model.dtype)
            if failure:
                garbled = ~finite[0]  # a non-finite prefill: the first token too was drawn from garbage
                committed = torch.where(garbled, 0, committed)
                counts = committed.tolist()
                kinds[:, 0].masked_fill_(garbled, -1)
                break
            # A done row had limit 0: it accepted nothing, its next token is PLAIN and goes to scratch column N.
            committed_before = committed
            # pending token + accepted nodes, worked out on the host: a few list operations cost less than
            # the tensor operations they replace
            a_row_was_done = max(counts) >= N
            counts_before = counts
            counts = [min(count + 1 + int(accepted), N) for count, accepted in zip(counts, numbers[:B])]
            committed = torch.from_numpy(np.array(counts, dtype=np.int64))  # a quicker constructor than torch.tensor
            if layout is None:
                if block.size or a_row_was_done:  # after a plain step a running row's cache is as it must be
                    model.truncate(committed - 1)
                path_tokens = block.tokens  # a chain's path is its first accepted drafts
            else:
                path = verdict.path.clamp(min=0)
                keep = torch.nn.functional.pad(1 + path, (1, 0))  # the block's slot 0: the pending token
                model.compact(keep, committed - committed_before)
                path_tokens = block.tokens.gather(1, path)
            _commit(tokens, path_tokens, verdict, committed_dev, offsets)
            _mark(*marks, counts_before, numbers[:B], numbers[B : 2 * B], target_forwards)
            pending = verdict.next_token[:, None]
            _record(diagnostics, verdict, committed_dev, N, offsets)
            accepted_now = int(sum(numbers[:B]))
            accepted_total += accepted_now
            drafted += accepted_now + numbers[B : 2 * B].count(int(TokenKind.CORRECTED))  # drafts tested
            state.committed = committed
            target_forwards += 1
            if draft is not None:
                accepted_rows = [int(took) if start < N else None for start, took in zip(counts_before, numbers[:B])]
                draft.observe(state, StepOutcome(block, verdict, p, out.hidden, committed_before, accepted_rows))
            keep_going = notify()
        finished = not failure and bool(int(committed.min()) >= N)
    finally:
        if draft is not None:
            draft.end()
        model.release()
    synchronize(dev)
    wall = time.perf_counter() - started
    result = GenerationResult(
        tokens=tokens[:, :N].cpu(),
        kinds=kinds,
        forward_index=forward_index,
        committed=committed.clone(),
        target_forwards=target_forwards,
        drafter_forwards=draft.forwards if draft is not None else 0,
        drafted=drafted,
        accepted=accepted_total,
        wall_seconds=wall,
        model_seconds=clock.seconds + (draft.seconds if draft is not None else 0.0),
        finished=finished,
        diagnostics={name: values[:, :N].float().cpu() for name, values in diagnostics.items()},
        draft_summary=draft.summary() if draft is not None else "",
        block_sizes=block_sizes,
    )
    if failure:
        raise NonFiniteOutputError(failure, result)
    return result


def _health(values: torch.Tensor) -> torch.Tensor:
    """One number per row of raw logits ``[R, k, V]`` (both guidance halves) or draft probabilities
    ``[B, n, V]``: their sum, non-finite exactly when a value is NaN or infinite. Raw logits, because
    greedy processing would turn NaN into a valid-looking argmax."""
    return values.sum((-2, -1), dtype=torch.float32)


def _finite_rows(sums: torch.Tensor, lengths: list[int], batch: int) -> torch.Tensor:
    """``[3, batch]`` bool (prefill, target forward, drafts) from the host copy of the :func:`_health`
    sums; an empty part (nothing checked) is finite, guidance halves fold onto their image."""
    parts = torch.split(torch.isfinite(sums), lengths)
    return torch.stack(
        [part.view(-1, batch).all(0) if len(part) else torch.ones(batch, dtype=torch.bool) for part in parts]
    )


def _non_finite(finite: torch.Tensor, committed: torch.Tensor, dtype: torch.dtype) -> str:
    """The reason to stop when rows of ``finite [3, B]`` (prefill, target forward, drafts) are not all true
    ("" when they are)."""
    for ok, who, first in zip(finite, ("target", "target", "draft source"), (True, False, False)):
        if not bool(ok.all()):
            token = 0 if first else int(committed[~ok].min())
            hint = (
                " (fp16 overflow? try bf16 or fp32)" if dtype == torch.float16 else " (NaN weights in the checkpoint?)"
            )
            return (
                f"the {who} returned NaN or infinite logits at image token {token}{hint}; the tokens before it are kept"
            )
    return ""


# generate's arguments: the kind each must be, and how to make one
_ARGUMENT_KINDS: tuple[tuple[str, type, str], ...] = (
    ("model", ImageTokenModel, "load one with specar.load_model"),
    ("cond", Conditioning, "e.g. Conditioning.classes([3])"),
    ("settings", SamplingSettings, "e.g. model.default_settings.with_(seed=1), or None"),
    ("draft", DraftSource, "e.g. AutoDrafts() or JacobiDrafts(16), or None for plain AR"),
    ("policy", AcceptancePolicy, "e.g. make_policy('gsd', 0.5), or None for lossless acceptance"),
    ("prefix", torch.Tensor, "a tensor of codes [images, P], or None"),
)


def _check_arguments(*values: object) -> None:
    """Refuse an argument of the wrong kind by name, before any work: a name where a draft source belongs, say,
    would otherwise fail deep inside the loop. Continuous-token (MAR) models have a loop of their own."""
    if is_continuous_model(values[0]):
        raise SettingsError(f"{values[0].name} is a continuous-token (MAR) model: generate_continuous decodes it")
    for value, (name, kind, example) in zip(values, _ARGUMENT_KINDS):
        if not isinstance(value, kind) and not (value is None and name not in ("model", "cond")):
            raise SettingsError(f"generate's {name}: expected {kind.__name__} ({example}), got {type(value).__name__}")


def _check_prefix(prefix: torch.Tensor, batch: int, total: int, vocab: int) -> int:
    if prefix.dtype.is_floating_point or prefix.dtype.is_complex or prefix.dtype == torch.bool:
        raise SettingsError(f"prefix must hold integer codes, got {prefix.dtype}")
    if prefix.dim() != 2 or prefix.shape[0] != batch or not 0 < prefix.shape[1] < total:
        raise SettingsError(f"prefix must be [batch={batch}, P] with 0 < P < {total}, got {list(prefix.shape)}")
    if int(prefix.min()) < 0 or int(prefix.max()) >= vocab:
        raise SettingsError(f"prefix tokens must lie in 0..{vocab - 1}")
    return int(prefix.shape[1])


def _record(
    records: dict[str, torch.Tensor], verdict: Verdict, committed: torch.Tensor, N: int, steps: torch.Tensor
) -> None:
    """Store the policy's per-draft quantities at the positions of the drafts it tested: the accepted
    ones and the first rejected one (whose position got the correction). A done row tested none.
    ``steps`` are 0, 1, ... (at least as many as the block's drafts)."""
    for name, values in verdict.diagnostics.items():
        B, n = values.shape
        if name not in records:
            records[name] = torch.full((B, N + 1), float("nan"), device=values.device)
        offsets = steps[None, :n]
        tested = offsets < (verdict.accepted + (verdict.next_kind == int(TokenKind.CORRECTED)))[:, None]
        slots = torch.where(tested, (committed[:, None] + offsets).clamp(max=N), N)  # column N: scratch
        records[name].scatter_(1, slots, values.float())


def _commit(
    tokens: torch.Tensor, path_tokens: torch.Tensor, verdict: Verdict, committed: torch.Tensor, steps: torch.Tensor
) -> None:
    """Write each row's accepted path (its tokens ``path_tokens [B, d]``, any value past the accepted
    ones) and next token at the row's committed offset.

    Slots that take nothing are written to the scratch column N rather than read back and kept, and
    so is a done row's next token: it sits at offset ``committed = N``, having accepted nothing.
    ``steps`` are 0, 1, ... (at least ``d + 1`` of them).
    """
    N = tokens.shape[1] - 1
    new_tokens, target = verdict.next_token[:, None], committed[:, None]
    depth = path_tokens.shape[1]
    if depth:
        offsets, accepted = steps[: depth + 1], verdict.accepted[:, None]
        new_tokens = torch.where(offsets < accepted, torch.cat([path_tokens, new_tokens], 1), new_tokens)
        target = torch.where(offsets <= accepted, target + offsets, N)
    tokens.scatter_(1, target, new_tokens)


def _mark(
    kinds: np.ndarray,
    forward_index: np.ndarray,
    before: list[int],
    accepted: list[float],
    next_kinds: list[float],
    step: int,
) -> None:
    """Mark each running row's newly committed tokens in the host's ``kinds`` and ``forward_index``
    ``[B, N]``: its ``accepted`` drafts, then the token the target drew (of kind ``next_kinds``), all
    committed by forward ``step``. ``before`` are the rows' committed counts before the step; a done
    row (``before = N``) commits nothing. Plain list and array work: no tensor operation."""
    total = kinds.shape[1]
    for row, (start, took, kind) in enumerate(zip(before, accepted, next_kinds)):
        if start < total:
            end = start + int(took)
            kinds[row, start:end] = int(TokenKind.ACCEPTED)
            kinds[row, end] = int(kind)
            forward_index[row, start : end + 1] = step
