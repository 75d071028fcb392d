"""Image rows that end in a structural token (Lumina-mGPT's newline, Emu3's end-of-line).

Some families write an image as rows of ``width`` codes, each followed by a fixed token that the
model's own sampler forces. The engine never drafts or verifies those tokens: it works in image
positions only, and the adapter inserts the row-end token right after every node that ends a
row, inside the same forward. So a draft that crosses a row boundary carries the newline
deterministically, and the output that predicts the next row's first code is read at the
newline, exactly where the model's sequential loop reads it.

Rows of a batch sit at different positions, so each row gets its own expansion; rows with fewer
row ends are padded at the end of the block with slots nobody attends to (they are always rolled
back). The expansion keeps tree blocks in parent-first order: a newline follows its node and
precedes the node's children.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExpandedBlock:
    """One forward's nodes with row-end slots inserted, per row (``m >= k`` slots)."""

    codes: torch.Tensor  # [R, m] image codes at node slots, 0 elsewhere
    is_row_end: torch.Tensor  # [R, m] bool, slot holds the row-end token
    valid: torch.Tensor  # [R, m] bool, False for padding slots
    offsets: torch.Tensor  # [R, m] sequence offset from image token 0 (row ends counted)
    allowed: torch.Tensor  # [R, m, m] bool, slot i may attend to slot j of the block
    node_slot: torch.Tensor  # [R, k] slot of node i
    output_slot: torch.Tensor  # [R, k] slot whose output predicts what follows node i
    ends_row: torch.Tensor  # [R, k] bool, node i is followed by a row-end slot


class RowLayout:
    """``height`` rows of ``width`` image codes, each followed by one row-end token in the sequence.

    The last row's end token is never needed: generation stops at the last code.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.total = width * height

    def sequence_offset(self, positions: torch.Tensor) -> torch.Tensor:
        """Sequence offset of image position ``p`` from image token 0: ``p`` plus the row ends before it."""
        return positions + positions // self.width

    def image_lengths(self, slots: torch.Tensor) -> torch.Tensor:
        """Image tokens held by ``slots`` sequence slots after image token 0 (the inverse of :meth:`cached_slots`)."""
        return slots - slots // (self.width + 1)

    def chain_slots(self, start: torch.Tensor, k: int) -> torch.Tensor:
        """Slots a chain of ``k`` tokens at image positions ``start[r], start[r] + 1, ...`` fills with its
        row ends: host arithmetic where ``start`` is on the host, so no device value is read."""
        positions = start[:, None] + torch.arange(k)[None, :]
        ends_row = ((positions + 1) % self.width == 0) & (positions < self.total - 1)
        return k + ends_row.sum(1)

    def cached_slots(self, lengths: torch.Tensor) -> torch.Tensor:
        """Sequence slots that hold the first ``lengths`` image tokens and their row ends."""
        return lengths + lengths // self.width

    def expand(self, codes: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None) -> ExpandedBlock:
        """Insert row-end slots after the nodes that end a row.

        ``codes``/``positions`` are ``[R, k]``; ``ancestors`` (``[k, k]``, or ``[R, k, k]`` per row)
        says which nodes each node may attend to (``None``: a causal chain).
        """
        R, k = codes.shape
        dev = codes.device
        ends_row = ((positions + 1) % self.width == 0) & (positions < self.total - 1)
        node_slot = torch.arange(k, device=dev) + torch.cumsum(ends_row.long(), 1) - ends_row.long()
        if ancestors is None:  # k consecutive positions hold at most ceil(k / width) row ends: no host sync
            ancestors = torch.ones(k, k, dtype=torch.bool, device=dev).tril_()
            m = k + -(-k // self.width)
        else:
            m = k + int(ends_row.sum(1).max()) if k else 0
        ancestors = ancestors.to(dev)
        if ancestors.dim() == 2:
            ancestors = ancestors.expand(R, k, k)
        node_ids = torch.arange(k, device=dev).expand(R, -1)
        # column m collects the writes of nodes that have no row-end slot
        origin = torch.full((R, m + 1), -1, dtype=torch.long, device=dev)
        origin.scatter_(1, node_slot, node_ids)
        end_slot = torch.where(ends_row, node_slot + 1, m)
        origin.scatter_(1, end_slot, node_ids)
        is_row_end = torch.zeros(R, m + 1, dtype=torch.bool, device=dev).scatter_(1, end_slot, True)
        origin, is_row_end = origin[:, :m], is_row_end[:, :m]
        valid = origin >= 0
        src = origin.clamp(min=0)
        node_codes = codes.gather(1, src)
        node_offsets = self.sequence_offset(positions.gather(1, src)) + is_row_end.long()
        same_node = src[:, :, None] == src[:, None, :]
        rows = torch.arange(R, device=dev)[:, None, None]
        allowed = ancestors[rows, src[:, :, None], src[:, None, :]]
        # a node must not see its own row end; a row end sees its node and itself
        allowed &= ~is_row_end[:, None, :] | ~same_node | is_row_end[:, :, None]
        allowed &= valid[:, :, None] & valid[:, None, :]
        allowed |= torch.eye(m, dtype=torch.bool, device=dev)
        return ExpandedBlock(
            codes=torch.where(valid & ~is_row_end, node_codes, 0),
            is_row_end=is_row_end,
            valid=valid,
            offsets=torch.where(valid, node_offsets, 0),
            allowed=allowed,
            node_slot=node_slot,
            output_slot=torch.where(ends_row, node_slot + 1, node_slot),
            ends_row=ends_row,
        )

    @staticmethod
    def kept_slots(block: ExpandedBlock, keep: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots to keep after a tree forward: the kept nodes ``keep[r, :counts[r]]`` and their row ends.

        Returns increasing slots ``[R, 2c]`` and their counts ``[R]`` (entries past a count are filler).
        """
        R, c = keep.shape
        m = block.valid.shape[1]
        keep = keep.clamp(min=0)
        node = block.node_slot.gather(1, keep)
        ends = block.ends_row.gather(1, keep)
        live = torch.arange(c, device=keep.device)[None, :] < counts.to(keep.device)[:, None]
        pairs = torch.stack([torch.where(live, node, m), torch.where(live & ends, node + 1, m)], 2)
        slots = pairs.view(R, 2 * c).sort(1).values
        return slots.clamp(max=max(m - 1, 0)), (slots < m).sum(1).cpu()
