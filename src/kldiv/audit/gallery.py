"""The gallery: the KL code people ask about in the field, transcribed, with the right answers.

Each entry reproduces a formula from a real question (the seeds in the project's issue
tracker: a VAE loss thread, the Keras KL question, the VITS KL thread, the "log σ or log σ²"
question, and a notebook on ``F.kl_div``'s reductions). They are written with NumPy so that the
gallery runs on a bare install; ``F.kl_div``'s documented formula, ``target * (log(target) -
input)``, is transcribed where the original calls it. ``expected`` is the verdict derived by
hand, which the tests check the auditor against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Entry:
    """One gallery function with its source and the hand-derived verdict."""

    seed: str
    label: str
    fn: Callable[..., Any]
    kind: str
    expected: str
    roles: str | None = None


# --- seed 000: "KL divergence loss equation: sum or mean?" -------------------------------------
def vae_sum_sigma(mean, sigma):
    """KL_loss = -0.5 * torch.sum(1 + torch.log(sigma**2) - mean**2 - sigma**2)"""
    return -0.5 * np.sum(1 + np.log(sigma**2) - mean**2 - sigma**2)


def vae_sum_then_mean(mean, sigma):
    """The same, followed by KL_loss = torch.mean(KL_loss) (a mean of one number)"""
    kl_loss = -0.5 * np.sum(1 + np.log(sigma**2) - mean**2 - sigma**2)
    return np.mean(kl_loss)


def vae_sum_over_batch_size(mean, log_var):
    """KLD = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()); KLD / x.size(0)"""
    kld = -0.5 * np.sum(1 + log_var - mean**2 - np.exp(log_var))
    return kld / mean.shape[0]


def vae_mean_over_all(mean, stddev):
    """0.5 * torch.mean(mean_sq + stddev_sq - torch.log(stddev_sq) - 1)"""
    mean_sq, stddev_sq = mean * mean, stddev * stddev
    return 0.5 * np.mean(mean_sq + stddev_sq - np.log(stddev_sq) - 1)


# --- seed 001: Keras's kullback_leibler_divergence -----------------------------------------------
def keras_kl(y_true, y_pred):
    """K.sum(y_true * K.log(y_true / y_pred), axis=-1) after clipping both to [1e-7, 1]"""
    y_true = np.clip(y_true, 1e-7, 1)
    y_pred = np.clip(y_pred, 1e-7, 1)
    return np.sum(y_true * np.log(y_true / y_pred), axis=-1)


def keras_kl_training_loss(y_true, y_pred):
    """What Keras reports in training: the mean over the rows of the function above"""
    return np.mean(keras_kl(y_true, y_pred))


# --- seed 002: the VITS KL loss ------------------------------------------------------------------
def vits_kl_loss(z_p, logs_q, m_p, logs_p, z_mask):
    """VITS losses.kl_loss: a one-sample estimate against a flow prior, mean over valid frames"""
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * np.exp(-2.0 * logs_p)
    kl = np.sum(kl * z_mask)
    return kl / np.sum(z_mask)


def vits_kl_loss_abs(z_p, logs_q, m_p, logs_p, z_mask):
    """The fix proposed in the thread: kl = torch.abs(logs_p - logs_q - 0.5) (it biases it)"""
    kl = np.abs(logs_p - logs_q - 0.5)
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * np.exp(-2.0 * logs_p)
    kl = np.sum(kl * z_mask)
    return kl / np.sum(z_mask)


# --- seed 003: "log σ or log σ²?" ----------------------------------------------------------------
def f_sigma_squared(mu, sigma):
    """f(μ, σ) = -½(1 + 2 log σ - σ² - μ²), summed"""
    return np.sum(-0.5 * (1 + 2 * np.log(sigma) - sigma**2 - mu**2))


def g_sigma(mu, sigma):
    """g(μ, σ) = -½(1 + log σ - σ - μ²), summed: the Keras tutorial's form"""
    return np.sum(-0.5 * (1 + np.log(sigma) - sigma - mu**2))


# --- seed 004: F.kl_div's reductions with softmax over dim 0 ------------------------------------
def _manual_terms(a1, a2):
    return _softmax0(a2) * (_log_softmax0(a2) - _log_softmax0(a1))


def _kl_div_terms(a1, a2):  # F.kl_div(a1.log_softmax(0), a2.softmax(0), reduction="none")
    target = _softmax0(a2)
    return target * (np.log(target) - _log_softmax0(a1))


def _log_softmax0(x):
    m = np.max(x, axis=0, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=0, keepdims=True))


def _softmax0(x):
    return np.exp(_log_softmax0(x))


def manual_kl_sum(a1, a2):
    """(a2.softmax(0) * (a2.log_softmax(0) - a1.log_softmax(0))).sum()"""
    return _manual_terms(a1, a2).sum()


def kl_div_sum(a1, a2):
    """F.kl_div(a1.log_softmax(0), a2.softmax(0), reduction='sum')"""
    return _kl_div_terms(a1, a2).sum()


def manual_kl_mean(a1, a2):
    """manual_kl.mean()"""
    return _manual_terms(a1, a2).mean()


def kl_div_mean(a1, a2):
    """F.kl_div(..., reduction='mean'): divides by every element, classes included"""
    return _kl_div_terms(a1, a2).mean()


def manual_kl_mean0_sum(a1, a2):
    """manual_kl.mean(0).sum(): the notebook's 'batchmean' by hand"""
    return _manual_terms(a1, a2).mean(0).sum()


def kl_div_batchmean(a1, a2):
    """F.kl_div(..., reduction='batchmean'): divides by size(0), here the number of classes"""
    return _kl_div_terms(a1, a2).sum() / a1.shape[0]


VITS_ROLES = "z_p=sample,logs_q=q.scale,m_p=p.loc,logs_p=p.scale,z_mask=mask"

ENTRIES: tuple[Entry, ...] = (
    Entry("000", "sum with σ", vae_sum_sigma, "normal-standard", "exact"),
    Entry("000", "sum, then torch.mean", vae_sum_then_mean, "normal-standard", "exact"),
    Entry("000", "sum / batch size", vae_sum_over_batch_size, "normal-standard", "exact"),
    Entry(
        "000", "mean over batch and latent", vae_mean_over_all, "normal-standard", "exact-scaled"
    ),
    Entry("001", "Keras KL per row", keras_kl, "categorical", "exact"),
    Entry("001", "Keras training loss", keras_kl_training_loss, "categorical", "exact"),
    Entry("002", "VITS kl_loss", vits_kl_loss, "normal-sample", "unbiased-estimator", VITS_ROLES),
    Entry(
        "002", "VITS with abs()", vits_kl_loss_abs, "normal-sample", "biased-estimator", VITS_ROLES
    ),
    Entry("003", "f: 2 log σ, σ²", f_sigma_squared, "normal-standard", "exact"),
    Entry("003", "g: log σ, σ", g_sigma, "normal-standard", "exact"),
    Entry("004", "manual_kl.sum()", manual_kl_sum, "categorical", "exact"),
    Entry("004", "kl_div 'sum'", kl_div_sum, "categorical", "exact"),
    Entry("004", "manual_kl.mean()", manual_kl_mean, "categorical", "exact-scaled"),
    Entry("004", "kl_div 'mean'", kl_div_mean, "categorical", "exact-scaled"),
    Entry("004", "manual_kl.mean(0).sum()", manual_kl_mean0_sum, "categorical", "exact-scaled"),
    Entry("004", "kl_div 'batchmean'", kl_div_batchmean, "categorical", "exact-scaled"),
)


def run_gallery(*, seed: int = 0) -> list[tuple[Entry, Any]]:
    """Audit every entry; returns (entry, report) pairs."""
    from . import audit

    return [(e, audit(e.fn, e.kind, roles=e.roles, backend="numpy", seed=seed)) for e in ENTRIES]


def gallery_table(results: list[tuple[Entry, Any]]) -> str:
    """The gallery's verdicts as a plain-text table."""
    header = ("seed", "code", "verdict", "reads", "direction", "reduction", "factor")
    rows = [header]
    for entry, r in results:
        reads = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "-"
        if r.class_axis not in (None, -1):
            reads += f" (classes on axis {r.class_axis})"
        rows.append(
            (
                entry.seed,
                entry.label,
                r.verdict
                + ("" if r.verdict == entry.expected else f" (expected {entry.expected})"),
                reads,
                r.direction or "-",
                r.reduction or "-",
                r.factor or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
