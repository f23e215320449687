"""One rank of the vocabulary-parallel tests (run as a script by test_vocab_parallel.py).

``python _vocab_parallel_worker.py RANK WORLD INIT_FILE OUT_DIR`` joins a gloo process group and
runs every case of :data:`CASES` on its uneven slice of the vocabulary (``SPLITS[WORLD]``), with
the whole world as ``vocab_group``; with 4 ranks it also runs a 2 x 2 grid (two data-parallel
replicas of two tensor-parallel ranks each); with 2, the same through a ``DTensor`` sharded on
the vocabulary. It saves values and gradients; the test compares them with :func:`run_case` on
one process and the whole vocabulary (the builders here are shared with the test).
"""

from __future__ import annotations

import sys

import torch

from kldiv.torch import fused_linear_vocab_kl, global_normalizer, topk_kl, vocab_kl

V, H_S, H_T, K = 23, 6, 5, 5
SPLITS = {2: [9, 14], 4: [5, 7, 3, 8]}  # uneven slices of the 23 entries, in rank order
SHAPE = (3, 4)  # tokens

CASES = {
    "forward": ("vocab", dict(direction="forward")),
    "reverse_t2": ("vocab", dict(direction="reverse", temperature=2.0, t2_scaling=True)),
    "jsd_weights_sum": ("vocab", dict(direction="jsd", beta=0.3, mask="weights", reduction="sum")),
    "forward_none_teacher": ("vocab", dict(mask="bool", reduction="none", teacher_grad=True)),
    "reverse_minus_inf": ("vocab", dict(direction="reverse", minus_inf=True, teacher_grad=True)),
    "fused_forward": ("fused", dict(mask="weights", bias=True)),
    "fused_reverse_teacher": ("fused", dict(direction="reverse", teacher_grad=True)),
    "fused_jsd_none": ("fused", dict(direction="jsd", beta=0.6, reduction="none")),
    "topk_bucket": ("topk", dict(tail="bucket")),
    "topk_bucket_jsd_t": (
        "topk",
        dict(tail="bucket", direction="jsd", beta=0.5, temperature=1.5, t2_scaling=True),
    ),
    "topk_renorm_reverse": ("topk", dict(tail="renormalize", direction="reverse", mask="bool")),
}


def tensors():
    """The whole problem (identical on every rank and in the reference), float64."""
    g = torch.Generator().manual_seed(3)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    out = {
        "s": randn(*SHAPE, V, scale=2.0),
        "t": randn(*SHAPE, V, scale=2.0),
        "hs": randn(*SHAPE, H_S),
        "ws": randn(V, H_S, scale=0.7),
        "bs": randn(V, scale=0.5),
        "ht": randn(*SHAPE, H_T),
        "wt": randn(V, H_T, scale=0.7),
        "go": randn(*SHAPE),  # a per-token incoming gradient for reduction="none"
    }
    weights = torch.rand(*SHAPE, generator=g, dtype=torch.float64) * 2
    weights[0, 1] = weights[2, 3] = 0.0
    out["weights"] = weights
    out["bool"] = weights > 0.4
    lp = torch.log_softmax(out["t"], dim=-1)
    out["lp"], out["idx"] = torch.topk(lp, K)
    return out


def run_case(name, x, lo=None, hi=None, group=None):
    """Value and gradients of case ``name`` on the vocabulary slice ``[lo, hi)`` (all: None)."""
    kind, kw = CASES[name]
    kw = dict(kw)
    cut = slice(lo, hi)
    mask = kw.pop("mask", None)
    if mask is not None:
        kw["mask"] = x[mask]
    teacher_grad = kw.pop("teacher_grad", False)
    minus_inf = kw.pop("minus_inf", False)
    bias = kw.pop("bias", False)
    if group is not None:
        kw["vocab_group"] = group
    leaves = {}

    def leaf(key, value, grad=True):
        value = value.detach().clone().requires_grad_(grad)
        if grad:
            leaves[key] = value
        return value

    if kind == "vocab":
        s, t = x["s"].clone(), x["t"].clone()
        if minus_inf:  # a vocabulary mask: entries 3..12 ruled out on both sides (whole slices)
            s[..., 3:13] = t[..., 3:13] = -torch.inf
        value = vocab_kl(
            student=leaf("s", s[..., cut]), teacher=leaf("t", t[..., cut], teacher_grad), **kw
        )
    elif kind == "fused":
        student = (leaf("hs", x["hs"]), leaf("ws", x["ws"][cut]))
        if bias:
            student = (*student, leaf("bs", x["bs"][cut]))
        teacher = (leaf("ht", x["ht"], teacher_grad), leaf("wt", x["wt"][cut], teacher_grad))
        value = fused_linear_vocab_kl(student=student, teacher=teacher, **kw)
    else:
        value = topk_kl(student=leaf("s", x["s"][..., cut]), teacher=(x["lp"], x["idx"]), **kw)
    value.backward(x["go"] if value.ndim else torch.ones_like(value))
    return value.detach(), {k: v.grad for k, v in leaves.items()}


def bounds(sizes, rank):
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def grid(rank, x):
    """2 x 2: tensor-parallel pairs {0, 1}, {2, 3}; data-parallel pairs {0, 2}, {1, 3}.

    Replica ``rank // 2`` holds its own tokens (uneven: 8 and 4 of 12, with masks), each of its
    two ranks half the vocabulary; the loss is the global mean over valid tokens (kldiv's
    global_normalizer over the data-parallel group), gradients averaged over replicas as DDP does.
    """
    import torch.distributed as dist

    tp = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    dp = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    replica, part = rank // 2, rank % 2
    tokens = slice(0, 8) if replica == 0 else slice(8, 12)
    lo, hi = bounds([11, 12], part)
    s = x["s"].reshape(12, V)[tokens, lo:hi].clone().requires_grad_()
    t = x["t"].reshape(12, V)[tokens, lo:hi]
    hs = x["hs"].reshape(12, H_S)[tokens].clone().requires_grad_()
    ws = x["ws"][lo:hi].clone().requires_grad_()
    ht = x["ht"].reshape(12, H_T)[tokens]
    m = x["bool"].reshape(12)[tokens]
    norm = global_normalizer(m, group=dp[part])
    loss = vocab_kl(student=s, teacher=t, mask=m, normalizer=norm, vocab_group=tp[replica])
    loss = loss + fused_linear_vocab_kl(
        student=(hs, ws),
        teacher=(ht, x["wt"][lo:hi]),
        direction="reverse",
        mask=m,
        normalizer=norm,
        vocab_group=tp[replica],
    )
    loss.backward()
    dist.all_reduce(ws.grad, group=dp[part])  # what DDP does to a parameter's gradient
    ws.grad /= 2
    # the replica's activations: its loss is 2 x its share of the global mean (DDP's averaging
    # divides that factor out of the parameters' gradients)
    return {"loss": loss.detach(), "s": s.grad / 2, "hs": hs.grad / 2, "ws": ws.grad}


def grid_reference(x):
    """One process, all tokens, the whole vocabulary, reduction="mean" over valid tokens."""
    s = x["s"].reshape(12, V).clone().requires_grad_()
    hs = x["hs"].reshape(12, H_S).clone().requires_grad_()
    ws = x["ws"].clone().requires_grad_()
    m = x["bool"].reshape(12)
    loss = vocab_kl(student=s, teacher=x["t"].reshape(12, V), mask=m)
    loss = loss + fused_linear_vocab_kl(
        student=(hs, ws), teacher=(x["ht"].reshape(12, H_T), x["wt"]), direction="reverse", mask=m
    )
    loss.backward()
    return {"s": s.grad, "hs": hs.grad, "ws": ws.grad}


def dtensor_case(x):
    """vocab_kl on the local shards of DTensors sharded on the vocabulary (loss_parallel style)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    s = distribute_tensor(x["s"], mesh, [Shard(2)]).requires_grad_()
    t = distribute_tensor(x["t"], mesh, [Shard(2)])
    loss = vocab_kl(student=s.to_local(), teacher=t.to_local(), vocab_group=mesh.get_group())
    loss.backward()
    return {"loss": loss.detach(), "s": s.grad.full_tensor()}


def main(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = tensors()
    lo, hi = bounds(SPLITS[world], rank)
    out = {"bounds": (lo, hi)}
    for name in CASES:
        out[name] = run_case(name, x, lo, hi, dist.group.WORLD)
    if world == 4:
        out["grid"] = grid(rank, x)
    if world == 2:
        out["dtensor"] = dtensor_case(x)
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
