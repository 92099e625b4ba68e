#!/usr/bin/env python3
"""Reference values for the abx-stats crate.

Run from the repository root:

    pip install scipy statsmodels numpy
    python3 stats/reference/generate.py

It rewrites stats/reference/values.json, which stats/tests/reference.rs reads; the Rust tests
never need Python. Wherever scipy or statsmodels has a routine for a method, the value comes
from that routine. For the methods without one (delta method, CUPED, mSPRT, alpha-spending
boundaries, beta-binomial chance to beat) the value comes from an independent, deliberately
plain implementation: numerical integration or regression on simulated raw per-unit data
rather than the closed forms the crate uses. Raw data are drawn from a fixed numpy seed, and
the Rust side receives only their sufficient statistics, so the file is reproducible.
"""

import json
import math
from pathlib import Path

import numpy as np
import scipy
import statsmodels
import statsmodels.api as sm
from scipy import integrate, optimize, special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

RNG = np.random.default_rng(20240611)
OUT = Path(__file__).with_name("values.json")


def fsum(values):
    return math.fsum(float(v) for v in values)


def moments(x):
    x = np.asarray(x, dtype=float)
    return {"n": int(x.size), "sum": fsum(x), "sum_sq": fsum(x * x)}


def wald(estimate, se, alpha, df=None):
    """Plain Wald summary, used only where no library routine reports the same quantity."""
    dist = stats.norm if df is None else stats.t(df)
    stat = estimate / se
    crit = dist.isf(alpha / 2)
    return {
        "estimate": estimate,
        "std_error": se,
        "statistic": stat,
        "p_value": float(min(1.0, 2 * dist.sf(abs(stat)))),
        "ci_lower": estimate - crit * se,
        "ci_upper": estimate + crit * se,
    }


def relative(m_c, v_c, m_t, v_t, alpha, df=None):
    """Lift m_t/m_c − 1: the log-ratio interval when both means are positive, otherwise the
    delta method written as a gradient times a covariance matrix."""
    if m_c == 0:
        return {"status": "unavailable", "reason": "zero_baseline"}
    if m_c < 0:
        return {"status": "unavailable", "reason": "negative_baseline"}
    if m_t > 0:
        dist = stats.norm if df is None else stats.t(df)
        grad = np.array([1 / m_t, -1 / m_c])
        log_se = float(np.sqrt(grad @ np.diag([v_t, v_c]) @ grad))
        log_ratio = math.log(m_t / m_c)
        stat = log_ratio / log_se
        crit = dist.isf(alpha / 2)
        return {
            "status": "estimated",
            "estimate": m_t / m_c - 1,
            "std_error": m_t / m_c * log_se,
            "statistic": stat,
            "p_value": float(min(1.0, 2 * dist.sf(abs(stat)))),
            "ci_lower": math.exp(log_ratio - crit * log_se) - 1,
            "ci_upper": math.exp(log_ratio + crit * log_se) - 1,
        }
    grad = np.array([1 / m_c, -m_t / m_c**2])
    cov = np.diag([v_t, v_c])
    se = float(np.sqrt(grad @ cov @ grad))
    out = wald(m_t / m_c - 1, se, alpha, df)
    out["status"] = "estimated"
    return out


# 1. Conversion metrics ------------------------------------------------------------------

def proportion_cases():
    cases = []
    specs = [
        ("balanced_small_effect", 10000, 1000, 10000, 1080, 0.05),
        ("tiny_p_value", 200000, 20000, 200000, 21800, 0.05),
        ("unequal_n", 5000, 400, 12000, 1100, 0.05),
        ("small_n", 20, 3, 15, 7, 0.05),
        ("negative_effect_alpha_01", 8000, 960, 8100, 850, 0.01),
        ("no_difference", 1000, 100, 1000, 100, 0.05),
        ("zero_baseline", 50, 0, 50, 5, 0.05),
        # The Wald interval collapses to [1, 1] here; Newcombe's does not.
        ("one_unit_each", 1, 0, 1, 1, 0.05),
        ("tiny_counts", 12, 1, 11, 4, 0.05),
    ]
    for name, n_c, x_c, n_t, x_t, alpha in specs:
        z, p = proportions_ztest([x_t, x_c], [n_t, n_c], value=0, alternative="two-sided")
        lo, hi = confint_proportions_2indep(
            x_t, n_t, x_c, n_c, method="newcomb", compare="diff", alpha=alpha
        )
        p_c, p_t = x_c / n_c, x_t / n_t
        v_c, v_t = p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t
        rel = relative(p_c, v_c, p_t, v_t, alpha)
        if x_c > 0 and x_t > 0:
            # The lift's interval is statsmodels' log interval of the rate ratio, minus 1.
            r_lo, r_hi = confint_proportions_2indep(
                x_t, n_t, x_c, n_c, method="log", compare="ratio", alpha=alpha
            )
            assert abs(rel["ci_lower"] - (r_lo - 1)) < 1e-12, (name, rel, r_lo)
            assert abs(rel["ci_upper"] - (r_hi - 1)) < 1e-12, (name, rel, r_hi)
        cases.append({
            "name": name,
            "control": {"units": n_c, "conversions": x_c},
            "treatment": {"units": n_t, "conversions": x_t},
            "alpha": alpha,
            "expected": {
                "control": p_c,
                "treatment": p_t,
                "absolute": {
                    "estimate": p_t - p_c,
                    "std_error": math.sqrt(v_c + v_t),
                    "statistic": float(z),
                    "p_value": float(p),
                    "ci_lower": float(lo),
                    "ci_upper": float(hi),
                },
                "relative": rel,
            },
        })
    return cases


# 2. Mean and sum metrics ----------------------------------------------------------------

def welch_reference(x_c, x_t, alpha):
    res = stats.ttest_ind_from_stats(
        mean1=x_t.mean(), std1=x_t.std(ddof=1), nobs1=x_t.size,
        mean2=x_c.mean(), std2=x_c.std(ddof=1), nobs2=x_c.size,
        equal_var=False,
    )
    cm = CompareMeans(DescrStatsW(x_t), DescrStatsW(x_c))
    _, _, df = cm.ttest_ind(usevar="unequal")
    lo, hi = cm.tconfint_diff(alpha=alpha, usevar="unequal")
    v_c, v_t = x_c.var(ddof=1) / x_c.size, x_t.var(ddof=1) / x_t.size
    return {
        "control": float(x_c.mean()),
        "treatment": float(x_t.mean()),
        "absolute": {
            "estimate": float(x_t.mean() - x_c.mean()),
            "std_error": math.sqrt(v_c + v_t),
            "statistic": float(res.statistic),
            "p_value": float(res.pvalue),
            "df": float(df),
            "ci_lower": float(lo),
            "ci_upper": float(hi),
        },
        "relative": relative(float(x_c.mean()), v_c, float(x_t.mean()), v_t, alpha, df),
    }


def welch_cases():
    specs = [
        ("equal_n", lambda: RNG.normal(10, 3, 2000), lambda: RNG.normal(10.2, 3, 2000), 0.05),
        ("unequal_n_and_variance", lambda: RNG.normal(5, 1, 300), lambda: RNG.normal(5.3, 4, 4000), 0.05),
        ("small_n", lambda: RNG.normal(1, 1, 3), lambda: RNG.normal(2, 1, 5), 0.05),
        ("tiny_p_value", lambda: RNG.normal(20, 4, 5000), lambda: RNG.normal(20.6, 4, 5000), 0.05),
        ("negative_baseline", lambda: RNG.normal(-3, 2, 400), lambda: RNG.normal(-2.5, 2, 400), 0.10),
        # A sum metric: revenue per user with most users spending nothing.
        ("sum_metric_revenue", lambda: RNG.binomial(1, 0.05, 20000) * RNG.lognormal(3, 1, 20000),
         lambda: RNG.binomial(1, 0.055, 20000) * RNG.lognormal(3, 1, 20000), 0.05),
    ]
    cases = []
    for name, gen_c, gen_t, alpha in specs:
        x_c, x_t = gen_c(), gen_t()
        cases.append({
            "name": name,
            "control": moments(x_c),
            "treatment": moments(x_t),
            "alpha": alpha,
            "expected": welch_reference(x_c, x_t, alpha),
        })
    return cases


# 3. Ratio metrics -----------------------------------------------------------------------

def ratio_summary(num, den):
    n = num.size
    mu = np.array([num.mean(), den.mean()])
    cov = np.cov(np.vstack([num, den]), ddof=1)
    grad = np.array([1 / mu[1], -mu[0] / mu[1] ** 2])
    return mu[0] / mu[1], float(grad @ cov @ grad / n)


def ratio_cases():
    cases = []
    specs = [
        ("revenue_per_session", 3000, 3000, 2.0, 2.1, 0.05),
        ("unequal_n", 800, 5000, 1.0, 1.0, 0.05),
        ("small_n", 12, 9, 1.5, 3.0, 0.10),
    ]
    for name, n_c, n_t, scale_c, scale_t, alpha in specs:
        groups = []
        for n, scale in ((n_c, scale_c), (n_t, scale_t)):
            sessions = RNG.poisson(3, n) + 1
            revenue = np.array([fsum(RNG.exponential(scale, s)) for s in sessions])
            groups.append((revenue, sessions.astype(float)))
        (a_c, b_c), (a_t, b_t) = groups
        r_c, v_c = ratio_summary(a_c, b_c)
        r_t, v_t = ratio_summary(a_t, b_t)

        def ratio_moments(a, b):
            return {
                "n": int(a.size), "sum_num": fsum(a), "sum_num_sq": fsum(a * a),
                "sum_den": fsum(b), "sum_den_sq": fsum(b * b), "sum_num_den": fsum(a * b),
            }

        cases.append({
            "name": name,
            "control": ratio_moments(a_c, b_c),
            "treatment": ratio_moments(a_t, b_t),
            "alpha": alpha,
            "expected": {
                "control": r_c,
                "treatment": r_t,
                "control_variance": v_c,
                "treatment_variance": v_t,
                "absolute": wald(r_t - r_c, math.sqrt(v_c + v_t), alpha),
                "relative": relative(r_c, v_c, r_t, v_t, alpha),
            },
        })
    return cases


# 5. CUPED -------------------------------------------------------------------------------

def cuped_cases():
    cases = []
    specs = [
        ("strong_covariate", 2000, 2100, 0.9, 0.3, 0.05),
        ("weak_covariate_unequal_n", 500, 1500, 0.2, 0.5, 0.05),
        ("small_n", 6, 8, 0.7, 1.0, 0.05),
        ("constant_covariate", 300, 300, None, 0.2, 0.05),
    ]
    for name, n_c, n_t, slope, effect, alpha in specs:
        data = []
        for n, shift in ((n_c, 0.0), (n_t, effect)):
            if slope is None:
                x = np.full(n, 4.0)
                y = RNG.normal(10 + shift, 2, n)
            else:
                x = RNG.normal(10, 3, n)
                y = 2 + slope * x + RNG.normal(0, 1.5, n) + shift
            data.append((x, y))
        (x_c, y_c), (x_t, y_t) = data
        x_all = np.concatenate([x_c, x_t])
        arm = np.concatenate([np.zeros(n_c), np.ones(n_t)])
        y_all = np.concatenate([y_c, y_t])
        if slope is None:
            theta, adjusted = 0.0, False
        else:
            # The pooled within-arm slope is the covariate coefficient of an OLS fit with an
            # arm indicator.
            fit = sm.OLS(y_all, np.column_stack([np.ones_like(x_all), arm, x_all])).fit()
            theta, adjusted = float(fit.params[2]), True
        x_bar = x_all.mean()
        ya_c = y_c - theta * (x_c - x_bar)
        ya_t = y_t - theta * (x_t - x_bar)
        raw = y_c.var(ddof=1) / n_c + y_t.var(ddof=1) / n_t
        adj = ya_c.var(ddof=1) / n_c + ya_t.var(ddof=1) / n_t
        expected = {
            "comparison": welch_reference(ya_c, ya_t, alpha),
            "theta": theta,
            "variance_reduction": 1 - adj / raw if adjusted else 0.0,
            "adjusted": adjusted,
        }

        def cov_moments(x, y):
            return {
                "n": int(x.size), "sum_y": fsum(y), "sum_y_sq": fsum(y * y),
                "sum_x": fsum(x), "sum_x_sq": fsum(x * x), "sum_xy": fsum(x * y),
            }

        cases.append({
            "name": name,
            "control": cov_moments(x_c, y_c),
            "treatment": cov_moments(x_t, y_t),
            "alpha": alpha,
            "expected": expected,
        })
    return cases


# 5b. CUPED for ratio metrics -------------------------------------------------------------

def ratio_cuped_cases():
    """Per-unit linearisation written out on raw data (l = (a − R·b)/b̄, k = (c − Q·d)/d̄ per
    arm), θ from an OLS fit of l on k with an arm indicator, and the adjusted ratio and its
    variance from the adjusted per-unit values — not the crate's closed forms from sums."""
    rng = np.random.default_rng(20261205)
    cases = []
    specs = [
        # name, n_c, n_t, share of units with pre-exposure data, treatment lift, alpha
        ("revenue_per_session", 3000, 3100, 1.0, 0.03, 0.05),
        ("new_users_without_history", 2000, 1500, 0.6, 0.05, 0.05),
        ("small_n", 15, 12, 1.0, 0.0, 0.10),
        ("no_pre_exposure_data", 500, 500, 0.0, 0.05, 0.05),
    ]
    for name, n_c, n_t, share, lift, alpha in specs:
        arms = []
        for n, scale in ((n_c, 1.0), (n_t, 1.0 + lift)):
            # A unit's activity and spend levels persist from before exposure to after it.
            activity = rng.gamma(2.0, 1.5, n)
            spend = rng.lognormal(0.0, 0.5, n)
            b = rng.poisson(activity) + 1.0
            a = np.array([fsum(rng.exponential(s * scale, int(k))) for s, k in zip(spend, b)])
            has_history = rng.uniform(size=n) < share
            d = np.where(has_history, rng.poisson(activity) + 1.0, 0.0)
            c = np.array([fsum(rng.exponential(s, int(k))) for s, k in zip(spend, d)])
            arms.append((a, b, c, d))
        (a_c, b_c, c_c, d_c), (a_t, b_t, c_t, d_t) = arms

        def linearised(a, b, c, d):
            r = a.sum() / b.sum()
            l = (a - r * b) / b.mean()
            if d.sum() > 0:
                q = c.sum() / d.sum()
                k = (c - q * d) / d.mean()
            else:
                q, k = 0.0, np.zeros_like(a)
            return r, q, l, k

        r_c, q_c, l_c, k_c = linearised(a_c, b_c, c_c, d_c)
        r_t, q_t, l_t, k_t = linearised(a_t, b_t, c_t, d_t)
        v_raw_c, v_raw_t = l_c.var(ddof=1) / n_c, l_t.var(ddof=1) / n_t
        if d_c.sum() > 0 and d_t.sum() > 0:
            arm = np.concatenate([np.zeros(n_c), np.ones(n_t)])
            k_all = np.concatenate([k_c, k_t])
            fit = sm.OLS(np.concatenate([l_c, l_t]),
                         np.column_stack([np.ones_like(k_all), arm, k_all])).fit()
            theta = float(fit.params[2])
            q_bar = (c_c.sum() + c_t.sum()) / (d_c.sum() + d_t.sum())
            adj_c, adj_t = r_c - theta * (q_c - q_bar), r_t - theta * (q_t - q_bar)
            v_c = (l_c - theta * k_c).var(ddof=1) / n_c
            v_t = (l_t - theta * k_t).var(ddof=1) / n_t
            adjusted = True
            reduction = 1 - (v_c + v_t) / (v_raw_c + v_raw_t)
        else:
            theta, adjusted, reduction = 0.0, False, 0.0
            adj_c, adj_t, v_c, v_t = r_c, r_t, v_raw_c, v_raw_t

        def moments(a, b, c, d):
            def ratio(u, v):
                return {"n": int(u.size), "sum_num": fsum(u), "sum_num_sq": fsum(u * u),
                        "sum_den": fsum(v), "sum_den_sq": fsum(v * v), "sum_num_den": fsum(u * v)}
            return {
                "metric": ratio(a, b), "covariate": ratio(c, d),
                "sum_num_pre_num": fsum(a * c), "sum_num_pre_den": fsum(a * d),
                "sum_den_pre_num": fsum(b * c), "sum_den_pre_den": fsum(b * d),
            }

        cases.append({
            "name": name,
            "control": moments(a_c, b_c, c_c, d_c),
            "treatment": moments(a_t, b_t, c_t, d_t),
            "alpha": alpha,
            "expected": {
                "comparison": {
                    "control": adj_c,
                    "treatment": adj_t,
                    "absolute": wald(adj_t - adj_c, math.sqrt(v_c + v_t), alpha),
                    "relative": relative(adj_c, v_c, adj_t, v_t, alpha),
                },
                "theta": theta,
                "variance_reduction": reduction,
                "adjusted": adjusted,
            },
        })
    return cases


# 6. Multiple comparisons ----------------------------------------------------------------

def multiple_cases():
    vectors = [
        ("mixed", [0.01, 0.04, 0.03, 0.2, 0.5, 0.001]),
        ("ties", [0.02, 0.02, 0.02, 0.04, 0.04, 0.9]),
        ("tiny_and_near_one", [1e-12, 0.99, 0.5, 1.0, 3e-7]),
        ("single", [0.03]),
        ("all_large", [0.6, 0.7, 0.8, 0.95]),
    ]
    methods = {"bonferroni": "bonferroni", "holm": "holm", "benjamini_hochberg": "fdr_bh"}
    cases = []
    for name, p in vectors:
        expected = {}
        for ours, theirs in methods.items():
            expected[ours] = [float(v) for v in multipletests(p, method=theirs)[1]]
        cases.append({"name": name, "p_values": p, "expected": expected})
    return cases


# 7b. Sequential (normal-mixture mSPRT) --------------------------------------------------

def optimal_ratio(alpha):
    c = -2 * math.log(alpha)
    root = optimize.brentq(lambda r: r - math.log1p(r) - c, 1e-9, 1e3, xtol=1e-15, rtol=1e-15)
    # Confirm that the root is the minimiser of the width factor it claims to be.
    g = lambda r: (1 + r) / r * (math.log1p(r) + c)  # noqa: E731
    found = optimize.minimize_scalar(g, bounds=(1e-3, 1e3), method="bounded", options={"xatol": 1e-10})
    assert abs(found.x - root) < 1e-4 * root, (found.x, root)
    return root


def mixture_lr(theta_hat, v, tau2, theta0=0.0, half=False):
    """Λ = ∫ N(θ̂; θ0 + δ, V) / N(θ̂; θ0, V) · prior(δ) dδ by adaptive quadrature."""
    def integrand(d):
        log_lr = ((theta_hat - theta0) * d - 0.5 * d * d) / v
        prior = stats.norm.pdf(d, scale=math.sqrt(tau2)) * (2.0 if half else 1.0)
        return math.exp(log_lr) * prior

    # The integrand is a Gaussian bump centred at the posterior mean; integrate around it.
    post_mean = (theta_hat - theta0) * tau2 / (v + tau2)
    post_sd = math.sqrt(v * tau2 / (v + tau2))
    lo, hi = post_mean - 40 * post_sd, post_mean + 40 * post_sd
    if half:
        lo = max(lo, 0.0)
        if hi <= lo:
            return 0.0
    val, _ = integrate.quad(integrand, lo, hi, points=[min(max(post_mean, lo), hi)],
                            epsabs=0, epsrel=1e-13, limit=400)
    return val


def sequential_cases():
    specs = [
        ("null_estimate", 0.0, 0.01, 5000, 0.05, 10000.0),
        ("moderate", 0.02, 0.008, 8000, 0.05, 10000.0),
        ("strong", 0.05, 0.006, 20000, 0.05, 10000.0),
        ("early_look", 0.03, 0.02, 500, 0.05, 20000.0),
        ("late_look_alpha_01", -0.015, 0.004, 60000, 0.01, 20000.0),
        ("tiny_p", 0.4, 0.04, 10000, 0.05, 10000.0),
    ]
    cases = []
    for name, est, se, units, alpha, tuning in specs:
        r_star = optimal_ratio(alpha)
        v = se * se
        tau2 = r_star * v * units / tuning
        lam = mixture_lr(est, v, tau2)
        p = min(1.0, 1.0 / lam)

        def excess(theta0):
            return math.log(mixture_lr(est, v, tau2, theta0)) + math.log(alpha)

        # The confidence sequence is {θ0 : Λ(θ0) < 1/α}; find both ends by root finding.
        width = 30 * se
        lo = optimize.brentq(excess, est - width, est, xtol=1e-14 * max(1, abs(est)), rtol=1e-14)
        hi = optimize.brentq(excess, est, est + width, xtol=1e-14 * max(1, abs(est)), rtol=1e-14)
        cases.append({
            "name": name, "estimate": est, "std_error": se, "units": units,
            "alpha": alpha, "tuning_units": tuning,
            "expected": {
                "optimal_ratio": r_star, "mixture_variance": tau2, "p_value": p,
                "ci_lower": lo, "ci_upper": hi, "reject": p <= alpha,
            },
        })
    return cases


# 7c. Group sequential -------------------------------------------------------------------

def spend(kind, alpha, t):
    if t >= 1:
        return alpha
    if kind == "o_brien_fleming":
        # gsDesign's sfLDOF per side with one-sided α/2, both sides together.
        return 4 * stats.norm.sf(stats.norm.isf(alpha / 4) / math.sqrt(t))
    if kind == "o_brien_fleming_total":
        return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t))
    return alpha * math.log(1 + (math.e - 1) * t)


def gs_boundaries(ts, alpha, kind, nodes=240):
    """Armitage–McPherson–Rowe recursion with Gauss–Legendre quadrature (the crate uses a
    Simpson grid) and Brent's method for each boundary."""
    x_std, w_std = np.polynomial.legendre.leggauss(nodes)
    out = []
    prev = None
    t_prev, a_prev = 0.0, 0.0
    for t in ts:
        a = spend(kind, alpha, t)
        inc = a - a_prev
        if prev is None:
            c = stats.norm.isf(inc / 2)
        else:
            zp, wp, gp = prev
            sd = math.sqrt(t - t_prev)
            m = zp * math.sqrt(t_prev)
            mass = wp * gp

            def cross(c):
                hi = (c * math.sqrt(t) - m) / sd
                lo = (-c * math.sqrt(t) - m) / sd
                return float(np.sum(mass * (stats.norm.sf(hi) + stats.norm.cdf(lo))))

            # Without earlier looks the crossing probability would be 2·sf(c), an upper bound.
            upper = stats.norm.isf(inc / 2)
            c = optimize.brentq(lambda c: math.log(cross(c)) - math.log(inc), 0.05, upper,
                                xtol=1e-15, rtol=1e-15)
        z = c * x_std
        w = c * w_std
        if prev is None:
            g = stats.norm.pdf(z)
        else:
            zp, wp, gp = prev
            sd = math.sqrt(t - t_prev)
            kernel = stats.norm.pdf((z[:, None] * math.sqrt(t) - zp[None, :] * math.sqrt(t_prev)) / sd)
            g = (kernel * (wp * gp)[None, :]).sum(axis=1) * math.sqrt(t) / sd
        prev = (z, w, g)
        out.append({"information_fraction": t, "cumulative_alpha": a,
                    "incremental_alpha": inc, "z_boundary": c})
        t_prev, a_prev = t, a
    return out


def mvn_check(ts, bounds, alpha_total):
    """Independent check with the multivariate normal CDF: P(no crossing) = 1 − α(t_K)."""
    k = len(ts)
    cov = np.array([[math.sqrt(min(a, b) / max(a, b)) for b in ts] for a in ts])
    upper = np.array(bounds)
    dist = stats.multivariate_normal(mean=np.zeros(k), cov=cov, abseps=1e-9, releps=1e-9,
                                     maxpts=2_000_000 * k)
    prob = dist.cdf(upper, lower_limit=-upper)
    assert abs((1 - prob) - alpha_total) < 2e-5, (ts, 1 - prob, alpha_total)


def group_sequential_cases():
    specs = [
        ("obf_5_equal", [0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "o_brien_fleming"),
        ("pocock_5_equal", [0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "pocock"),
        ("obf_unequal", [0.25, 0.5, 1.0], 0.05, "o_brien_fleming"),
        ("pocock_alpha_01", [0.3, 0.7, 1.0], 0.01, "pocock"),
        ("obf_interim_only", [0.1, 0.35, 0.6], 0.05, "o_brien_fleming"),
        ("single_look", [1.0], 0.05, "pocock"),
        ("obf_14_daily", [k / 14 for k in range(1, 15)], 0.05, "o_brien_fleming"),
        ("obf_total_5_equal", [0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "o_brien_fleming_total"),
        ("obf_total_unequal", [0.25, 0.5, 1.0], 0.05, "o_brien_fleming_total"),
        # Looks where the information actually arrived, not where they were planned.
        ("obf_observed_fractions", [0.23, 0.41, 0.64, 0.79, 1.0], 0.05, "o_brien_fleming"),
    ]
    cases = []
    for name, ts, alpha, kind in specs:
        looks = gs_boundaries(ts, alpha, kind)
        if len(ts) <= 5:
            mvn_check(ts, [l["z_boundary"] for l in looks], looks[-1]["cumulative_alpha"])
        if kind == "o_brien_fleming_total":
            # With α(t) = 2 − 2Φ(z_{α/2}/√t) the first boundary is z_{α/2}/√t₁ in closed form.
            first = stats.norm.isf(alpha / 2) / math.sqrt(ts[0])
            assert abs(looks[0]["z_boundary"] - first) < 1e-9, (looks[0], first)
        if name == "obf_5_equal":
            # Published gsDesign (sfLDOF, test.type = 2, one-sided α = 0.025) boundaries for
            # five equally spaced looks, as also tabulated by rpact and ldbounds.
            for got, published in zip(looks, [4.877, 3.357, 2.680, 2.290, 2.031]):
                assert abs(got["z_boundary"] - published) < 1e-3, (got, published)
        if name == "pocock_5_equal":
            # Published Lan–DeMets Pocock-type boundaries for five equally spaced looks
            # (two-sided 0.05), as tabulated by gsDesign and ldbounds.
            for got, published in zip(looks, [2.438, 2.427, 2.410, 2.397, 2.386]):
                assert abs(got["z_boundary"] - published) < 1e-3, (got, published)
        cases.append({"name": name, "information_fractions": ts, "alpha": alpha,
                      "spending": kind, "expected": looks})
    return cases


# 8. Bayesian ----------------------------------------------------------------------------

def beta_prob_greater(a_t, b_t, a_c, b_c):
    """P(p_t > p_c) = ∫ f_c(x) S_t(x) dx by adaptive quadrature around the posteriors."""
    def window(a, b):
        m, s = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        return max(0.0, m - 60 * s), min(1.0, m + 60 * s), m

    lo, hi, m = window(a_c, b_c)
    val, _ = integrate.quad(lambda x: stats.beta.pdf(x, a_c, b_c) * stats.beta.sf(x, a_t, b_t),
                            lo, hi, points=[m], epsabs=0, epsrel=1e-12, limit=1000)
    return val


def beta_loss(a_lose, b_lose, a_win, b_win):
    """E[(p_win − p_lose)⁺] = ∫ F_lose(x) S_win(x) dx."""
    lo = 0.0
    hi = 1.0
    pts = [a_lose / (a_lose + b_lose), a_win / (a_win + b_win)]
    val, _ = integrate.quad(
        lambda x: stats.beta.cdf(x, a_lose, b_lose) * stats.beta.sf(x, a_win, b_win),
        lo, hi, points=sorted(pts), epsabs=1e-16, epsrel=1e-11, limit=2000)
    return val


def bayesian_cases():
    specs = [
        ("small_counts", 10, 2, 12, 5),
        ("moderate", 1000, 100, 1000, 120),
        ("treatment_worse", 5000, 600, 5200, 560),
        ("large_counts", 1_000_000, 100_000, 1_000_000, 100_600),
        ("near_certain", 20000, 2000, 20000, 2600),
        ("zero_conversions", 40, 0, 35, 0),
        ("empty_groups", 0, 0, 0, 0),
    ]
    cases = []
    for name, n_c, x_c, n_t, x_t in specs:
        a_c, b_c = 1 + x_c, 1 + n_c - x_c
        a_t, b_t = 1 + x_t, 1 + n_t - x_t
        cases.append({
            "name": name,
            "control": {"units": n_c, "conversions": x_c},
            "treatment": {"units": n_t, "conversions": x_t},
            "expected": {
                "control_mean": a_c / (a_c + b_c),
                "treatment_mean": a_t / (a_t + b_t),
                "chance_to_beat_control": beta_prob_greater(a_t, b_t, a_c, b_c),
                "expected_loss": beta_loss(a_t, b_t, a_c, b_c),
                "expected_loss_control": beta_loss(a_c, b_c, a_t, b_t),
            },
        })
    return cases


def gaussian_bayes_cases():
    cases = []
    specs = [
        ("close_means", RNG.normal(10, 3, 1000), RNG.normal(10.1, 3, 1200)),
        ("clear_winner", RNG.normal(10, 3, 5000), RNG.normal(10.5, 3, 5000)),
        ("clear_loser", RNG.normal(5, 1, 50), RNG.normal(4.5, 2, 60)),
    ]
    for name, x_c, x_t in specs:
        d = x_t.mean() - x_c.mean()
        s = math.sqrt(x_c.var(ddof=1) / x_c.size + x_t.var(ddof=1) / x_t.size)
        post = stats.norm(loc=d, scale=s)
        loss_t, _ = integrate.quad(lambda u: -u * post.pdf(u), d - 40 * s, 0.0,
                                   epsabs=0, epsrel=1e-12, limit=400) if d - 40 * s < 0 else (0.0, 0)
        loss_c, _ = integrate.quad(lambda u: u * post.pdf(u), 0.0, d + 40 * s,
                                   epsabs=0, epsrel=1e-12, limit=400) if d + 40 * s > 0 else (0.0, 0)
        cases.append({
            "name": name, "control": moments(x_c), "treatment": moments(x_t),
            "expected": {
                "control_mean": float(x_c.mean()), "treatment_mean": float(x_t.mean()),
                "chance_to_beat_control": float(post.sf(0.0)),
                "expected_loss": loss_t, "expected_loss_control": loss_c,
            },
        })
    return cases


# 9. SRM ---------------------------------------------------------------------------------

def srm_cases():
    specs = [
        ("balanced", [50110, 49890], [0.5, 0.5]),
        ("mild_mismatch", [50000, 51500], [1, 1]),
        ("severe_mismatch", [100000, 103800], [1, 1]),
        ("three_arms_weighted", [25050, 24800, 50400], [1, 1, 2]),
        ("four_arms_unequal", [1000, 2100, 2950, 4100], [0.1, 0.2, 0.3, 0.4]),
        ("small_counts", [3, 9], [1, 1]),
    ]
    cases = []
    for name, obs, w in specs:
        w = np.asarray(w, dtype=float)
        expected = np.asarray(obs).sum() * w / w.sum()
        res = stats.chisquare(obs, f_exp=expected)
        cases.append({
            "name": name, "observed": obs, "weights": [float(v) for v in w],
            "expected": {"statistic": float(res.statistic), "p_value": float(res.pvalue),
                         "df": len(obs) - 1, "mismatch": bool(res.pvalue < 0.001),
                         "expected": [float(v) for v in expected]},
        })
    return cases


# 9b. Sequential SRM ----------------------------------------------------------------------

SRM_CONCENTRATION = 1000.0


def sequential_srm_cases():
    """Dirichlet–multinomial Bayes factor of Lindon & Malek (2022), from scipy's gammaln,
    checked against the Dirichlet-multinomial pmf divided by the multinomial pmf."""
    specs = [
        ("balanced", [50110, 49890], [0.5, 0.5]),
        ("mild_mismatch", [50000, 51500], [1, 1]),
        ("severe_mismatch", [100000, 103800], [1, 1]),
        ("three_arms_weighted", [25050, 24800, 50400], [1, 1, 2]),
        ("broken_early", [600, 400], [1, 1]),
        ("small_counts", [3, 9], [1, 1]),
        ("no_exposures", [0, 0], [1, 1]),
    ]
    cases = []
    for name, obs, w in specs:
        w = np.asarray(w, dtype=float)
        share = w / w.sum()
        a = SRM_CONCENTRATION * share
        x = np.asarray(obs, dtype=float)
        n = x.sum()
        log_bf = (special.gammaln(SRM_CONCENTRATION) - special.gammaln(SRM_CONCENTRATION + n)
                  + float(np.sum(special.gammaln(a + x) - special.gammaln(a)))
                  - float(np.sum(x * np.log(share))))
        if n > 0:
            check = (stats.dirichlet_multinomial.logpmf(x, a, n)
                     - stats.multinomial.logpmf(x, n, share))
            assert abs(check - log_bf) < 1e-6 * max(1.0, abs(log_bf)), (name, check, log_bf)
        p = math.exp(min(0.0, -log_bf))
        cases.append({
            "name": name, "observed": obs, "weights": [float(v) for v in w],
            "expected": {"log_bayes_factor": float(log_bf), "p_value": p,
                         "mismatch": bool(p < 0.001)},
        })
    return cases


# 10. Power ------------------------------------------------------------------------------

def conversion_power_cases():
    specs = [
        ("ten_percent_relative", 0.10, ("relative", 0.10), 0.05, 0.8, 2, 2000.0),
        ("small_baseline_absolute", 0.02, ("absolute", 0.002), 0.05, 0.9, 2, None),
        ("three_variants", 0.30, ("relative", -0.05), 0.05, 0.8, 3, 10000.0),
        ("strict_alpha", 0.5, ("absolute", 0.05), 0.01, 0.95, 2, 500.0),
    ]
    cases = []
    for name, base, (kind, value), alpha, power, variants, traffic in specs:
        diff = value * base if kind == "relative" else value
        a = alpha / (variants - 1)

        def gap(n):
            return power_proportions_2indep(diff, base, n, ratio=1, alpha=a,
                                            alternative="two-sided").power - power

        n = optimize.brentq(gap, 2, 1e9, xtol=1e-10, rtol=1e-15)
        n_check = 1000.0
        cases.append({
            "name": name, "baseline": base, "mde": {"kind": kind, "value": value},
            "alpha": alpha, "power": power, "variants": variants, "daily_traffic": traffic,
            "power_at_units": n_check,
            "expected": {
                "exact_units_per_variant": n,
                "units_per_variant": math.ceil(n),
                "alpha_per_comparison": a,
                "power_at_units": float(power_proportions_2indep(
                    diff, base, n_check, ratio=1, alpha=a, alternative="two-sided").power),
            },
        })
    return cases


def crossing_prob(ts, bounds, drift, nodes=240):
    """P(|Z_k| ≥ c_k at some look) when S(t) = Z(t)√t is Brownian motion with drift: the
    recursion of gs_boundaries with the drift in the transition, on Gauss–Legendre nodes."""
    x_std, w_std = np.polynomial.legendre.leggauss(nodes)
    total, prev, t_prev = 0.0, None, 0.0
    for t, c in zip(ts, bounds):
        sd = math.sqrt(t - t_prev)
        step = drift * (t - t_prev)
        z = c * x_std
        w = c * w_std
        if prev is None:
            total += stats.norm.sf(c - drift * math.sqrt(t)) + stats.norm.cdf(-c - drift * math.sqrt(t))
            g = stats.norm.pdf(z - drift * math.sqrt(t))
        else:
            zp, wp, gp = prev
            m = zp * math.sqrt(t_prev) + step
            mass = wp * gp
            total += float(np.sum(mass * (stats.norm.sf((c * math.sqrt(t) - m) / sd)
                                          + stats.norm.cdf((-c * math.sqrt(t) - m) / sd))))
            kernel = stats.norm.pdf((z[:, None] * math.sqrt(t) - m[None, :]) / sd)
            g = (kernel * mass[None, :]).sum(axis=1) * math.sqrt(t) / sd
        prev = (z, w, g)
        t_prev = t
    return total


def planned_bounds(test, alpha):
    if test["mode"] == "group_sequential":
        ts = [k / test["looks"] for k in range(1, test["looks"] + 1)]
        return ts, [l["z_boundary"] for l in gs_boundaries(ts, alpha, test["spending"])]
    # mSPRT tuned to the plan (r = r*·t), continuous monitoring approximated by 40 looks
    # with Siegmund's correction ρ·√(Δ/t), ρ = 0.5826.
    looks = 40
    r_star = optimal_ratio(alpha)
    ts = [k / looks for k in range(1, looks + 1)]
    bounds = []
    for t in ts:
        r = r_star * t
        cont = math.sqrt((1 + r) / r * (math.log1p(r) - 2 * math.log(alpha)))
        bounds.append(max(cont - 0.5826 * math.sqrt((1 / looks) / t), 1e-6))
    return ts, bounds


def design_power_cases():
    """Plans for the test that will run: α split over (1 + secondary) × treatments, and the
    drift D = |δ|√n/σ₁ at which the design rejects with the target power."""
    gs5 = {"mode": "group_sequential", "looks": 5, "spending": "o_brien_fleming"}
    gs3 = {"mode": "group_sequential", "looks": 3, "spending": "pocock"}
    seq = {"mode": "sequential"}
    specs = [
        # name, metric, baseline, sd, mde, alpha, power, variants, secondary, test
        ("fixed_with_secondaries", "mean", 10.0, 4.0, ("absolute", 0.5), 0.05, 0.8, 2, 3, {"mode": "fixed_horizon"}),
        ("group_sequential_obf_5", "mean", 10.0, 4.0, ("absolute", 0.5), 0.05, 0.8, 2, 0, gs5),
        ("group_sequential_pocock_3", "mean", 10.0, 4.0, ("absolute", 0.5), 0.05, 0.9, 3, 1, gs3),
        ("sequential_mean", "mean", 10.0, 4.0, ("absolute", 0.5), 0.05, 0.8, 2, 0, seq),
        ("sequential_conversion", "conversion", 0.10, None, ("relative", 0.10), 0.05, 0.8, 2, 1, seq),
        ("group_sequential_conversion", "conversion", 0.10, None, ("relative", 0.10), 0.05, 0.8, 2, 0, gs5),
    ]
    cases = []
    for name, metric, base, sd, (kind, value), alpha, power, variants, secondary, test in specs:
        diff = value * base if kind == "relative" else value
        a = alpha / ((variants - 1) * (1 + secondary))
        if metric == "mean":
            sd0 = sd1 = sd * math.sqrt(2)
            n_fixed = NormalIndPower().solve_power(effect_size=diff / sd, alpha=a, power=power,
                                                   ratio=1.0, alternative="two-sided")
        else:
            treated = base + diff
            pooled = 0.5 * (base + treated)
            sd0 = math.sqrt(2 * pooled * (1 - pooled))
            sd1 = math.sqrt(base * (1 - base) + treated * (1 - treated))
            n_fixed = optimize.brentq(
                lambda n: power_proportions_2indep(diff, base, n, ratio=1, alpha=a,
                                                   alternative="two-sided").power - power,
                2, 1e9, xtol=1e-10, rtol=1e-15)
        if test["mode"] == "fixed_horizon":
            n = n_fixed
        else:
            ts, bounds = planned_bounds(test, a)
            bounds = [c * sd0 / sd1 for c in bounds]
            drift = optimize.brentq(lambda d: crossing_prob(ts, bounds, d) - power, 0.0, 50.0,
                                    xtol=1e-12, rtol=1e-13)
            if len(ts) <= 5:
                # Independent check of the power with the multivariate normal CDF.
                cov = np.array([[math.sqrt(min(x, y) / max(x, y)) for y in ts] for x in ts])
                mean = np.array([drift * math.sqrt(t) for t in ts])
                upper = np.array(bounds)
                dist = stats.multivariate_normal(mean=mean, cov=cov, abseps=1e-9, releps=1e-9,
                                                 maxpts=2_000_000 * len(ts))
                mvn_power = 1 - dist.cdf(upper, lower_limit=-upper)
                assert abs(mvn_power - power) < 2e-5, (name, mvn_power)
            n = (drift * sd1 / diff) ** 2
        cases.append({
            "name": name, "metric": metric, "baseline": base, "std_dev": sd,
            "mde": {"kind": kind, "value": value}, "alpha": alpha, "power": power,
            "variants": variants, "secondary_metrics": secondary, "test": test,
            "daily_traffic": None,
            "expected": {
                "exact_units_per_variant": float(n),
                "units_per_variant": math.ceil(n),
                "alpha_per_comparison": a,
                "fixed_horizon_units_per_variant": math.ceil(n_fixed),
            },
        })
    return cases


def mean_power_cases():
    specs = [
        ("revenue_relative", 25.0, 40.0, ("relative", 0.03), 0.05, 0.8, 2),
        ("absolute_four_variants", 3.0, 1.2, ("absolute", 0.05), 0.05, 0.8, 4),
        ("large_effect", 0.0, 1.0, ("absolute", 0.8), 0.05, 0.9, 2),
    ]
    cases = []
    for name, base, sd, (kind, value), alpha, power, variants in specs:
        diff = value * base if kind == "relative" else value
        a = alpha / (variants - 1)
        n = NormalIndPower().solve_power(effect_size=diff / sd, alpha=a, power=power,
                                         ratio=1.0, alternative="two-sided")
        n_check = 200.0
        cases.append({
            "name": name, "baseline": base, "std_dev": sd,
            "mde": {"kind": kind, "value": value}, "alpha": alpha, "power": power,
            "variants": variants, "power_at_units": n_check,
            "expected": {
                "exact_units_per_variant": float(n),
                "units_per_variant": math.ceil(n),
                "alpha_per_comparison": a,
                "power_at_units": float(NormalIndPower().power(
                    effect_size=diff / sd, nobs1=n_check, alpha=a, ratio=1.0,
                    alternative="two-sided")),
            },
        })
    return cases


# 11. Interaction ------------------------------------------------------------------------

def interaction_fit(cells, alpha, cov_type):
    """OLS y ~ a + b + a·b with a sandwich covariance; its a·b coefficient is the
    difference in differences."""
    ys, a, b = [], [], []
    for (ai, bi), y in cells.items():
        ys.append(y)
        a.append(np.full(y.size, ai))
        b.append(np.full(y.size, bi))
    y, a, b = np.concatenate(ys), np.concatenate(a), np.concatenate(b)
    design = np.column_stack([np.ones_like(y), a, b, a * b])
    fit = sm.OLS(y, design).fit(cov_type=cov_type)
    lo, hi = fit.conf_int(alpha=alpha)[3]
    mean = {k: v.mean() for k, v in cells.items()}
    return {
        "effect_in_b0": float(mean[(1, 0)] - mean[(0, 0)]),
        "effect_in_b1": float(mean[(1, 1)] - mean[(0, 1)]),
        "interaction": {
            "estimate": float(fit.params[3]), "std_error": float(fit.bse[3]),
            "statistic": float(fit.tvalues[3]), "p_value": float(fit.pvalues[3]),
            "ci_lower": float(lo), "ci_upper": float(hi),
        },
    }


def interaction_cases():
    cases = []
    keys = {(0, 0): "a0_b0", (1, 0): "a1_b0", (0, 1): "a0_b1", (1, 1): "a1_b1"}
    # Conversion metric: binary per-unit data, HC0 equals Σ p(1 − p)/n per cell.
    for name, rates, sizes in [
        ("conversion_interaction", {(0, 0): 0.10, (1, 0): 0.12, (0, 1): 0.10, (1, 1): 0.10},
         {(0, 0): 5000, (1, 0): 5000, (0, 1): 5000, (1, 1): 5000}),
        ("conversion_unequal_cells", {(0, 0): 0.3, (1, 0): 0.31, (0, 1): 0.29, (1, 1): 0.32},
         {(0, 0): 800, (1, 0): 1200, (0, 1): 950, (1, 1): 400}),
    ]:
        cells = {k: (RNG.random(sizes[k]) < rates[k]).astype(float) for k in rates}
        cases.append({
            "name": name, "kind": "proportion", "alpha": 0.05,
            "cells": {keys[k]: {"units": int(v.size), "conversions": int(v.sum())}
                      for k, v in cells.items()},
            "expected": interaction_fit(cells, 0.05, "HC0"),
        })
    # Mean metric: HC2 equals Σ s²/n per cell with unbiased cell variances.
    for name, means, sizes in [
        ("mean_interaction", {(0, 0): 10, (1, 0): 10.5, (0, 1): 10, (1, 1): 10.0},
         {(0, 0): 1000, (1, 0): 1000, (0, 1): 1000, (1, 1): 1000}),
        ("mean_small_cells", {(0, 0): 1, (1, 0): 2, (0, 1): 1.5, (1, 1): 2.5},
         {(0, 0): 4, (1, 0): 6, (0, 1): 5, (1, 1): 3}),
    ]:
        cells = {k: RNG.normal(means[k], 2.0, sizes[k]) for k in means}
        cases.append({
            "name": name, "kind": "mean", "alpha": 0.05,
            "cells": {keys[k]: moments(v) for k, v in cells.items()},
            "expected": interaction_fit(cells, 0.05, "HC2"),
        })
    return cases


def independence_cases():
    tables = [
        ("independent_2x2", [[25100, 24900], [24950, 25050]]),
        ("dependent_2x2", [[26000, 24000], [24000, 26000]]),
        ("three_by_two", [[1000, 1020], [980, 1010], [2050, 1940]]),
        ("small_2x3", [[5, 8, 2], [7, 3, 9]]),
    ]
    cases = []
    for name, table in tables:
        chi2, p, df, _ = stats.chi2_contingency(np.asarray(table), correction=False)
        cases.append({"name": name, "table": table,
                      "expected": {"statistic": float(chi2), "p_value": float(p), "df": int(df)}})
    return cases


# 12. Guardrail --------------------------------------------------------------------------

def guardrail_cases():
    specs = [
        # name, effect, se, n_c, n_t, direction, alpha, min_se, min_units, tuning
        ("clear_harm_increase", 0.02, 0.004, 10000, 10000, "increase", 0.05, 2.0, 1000, 10000.0),
        ("harm_below_two_se", 0.006, 0.004, 10000, 10000, "increase", 0.05, 2.0, 1000, 10000.0),
        ("beneficial_direction", -0.02, 0.004, 10000, 10000, "increase", 0.05, 2.0, 1000, 10000.0),
        ("decrease_is_harm", -1.5, 0.4, 30000, 30000, "decrease", 0.05, 2.0, 1000, 20000.0),
        ("two_se_but_not_always_valid", 0.0105, 0.005, 5000, 5000, "increase", 0.05, 2.0, 1000, 10000.0),
        ("too_few_units", 0.05, 0.01, 500, 480, "increase", 0.05, 2.0, 1000, 10000.0),
    ]
    cases = []
    for name, eff, se, n_c, n_t, direction, alpha, k, min_units, tuning in specs:
        r_star = optimal_ratio(alpha)
        v = se * se
        tau2 = r_star * v * (n_c + n_t) / tuning
        harm = eff if direction == "increase" else -eff
        lam = mixture_lr(harm, v, tau2, half=True)
        p = 1.0 if lam <= 0 else min(1.0, 1.0 / lam)
        z = harm / se
        # The z where the always-valid p reaches α, floored at the threshold.
        boundary = optimize.brentq(
            lambda zz: math.log(mixture_lr(zz * math.sqrt(v), v, tau2, half=True)) + math.log(alpha),
            0.0, 15.0, xtol=1e-13)
        boundary = max(boundary, k)
        if n_c < min_units or n_t < min_units:
            status = "insufficient_data"
        elif z >= k and p <= alpha:
            status = "alarm"
        else:
            status = "healthy"
        cases.append({
            "name": name, "effect": eff, "std_error": se, "control_units": n_c,
            "treatment_units": n_t, "harmful_direction": direction, "alpha": alpha,
            "min_std_errors": k, "min_units_per_arm": min_units, "tuning_units": tuning,
            "expected": {"harmful_effect": harm, "z": z, "p_value": p, "status": status,
                         "z_boundary": boundary},
        })
    return cases


# 13. Trend of the effect over days -----------------------------------------------------

def trend_cases():
    """Per-day effects from the increments of information I = 1/se² and score θ̂·I, fitted
    on the day by statsmodels' weighted least squares with the variance known (scale 1)."""
    rng = np.random.default_rng(20261204)
    specs = [
        ("fading_novelty", 21, 0.05, -0.002),
        ("flat", 28, 0.01, 0.0),
        ("growing", 14, 0.0, 0.001),
    ]
    cases = []
    for name, days, start, slope in specs:
        points = []
        info = score = 0.0
        for d in range(days):
            added = 2000.0 * (1 + 0.3 * math.sin(d))  # information gained on day d
            effect = start + slope * d + rng.normal(0, 1 / math.sqrt(added))
            info += added
            score += effect * added
            points.append({"day": float(d), "estimate": score / info,
                           "std_error": 1 / math.sqrt(info)})
        # Recover the per-day effects from the cumulative points, as the crate does.
        x, y, w = [], [], []
        i_prev = s_prev = 0.0
        for p in points:
            i = 1 / p["std_error"] ** 2
            sc = p["estimate"] * i
            x.append(p["day"]); y.append((sc - s_prev) / (i - i_prev)); w.append(i - i_prev)
            i_prev, s_prev = i, sc
        fit = sm.WLS(np.array(y), sm.add_constant(np.array(x)), weights=np.array(w)).fit(
            cov_type="fixed scale", cov_kwds={"scale": 1.0})
        b, se = float(fit.params[1]), float(fit.bse[1])
        cases.append({"name": name, "points": points,
                      "expected": {"slope": b, "std_error": se, "z": b / se,
                                   "p_value": float(2 * stats.norm.sf(abs(b / se))),
                                   "periods": days}})
    return cases


# 14. Heterogeneity of an effect across subgroups ------------------------------------------

def heterogeneity_cases():
    """Cochran's Q, I² and the fixed-effect pooled estimate by statsmodels' meta-analysis
    routine, over subgroup effects estimated from simulated raw data: conversion lifts by
    platform (differences of proportions, unpooled errors) and revenue by country (Welch)."""
    from statsmodels.stats.meta_analysis import combine_effects

    rng = np.random.default_rng(20261205)
    specs = [
        ("conversion_differs_by_platform", "conversion",
         [(4000, 0.10, 0.13), (6000, 0.10, 0.10), (1500, 0.08, 0.08)]),
        ("conversion_same_everywhere", "conversion",
         [(3000, 0.20, 0.22), (5000, 0.18, 0.20), (2000, 0.25, 0.27), (800, 0.15, 0.17)]),
        ("revenue_by_country", "mean",
         [(900, 10.0, 10.5), (1200, 12.0, 12.1), (400, 8.0, 9.5)]),
    ]
    cases = []
    for name, kind, groups in specs:
        effects = []
        for n, base, treated in groups:
            if kind == "conversion":
                c = rng.random(n) < base
                t = rng.random(n) < treated
            else:
                c = rng.lognormal(math.log(base) - 0.5, 1.0, n)
                t = rng.lognormal(math.log(treated) - 0.5, 1.0, n)
            c, t = c.astype(float), t.astype(float)
            estimate = float(t.mean() - c.mean())
            se = math.sqrt(t.var(ddof=1) / n + c.var(ddof=1) / n)
            effects.append({"estimate": estimate, "std_error": se})
        est = np.array([e["estimate"] for e in effects])
        var = np.array([e["std_error"] ** 2 for e in effects])
        res = combine_effects(est, var, method_re="chi2")
        q = float(res.q)
        # statsmodels reports I² = (Q − df)/Q unclipped; the crate clips it at 0, as Higgins
        # and Thompson define it.
        df = len(effects) - 1
        cases.append({"name": name, "effects": effects,
                      "expected": {"q": q, "df": df, "p_value": float(stats.chi2.sf(q, df)),
                                   "i_squared": float(max(0.0, res.i2)),
                                   "pooled": float(res.mean_effect_fe),
                                   "pooled_std_error": float(res.sd_eff_w_fe),
                                   "subgroups": len(effects)}})
    return cases


def main():
    values = {
        "generator": {
            "script": "stats/reference/generate.py",
            "numpy": np.__version__, "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__,
        },
        "proportion": proportion_cases(),
        "welch": welch_cases(),
        "ratio": ratio_cases(),
        "cuped": cuped_cases(),
        "multiple": multiple_cases(),
        "sequential": sequential_cases(),
        "group_sequential": group_sequential_cases(),
        "beta_binomial": bayesian_cases(),
        "gaussian_bayes": gaussian_bayes_cases(),
        "srm": srm_cases(),
        "sequential_srm": sequential_srm_cases(),
        "conversion_power": conversion_power_cases(),
        "mean_power": mean_power_cases(),
        "design_power": design_power_cases(),
        "interaction": interaction_cases(),
        "independence": independence_cases(),
        "guardrail": guardrail_cases(),
        "trend": trend_cases(),
        "heterogeneity": heterogeneity_cases(),
        # Last, with its own generator, so that adding it left every earlier case unchanged.
        "ratio_cuped": ratio_cuped_cases(),
    }
    OUT.write_text(json.dumps(values, indent=1, allow_nan=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
