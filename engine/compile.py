"""The compiled fast path: a model's forward through ``torch.compile`` with static shapes.

Small-batch decoding spends most of its time on per-operation dispatch, not arithmetic. Inductor
fuses the elementwise work into a few kernels, and on CPUs it also freezes the weights (treats
them as constants and pre-packs them for the matrix library), which is where most of the gain is.
Compiled code is specialised to shapes, so the model's cache has a fixed capacity and every block
of ``k`` new tokens is padded up to a *bucket*: ``1, 2, 3, 5, 9, 17, 33, ...`` (a power of two
plus one fits a draft of ``2**n`` tokens behind the pending token exactly). A block reuses the
smallest bucket already compiled that holds it (unless that pads it more than fourfold), so a run
compiles one or two shapes, not one per tail length. A size that must vary from call to call (on
CPUs, how much of the cache attention reads) is compiled as a dynamic size, so it costs no
recompilation.

The first call of a bucket compiles it; that time is counted in :attr:`CompiledForward.compile_seconds`
so hosts can report it. Where compilation is not available (no C compiler, Apple MPS, an
operation inductor cannot lower) the forward runs eagerly after a one-line notice, with the same
results up to floating-point rounding.
"""

from __future__ import annotations

import shutil
import sys
import time
import types
from typing import Callable, Protocol

import torch

BUCKETS = (1, 2, 3, 5, 9, 17, 33, 65, 129, 257)
LARGEST_BUCKET = BUCKETS[-1]
PADDING_LIMIT = 4  # a block reuses a compiled bucket at most about this many times its size
READ_WINDOW = 32  # on CPUs a compiled forward reads its cache up to the next multiple of this many slots


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot serve ``device`` here, or ``None`` when it can."""
    if device.type == "mps":
        return "torch.compile does not support Apple MPS well enough yet"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not set up for {device.type} devices"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "cl")):
        return "no C compiler was found (install gcc or clang to compile for the CPU)"
    if sys.platform == "win32" and device.type == "cpu":
        return "compiling for the CPU on Windows needs MSVC's cl on the PATH"
    return None


class Compiles(Protocol):
    """Anything with compiled forwards: models, drafters, tree heads."""

    @property
    def compile_seconds(self) -> float: ...


def compile_seconds(*parts: Compiles | None) -> float:
    """Seconds the given parts spent compiling on first calls (``None``: a part the run does not have)."""
    return sum(part.compile_seconds for part in parts if part is not None)


def bucket_for(k: int, compiled: set[int]) -> int | None:
    """The bucket a block of ``k`` tokens runs in: the smallest compiled one that holds it without
    padding it past ``PADDING_LIMIT`` times its size, else the smallest bucket that holds it; ``None``
    when ``k`` exceeds every bucket. (A run's tail blocks reuse its usual bucket; a run's blocks do
    not pad into a bucket compiled once for a long read of a prefix.)"""
    held = [b for b in compiled if k <= b <= PADDING_LIMIT * k + 1]
    if held:
        return min(held)
    return next((b for b in BUCKETS if b >= k), None)


def _fresh_function(function: Callable[..., object], tag: str) -> Callable[..., object]:
    """A copy of ``function`` with its own code object.

    Dynamo keeps its compiled entries on the code object and checks an incoming call against
    every entry's guards in turn; separate code objects give each (model, bucket) one entry, so
    a call costs one guard check and no model can push another past the recompile limit.
    """
    code = function.__code__.replace(co_name=f"{function.__name__}_{tag}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


class CompiledForward:
    """One model's compiled forwards, one per bucket and batch shape, with eager fallback.

    On CUDA the forwards are captured as CUDA graphs (``reduce-overhead``): the cache buffers
    must then keep their addresses (:func:`static_buffers`), and outputs are cloned because a
    graph's next replay overwrites them.

    ``step(*tensors)`` must be a pure function of its tensor arguments and the weights it closes
    over (in-place writes into argument buffers are allowed: the cache).
    """

    def __init__(
        self,
        step: Callable[..., object],
        device: torch.device,
        name: str,
        notice: Callable[[str], None] | None = None,
        varying: tuple[tuple[int, int], ...] = (),
    ) -> None:
        """``varying`` lists (argument, dimension) pairs whose size changes from call to call: they
        are compiled as dynamic sizes, so one compiled forward serves every size."""
        self.step, self.device, self.name, self.varying = step, device, name, varying
        self.notice = notice or _print_notice
        self.compiled: dict[tuple[object, ...], Callable[..., object]] = {}  # by argument shapes
        self.buckets: set[int] = set()
        self.compile_seconds = 0.0
        self.disabled = unavailable_reason(device)
        if self.disabled is not None:
            self.notice(f"{name}: running eagerly ({self.disabled})")

    @property
    def active(self) -> bool:
        return self.disabled is None

    def bucket(self, k: int) -> int | None:
        """The padded block size for ``k`` new tokens, or ``None`` to run ``k`` eagerly."""
        return None if self.disabled else bucket_for(k, self.buckets)

    def __call__(self, bucket: int, *args: torch.Tensor) -> object:
        args = tuple(arg.contiguous() for arg in args)
        shapes = [list(arg.shape) for arg in args]
        for index, dim in self.varying:
            shapes[index][dim] = -1
        signature = tuple(tuple(shape) for shape in shapes)
        fn = self.compiled.get(signature)
        if fn is not None:
            # each compiled function has one cache entry (see _fresh_function) and is only ever
            # called with the contiguous argument shapes it was compiled for (its key), so its
            # guards need not be evaluated
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._owned(fn(*args))
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        for index, dim in self.varying:
            torch._dynamo.mark_dynamic(args[index], dim)
        fn = torch.compile(
            _fresh_function(self.step, f"k{bucket}_{len(self.compiled)}"),
            dynamic=None if self.varying else False,
            fullgraph=True,
            mode=mode,
        )
        start = time.perf_counter()
        try:
            # compilation happens in this first call; freezing is read from the global config then
            # (torch.compile's options do not reach it), so it is patched around this call only
            with torch._inductor.config.patch(freezing=self.device.type == "cpu"):
                out = fn(*args)
        except Exception as exc:  # inductor raises many types (no compiler, unsupported op)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            self.disabled = f"compilation failed: {first_line}"
            self.notice(f"{self.name}: running eagerly ({self.disabled})")
            raise CompileFailed(self.disabled) from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds += time.perf_counter() - start
        self.compiled[signature] = fn
        self.buckets.add(bucket)
        return self._owned(out)

    def _owned(self, out: object) -> object:
        """Outputs the caller may keep (CUDA graph outputs live in memory the next replay reuses)."""
        if self.device.type != "cuda":
            return out
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out


def static_buffers(buffers: list[torch.Tensor]) -> None:
    """Tell the compiler these tensors keep their addresses (cache buffers written in place), so
    CUDA graphs may capture writes to them."""
    for buffer in buffers:
        if buffer.device.type == "cuda":
            torch._dynamo.mark_static_address(buffer)


class CompileFailed(RuntimeError):
    """The first call of a bucket failed to compile; the caller reruns the forward eagerly."""


def _print_notice(message: str) -> None:
    print(f"specar: {message}", file=sys.stderr)
