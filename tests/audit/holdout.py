"""A second held-out batch for ``kldiv.audit``, written before round two of the auditor was built.

These functions were written from their formulas (sources cited at each) *before* the auditor
changes of issue 13 were made, and were not run against the auditor until the end: they measure
how the auditor generalizes, not how it was tuned. ``tests/audit/score.py holdout`` scores them.
The format is ``corpus.py``'s (``Case``); ``args`` gives a function's required extra arguments.

Labelled points: the verdict (a tuple is a group of verdicts accepted), each argument's
parametrization, and the direction. Conventions are issue 13's: per-element Gaussian KL terms
are ``exact`` with reduction ``none``; a function that samples inside is an estimator; an
estimator of a scaled KL is ``unbiased-estimator`` with a factor; a function that raises on
valid inputs is ``could-not-audit``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributions as D
import torch.nn as nn
import torch.nn.functional as F

_CORPUS = "kldiv_audit_held_out_corpus"
if _CORPUS not in sys.modules:  # corpus.py holds Case; load it as test_corpus.py does
    _spec = importlib.util.spec_from_file_location(_CORPUS, Path(__file__).with_name("corpus.py"))
    assert _spec is not None and _spec.loader is not None
    sys.modules[_CORPUS] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_CORPUS])
Case = sys.modules[_CORPUS].Case

HAVE_JAX = importlib.util.find_spec("jax") is not None
if HAVE_JAX:
    import jax
    import jax.numpy as jnp

EXACT = ("exact", "exact-scaled")
ESTIMATOR = ("unbiased-estimator", "biased-estimator")


# --- normal-standard -----------------------------------------------------------------------------
def blitz_style_sampled_kl(mu, rho):
    # blitz-bayesian-pytorch TrainableRandomDistribution: sigma = log1p(exp(rho)), w = mu + sigma *
    # eps sampled inside, complexity cost = log q(w) - log p(w), here with a N(0, 1) prior
    sigma = torch.log1p(torch.exp(rho))
    w = mu + sigma * torch.randn_like(mu)
    log_q = D.Normal(mu, sigma).log_prob(w)
    log_p = D.Normal(torch.zeros_like(mu), torch.ones_like(mu)).log_prob(w)
    return (log_q - log_p).sum()


def bolts_kl_rsample(mu, log_var):
    # Lightning-Bolts VAE.step: std = exp(log_var / 2), q.rsample() inside, kl = (log_qz - log_pz)
    # .mean() over batch and latent
    std = torch.exp(log_var / 2)
    p = D.Normal(torch.zeros_like(mu), torch.ones_like(std))
    q = D.Normal(mu, std)
    z = q.rsample()
    return (q.log_prob(z) - p.log_prob(z)).mean()


def vae_logvar_first(logvar, mu):
    # the pytorch/examples VAE term with the arguments in the other order
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def beta_vae_required_beta(mu, logvar, beta):
    # beta-VAE with beta a required argument (Higgins et al. 2017)
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return beta * kld.mean()


def dreamer_v3_free_bits_row(mu, log_std):
    # DreamerV3-style free bits: the KL of each example clipped from below at 1 nat, then averaged
    std = torch.exp(log_std)
    kl = 0.5 * (std**2 + mu**2 - 1) - log_std
    return torch.clip(kl.sum(-1), min=1.0).mean()


def numpy_vae_sum_over_batch(mu, log_sigma):
    # a numpy VAE loss with a true log-sigma (2 * log_sigma in the log term)
    return np.sum(-0.5 * (1 + 2 * log_sigma - mu**2 - np.exp(2 * log_sigma))) / mu.shape[0]


class KLStandardModule(nn.Module):
    # an nn.Module whose forward takes (mu, logvar): sum over latent, mean over batch
    def forward(self, mu, logvar):
        return torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=-1))


if HAVE_JAX:

    def rlax_kl_to_standard_normal(mu, sigma):
        # rlax gaussian_diagonal().kl_to_standard_normal: sign and the "- 1" not summed over D
        v = jnp.clip(sigma**2, 1e-6, 1e6)
        return -0.5 * (jnp.sum(v) + jnp.sum(mu**2) - 1 - jnp.sum(jnp.log(v)))


# --- normal --------------------------------------------------------------------------------------
def bayesian_torch_kl_div(mu_q, sigma_q, mu_p, sigma_p):
    # IntelLabs/bayesian-torch BaseVariationalLayer_.kl_div: mean over all elements
    kl = (
        torch.log(sigma_p)
        - torch.log(sigma_q)
        + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * (sigma_p**2))
        - 0.5
    )
    return kl.mean()


def bbb_prior_as_float(mu, sigma, mu_prior, sigma_prior):
    # Bayes by Backprop KL against a prior whose mean and sigma are Python floats (math.log)
    return (
        math.log(sigma_prior)
        - torch.log(sigma)
        + (sigma**2 + (mu - mu_prior) ** 2) / (2 * sigma_prior**2)
        - 0.5
    ).sum()


class EspnetKLWithoutFlow(nn.Module):
    # espnet2 gan_tts KLDivergenceLossWithoutFlow: Normal(m, exp(logs)) pair, mean of the terms
    def forward(self, m_q, logs_q, m_p, logs_p):
        posterior = D.Normal(m_q, torch.exp(logs_q))
        prior = D.Normal(m_p, torch.exp(logs_p))
        return D.kl_divergence(posterior, prior).mean()


def gaussian_kl_locs_first(mu_q, mu_p, logvar_q, logvar_p):
    # a Gaussian KL whose signature lists both means, then both log-variances
    return 0.5 * torch.sum(
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1, dim=-1
    )


def numpy_normal_kl_elementwise(mean1, logvar1, mean2, logvar2):
    # guided-diffusion normal_kl written with numpy: one term per element
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + np.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * np.exp(-logvar2)
    )


def dreamer_v1_free_nats(post_mean, post_std, prior_mean, prior_std):
    # danijar/dreamer: div = mean(kl(post, prior)); div = max(div, free_nats) with free_nats = 3
    post = D.Independent(D.Normal(post_mean, post_std), 1)
    prior = D.Independent(D.Normal(prior_mean, prior_std), 1)
    div = torch.mean(D.kl_divergence(post, prior))
    return torch.clamp(div, min=3.0)


def softplus_std_pair(mu_q, rho_q, mu_p, rho_p):
    # both scales through softplus (Bayes-by-Backprop posteriors), torch.distributions KL summed
    q = D.Normal(mu_q, F.softplus(rho_q))
    p = D.Normal(mu_p, F.softplus(rho_p))
    return D.kl_divergence(q, p).sum()


# --- categorical ---------------------------------------------------------------------------------
if HAVE_JAX:

    def rlax_categorical_kl(p_logits, q_logits):
        # rlax categorical_kl_divergence (temperature 1), relu guard
        p = jax.nn.softmax(p_logits)
        log_p = jax.nn.log_softmax(p_logits)
        log_q = jax.nn.log_softmax(q_logits)
        return jax.nn.relu(jnp.sum(p * (log_p - log_q), axis=-1))

    def optax_convex_kl(log_predictions, targets):
        # optax convex_kl_divergence: adds exp(log_predictions) - targets (0 when normalized)
        return jnp.sum(
            targets * (jnp.log(targets) - log_predictions) + jnp.exp(log_predictions) - targets,
            axis=-1,
        )

    def optax_kl_log_targets(log_predictions, log_targets):
        # optax kl_divergence_with_log_targets
        return jnp.sum(jnp.exp(log_targets) * (log_targets - log_predictions), axis=-1)


def mmdet_kd_kl_div(pred, soft_label, T, detach_target=True):
    # mmdetection knowledge_distillation_kl_div_loss: mean over classes, times T^2, per example
    target = F.softmax(soft_label / T, dim=1)
    if detach_target:
        target = target.detach()
    kd = F.kl_div(F.log_softmax(pred / T, dim=1), target, reduction="none").mean(1)
    return kd * (T * T)


class RepDistillerDistillKL(nn.Module):
    # HobbitLong/RepDistiller distiller_zoo/KD.py DistillKL with T = 4
    def __init__(self, T=4):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * (self.T**2) / y_s.shape[0]


def gkd_jsd_default_beta(student_logits, teacher_logits):
    # TRL GKDTrainer.generalized_jsd_loss at its default beta = 0.5 (a JSD), batchmean
    beta = 0.5
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    mix = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
    kl_t = F.kl_div(mix, t, reduction="none", log_target=True)
    kl_s = F.kl_div(mix, s, reduction="none", log_target=True)
    jsd = beta * kl_t + (1 - beta) * kl_s
    return jsd.sum() / jsd.size(0)


def gkd_forward_kl_beta0(student_logits, teacher_logits):
    # TRL generalized_jsd_loss with beta = 0: F.kl_div(student_log_probs, teacher_log_probs,
    # log_target=True), batchmean over (B, T, V) inputs
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    kl = F.kl_div(s, t, reduction="none", log_target=True)
    return kl.sum() / kl.size(0)


def minillm_reverse_kl(student_logits, teacher_logits):
    # MiniLLM-style reverse KL(student || teacher), mean over positions
    ls = F.log_softmax(student_logits, dim=-1)
    lt = F.log_softmax(teacher_logits, dim=-1)
    return (ls.exp() * (ls - lt)).sum(-1).mean()


def distillm_skew_kl(student_logits, teacher_logits):
    # DistiLLM skew KL: KL(p_t || a p_t + (1 - a) p_s) with a = 0.1 (not a KL between the two)
    a = 0.1
    pt = F.softmax(teacher_logits, dim=-1)
    ps = F.softmax(student_logits, dim=-1)
    mix = a * pt + (1 - a) * ps
    return (pt * (torch.log(pt) - torch.log(mix))).sum(-1).mean()


def kd_kl_div_batchmean_3d(s, t):
    # seed 004's call on (B, T, V) inputs: F.kl_div(log_softmax(s), softmax(t), 'batchmean')
    return F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")


def kd_sharpened_teacher(pred, label):
    # a teacher sharpened on one side only: softmax(10 * label) against log_softmax(pred)
    return F.kl_div(F.log_softmax(pred, -1), F.softmax(10 * label, -1), reduction="batchmean")


def kd_t_squared_twice(student, teacher):
    # T^2 applied twice (once inside a helper, once by the caller), T = 2
    T = 2.0
    loss = F.kl_div(
        F.log_softmax(student / T, -1), F.softmax(teacher / T, -1), reduction="batchmean"
    ) * (T * T)
    return loss * T * T


def kd_divided_twice(student, teacher):
    # flattened batchmean (a per-token mean) divided again by the sequence length
    v = student.size(-1)
    loss = F.kl_div(
        F.log_softmax(student.reshape(-1, v), -1),
        F.softmax(teacher.reshape(-1, v), -1),
        reduction="batchmean",
    )
    return loss / student.size(1) if student.dim() == 3 else loss


def kd_cross_entropy_logged_as_kl(student_logits, teacher_logits):
    # soft cross-entropy logged as "kl": H(teacher, student) = KL + H(teacher)
    return -(F.softmax(teacher_logits, -1) * F.log_softmax(student_logits, -1)).sum(-1).mean()


def torch_categorical_probs_mean(p, q):
    # torch.distributions Categorical(probs=...) KL, averaged over the batch
    return D.kl_divergence(D.Categorical(probs=p), D.Categorical(probs=q)).mean()


def keras_style_clip_numpy(y_true, y_pred):
    # Keras kl_divergence: clip both to [1e-7, 1], sum over the last axis, mean over the batch
    y_true = np.clip(y_true, 1e-7, 1)
    y_pred = np.clip(y_pred, 1e-7, 1)
    return np.mean(np.sum(y_true * np.log(y_true / y_pred), axis=-1))


def kd_fixed_ten_classes(student_logits, teacher_logits):
    # written for 10 classes: .view(-1, 10) raises on other class counts
    s = F.log_softmax(student_logits.view(-1, 10), -1)
    t = F.softmax(teacher_logits.view(-1, 10), -1)
    return F.kl_div(s, t, reduction="batchmean")


def sampled_token_kl(p_logits, q_logits):
    # a one-token Monte Carlo KL: sample a class from p inside, log p - log q of it, batch mean
    lp = F.log_softmax(p_logits, -1)
    lq = F.log_softmax(q_logits, -1)
    flat_p, flat_q = lp.reshape(-1, lp.size(-1)), lq.reshape(-1, lq.size(-1))
    idx = torch.multinomial(flat_p.exp(), 1)
    return (flat_p.gather(-1, idx) - flat_q.gather(-1, idx)).mean()


# --- log-ratio -----------------------------------------------------------------------------------
def verl_k3_plus(logprob, ref_logprob):
    # verl kl_penalty "k3+": value k3, gradient k2 (straight-through)
    kl = ref_logprob - logprob
    k3 = torch.exp(kl) - kl - 1
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + k3.detach()


def verl_k1_plus(logprob, ref_logprob):
    # verl kl_penalty "k1+": value k1, gradient k2
    k1 = logprob - ref_logprob
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + k1.detach()


def trl_bias_corrected_k3(per_token_logps, ref_per_token_logps, old_per_token_logps, mask):
    # TRL GRPO use_bias_correction_kl: k3 times coef_1 = exp(logp - old_logp) (not detached),
    # per-sequence masked mean then batch mean
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    per_token_kl = (
        torch.exp(ref_per_token_logps - per_token_logps)
        - (ref_per_token_logps - per_token_logps)
        - 1
    )
    per_token_kl = per_token_kl * coef_1
    return ((per_token_kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def iw_k1_detached_weight(logp, logp_ref, logp_behavior):
    # an importance-weighted k1 with the weight's gradient stopped, token mean
    w = torch.exp(logp - logp_behavior).detach()
    return (w * (logp - logp_ref)).mean()


def iw_weight_inverted(logp, logp_ref, logp_old):
    # the importance weight inverted (old / new): biased off-policy
    w = torch.exp(logp_old - logp)
    return (w * (torch.exp(logp_ref - logp) - (logp_ref - logp) - 1)).mean()


def openrlhf_k2_masked(log_probs, log_probs_base, action_mask):
    # OpenRLHF compute_approx_kl "k2" with the action mask, masked mean
    log_ratio = (log_probs.float() - log_probs_base.float()) * action_mask
    k2 = log_ratio**2 / 2.0
    return (k2 * action_mask).sum() / action_mask.sum()


def openrlhf_k3_clamped_ratio(log_probs, log_probs_base):
    # OpenRLHF compute_approx_kl "k3" after the log-ratio clamp to [-10, 10] was added
    log_ratio = (log_probs.float() - log_probs_base.float()).clamp(min=-10, max=10)
    log_ratio = -log_ratio
    return log_ratio.exp() - 1 - log_ratio


def low_var_kl_token_mean(logprob, ref_logprob):
    # verl "low_var_kl" (k3, value clamped to [-10, 10]) averaged over tokens
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    kld = torch.exp(kl) - kl - 1
    return torch.clamp(kld, min=-10, max=10).mean()


if HAVE_JAX:

    def jax_k1_mean(logp, logp_ref):
        return jnp.mean(logp - logp_ref)


# --- normal-sample -------------------------------------------------------------------------------
class EspnetVitsKL(nn.Module):
    # espnet2 gan_tts/vits/loss.py KLDivergenceLoss, as a module
    def forward(self, z_p, logs_q, m_p, logs_p, z_mask):
        kl = logs_p - logs_q - 0.5
        kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
        kl = torch.sum(kl * z_mask)
        return kl / torch.sum(z_mask)


def bolts_kl_given_z(z, mu, log_var):
    # Lightning-Bolts kl with z given: (log q(z) - log p(z)).mean() over batch and latent,
    # p = N(0, I)
    std = torch.exp(log_var / 2)
    q = D.Normal(mu, std)
    p = D.Normal(torch.zeros_like(mu), torch.ones_like(std))
    return (q.log_prob(z) - p.log_prob(z)).mean()


def mc_kl_sum_then_mean(z, mu, logvar):
    # (log q - log p).sum(-1).mean() on (B, D) latents against N(0, I)
    std = torch.exp(0.5 * logvar)
    log_q = D.Normal(mu, std).log_prob(z)
    log_p = D.Normal(torch.zeros_like(mu), torch.ones_like(mu)).log_prob(z)
    return (log_q - log_p).sum(-1).mean()


CASES: list[Case] = [
    Case(
        "h_ns_blitz_sampled_softplus",
        "normal-standard",
        blitz_style_sampled_kl,
        {"verdict": "unbiased-estimator", "params": {"rho": "softplus"}},
        source="piEsposito/blitz-bayesian-deep-learning TrainableRandomDistribution",
    ),
    Case(
        "h_ns_bolts_rsample_mean",
        "normal-standard",
        bolts_kl_rsample,
        {"verdict": "unbiased-estimator", "params": {"log_var": "log_var"}},
        source="Lightning-Universe/lightning-bolts models/autoencoders/basic_vae",
    ),
    Case(
        "h_ns_logvar_first",
        "normal-standard",
        vae_logvar_first,
        {"verdict": "exact", "params": {"logvar": "log_var"}},
        source="pytorch/examples vae, arguments swapped",
    ),
    Case(
        "h_ns_beta_required",
        "normal-standard",
        beta_vae_required_beta,
        {"verdict": "exact-scaled", "params": {"logvar": "log_var"}},
        source="beta-VAE with a beta argument",
        args={"beta": 4.0},
    ),
    Case(
        "h_ns_dreamer_v3_free_bits",
        "normal-standard",
        dreamer_v3_free_bits_row,
        {"verdict": EXACT, "params": {"log_std": "log_std"}, "problems": ("floor",)},
        source="danijar/dreamerv3 free bits (clip from below at 1 nat)",
    ),
    Case(
        "h_ns_numpy_log_sigma",
        "normal-standard",
        numpy_vae_sum_over_batch,
        {"verdict": "exact", "params": {"log_sigma": "log_std"}},
        source="numpy VAE with a log-sigma encoder",
    ),
    Case(
        "h_ns_module",
        "normal-standard",
        KLStandardModule(),
        {"verdict": "exact", "params": {"logvar": "log_var"}},
        source="an nn.Module KL term",
    ),
    Case(
        "h_n_bayesian_torch_mean",
        "normal",
        bayesian_torch_kl_div,
        {
            "verdict": "exact-scaled",
            "params": {"sigma_q": "std", "sigma_p": "std"},
            "direction": "a||b",
        },
        source="IntelLabs/bayesian-torch layers/base_variational_layer.py kl_div",
    ),
    Case(
        "h_n_bbb_prior_floats",
        "normal",
        bbb_prior_as_float,
        {"verdict": "exact", "params": {"sigma": "std", "sigma_prior": "std"}, "direction": "a||b"},
        source="Bayes by Backprop KL with a float prior (math.log)",
    ),
    Case(
        "h_n_espnet_without_flow",
        "normal",
        EspnetKLWithoutFlow(),
        {
            "verdict": "exact-scaled",
            "params": {"logs_q": "log_std", "logs_p": "log_std"},
            "direction": "a||b",
        },
        source="espnet2 gan_tts/vits/loss.py KLDivergenceLossWithoutFlow",
    ),
    Case(
        "h_n_locs_first",
        "normal",
        gaussian_kl_locs_first,
        {
            "verdict": "exact",
            "params": {"logvar_q": "log_var", "logvar_p": "log_var"},
            "direction": "a||b",
        },
        source="Gaussian KL with (mu_q, mu_p, logvar_q, logvar_p)",
    ),
    Case(
        "h_n_numpy_elementwise",
        "normal",
        numpy_normal_kl_elementwise,
        {
            "verdict": "exact",
            "params": {"logvar1": "log_var", "logvar2": "log_var"},
            "direction": "a||b",
        },
        source="openai/guided-diffusion losses.normal_kl in numpy",
    ),
    Case(
        "h_n_dreamer_free_nats",
        "normal",
        dreamer_v1_free_nats,
        {
            "verdict": EXACT,
            "params": {"post_std": "std", "prior_std": "std"},
            "direction": "a||b",
            "problems": ("floor",),
        },
        source="danijar/dreamer models: max(mean KL, free_nats = 3)",
    ),
    Case(
        "h_n_softplus_pair",
        "normal",
        softplus_std_pair,
        {
            "verdict": "exact",
            "params": {"rho_q": "softplus", "rho_p": "softplus"},
            "direction": "a||b",
        },
        source="softplus-scaled posteriors, torch.distributions KL",
    ),
    Case(
        "h_c_mmdet_kd",
        "categorical",
        mmdet_kd_kl_div,
        {
            "verdict": "exact-scaled",
            "params": {"pred": "logits", "soft_label": "logits"},
            "direction": "b||a",
            "temperature": 10.0,
        },
        source="open-mmlab/mmdetection losses/kd_loss.py",
        args={"T": 10},
    ),
    Case(
        "h_c_repdistiller",
        "categorical",
        RepDistillerDistillKL(),
        {
            "verdict": "exact-scaled",
            "params": {"y_s": "logits", "y_t": "logits"},
            "direction": "b||a",
            "temperature": 4.0,
        },
        source="HobbitLong/RepDistiller distiller_zoo/KD.py",
    ),
    Case(
        "h_c_gkd_jsd",
        "categorical",
        gkd_jsd_default_beta,
        {"verdict": "not-kl"},
        source="huggingface/trl GKDTrainer.generalized_jsd_loss, beta = 0.5",
    ),
    Case(
        "h_c_gkd_beta0",
        "categorical",
        gkd_forward_kl_beta0,
        {
            "verdict": "exact",
            "params": {"student_logits": "logits", "teacher_logits": "logits"},
            "direction": "b||a",
        },
        source="huggingface/trl generalized_jsd_loss, beta = 0",
    ),
    Case(
        "h_c_minillm_reverse",
        "categorical",
        minillm_reverse_kl,
        {
            "verdict": "exact",
            "params": {"student_logits": "logits", "teacher_logits": "logits"},
            "direction": "a||b",
        },
        source="microsoft/LMOps minillm reverse KL",
    ),
    Case(
        "h_c_distillm_skew",
        "categorical",
        distillm_skew_kl,
        {"verdict": "not-kl"},
        source="jongwooko/distillm skew KL, alpha = 0.1",
    ),
    Case(
        "h_c_seed004_3d",
        "categorical",
        kd_kl_div_batchmean_3d,
        {"verdict": "exact", "params": {"s": "logits", "t": "logits"}, "direction": "b||a"},
        source="seeds/004 on (B, T, V)",
    ),
    Case(
        "h_c_sharpened_teacher",
        "categorical",
        kd_sharpened_teacher,
        {"verdict": EXACT, "params": {"pred": "logits", "label": "logits"}, "direction": "b||a"},
        source="softmax(10 * label) against log_softmax(pred)",
    ),
    Case(
        "h_c_t2_twice",
        "categorical",
        kd_t_squared_twice,
        {
            "verdict": "exact-scaled",
            "params": {"student": "logits", "teacher": "logits"},
            "direction": "b||a",
            "temperature": 2.0,
        },
        source="T^2 applied twice",
    ),
    Case(
        "h_c_divided_twice",
        "categorical",
        kd_divided_twice,
        {
            "verdict": ("exact", "exact-scaled"),
            "params": {"student": "logits", "teacher": "logits"},
            "direction": "b||a",
        },
        source="flattened batchmean divided by the sequence length again",
    ),
    Case(
        "h_c_cross_entropy",
        "categorical",
        kd_cross_entropy_logged_as_kl,
        {"verdict": "not-kl"},
        source="soft cross-entropy logged as KL",
    ),
    Case(
        "h_c_torch_probs_mean",
        "categorical",
        torch_categorical_probs_mean,
        {"verdict": "exact", "params": {"p": "probs", "q": "probs"}, "direction": "a||b"},
        source="torch.distributions Categorical(probs) KL mean",
    ),
    Case(
        "h_c_keras_clip_mean",
        "categorical",
        keras_style_clip_numpy,
        {
            "verdict": "exact",
            "params": {"y_true": "probs", "y_pred": "probs"},
            "direction": "a||b",
            "problems": ("clip",),
        },
        source="keras losses.kl_divergence, numpy",
    ),
    Case(
        "h_c_fixed_ten_classes",
        "categorical",
        kd_fixed_ten_classes,
        {"verdict": "could-not-audit"},
        source="a KD loss hard-wired to 10 classes",
    ),
    Case(
        "h_c_sampled_token",
        "categorical",
        sampled_token_kl,
        {
            "verdict": "unbiased-estimator",
            "params": {"p_logits": "logits", "q_logits": "logits"},
            "direction": "a||b",
        },
        source="one sampled class per distribution, log p - log q",
    ),
    Case(
        "h_lr_verl_k3_plus",
        "log-ratio",
        verl_k3_plus,
        {"verdict": "unbiased-estimator"},
        source="volcengine/verl kl_penalty 'k3+'",
    ),
    Case(
        "h_lr_verl_k1_plus",
        "log-ratio",
        verl_k1_plus,
        {"verdict": "unbiased-estimator"},
        source="volcengine/verl kl_penalty 'k1+'",
    ),
    Case(
        "h_lr_trl_bias_corrected",
        "log-ratio",
        trl_bias_corrected_k3,
        {"verdict": "unbiased-estimator"},
        source="huggingface/trl GRPOTrainer use_bias_correction_kl",
    ),
    Case(
        "h_lr_iw_k1_detached",
        "log-ratio",
        iw_k1_detached_weight,
        {"verdict": "unbiased-estimator"},
        source="importance-weighted k1, weight detached",
    ),
    Case(
        "h_lr_iw_inverted",
        "log-ratio",
        iw_weight_inverted,
        {"verdict": ("biased-estimator", "not-kl")},
        source="importance weight inverted",
    ),
    Case(
        "h_lr_openrlhf_k2_masked",
        "log-ratio",
        openrlhf_k2_masked,
        {"verdict": "biased-estimator"},
        source="OpenRLHF compute_approx_kl k2, masked mean",
    ),
    Case(
        "h_lr_openrlhf_k3_clamped",
        "log-ratio",
        openrlhf_k3_clamped_ratio,
        {"verdict": ESTIMATOR},
        source="OpenRLHF compute_approx_kl k3 with log-ratio clamp",
    ),
    Case(
        "h_lr_low_var_kl_mean",
        "log-ratio",
        low_var_kl_token_mean,
        {"verdict": ESTIMATOR, "problems": ("clamp", "clip")},
        source="volcengine/verl low_var_kl, token mean",
    ),
    Case(
        "h_s_espnet_vits_module",
        "normal-sample",
        EspnetVitsKL(),
        {"verdict": "unbiased-estimator", "params": {"logs_q": "log_std", "logs_p": "log_std"}},
        roles={
            "z_p": "sample",
            "logs_q": "q.scale",
            "m_p": "p.loc",
            "logs_p": "p.scale",
            "z_mask": "mask",
        },
        source="espnet2 gan_tts/vits/loss.py KLDivergenceLoss",
    ),
    Case(
        "h_s_bolts_given_z",
        "normal-sample",
        bolts_kl_given_z,
        {"verdict": "unbiased-estimator", "params": {"log_var": "log_var"}},
        roles={"z": "sample", "mu": "q.loc", "log_var": "q.scale"},
        source="Lightning-Bolts kl_loss(p, q, z), p = N(0, I)",
    ),
    Case(
        "h_s_sum_then_mean",
        "normal-sample",
        mc_kl_sum_then_mean,
        {"verdict": "unbiased-estimator", "params": {"logvar": "log_var"}},
        roles={"z": "sample", "mu": "q.loc", "logvar": "q.scale"},
        source="(log q - log p).sum(-1).mean() on (B, D) latents",
    ),
]

if HAVE_JAX:
    CASES += [
        Case(
            "h_ns_rlax_kl_to_standard",
            "normal-standard",
            rlax_kl_to_standard_normal,
            {"verdict": "not-kl"},
            backend="jax",
            source="google-deepmind/rlax distributions.gaussian_diagonal kl_to_standard_normal",
        ),
        Case(
            "h_c_rlax_categorical",
            "categorical",
            rlax_categorical_kl,
            {
                "verdict": "exact",
                "params": {"p_logits": "logits", "q_logits": "logits"},
                "direction": "a||b",
            },
            backend="jax",
            source="google-deepmind/rlax categorical_kl_divergence",
        ),
        Case(
            "h_c_optax_convex",
            "categorical",
            optax_convex_kl,
            {
                "verdict": "exact",
                "params": {"log_predictions": "log_probs", "targets": "probs"},
                "direction": "b||a",
            },
            backend="jax",
            source="google-deepmind/optax convex_kl_divergence",
        ),
        Case(
            "h_c_optax_log_targets",
            "categorical",
            optax_kl_log_targets,
            {
                "verdict": "exact",
                "params": {"log_predictions": "log_probs", "log_targets": "log_probs"},
                "direction": "b||a",
            },
            backend="jax",
            source="google-deepmind/optax kl_divergence_with_log_targets",
        ),
        Case(
            "h_lr_jax_k1_mean",
            "log-ratio",
            jax_k1_mean,
            {"verdict": "unbiased-estimator"},
            backend="jax",
            source="k1 token mean in jax.numpy",
        ),
    ]
