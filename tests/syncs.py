"""Counting host syncs on a CPU: how often the host waits for a value a GPU would hold.

On a GPU, reading a device value on the host (``int(t)``, ``bool(t)``, ``t.item()``,
``t.tolist()``, ``t.cpu()``, ``t.nonzero()``) stops the host until the device has caught up.
On a CPU every tensor is on the host, so the count is made by taint tracking: values computed by
the model (matrix products, embeddings, attention) or drawn at random are *device values*, and
so is everything computed from them; host bookkeeping (row lengths, counters) is not. Every read
of a device value is counted with its call site.
"""

from __future__ import annotations

import traceback
import weakref
from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
# operations whose results live on the device in a GPU run: the model's arithmetic and random draws
SOURCES = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.embedding.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten.rand.default,
    aten.rand.generator,
    aten.uniform_.default,
    aten.normal_.default,
    aten.exponential_.default,
    aten.multinomial.default,
    aten.randint.low,
    aten.randint.low_generator,
    aten.randint.generator,
    aten.randn.default,
    aten.randn.generator,
}
READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.equal.default}
# Tensor methods that read values to the host. The scalar conversions are caught here too, not only as
# ``_local_scalar_dense`` below: under ``torch.inference_mode`` (the decoding loop's) that op does not reach a
# Python dispatch mode on a CPU.
HOST_METHODS = ("tolist", "numpy", "cpu", "item", "__int__", "__bool__", "__float__", "__index__")
# functions whose host reads run only for CPU tensors (a GPU run takes another branch), so no GPU waits on them
CPU_ONLY_READERS = {("sampling.py", "_kth_largest"), ("verify.py", "_nothing_left"), ("verify.py", "_first_children")}


class DeviceReadCounter(TorchDispatchMode):
    """``with DeviceReadCounter() as reads: ...``; then ``reads.total`` and ``reads.sites``."""

    def __init__(self) -> None:
        super().__init__()
        self.device_values: dict[int, weakref.ref[torch.Tensor]] = {}  # by id: storage addresses are reused
        self.sites: Counter[str] = Counter()
        self._saved: dict[str, Callable[..., Any] | None] = {}  # None: inherited, not set on torch.Tensor
        self._reading = 0  # inside a counted host method: its own _local_scalar_dense is not counted again

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _is_device(self, tensor: torch.Tensor) -> bool:
        for candidate in (tensor, tensor._base):
            ref = self.device_values.get(id(candidate)) if candidate is not None else None
            if ref is not None and ref() is candidate:
                return True
        return False

    def _mark(self, tensor: torch.Tensor) -> None:
        self.device_values[id(tensor)] = weakref.ref(tensor)

    def _count(self, what: str) -> None:
        frame = next((f for f in reversed(traceback.extract_stack()[:-2]) if "/engine/" in f.filename), None)
        if frame is not None and (frame.filename.split("/engine/")[-1], frame.name) in CPU_ONLY_READERS:
            return
        where = f"{frame.filename.split('/engine/')[-1]}:{frame.lineno}" if frame else "?"
        self.sites[f"{where} {what}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        from_device = any(self._is_device(t) for t in inputs)
        if func in READS and from_device and not self._reading:
            self._count(func.__name__)
        out = func(*args, **kwargs)
        if from_device or func in SOURCES:
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self._mark(tensor)
            if func._schema.is_mutable and inputs:  # in-place writes make the written tensor a device value
                self._mark(inputs[0])
        return out

    def __enter__(self) -> "DeviceReadCounter":
        for name in HOST_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name)

            def counted(
                tensor: torch.Tensor, *a: Any, _original: Callable[..., Any] = original, _name: str = name, **k: Any
            ) -> Any:
                if not self._is_device(tensor):
                    return _original(tensor, *a, **k)
                self._count(_name)
                self._reading += 1
                try:
                    if _name != "cpu":
                        return _original(tensor, *a, **k)
                    # on a GPU the host copy is a new host value; on a CPU .cpu() returns the tensor itself
                    host = _original(tensor.clone(), *a, **k)
                finally:
                    self._reading -= 1
                self.device_values.pop(id(host), None)
                return host

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        super().__exit__(*exc)
