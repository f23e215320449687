r"""KL against a teacher's cached top-k log-probabilities: :func:`topk_kl`.

Teachers are often run once and only their top-k log-probabilities kept (k = 8 ... 256 of a
128k vocabulary). Two honest ways to compare a full student with such a teacher, both computed
on small per-token vectors after one pass over the student's logits:

- ``tail="bucket"``: the k classes plus one *tail* class holding the rest of each side's mass.
  Both sides are the images of full distributions under the same map (vocabulary -> k + 1
  classes), so by the data-processing inequality the value is a **lower bound** of the full KL;
  it is exact when the teacher's tail holds no mass.
- ``tail="renormalize"``: both sides restricted to the k classes and renormalized: the KL of
  the two conditional distributions given "the token is in the top k". Not a bound of the full
  KL by itself. The chain rule ties the modes together (forward direction, ``T = 1``; ``K`` the
  top k, ``K'`` the rest):

  .. math::

      \mathrm{KL}(t \,\|\, s) = \mathrm{KL}_\text{bucket}
      + t(K')\,\mathrm{KL}(t_{K'} \,\|\, s_{K'}), \qquad
      \mathrm{KL}_\text{bucket} = \mathrm{KL}\big((t(K), t(K')) \,\|\, (s(K), s(K'))\big)
      + t(K)\,\mathrm{KL}_\text{renormalize},

  so ``bucket`` is the smallest full KL of any teacher that agrees with the cache (one whose
  tail is shaped like the student's): the tightest lower bound the cache allows;
  ``t(K) * renormalize`` is below it.

The student's gradient over the *whole* vocabulary is exact (for ``"bucket"`` the tail's
log-normalizer couples every logit): with ``G`` the gradient of the bucket divergence in the
k + 1 bucket logits, a top-k logit gets ``G_i`` and any other logit ``v`` gets
``G_tail * s_v / s(tail)`` (its share of the tail), computed chunk by chunk without a float32
copy of all logits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ..errors import KLDivError, bad, describe
from . import vocab as _v

__all__ = ["TAILS", "topk_kl"]

#: The values ``tail=`` accepts.
TAILS = ("bucket", "renormalize")


def _teacher_buckets(lp: Any, spec: Any, tail: str, v_total: int) -> Any:
    """The teacher's bucket "logits" ``(c, k [+ 1])`` in the compute dtype.

    The k log-probabilities divided by T; for ``"bucket"`` a last column for the tail. Its mass
    ``r = 1 - sum exp(lp)`` (in float64, clamped at 0) is unknown beyond its total, so at a
    temperature it is taken as spread evenly over the ``V - k`` unlisted tokens (the
    maximum-entropy completion): ``log r / T + (1 - 1/T) log(V - k)``. The kernel normalizes.
    """
    y = lp.to(spec.compute) * spec.inv_t if spec.inv_t != 1.0 else lp.to(spec.compute)
    if tail == "renormalize":
        return y
    k = lp.shape[-1]
    lse = torch.logsumexp(lp.to(torch.float64), dim=-1)
    log_r = torch.log((-torch.expm1(lse)).clamp_min(0.0))
    if v_total == k:  # nothing is unlisted (NaN stays NaN)
        log_r = torch.where(torch.isnan(log_r), log_r, -math.inf)
    elif spec.inv_t != 1.0:
        log_r = log_r * spec.inv_t + (1.0 - spec.inv_t) * math.log(v_total - k)
    return torch.cat((y, log_r.to(spec.compute)[:, None]), dim=-1)


def _topk_loop(
    s, lp, rows, spec, size, weights, gs_out, gt_out, values, *, index, tail, start, v_total,
    vocab_rows,
):  # fmt: skip
    """``_vocab_loop`` for a top-k teacher: same arguments, same buffers (``gt_out`` is None)."""
    local_v = s.shape[1]
    need_s = gs_out is not None

    def body(c, scratch):
        x = _v._take(s, c).to(spec.compute)
        if spec.inv_t != 1.0:
            x = torch.mul(x, spec.inv_t, out=scratch.get("x", x))
        elif tail == "bucket" and x.untyped_storage().data_ptr() == s.untyped_storage().data_ptr():
            x = scratch.get("x", x).copy_(x)  # the tail is formed in place
        idx = _v._take(index, c) - start  # this rank's columns
        owned = (idx >= 0) & (idx < local_v)
        r_own, j_own = torch.nonzero(owned, as_tuple=True)
        c_own = idx[r_own, j_own]
        x_k = torch.zeros(idx.shape, dtype=spec.compute, device=x.device)
        x_k[r_own, j_own] = x[r_own, c_own]
        x_k = vocab_rows.row_sum(x_k)  # each top-k logit comes from the rank that holds it
        y = _teacher_buckets(_v._take(lp, c), spec, tail, v_total)
        bucket_spec = _v._Spec(spec.direction, spec.beta, 1.0, spec.scale, spec.compute)
        if tail == "bucket":
            x[r_own, c_own] = -math.inf  # what is left is the tail
            # the tail's log-normalizer, and each tail entry's share of it
            sigma, lse_tail = _v._softmax_lse(x, scratch.get("sigma", x))
            if vocab_rows.sharded:
                lse_all = vocab_rows.lse(lse_tail)
                sigma.mul_((lse_tail - lse_all).exp_()[:, None])
                lse_tail = lse_all
            z = torch.cat((x_k, lse_tail[:, None]), dim=-1)
        else:
            z = x_k
        val, g, _ = _v._kernel(z, y, bucket_spec, need_s, False)  # per-token vectors: local
        if values is not None:
            _v._put(values, c, val)
        if not need_s:
            return
        if tail == "bucket":
            full = sigma.mul_(g[:, -1:])  # a tail logit's share of the tail's gradient
            full[r_own, c_own] = g[r_own, j_own]  # sigma is 0 there
        else:
            full = scratch.get("full", x).zero_()
            full[r_own, c_own] = g[r_own, j_own]
        _v._put_scaled(gs_out, c, full, _v._row_factor(spec, weights, c))

    _v._each_chunk(body, _v._chunks(s.shape[0], rows, size), s.device, vocab_rows)


def _check_teacher(lp: Any, idx: Any, rows: Any, v_total: int, validate: bool) -> None:
    """Index checks always (range, duplicates); log-probability checks under ``validate``."""
    if rows is not None:
        lp, idx = lp.reshape(-1, lp.shape[-1])[rows], idx.reshape(-1, idx.shape[-1])[rows]
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= v_total:
        raise bad("teacher_index", f"token ids in [0, {v_total})", f"ids from {lo} to {hi}")
    ordered = idx.sort(dim=-1).values
    same = ordered[..., 1:] == ordered[..., :-1]
    if bool(same.any()):
        where = tuple(int(i) for i in torch.nonzero(same)[0])
        raise KLDivError(
            f"teacher_index: expected k distinct token ids per token, got id "
            f"{int(ordered[where])} twice in row {where[:-1]} (of the computed rows); pad short "
            "rows with distinct ids and -inf log-probabilities"
        )
    if not validate:
        return
    x = lp.detach().to(torch.float64)
    _v._first_bad("teacher_logprobs", x, torch.isnan(x) | (x > 0), "a log-probability <= 0")
    excess = torch.logsumexp(x, dim=-1).exp_() - 1.0
    tol = 1e-4
    if bool((excess > tol).any()):
        i = int(torch.nonzero(excess > tol)[0, 0])
        raise KLDivError(
            f"teacher_logprobs: expected log-probabilities whose probabilities sum to at most 1 "
            f"(+{tol}) per token, got a sum of {1.0 + float(excess.reshape(-1)[i]):.6g} in row "
            f"{i} (of the computed rows); were they divided by a temperature after "
            "log_softmax, or rounded to bfloat16? Cache log_softmax(z / T) in float32"
        )


def topk_kl(
    student_logits: Any = None,
    teacher_logprobs: Any = None,
    teacher_index: Any = None,
    *,
    student: Any = None,
    teacher: Any = None,
    tail: str | None = None,
    direction: str = "forward",
    beta: float | None = None,
    temperature: float = 1.0,
    t2_scaling: bool | None = None,
    mask: Any = None,
    ignore_index: int | None = None,
    labels: Any = None,
    reduction: str = "mean",
    normalizer: Any = None,
    chunk_size: int | None = None,
    validate: bool = False,
    vocab_group: Any = None,
) -> Any:
    r"""KL between a student's full logits and a teacher's cached top-k log-probabilities.

    With :math:`K` the k listed tokens, :math:`s = \mathrm{softmax}(z / T)` the student and
    :math:`t_i = \exp(\ell_i)` the teacher's probabilities (over the full vocabulary):

    .. math::

        \texttt{"bucket"}: \; D(\bar t \,\|\, \bar s), \quad
        \bar p = (p_{i_1}, \ldots, p_{i_k}, 1 - \textstyle\sum_{i \in K} p_i);
        \qquad
        \texttt{"renormalize"}: \; D(t_K / t(K) \,\|\, s_K / s(K)),

    with :math:`D` the ``direction``'s divergence of :func:`vocab_kl` (``"forward"``
    KL(teacher || student), ``"reverse"``, ``"jsd"`` with ``beta``), times :math:`T^2` with
    ``t2_scaling=True``. ``"bucket"`` is a lower bound of the full divergence (data processing),
    ``"renormalize"`` the divergence of the conditionals on :math:`K` (see the module doc).
    At a temperature the teacher's listed log-probabilities are divided by :math:`T` (exact for
    ``"renormalize"``); its tail, known only by its mass :math:`r`, is taken as spread evenly over
    the :math:`V - k` unlisted tokens, giving the tail bucket the weight
    :math:`r^{1/T} (V - k)^{1 - 1/T}` before normalization.

    Args:
        student_logits: ``(..., V)`` (each rank's ``(..., V_r)`` with ``vocab_group``); also
            accepted as ``student=`` (recommended).
        teacher_logprobs: ``(..., k)`` the teacher's log-probabilities over the full
            vocabulary at temperature 1 (``log_softmax(z_t)`` at the top k), k >= 1; they get no
            gradient.
        teacher_index: ``(..., k)`` their token ids (integers in ``[0, V)``, distinct per token).
        teacher: the pair ``(teacher_logprobs, teacher_index)``, e.g. ``torch.topk(lp, k)``.
        tail: ``"bucket"`` or ``"renormalize"``; required (the choice changes the value).
        direction, beta, temperature, t2_scaling, mask, ignore_index, labels, reduction,
        normalizer, chunk_size, vocab_group: as in :func:`vocab_kl`.
        validate: also check the teacher: log-probabilities <= 0 and summing to at most
            1 + 1e-4 per token (a cache divided by a temperature after ``log_softmax`` sums to
            more), and the mask's weights. Ids out of range and duplicate ids are always errors.

    Returns:
        As :func:`vocab_kl`: the reduced value, or per-token values for ``"none"``; float32
        (float64 for float64 student logits) unless the inputs' promoted dtype is half (then
        that, or float32 under autocast).

    >>> import torch
    >>> from kldiv.torch import topk_kl, vocab_kl
    >>> g = torch.Generator().manual_seed(0)
    >>> z_t, z_s = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    >>> cache = torch.topk(torch.log_softmax(z_t, -1), k=8)   # (log-probs, ids)
    >>> low = topk_kl(student=z_s, teacher=cache, tail="bucket")
    >>> full = vocab_kl(student=z_s, teacher=z_t)
    >>> bool(low <= full)
    True
    """
    student_logits = _v._given_once(
        "student_logits", student_logits, "student", student, "the student's logits"
    )
    if teacher is not None:
        if teacher_logprobs is not None or teacher_index is not None:
            raise bad(
                "teacher",
                "(teacher_logprobs, teacher_index) given once: as teacher= or positionally",
                "both",
            )
        if not isinstance(teacher, (tuple, list)) or len(teacher) != 2:
            raise bad("teacher", "a pair (log-probabilities, token ids)", describe(teacher))
        teacher_logprobs, teacher_index = teacher
    if teacher_logprobs is None or teacher_index is None:
        raise bad(
            "teacher",
            "the teacher's (log-probabilities, token ids): teacher=torch.topk(lp, k) or "
            "teacher_logprobs= and teacher_index=",
            "nothing" if teacher_logprobs is None and teacher_index is None else "only one",
        )
    if not isinstance(tail, str) or tail not in TAILS:
        raise bad(
            "tail",
            "'bucket' (k classes + one tail class: a lower bound of the full KL) or "
            "'renormalize' (both restricted to the k classes and renormalized)",
            describe(tail),
        )
    _v._check_validate(validate)
    s, lp, idx = student_logits, teacher_logprobs, teacher_index
    _v._check_tensor("student_logits", s)
    _v._check_tensor("teacher_logprobs", lp)
    if not isinstance(idx, torch.Tensor):
        raise bad("teacher_index", "a torch.Tensor of token ids", describe(idx))
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise bad("teacher_index", "an integer tensor", describe(idx))
    if s.ndim < 1 or s.shape[-1] == 0:
        raise bad("student_logits", "shape (..., V) with V >= 1", describe(s))
    lead = tuple(s.shape[:-1])
    if lp.ndim != s.ndim or tuple(lp.shape[:-1]) != lead or lp.shape[-1] == 0:
        raise bad("teacher_logprobs", f"shape {(*lead, 'k')} with k >= 1", describe(lp))
    if tuple(idx.shape) != tuple(lp.shape):
        raise bad("teacher_index", f"teacher_logprobs' shape {tuple(lp.shape)}", describe(idx))
    for name, x in (("teacher_logprobs", lp), ("teacher_index", idx)):
        if x.device != s.device:
            raise bad(name, f"a tensor on {s.device}", f"a tensor on {x.device}")
    if lp.requires_grad and torch.is_grad_enabled():
        raise bad(
            "teacher_logprobs",
            "a tensor that does not require grad (topk_kl gives the teacher no gradient; "
            "detach it)",
            describe(lp),
        )
    device = s.device
    out_dtype, compute = _v._out_dtype(s.dtype, lp.dtype, device=device)
    spec = _v._spec(direction, beta, temperature, t2_scaling, reduction, normalizer, compute)
    vocab_rows = _v._vocab_rows(vocab_group)
    v_local, k = s.shape[-1], lp.shape[-1]
    start, v_total = vocab_rows.span(v_local, device) if vocab_rows.sharded else (0, v_local)
    in_shape = tuple(s.shape)
    valid, rows, skip, n, normalizer = _v._prepare(
        lead, in_shape, mask, ignore_index, labels, normalizer, spec, device, validate
    )
    _check_teacher(lp, idx, rows, v_total, validate)
    if tail == "bucket" and k > v_total:
        raise bad("teacher_index", f"at most V = {v_total} ids per token", f"k = {k}")
    size = _v._chunk_rows(chunk_size, n, v_local, device, fused=False)
    s2 = s.reshape(n, v_local)
    lp2 = lp.reshape(n, k)
    loop = functools.partial(
        _topk_loop,
        index=idx.reshape(n, k).to(torch.int64),
        tail=tail,
        start=start,
        v_total=v_total,
        vocab_rows=vocab_rows,
    )
    if s.requires_grad and torch.is_grad_enabled():
        hint = _v._hint(n, lead, in_shape, valid, reduction, normalizer, spec, device)
        values = _v._VocabKL.apply(s2, lp2, rows, skip, hint, spec, size, None, loop)
    else:
        values = torch.zeros(n, dtype=compute, device=device)
        with torch.no_grad(), _v._no_autocast(device):
            loop(s2, lp2, rows, spec, size, None, None, None, values)
    result = _v._reduce_values(values, lead, in_shape, valid, reduction, normalizer)
    return result.to(out_dtype)
