r"""Vocabulary parallelism: the collectives behind ``vocab_group=``.

Under tensor parallelism each rank of a group holds a contiguous slice of the vocabulary, in
rank order (rank ``r`` holds entries ``[o_r, o_r + V_r)``, ``o_r = V_0 + ... + V_{r-1}``; slices
may be uneven), and all ranks hold the same tokens. The kernels in ``vocab.py`` and ``topk.py``
need two row-wise reductions over the whole vocabulary; :class:`VocabShards` does them:

.. math::

    \mathrm{lse}(z) = \log \sum_r \exp \mathrm{lse}_r(z) \quad \text{(an all-gather of the
    per-rank log-normalizers)}, \qquad \sum_v f_v = \sum_r \sum_{v \in r} f_v
    \quad \text{(an all-reduce)}.

Each is a collective on per-token vectors (never on vocabulary-wide tensors), so the forward
pass moves ``O(tokens)`` numbers per chunk and the backward pass needs no gather of the logits:
each rank's gradient is its slice of the one-process gradient, computed from its own slice and
the reduced per-token numbers. Every rank of the group must make the same calls in the same
order (the kernels decide every branch on reduced, hence identical, numbers).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import bad, describe

__all__ = ["VocabShards"]


class VocabShards:
    """Row-wise reductions over a vocabulary split across the ranks of ``group``."""

    sharded = True

    def __init__(self, group: Any) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise bad(
                "vocab_group",
                "a process group of an initialized torch.distributed",
                "torch.distributed not initialized",
            )
        if not isinstance(group, dist.ProcessGroup):
            raise bad("vocab_group", "a torch.distributed ProcessGroup", describe(group))
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def lse(self, lse: Any) -> Any:
        """The whole rows' log-normalizers from each rank's (any shape; -inf for empty parts)."""
        lse = lse.contiguous()
        parts = [torch.empty_like(lse) for _ in range(self.world)]
        dist.all_gather(parts, lse, group=self.group)
        return torch.logsumexp(torch.stack(parts), dim=0)

    def row_sum(self, x: Any) -> Any:
        """The sums over all ranks of each rank's partial sums (a new tensor)."""
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        return y

    def sum_(self, x: Any) -> Any:
        """Sum ``x`` over the ranks in place (a hidden-state gradient: one rank's share each)."""
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def span(self, v_local: int, device: Any) -> tuple[int, int]:
        """``(offset, V)``: where this rank's slice starts, and the whole vocabulary's size."""
        mine = torch.tensor([v_local], dtype=torch.int64, device=device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        sizes = [int(p) for p in parts]
        return sum(sizes[: self.rank]), sum(sizes)
