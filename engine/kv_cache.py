"""A key/value cache with its own length per row, for our own-code transformers.

Speculative decoding appends a block of k tokens, then keeps only what was accepted, and every
row of the batch may accept a different number. The cache therefore stores one length per row
(the two CFG halves of an image share it), writes each row's block at that row's offset, and
rolls back by lowering lengths: no copy. Trees keep their accepted path with :meth:`compact`.

Buffers are preallocated and grown geometrically; attention only reads up to the longest row.
A *fixed* cache instead keeps one capacity for its whole life, which is what a compiled forward
needs (the buffers it writes keep their addresses). Attention then reads all of it (masked), so
every forward of a block size has the same shapes, as CUDA graphs need; or, with a read
``window``, up to the next multiple of the window past the longest row, a size the compiled
forward takes as dynamic (on CPUs, where reading the whole cache at every step costs more than
the compiler saves). Lengths live on the host because the loop already knows them there (it syncs
once per forward), so planning a forward never waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .memory import check_fits


@dataclass
class AttentionPlan:
    """Where one forward's k new tokens go and what each of them may attend to."""

    write_slots: torch.Tensor  # [R, k] long, cache slot of each new token
    uniform_start: int | None  # the common start slot when every row has the same length
    read_length: int  # slots [0, read_length) are read by attention
    # [R, 1, k, read_length] bool, True = may attend; [1, 1, k, read_length] when every row's is the same,
    # None when every new token may attend to every slot read (one new token per row, all rows alike)
    mask: torch.Tensor | None

    def full_mask(self) -> torch.Tensor:
        """The mask as ``[R, 1, k, read_length]`` (for attention code that takes no shared or absent mask)."""
        rows, k = self.write_slots.shape
        if self.mask is None:
            return torch.ones(rows, 1, k, self.read_length, dtype=torch.bool, device=self.write_slots.device)
        return self.mask.expand(rows, -1, -1, -1)


def write_block(
    keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> None:
    """Write new keys/values ``[R, H, k, D]`` into buffers ``[R, H, C, D]`` at ``slots [R, k]``.

    An indexed assignment rather than ``scatter_``: the compiler writes it in place, where it
    turns a scatter into a copy of the whole buffer."""
    rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
    keys[rows, :, slots] = k_new.transpose(1, 2).to(keys.dtype)
    values[rows, :, slots] = v_new.transpose(1, 2).to(values.dtype)


class FixedCacheView:
    """What attention sees of a fixed cache inside a compiled forward: the buffers, where this
    forward writes (``slots [R, k]``) and the planned mask ``[R, 1, k, capacity]``. Built from
    plain tensors so the compiler traces it like any other code."""

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], slots: torch.Tensor, mask: torch.Tensor
    ) -> None:
        self.keys, self.values, self.slots, self.attention_mask = keys, values, slots, mask

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        write_block(self.keys[layer], self.values[layer], self.slots, k_new, v_new)
        read = self.attention_mask.shape[-1]  # the planned read window (the whole capacity without one)
        return self.keys[layer][:, :, :read], self.values[layer][:, :, :read]


class RaggedKVCache:
    """Per-layer K/V buffers ``[R, heads, capacity, head_dim]`` with a length per row.

    ``fixed=True`` allocates ``capacity`` once and never grows (a forward that would overflow it
    is refused); attention then reads the whole capacity, or with a ``window`` the slots up to the
    next multiple of it past the longest row.
    """

    def __init__(
        self,
        n_layers: int,
        rows: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int = 256,
        fixed: bool = False,
        window: int | None = None,
    ) -> None:
        self.n_layers, self.rows, self.n_kv_heads, self.head_dim = n_layers, rows, n_kv_heads, head_dim
        self.dtype, self.device, self.fixed, self.window = dtype, device, fixed, window
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.key_valid = torch.zeros(rows, 0, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long)  # host copy, the source of truth
        self.all_valid = True  # no slot was ever marked as one no token may attend to (padding)
        self._plan: AttentionPlan | None = None
        self._grow(capacity)

    def reset(self) -> None:
        """Empty every row, keeping the buffers (a fixed cache is reused across generations so
        that compiled code, CUDA graphs included, keeps seeing the same buffers)."""
        self.lengths = torch.zeros(self.rows, dtype=torch.long)
        self.key_valid.fill_(True)
        self.all_valid = True
        self._plan = None

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if self.fixed and self.capacity:
            raise ValueError(f"a forward needs {needed} cache slots but this fixed cache holds {self.capacity}")
        new_cap = max(needed, int(self.capacity * 1.5) + 16)
        shape = (self.rows, self.n_kv_heads, new_cap, self.head_dim)
        element = torch.empty(0, dtype=self.dtype).element_size()
        check_fits(
            f"the attention cache of {self.rows} rows x {new_cap} positions",
            2 * self.n_layers * self.rows * self.n_kv_heads * new_cap * self.head_dim * element,
            torch.device(self.device),
            "draw fewer images at once (batch), a smaller image, or smaller drafts",
        )
        old_k, old_v, old_valid = self.k, self.v, self.key_valid
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        self.key_valid = torch.ones(self.rows, new_cap, dtype=torch.bool, device=self.device)
        if self.capacity:
            for new, old in zip(self.k + self.v, old_k + old_v):
                new[:, :, : self.capacity] = old
            self.key_valid[:, : self.capacity] = old_valid
        self.capacity = new_cap

    def plan(
        self, k: int, allowed: torch.Tensor | None = None, key_valid_new: torch.Tensor | None = None
    ) -> AttentionPlan:
        """Prepare a forward of ``k`` new tokens per row and advance every row's length by ``k``.

        ``allowed[i, j]`` (or ``allowed[r, i, j]``, one mask per row) says whether new token i may
        attend to new token j (a tree mask); ``None`` means causal. ``key_valid_new [R, k]`` marks new
        slots that no other token may attend to (padding in a condition); a token may always attend to itself.
        """
        lengths = self.lengths
        longest = int(lengths.max())
        self._grow(longest + k)
        read_length = self._read_length(longest + k)
        dev = self.device
        lengths_dev = lengths.to(dev)
        offsets = torch.arange(k, device=dev)
        write_slots = lengths_dev[:, None] + offsets[None, :]
        uniform = int(lengths.min()) == longest and not self.fixed
        self.all_valid = self.all_valid and key_valid_new is None
        if uniform and allowed is None and self.all_valid:
            # A causal block on rows of one length, every slot valid: the same mask for every row, built
            # in two operations (or none for one token, which may attend to everything read).
            mask = (
                None if k == 1 else torch.ones(k, read_length, dtype=torch.bool, device=dev).tril_(longest)[None, None]
            )
        elif allowed is None and self.all_valid:
            # A causal block on rows of several lengths, every slot valid: new token i of row r may read every
            # slot up to its own, ``lengths[r] + i``.
            slots = torch.arange(read_length, device=dev)
            mask = (slots <= write_slots[:, :, None]).unsqueeze(1)
        else:
            mask = self._mask(k, allowed, key_valid_new, write_slots, lengths_dev, offsets, read_length)
        plan = AttentionPlan(write_slots, longest if uniform else None, read_length, mask)
        self.lengths = lengths + k
        self._plan = plan
        return plan

    def _mask(
        self,
        k: int,
        allowed: torch.Tensor | None,
        key_valid_new: torch.Tensor | None,
        write_slots: torch.Tensor,
        lengths_dev: torch.Tensor,
        offsets: torch.Tensor,
        read_length: int,
    ) -> torch.Tensor:
        """Mark the new slots' validity and build the general mask ``[R, 1, k, read_length]``: rows of
        any length, tree masks, and slots no token may attend to."""
        dev = self.device
        if key_valid_new is not None:
            self.key_valid.scatter_(1, write_slots, key_valid_new.to(dev))
        else:
            self.key_valid.scatter_(1, write_slots, True)
        if allowed is None:
            allowed = torch.ones(k, k, dtype=torch.bool, device=dev).tril_()
        slots = torch.arange(read_length, device=dev)
        rel = slots[None, :] - lengths_dev[:, None]  # [R, L]: index inside the new block
        in_block = (rel >= 0) & (rel < k)
        relc = rel.clamp(0, max(k - 1, 0))
        valid = self.key_valid[:, :read_length]
        in_prefix = (rel < 0) & valid  # [R, L]
        allowed = allowed.to(dev)
        if allowed.dim() == 2:
            block_ok = allowed[:, relc].permute(1, 0, 2)  # [R, k, L]
        else:
            block_ok = allowed.gather(2, relc[:, None, :].expand(-1, k, -1))
        is_self = relc[:, None, :] == offsets[None, :, None]
        block_ok = block_ok & in_block[:, None, :] & (valid[:, None, :] | is_self)
        return (in_prefix[:, None, :] | block_ok).unsqueeze(1)

    def _read_length(self, needed: int) -> int:
        """Slots attention reads for a forward that needs ``needed``: exactly those, or for a fixed
        cache its whole capacity, or with a read ``window`` the next multiple of it (capped there)."""
        if not self.fixed:
            return needed
        if self.window is None:
            return self.capacity
        return min(self.capacity, -(-needed // self.window) * self.window)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new keys/values ``[R, H, k, D]``; return what attention reads."""
        plan = self._plan
        assert plan is not None, "plan() must be called before a forward"
        kb, vb = self.k[layer], self.v[layer]
        if plan.uniform_start is not None:
            s = plan.uniform_start
            kb[:, :, s : s + k_new.shape[2]] = k_new
            vb[:, :, s : s + v_new.shape[2]] = v_new
        else:
            write_block(kb, vb, plan.write_slots, k_new, v_new)
        return kb[:, :, : plan.read_length], vb[:, :, : plan.read_length]

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The planned forward's mask (True = may attend), as :attr:`AttentionPlan.mask` holds it."""
        assert self._plan is not None, "plan() must be called before a forward"
        return self._plan.mask

    def view(self) -> FixedCacheView:
        """The planned forward as a :class:`FixedCacheView` (the inputs of a compiled forward)."""
        assert self.fixed and self._plan is not None, "view() is for a planned forward of a fixed cache"
        return FixedCacheView(self.k, self.v, self._plan.write_slots, self._plan.mask)

    def truncate(self, lengths: torch.Tensor | list[int]) -> None:
        """Keep the first ``lengths[r]`` slots of every row (a rollback; nothing is copied). A list of the rows'
        lengths saves the conversions of a tensor (list work costs less than tensor operations here)."""
        wanted = lengths if isinstance(lengths, list) else lengths.tolist()
        if any(new > old for new, old in zip(wanted, self.lengths.tolist())):
            raise ValueError("truncate() can only shorten rows")
        self.lengths = torch.from_numpy(np.array(wanted, dtype=np.int64))  # the host's own copy

    def compact(self, start: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor) -> None:
        """Move slots ``start[r] + keep[r, i]`` to ``start[r] + i`` for ``i < counts[r]``.

        Used after a tree verification: ``start`` is each row's length before the tree forward and
        ``keep`` the (increasing) block indices of the nodes on the accepted path. Afterwards every
        row's length is ``start + counts``.
        """
        start_dev = start.to(self.device)
        keep = keep.to(self.device).clamp_min(0)
        src = start_dev[:, None] + keep
        dst = start_dev[:, None] + torch.arange(keep.shape[1], device=self.device)[None, :]
        for buf in self.k + self.v:
            H, D = buf.shape[1], buf.shape[3]
            moved = buf.gather(2, src[:, None, :, None].expand(-1, H, -1, D))
            buf.scatter_(2, dst[:, None, :, None].expand(-1, H, -1, D), moved)
        self.key_valid.scatter_(1, dst, self.key_valid.gather(1, src))
        self.lengths = start.to("cpu", torch.long) + counts.to("cpu", torch.long)
