"""One rank of the distributed test (run as a script by tests/torch/test_distributed.py).

``python _ddp_worker.py RANK WORLD INIT_FILE OUT_DIR`` joins a gloo process group, takes its
uneven share of one global batch (samples for a VAE term, masked tokens for a distillation
term), and saves the gradients of three training steps: DDP with kldiv's global normalizer,
DDP with gradient accumulation over two uneven micro-batches, and the naive per-rank mean.
The data and model builders are imported by the test for the single-process reference.
"""

from __future__ import annotations

import sys

import torch

from kldiv.torch import CategoricalKLLoss, NormalKLLoss, global_normalizer

D_IN, LATENT, VOCAB, T = 4, 3, 7, 6


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Linear(D_IN, 2 * LATENT)
        self.head = torch.nn.Linear(D_IN, VOCAB)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x, tokens):
        mu, log_var = self.enc(x).chunk(2, dim=-1)
        return mu, log_var, self.head(tokens)


def sizes(world):
    """Uneven samples and sequences per rank."""
    return {1: [7], 2: [5, 2], 3: [4, 1, 3]}[world], {1: [6], 2: [2, 4], 3: [3, 1, 2]}[world]


def global_batch(world):
    """The concatenated batch, identical on every rank and in the reference."""
    n_samples, n_seqs = (sum(s) for s in sizes(world))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_samples, D_IN, generator=g)
    tokens = torch.randn(n_seqs, T, D_IN, generator=g)
    teacher = torch.randn(n_seqs, T, VOCAB, generator=g) * 2
    lengths = torch.randint(1, T + 1, (n_seqs,), generator=g)
    lengths[0] = 0  # a sequence with no valid token at all
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return x, tokens, teacher, mask


def shard(world, rank, batch):
    x, tokens, teacher, mask = batch
    ns, nq = sizes(world)
    s0, q0 = sum(ns[:rank]), sum(nq[:rank])
    return (
        x[s0 : s0 + ns[rank]],
        tokens[q0 : q0 + nq[rank]],
        teacher[q0 : q0 + nq[rank]],
        mask[q0 : q0 + nq[rank]],
    )


normal_loss = NormalKLLoss(param="log_var")
token_loss = CategoricalKLLoss(p_param="logits", q_param="logits")


def loss_on(model, x, tokens, teacher, mask, n_norm=None, t_norm=None):
    """The VAE term (mean over samples) plus the distillation term (mean over valid tokens)."""
    mu, log_var, student = model(x, tokens)
    return normal_loss(mu, log_var, normalizer=n_norm) + token_loss(
        teacher, student, mask=mask, normalizer=t_norm
    )


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def main(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, tokens, teacher, mask = shard(world, rank, global_batch(world))
    out = {}

    # 1. one step: local sums divided by the global count (over ranks) / world size
    ddp = DDP(Model())
    loss = loss_on(
        ddp, x, tokens, teacher, mask, global_normalizer(x.shape[0]), global_normalizer(mask)
    )
    loss.backward()
    out["ddp"] = grads(ddp.module)

    # 2. gradient accumulation over two uneven micro-batches per rank
    ddp = DDP(Model())
    cut_s, cut_q = x.shape[0] // 2, (tokens.shape[0] + 1) // 2
    micro = [
        (x[:cut_s], tokens[:cut_q], teacher[:cut_q], mask[:cut_q]),
        (x[cut_s:], tokens[cut_q:], teacher[cut_q:], mask[cut_q:]),
    ]
    n_norm = global_normalizer(*(m[0].shape[0] for m in micro))
    t_norm = global_normalizer(*(m[3] for m in micro))
    with ddp.no_sync():
        loss_on(ddp, *micro[0], n_norm, t_norm).backward()
    loss_on(ddp, *micro[1], n_norm, t_norm).backward()
    out["accum"] = grads(ddp.module)

    # 3. the naive per-rank mean (what the normalizer fixes)
    ddp = DDP(Model())
    loss_on(ddp, x, tokens, teacher, mask).backward()
    out["naive"] = grads(ddp.module)

    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
