"""The auditor on functions written for these tests: verdicts, readings, problems, the CLI.

Every expected answer below is derived by hand from the function's formula. The broader,
independently written corpus is in ``test_corpus.py``.
"""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

import kldiv
from kldiv.audit import KINDS, audit
from kldiv.audit._fit import factor_value, format_factor
from kldiv.audit.gallery import ENTRIES, run_gallery
from kldiv.cli import main


# --- the gallery: each seed's variants, verdicts derived by hand ------------------------------
def test_gallery_verdicts_are_the_hand_derived_ones():
    results = run_gallery()
    assert len(results) == len(ENTRIES) >= 16
    wrong = [(e.label, r.verdict, e.expected) for e, r in results if r.verdict != e.expected]
    assert wrong == []


def test_gallery_readings():
    by_label = {e.label: r for e, r in run_gallery()}
    assert by_label["g: log σ, σ"].params == {"sigma": "var"}  # seed 003: g reads a variance
    assert by_label["f: 2 log σ, σ²"].params == {"sigma": "std"}
    assert by_label["mean over batch and latent"].factor == "1/D"
    assert by_label["kl_div 'batchmean'"].factor == "1/C"  # classes on axis 0: size(0) is C
    assert by_label["kl_div 'batchmean'"].class_axis == 0
    assert by_label["Keras KL per row"].reduction == "none"
    vits = by_label["VITS kl_loss"]
    assert (vits.direction, vits.reduction) == ("q||p", "mean")
    assert vits.params == {"logs_q": "log_std", "logs_p": "log_std"}
    assert by_label["VITS with abs()"].bias > 0


def test_gallery_command_under_a_minute():
    start = time.perf_counter()
    assert main(["audit", "--gallery"]) == 0
    assert time.perf_counter() - start < 60


# --- normal kinds ----------------------------------------------------------------------------
def vae_log_var(mu, log_var):
    return -0.5 * np.sum(1 + log_var - mu**2 - np.exp(log_var), axis=-1)


def vae_log_std_as_log_var(mu, log_std):  # log σ where log σ² belongs
    return -0.5 * np.sum(1 + log_std - mu**2 - np.exp(log_std) ** 2, axis=-1)


def gaussian_pair_reversed(mu1, s1, mu2, s2):  # KL(N2 || N1) with standard deviations
    return np.sum(np.log(s1 / s2) + (s2**2 + (mu2 - mu1) ** 2) / (2 * s1**2) - 0.5)


@pytest.mark.parametrize(
    ("fn", "kind", "verdict", "params", "direction", "reduction", "factor"),
    [
        (vae_log_var, "normal-standard", "exact", {"log_var": "log_var"}, None, "none", "1"),
        (
            vae_log_std_as_log_var,
            "normal-standard",
            "not-kl",
            {"log_std": "log_std"},
            None,
            None,
            None,
        ),
        (
            gaussian_pair_reversed,
            "normal",
            "exact",
            {"s1": "std", "s2": "std"},
            "b||a",
            "sum",
            "1",
        ),
    ],
)
def test_normal_kinds(fn, kind, verdict, params, direction, reduction, factor):
    r = audit(fn, kind)
    assert (r.verdict, r.params, r.direction, r.reduction, r.factor) == (
        verdict,
        params,
        direction,
        reduction,
        factor,
    )


def test_equivalent_call_computes_the_same_number():
    rng = np.random.default_rng(3)
    mu, lv = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    r = audit(vae_log_var, "normal-standard")
    value = eval(r.equivalent, {"kldiv": kldiv, "mu": mu, "log_var": lv})
    np.testing.assert_allclose(value, vae_log_var(mu, lv), rtol=1e-12)


# --- categorical -------------------------------------------------------------------------------
def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def kl_probs_mean_over_classes(p, q):
    return np.mean(p * np.log(p / q))


def symmetric(p, q):
    return np.sum(p * np.log(p / q) + q * np.log(q / p), axis=-1).mean()


def distill_t3(student, teacher):
    t = 3.0
    ps, pt = softmax(student / t), softmax(teacher / t)
    return np.sum(pt * (np.log(pt) - np.log(ps))) / student.shape[0] * t * t


def test_categorical_mean_over_every_element():
    r = audit(kl_probs_mean_over_classes, "categorical")
    assert (r.verdict, r.reduction, r.factor, r.direction) == (
        "exact-scaled",
        "mean",
        "1/C",
        "a||b",
    )
    assert r.params == {"p": "probs", "q": "probs"}


def test_categorical_symmetric_is_not_kl():
    r = audit(symmetric, "categorical")
    assert r.verdict == "not-kl"
    assert "symmetric" in r.closest


def test_temperature_and_hinton_factor_are_found():
    r = audit(distill_t3, "categorical")
    # sum / B: at rank 3 it divides by B only, kldiv's batchmean
    assert (r.verdict, r.direction, r.reduction) == ("exact-scaled", "b||a", "batchmean")
    assert r.temperature == pytest.approx(3.0)
    assert factor_value(r.factor, {}) == pytest.approx(9.0)
    assert any("Hinton" in n for n in r.notes)


# --- problems, failures -------------------------------------------------------------------------
def test_inplace_mutation_is_reported():
    torch = pytest.importorskip("torch")

    def kl_inplace(mu, logvar):
        return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp_())

    r = audit(kl_inplace, "normal-standard")
    assert any(p.code == "mutates-input" and "logvar" in p.message for p in r.problems)


def test_wrong_gradient_is_reported():
    torch = pytest.importorskip("torch")

    def detached(mu, log_var):  # right value, no gradient through the variance term
        return -0.5 * torch.sum(1 + log_var - mu**2 - log_var.detach().exp())

    r = audit(detached, "normal-standard")
    assert r.verdict == "exact"
    assert any(p.code == "gradient-wrong" for p in r.problems)


def test_torch_gradients_of_a_correct_function_agree():
    torch = pytest.importorskip("torch")

    def right(mu, log_var):
        return -0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp())

    r = audit(right, "normal-standard")
    assert r.problems == []
    assert any("gradients match" in e for e in r.evidence)


def test_jax_backend():
    jnp = pytest.importorskip("jax.numpy")

    def kl(mu, log_var):
        return jnp.mean(-0.5 * jnp.sum(1 + log_var - mu**2 - jnp.exp(log_var), axis=-1))

    r = audit(kl, "normal-standard")
    assert (r.backend, r.verdict, r.reduction) == ("jax", "exact", "mean")


def test_raising_function_gets_a_verdict():
    def broken(a, b):
        raise RuntimeError("boom")

    r = audit(broken, "categorical")
    assert r.verdict == "could-not-audit"
    assert r.problems[0].code == "raises" and "boom" in r.problems[0].message
    assert "raise RuntimeError" in r.traceback and "boom" in r.traceback


def test_wrong_shape_gets_a_verdict():
    r = audit(lambda mu, s: np.ones(7), "normal-standard")
    assert r.verdict == "not-kl"


def test_nan_gets_a_verdict():
    r = audit(lambda mu, s: np.sum(np.log(mu)), "normal-standard")  # log of negative locs
    assert r.verdict == "not-kl"
    assert r.problems[0].code == "nan"


def test_hanging_function_gets_a_timeout_verdict():
    def hangs(mu, s):
        time.sleep(30)

    start = time.perf_counter()
    r = audit(hangs, "normal-standard", time_limit=1.0)
    assert time.perf_counter() - start < 5
    assert r.verdict == "could-not-audit" and r.problems[0].code == "timeout"


# --- estimators ---------------------------------------------------------------------------------
def test_log_ratio_forms():
    def k3(logp, ref):
        return np.mean(np.exp(ref - logp) - 1 - (ref - logp))

    def k2(logp, ref):
        return np.mean(0.5 * (logp - ref) ** 2)

    def clipped(logp, ref):
        return np.mean(np.clip(np.exp(ref - logp) - 1 - (ref - logp), -10, 10))

    r = audit(k3, "log-ratio")
    assert (r.verdict, r.estimator, r.reduction) == ("unbiased-estimator", "k3", "mean")
    assert r.std > 0
    r = audit(k2, "log-ratio")
    assert (r.verdict, r.estimator) == ("biased-estimator", "k2")
    assert r.bias > 0  # k2 overestimates here
    r = audit(clipped, "log-ratio")
    assert r.verdict == "biased-estimator"
    assert any(p.code == "clipping" for p in r.problems)


# --- factors and arguments ---------------------------------------------------------------------
def test_factor_strings_evaluate():
    for k, den, sizes, want in [
        (1.0, (), {}, 1.0),
        (0.5, ("B", "D"), {"B": 4, "D": 3}, 1 / 24),
        (4.0, ("C",), {"C": 5}, 0.8),
    ]:
        assert math.isclose(factor_value(format_factor(k, den), sizes), want)


def test_bad_arguments_raise_kldiverror():
    with pytest.raises(kldiv.KLDivError, match="kind"):
        audit(vae_log_var, "gaussian")
    with pytest.raises(kldiv.KLDivError, match="backend"):
        audit(vae_log_var, "normal-standard", backend="tensorflow")
    with pytest.raises(kldiv.KLDivError, match="roles"):
        audit(vae_log_var, "normal-sample", roles="a=sample,b=q.wrong")
    with pytest.raises(kldiv.KLDivError, match="sample"):
        audit(vae_log_var, "normal-sample", roles="a=q.scale")
    with pytest.raises(kldiv.KLDivError, match="roles"):
        audit(vae_log_var, "normal-standard", roles="a=sample")
    assert set(KINDS) == {"normal-standard", "normal", "categorical", "log-ratio", "normal-sample"}


def test_report_to_dict_is_json():
    d = audit(vae_log_var, "normal-standard").to_dict()
    assert {"verdict", "params", "direction", "factor", "equivalent", "problems"} <= set(d)
    json.dumps(d)


# --- the command ----------------------------------------------------------------------------------
def test_cli_on_a_file(tmp_path, capsys):
    src = tmp_path / "losses.py"
    src.write_text(
        "import numpy as np\n"
        "def kl_loss(mu, logvar):\n"
        "    return np.mean(-0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), axis=1))\n"
        "def bad(mu, logvar):\n"
        "    return np.mean(1 + logvar - mu**2 - np.exp(logvar))\n"
    )
    assert main(["audit", f"{src}:kl_loss", "--kind", "normal-standard", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["verdict"], out["params"]) == ("exact", {"logvar": "log_var"})
    assert main(["audit", f"{src}:bad", "--kind", "normal-standard"]) == 1
    assert "verdict" in capsys.readouterr().out
    assert main(["audit", f"{src}:missing", "--kind", "normal-standard"]) == 2
    assert main(["audit", f"{src}:kl_loss"]) == 2  # no --kind
    assert main(["audit", "nothing_here.py:f", "--kind", "normal"]) == 2


def test_cli_speed_one_function_under_ten_seconds(tmp_path):
    src = tmp_path / "vits.py"
    src.write_text(
        "import numpy as np\n"
        "def kl_loss(z_p, logs_q, m_p, logs_p, z_mask):\n"
        "    kl = logs_p - logs_q - 0.5 + 0.5 * ((z_p - m_p) ** 2) * np.exp(-2.0 * logs_p)\n"
        "    return np.sum(kl * z_mask) / np.sum(z_mask)\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kldiv",
            "audit",
            f"{src}:kl_loss",
            "--kind",
            "normal-sample",
            "--roles",
            "z_p=sample,logs_q=q.scale,m_p=p.loc,logs_p=p.scale,z_mask=mask",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unbiased-estimator" in proc.stdout
    assert time.perf_counter() - start < 10


def test_kl_div_given_probabilities_is_named():
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    def kd_softmax(student_logits, teacher_logits):  # softmax where log_softmax belongs
        return functional.kl_div(
            functional.softmax(student_logits, -1),
            functional.softmax(teacher_logits, -1),
            reduction="batchmean",
        )

    def kd_probs(student_probs, teacher_probs):  # right only if student_probs are log-probs
        return functional.kl_div(student_probs, teacher_probs, reduction="batchmean")

    r = audit(kd_softmax, "categorical")
    assert r.verdict == "not-kl" and "F.kl_div" in r.closest
    r = audit(kd_probs, "categorical")
    assert (r.verdict, r.params["student_probs"]) == ("exact", "log_probs")
    assert any(p.code == "name-says-probs" for p in r.problems)


# --- round two (issue 13): each class of real code -----------------------------------------------
def _log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def kl_div_batchmean(s, t):  # seed 004's F.kl_div(log_softmax(s), softmax(t), "batchmean")
    lt = _log_softmax(t)
    return np.sum(np.exp(lt) * (lt - _log_softmax(s))) / s.shape[0]


def test_rank_dependent_reduction_is_batchmean_and_equivalent_holds_at_every_rank():
    r = audit(kl_div_batchmean, "categorical")
    assert (r.verdict, r.reduction, r.factor, r.direction) == ("exact", "batchmean", "1", "b||a")
    rng = np.random.default_rng(0)
    for shape in ((4, 6), (3, 5, 6)):  # rank 2 and rank 3: the equivalent is right at both
        s, t = rng.normal(size=shape), rng.normal(size=shape)
        value = eval(r.equivalent, {"kldiv": kldiv, "s": s, "t": t})
        np.testing.assert_allclose(value, kl_div_batchmean(s, t), rtol=1e-12)


def test_function_that_samples_inside_is_an_estimator():
    def sampled(mu, log_var):  # z drawn inside, log q - log p summed
        std = np.exp(0.5 * log_var)
        z = mu + std * np.random.standard_normal(mu.shape)  # noqa: NPY002
        return np.sum(-0.5 * ((z - mu) / std) ** 2 - np.log(std) + 0.5 * z**2)

    def sampled_abs(mu, log_var):
        std = np.exp(0.5 * log_var)
        z = mu + std * np.random.standard_normal(mu.shape)  # noqa: NPY002
        return np.sum(np.abs(-0.5 * ((z - mu) / std) ** 2 - np.log(std) + 0.5 * z**2))

    state = np.random.get_state()  # noqa: NPY002
    r = audit(sampled, "normal-standard")
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002 (restored)
    assert (r.verdict, r.params, r.reduction, r.factor) == (
        "unbiased-estimator",
        {"log_var": "log_var"},
        "sum",
        "1",
    )
    assert r.std > 0 and any("samples inside" in n for n in r.notes)
    assert audit(sampled, "normal-standard").to_dict()["std"] == r.std  # seeded: reproducible
    r = audit(sampled_abs, "normal-standard")
    assert r.verdict == "biased-estimator" and r.bias > 0


def test_scaled_unbiased_estimator_on_b_by_d():
    def mc_mean(z, mu, log_var):  # (log q(z) - log p(z)).mean() over batch and latent
        return np.mean(-0.5 * (z - mu) ** 2 / np.exp(log_var) - 0.5 * log_var + 0.5 * z**2)

    r = audit(mc_mean, "normal-sample", roles="z=sample,mu=q.loc,log_var=q.scale")
    assert (r.verdict, r.reduction, r.factor) == ("unbiased-estimator", "mean", "1/D")
    assert any(p.code == "scaled" for p in r.problems)


def test_per_element_gaussian_terms_are_exact_with_reduction_none():
    def normal_kl(mean1, logvar1, mean2, logvar2):  # guided-diffusion's normal_kl
        return 0.5 * (
            -1
            + logvar2
            - logvar1
            + np.exp(logvar1 - logvar2)
            + (mean1 - mean2) ** 2 / np.exp(logvar2)
        )

    r = audit(normal_kl, "normal")
    assert (r.verdict, r.reduction, r.direction) == ("exact", "none", "a||b")
    assert any("sum over the latent axis" in n for n in r.notes)
    rng = np.random.default_rng(1)
    x = {k: rng.normal(size=(3, 4)) for k in ("mean1", "logvar1", "mean2", "logvar2")}
    np.testing.assert_allclose(eval(r.equivalent, {"kldiv": kldiv, **x}), normal_kl(**x))


def test_softplus_scale_argument_order_and_a_name_that_disagrees():
    def bbb(mu, rho):  # Bayes by Backprop: sigma = softplus(rho), against N(0, 1)
        sigma = np.log1p(np.exp(rho))
        return np.sum(-np.log(sigma) + 0.5 * (sigma**2 + mu**2) - 0.5)

    def logvar_first(logvar, mu):
        return -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar))

    def named_std(mu, std):  # its "std" is a log-variance
        return -0.5 * np.sum(1 + std - mu**2 - np.exp(std))

    assert audit(bbb, "normal-standard").params == {"rho": "softplus"}
    r = audit(logvar_first, "normal-standard")
    assert (r.verdict, r.params) == ("exact", {"logvar": "log_var"})
    r = audit(named_std, "normal-standard")
    assert r.params == {"std": "log_var"}
    assert any("std is read as a log-variance" in n for n in r.notes)


def test_temperature_on_one_side_only():
    def sharpened(pred, label):  # softmax(10 * label) against log_softmax(pred)
        lt = _log_softmax(10 * label)
        return np.sum(np.exp(lt) * (lt - _log_softmax(pred)), axis=-1)

    r = audit(sharpened, "categorical")
    assert (r.verdict, r.direction, r.params) == (
        "exact",
        "b||a",
        {"pred": "logits", "label": "logits"},
    )
    assert "label / 0.1" in r.equivalent


def test_modules_extra_arguments_and_float_priors():
    torch = pytest.importorskip("torch")

    class KL(torch.nn.Module):
        def forward(self, mu, logvar):
            return torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=-1))

    def with_beta(mu, logvar, beta):
        return beta * -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp())

    def float_prior(mu, sigma, mu_p, sigma_p):  # math.log needs a Python float
        return (
            math.log(sigma_p)
            - torch.log(sigma)
            + (sigma**2 + (mu - mu_p) ** 2) / (2 * sigma_p**2)
            - 0.5
        ).sum()

    r = audit(KL(), "normal-standard")
    assert (r.verdict, r.params, r.reduction) == ("exact", {"logvar": "log_var"}, "mean")
    r = audit(with_beta, "normal-standard")
    assert r.verdict == "could-not-audit" and r.calls == 0
    assert "beta" in r.problems[0].message and "--arg beta=VALUE" in r.problems[0].message
    r = audit(with_beta, "normal-standard", args={"beta": 4.0})
    assert (r.verdict, r.factor) == ("exact-scaled", "4")
    r = audit(float_prior, "normal")
    assert (r.verdict, r.params, r.direction) == (
        "exact",
        {"sigma": "std", "sigma_p": "std"},
        "a||b",
    )
    assert any("Python floats" in n for n in r.notes)


def test_floors_and_clips_are_named_with_their_values():
    def free_bits(mu, log_var):  # each dimension's KL floored at 0.5 nats
        kl = 0.5 * (np.exp(log_var) + mu**2 - 1.0 - log_var)
        return np.mean(np.sum(np.maximum(kl, 0.5), axis=-1))

    def free_nats(mu, log_var):  # the batch mean floored at 3 nats (Dreamer)
        kl = 0.5 * (np.exp(log_var) + mu**2 - 1.0 - log_var)
        return np.maximum(np.mean(np.sum(kl, axis=-1)), 3.0)

    def keras(y_true, y_pred):
        y_true, y_pred = np.clip(y_true, 1e-7, 1), np.clip(y_pred, 1e-7, 1)
        return np.sum(y_true * np.log(y_true / y_pred), axis=-1)

    r = audit(free_bits, "normal-standard")
    floor = next(p for p in r.problems if p.code == "floor")
    assert "each term" in floor.message and "0.5" in floor.message
    r = audit(free_nats, "normal-standard")
    floor = next(p for p in r.problems if p.code == "floor")
    assert "the reduced value" in floor.message and " 3:" in floor.message
    r = audit(keras, "categorical")
    assert r.verdict == "exact"
    clip = next(p for p in r.problems if p.code == "clipping")
    # q = 1e-12 where p has mass: the clip at 1e-7 cuts log(p/q) from ~27.6 to ~16.1 per unit
    assert "probabilities near 1e-12" in clip.message


def test_distillation_mistakes_get_a_problem_each():
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional

    def kd(s, t, T, times):
        return (
            fn.kl_div(fn.log_softmax(s / T, -1), fn.softmax(t / T, -1), reduction="batchmean")
            * times
        )

    def twice(student, teacher):
        return kd(student, teacher, 2.0, 16.0)

    def missing(student, teacher):
        return kd(student, teacher, 4.0, 1.0)

    def divided(student, teacher):
        return kd(student, teacher, 1.0, 1.0) / student.size(0)

    def said_forward(student, teacher):
        """Forward KL, KL(teacher || student)."""
        return fn.kl_div(
            fn.log_softmax(teacher, -1), fn.softmax(student, -1), reduction="batchmean"
        )

    def cross_entropy(student, teacher):
        return -(fn.softmax(teacher, -1) * fn.log_softmax(student, -1)).sum(-1).mean()

    for f, code in (
        (twice, "temperature-factor"),
        (missing, "temperature-factor"),
        (divided, "divides-twice"),
        (said_forward, "direction"),
        (cross_entropy, "cross-entropy"),
    ):
        r = audit(f, "categorical")
        assert code in [p.code for p in r.problems], (f.__name__, r.problems)
    assert audit(cross_entropy, "categorical").verdict == "not-kl"
    assert audit(twice, "categorical").temperature == pytest.approx(2.0)


def test_log_ratio_importance_weighted_straight_through_and_clamped():
    torch = pytest.importorskip("torch")

    def iw_k3(logp, logp_ref, old_logp):
        r = logp_ref - logp
        return (torch.exp(logp - old_logp) * (torch.exp(r) - r - 1)).mean()

    def unweighted(logp, logp_ref, old_logp):  # tokens from the old policy, no weight
        r = logp_ref - logp
        return (torch.exp(r) - r - 1).mean()

    def k3_plus(logp, logp_ref):  # verl's "k3+": value k3, gradient k2
        r = logp_ref - logp
        k2 = 0.5 * r**2
        return k2 - k2.detach() + (torch.exp(r) - r - 1).detach()

    def low_var_kl(logp, logp_ref):  # verl: k3 clamped to [-10, 10]
        kl = torch.clamp(logp_ref - logp, -20, 20)
        return torch.clamp(torch.exp(kl) - kl - 1, -10, 10)

    r = audit(iw_k3, "log-ratio")
    assert (r.verdict, r.estimator) == ("unbiased-estimator", "w·k3")
    assert "through the weight" in r.gradient_estimator
    r = audit(unweighted, "log-ratio")
    assert r.verdict == "biased-estimator"
    assert any(p.code == "importance-weight" for p in r.problems)
    r = audit(k3_plus, "log-ratio")
    assert (r.verdict, r.estimator, r.gradient_estimator) == ("unbiased-estimator", "k3", "k2")
    r = audit(low_var_kl, "log-ratio")
    assert r.verdict == "biased-estimator" and "stops at 10" in r.clamp


def test_cli_arguments_expectations_and_exit_codes(tmp_path, capsys):
    src = tmp_path / "kd.py"
    src.write_text(
        "import numpy as np\n"
        "def ls(x):\n"
        "    m = x.max(-1, keepdims=True)\n"
        "    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))\n"
        "def kd(s, t, T):\n"
        "    lt, lq = ls(t / T), ls(s / T)\n"
        "    return np.sum(np.exp(lt) * (lt - lq)) / s.shape[0] * T * T\n"
        "def broken(s, t):\n"
        "    raise ValueError('boom')\n"
    )
    target = f"{src}:kd"
    assert main(["audit", target, "--kind", "categorical"]) == 3  # T not given
    assert "--arg T=VALUE" in capsys.readouterr().out
    assert main(["audit", target, "--kind", "categorical", "--arg", "T=2"]) == 1  # exact-scaled
    capsys.readouterr()
    argv = ["audit", target, "--kind", "categorical", "--arg", "T=2", "--expect", "exact-scaled"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--fail-on", "temperature-factor,clipping"]) == 0  # T² is Hinton's
    capsys.readouterr()
    assert main(["audit", f"{src}:broken", "--kind", "categorical"]) == 3
    out = capsys.readouterr().out
    assert "traceback" in out and "raise ValueError('boom')" in out
    assert main(["audit", target, "--kind", "categorical", "--arg", "T"]) == 2
    assert main(["audit", target, "--kind", "categorical", "--expect", "great"]) == 2
