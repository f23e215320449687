"""One rank of the distributed test (run as a script by tests/torch/test_distributed.py).

``python _ddp_worker.py RANK WORLD INIT_FILE OUT_DIR`` joins a gloo process group, takes its
uneven share of one global batch (samples for a VAE term, masked tokens for a distillation
term), and saves the gradients of three training steps: DDP with kldiv's global normalizer,
DDP with gradient accumulation over two uneven micro-batches, and the naive per-rank mean.

``python _ddp_worker.py RANK 4 INIT_FILE OUT_DIR rlhf`` runs the RLHF penalty steps: 2 data-
parallel x 2 context-parallel ranks (each sequence's positions split in two halves), two
micro-batches per rank, with the three normalizations (token mean, per-sequence mean, Dr. GRPO);
then 4-way data parallelism replaying Hugging Face Trainer's num_items_in_batch arithmetic.
The data and model builders are imported by the test for the single-process reference.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from kldiv import KLDivError, penalty
from kldiv.torch import (
    CategoricalKLLoss,
    NormalKLLoss,
    global_count,
    global_normalizer,
    sequence_weights,
    trainer_normalizer,
)

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


# ----------------------------------------------------------------------------------------------
# RLHF penalties: data x context parallelism, and Hugging Face Trainer's num_items_in_batch
# ----------------------------------------------------------------------------------------------
SEQS, LENGTHS, HALF = 8, [6, 3, 0, 5, 1, 6, 2, 4], 3  # T = 2 * HALF positions


class Policy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.head = torch.nn.Linear(D_IN, VOCAB)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, features, tokens):
        """log pi of the sampled tokens, (B, T)."""
        logp = torch.log_softmax(self.head(features), -1)
        return logp.gather(-1, tokens[..., None])[..., 0]


def rlhf_batch():
    """Sequences of sampled tokens: features, tokens, log pi_ref, log mu, mask; (S, T, ...)."""
    g = torch.Generator().manual_seed(3)
    t = 2 * HALF
    features = torch.randn(SEQS, t, D_IN, generator=g)
    tokens = torch.randint(0, VOCAB, (SEQS, t), generator=g)
    logp_ref = -torch.rand(SEQS, t, generator=g) * 3
    logp_mu = -torch.rand(SEQS, t, generator=g) * 3
    mask = torch.arange(t)[None, :] < torch.tensor(LENGTHS)[:, None]
    return features, tokens, logp_ref, logp_mu, mask


def rlhf_loss(model, features, tokens, logp_ref, logp_mu, **reduction):
    """The penalty as a user writes it: k3 with the importance weight (DeepSeek-V3.2)."""
    logp = model(features, tokens)
    return penalty.k3(logp, logp_ref, behavior_logprobs=logp_mu, detach_weight=False, **reduction)


def rlhf_reference(mode):
    """One process, the whole batch, k3 and each normalization written out by hand."""
    model = Policy()
    features, tokens, logp_ref, logp_mu, mask = rlhf_batch()
    logp = model(features, tokens)
    ell = logp_ref - logp
    v = torch.exp(logp - logp_mu) * (torch.exp(ell) - 1 - ell)
    m = mask.to(v.dtype)
    if mode == "token":
        loss = (v * m).sum() / m.sum()
    elif mode == "seq":  # over the sequences with a valid token
        full = m.sum(-1) > 0
        loss = ((v * m).sum(-1)[full] / m.sum(-1)[full]).mean()
    elif mode == "seq_all":  # over all sequences (verl, TRL): an empty one counts 0
        loss = ((v * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    else:  # Dr. GRPO: sum over tokens / (sequences * fixed length)
        loss = (v * m).sum() / (SEQS * 2 * HALF)
    loss.backward()
    return grads(model)


def rlhf_main(rank, world, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    assert world == 4
    out = {}

    def run(name, micro, loss_of):
        """One optimizer step of gradient accumulation over ``micro`` under DDP."""
        ddp = DDP(Policy())
        for i, mb in enumerate(micro):
            with ddp.no_sync() if i < len(micro) - 1 else contextlib.nullcontext():
                loss_of(ddp, i, mb).backward()
        out[name] = grads(ddp.module)

    batch = rlhf_batch()
    # 2 x 2: data-parallel rank d holds sequences 4d..4d+3, context-parallel rank c positions
    # c*HALF..(c+1)*HALF-1 of each; two micro-batches of two sequences per rank
    dp_rank, cp_rank = divmod(rank, 2)
    cp = [dist.new_group([2 * d, 2 * d + 1]) for d in range(2)][dp_rank]
    rows = slice(4 * dp_rank, 4 * dp_rank + 4)
    cols = slice(cp_rank * HALF, (cp_rank + 1) * HALF)
    local = [x[rows, cols] for x in batch]
    micro = [[x[:2] for x in local], [x[2:] for x in local]]
    masks = [mb[4] for mb in micro]
    weights = [sequence_weights(m, context_group=cp) for m in masks]
    n_tok = global_normalizer(*masks)  # tokens: each rank counts its own
    n_seq = global_normalizer(*weights)  # sequences with a valid token, each counted once
    seqs = [mb[0].shape[0] for mb in micro]  # every CP rank holds the same sequences
    n_dr = 2 * HALF * global_normalizer(*seqs, context_group=cp, replicated_over_context=True)
    n_seq_all = global_normalizer(*seqs, context_group=cp, replicated_over_context=True)
    n_dr_wrong = 2 * HALF * global_normalizer(*seqs)  # counted once per CP rank: twice
    run("token", micro, lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=mb[4], normalizer=n_tok))
    run("seq", micro, lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=weights[i], normalizer=n_seq))
    run(
        "seq_all",
        micro,
        lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=weights[i], normalizer=n_seq_all),
    )
    run("drgrpo", micro, lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=mb[4], normalizer=n_dr))
    run(
        "drgrpo_counted_twice",
        micro,
        lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=mb[4], normalizer=n_dr_wrong),
    )
    # validate=True: replicated counts must agree within a context group; and a context group
    # must lie inside the group the count is summed over
    out["replicated"] = float(
        global_count(2, context_group=cp, replicated_over_context=True, validate=True)
    )
    errors = []
    dp = [dist.new_group([c, 2 + c]) for c in range(2)][cp_rank]
    for kwargs in (
        {"context_group": cp, "replicated_over_context": True, "validate": True},
        {"group": dp, "context_group": cp, "replicated_over_context": True},
    ):
        try:
            global_count(1 + cp_rank, **kwargs)
        except KLDivError as err:
            errors.append(str(err))
    out["errors"] = errors
    run(  # the per-rank, per-micro-batch mean, averaged over the accumulation steps
        "token_local_mean",
        micro,
        lambda mod, i, mb: rlhf_loss(mod, *mb[:4], mask=mb[4], reduction="mean") / 2,
    )

    # Hugging Face Trainer under 4-way data parallelism: rank r holds sequences 2r and 2r + 1
    # (whole), one per micro-batch. Trainer counts the step's valid tokens (get_batch_samples),
    # gathers the count over processes with average_tokens_across_devices, passes it as
    # num_items_in_batch, and then multiplies the loss by W (compute_loss)
    local = [x[2 * rank : 2 * rank + 2] for x in batch]
    micro = [[x[:1] for x in local], [x[1:] for x in local]]
    local_items = sum(mb[4].sum() for mb in micro)
    gathered = local_items.clone()
    dist.all_reduce(gathered)  # accelerator.gather(num_items_in_batch).sum()
    for name, avg, scaled in (
        ("hf_compute_loss_func", True, True),  # Trainer multiplies by W
        ("hf_own_compute_loss", True, False),  # an override that returns the loss as it is
        ("hf_per_device_count", False, True),  # average_tokens_across_devices=False
    ):
        num_items = gathered if avg else local_items
        norm = trainer_normalizer(
            num_items, average_tokens_across_devices=avg, scaled_by_trainer=scaled
        )
        factor = world if avg and scaled else 1

        def hf_loss(mod, i, mb, norm=norm, factor=factor):
            return rlhf_loss(mod, *mb[:4], mask=mb[4], normalizer=norm) * factor

        run(name, micro, hf_loss)

    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) > 5 and sys.argv[5] == "rlhf":
        import torch.distributed as dist

        rank, world = int(sys.argv[1]), int(sys.argv[2])
        dist.init_process_group(
            "gloo", init_method=f"file://{sys.argv[3]}", rank=rank, world_size=world
        )
        rlhf_main(rank, world, sys.argv[4])
    else:
        main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
