//! Group-sequential designs: Lan–DeMets alpha spending with exact boundaries.
//!
//! The experiment is analysed at K pre-declared looks at information fractions
//! t₁ < … < t_K ≤ 1 (the fraction of the planned sample, see `fixed_horizon`). At look k the
//! two-sided boundary c_k is chosen so that the probability under H0 of first crossing
//! |Z| ≥ c at look k equals the alpha newly spent, α(t_k) − α(t_{k−1}).

use core::f64::consts::E;

use serde::{Deserialize, Serialize};

use crate::distribution::{normal_cdf, normal_isf, normal_pdf, normal_sf};
use crate::error::{StatsError, check_alpha, invalid};

/// Boundaries beyond this z are reported as this value: the crossing probability of a
/// standard normal beyond it underflows to zero in double precision.
pub const Z_MAX: f64 = 40.0;

/// Grid resolution parameter r of Jennison & Turnbull (2000, ch. 19); the grid has
/// 6r − 1 points before Simpson midpoints are added. r = 32 keeps the crossing
/// probabilities accurate to about 1e-10, well inside the reference tolerance.
const GRID_R: usize = 32;

/// A Lan–DeMets spending function α(t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendingFunction {
    /// O'Brien–Fleming type in the convention of gsDesign, rpact and ldbounds: each side
    /// spends α/2 by α_s(t) = 2 − 2Φ(z_{1−α/4}/√t), so the two-sided spend is
    /// α(t) = 4 − 4Φ(z_{1−α/4}/√t). Five equal looks at α = 0.05 give 4.877 … 2.031, the
    /// boundaries analysts see in standard software.
    OBrienFleming,
    /// O'Brien–Fleming type applied to the two-sided α directly: α(t) = 2 − 2Φ(z_{1−α/2}/√t)
    /// (abx's convention before 2026-12; five equal looks give 4.383 … 2.064). It controls α
    /// as well, spending a little more early; kept so earlier analyses can be reproduced.
    OBrienFlemingTotal,
    /// Pocock type: α(t) = α·ln(1 + (e − 1)t); spends evenly, so early looks are cheaper.
    Pocock,
}

impl SpendingFunction {
    /// Cumulative alpha spent at information fraction t (0 at t ≤ 0, alpha at t ≥ 1).
    /// An alpha outside (0, 1) or a NaN t spends nothing.
    pub fn spent(self, alpha: f64, t: f64) -> f64 {
        if t.is_nan() || t <= 0.0 || !(alpha > 0.0 && alpha < 1.0) {
            return 0.0;
        }
        if t >= 1.0 {
            return alpha;
        }
        match self {
            Self::OBrienFleming => (4.0 * normal_sf(normal_isf(alpha / 4.0) / t.sqrt())).min(alpha),
            Self::OBrienFlemingTotal => {
                (2.0 * normal_sf(normal_isf(alpha / 2.0) / t.sqrt())).min(alpha)
            }
            Self::Pocock => alpha * (1.0 + (E - 1.0) * t).ln(),
        }
    }
}

/// The boundary at one look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Look {
    /// Information fraction t_k.
    pub information_fraction: f64,
    /// α(t_k), the cumulative alpha spent up to and including this look.
    pub cumulative_alpha: f64,
    /// α(t_k) − α(t_{k−1}).
    pub incremental_alpha: f64,
    /// Reject H0 at this look when |z| ≥ `z_boundary`.
    pub z_boundary: f64,
    /// The nominal two-sided p-value 2·sf(z_boundary) equivalent to the boundary.
    pub nominal_p: f64,
}

impl Look {
    /// True when the observed z statistic crosses this look's boundary.
    pub fn crossed(&self, z: f64) -> bool {
        z.abs() >= self.z_boundary
    }
}

/// A quadrature rule over the continuation region of one look, in z units, together with
/// the sub-density of Z_k (the density of not having stopped yet) at its nodes.
struct Grid {
    nodes: Vec<f64>,
    weights: Vec<f64>,
    density: Vec<f64>,
}

/// Jennison–Turnbull grid on (−c, c) with Simpson weights: points are dense within ±3 of
/// `centre` (the mean of Z at the look: 0 under H0, the drift's under an alternative) and
/// spread logarithmically in the tails, where the density is small but not negligible.
fn simpson_grid(c: f64, centre: f64) -> (Vec<f64>, Vec<f64>) {
    let r = GRID_R as f64;
    let mut points = Vec::with_capacity(6 * GRID_R + 1);
    points.push(-c);
    for i in 1..(6 * GRID_R) {
        let fi = i as f64;
        let x = if i < GRID_R {
            -3.0 - 4.0 * (r / fi).ln()
        } else if i <= 5 * GRID_R {
            -3.0 + 3.0 * (fi - r) / (2.0 * r)
        } else {
            3.0 + 4.0 * (r / (6.0 * r - fi)).ln()
        } + centre;
        if x > -c && x < c {
            points.push(x);
        }
    }
    points.push(c);
    let mut nodes = Vec::with_capacity(2 * points.len());
    let mut weights = Vec::with_capacity(2 * points.len());
    nodes.push(points[0]);
    weights.push(0.0);
    for pair in points.windows(2) {
        let h = pair[1] - pair[0];
        let last = weights.len() - 1;
        weights[last] += h / 6.0;
        nodes.push(0.5 * (pair[0] + pair[1]));
        weights.push(4.0 * h / 6.0);
        nodes.push(pair[1]);
        weights.push(h / 6.0);
    }
    (nodes, weights)
}

/// Probability under H0 of crossing ±c at a look with information `t`, given the previous
/// look's grid at information `t_prev`, and its derivative with respect to c.
fn crossing(prev: &Grid, t_prev: f64, t: f64, c: f64) -> (f64, f64) {
    let sd = (t - t_prev).sqrt();
    let (sq_t, sq_prev) = (t.sqrt(), t_prev.sqrt());
    let mut p = 0.0;
    let mut dp = 0.0;
    for ((u, w), g) in prev.nodes.iter().zip(&prev.weights).zip(&prev.density) {
        let mass = w * g;
        let upper = (c * sq_t - u * sq_prev) / sd;
        let lower = (-c * sq_t - u * sq_prev) / sd;
        p += mass * (normal_sf(upper) + normal_cdf(lower));
        dp -= mass * (sq_t / sd) * (normal_pdf(upper) + normal_pdf(lower));
    }
    (p, dp)
}

/// Solves crossing(c) = target for c in (0, Z_MAX] by Newton's method on the log of the
/// crossing probability, safeguarded by bisection.
fn solve_boundary(prev: &Grid, t_prev: f64, t: f64, target: f64) -> f64 {
    // Ignoring the earlier looks can only overstate the crossing probability, so the
    // unconditional quantile is an upper bracket.
    let mut hi = normal_isf(target / 2.0).min(Z_MAX);
    let mut lo = 0.0_f64;
    let mut c = hi;
    let log_target = target.ln();
    for _ in 0..100 {
        let (p, dp) = crossing(prev, t_prev, t, c);
        if p > target {
            lo = c;
        } else {
            hi = c;
        }
        let mut next = if p > 0.0 && dp < 0.0 {
            c - (p.ln() - log_target) * p / dp
        } else {
            f64::NAN
        };
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        let done = (next - c).abs() <= 1e-13 * c.max(1.0) || hi - lo <= 1e-13;
        c = next;
        if done {
            break;
        }
    }
    c
}

/// Density of Z_k on the continuation grid of look k, given the grid of look k − 1.
fn propagate(prev: &Grid, t_prev: f64, t: f64, c: f64) -> Grid {
    let (nodes, weights) = simpson_grid(c, 0.0);
    let sd = (t - t_prev).sqrt();
    let (sq_t, sq_prev) = (t.sqrt(), t_prev.sqrt());
    let density = nodes
        .iter()
        .map(|z| {
            prev.nodes
                .iter()
                .zip(&prev.weights)
                .zip(&prev.density)
                .map(|((u, w), g)| w * g * normal_pdf((z * sq_t - u * sq_prev) / sd))
                .sum::<f64>()
                * sq_t
                / sd
        })
        .collect();
    Grid {
        nodes,
        weights,
        density,
    }
}

/// At least one look, at fractions strictly increasing within (0, 1].
fn check_fractions(information_fractions: &[f64]) -> Result<(), StatsError> {
    if information_fractions.is_empty() {
        return Err(invalid("at least one look is needed"));
    }
    let mut previous_t = 0.0;
    for &t in information_fractions {
        if !(t > previous_t && t <= 1.0) {
            return Err(invalid(
                "information fractions must increase strictly within (0, 1]",
            ));
        }
        previous_t = t;
    }
    Ok(())
}

/// Two-sided group-sequential boundaries for looks at `information_fractions`.
///
/// The first boundary is the normal quantile c₁ = Φ⁻¹(1 − α(t₁)/2). Each later boundary is
/// found by the recursive numerical integration of Armitage, McPherson and Rowe (1969): the
/// sub-density of the z statistic among paths that have not yet stopped is carried from
/// look to look on a Simpson grid, and c_k solves P(first crossing at k) = α(t_k) − α(t_{k−1}).
///
/// Errors: alpha outside (0, 1), an empty list, or fractions that are not strictly
/// increasing within (0, 1] give `InvalidInput`.
pub fn boundaries(
    information_fractions: &[f64],
    alpha: f64,
    spending: SpendingFunction,
) -> Result<Vec<Look>, StatsError> {
    check_alpha(alpha)?;
    check_fractions(information_fractions)?;
    let mut looks = Vec::with_capacity(information_fractions.len());
    let mut grid: Option<Grid> = None;
    let (mut t_prev, mut spent_prev) = (0.0, 0.0);
    let last = information_fractions.len() - 1;
    for (k, &t) in information_fractions.iter().enumerate() {
        let spent = spending.spent(alpha, t).max(spent_prev);
        let increment = spent - spent_prev;
        let c = match &grid {
            _ if increment <= 0.0 => Z_MAX,
            None => normal_isf(increment / 2.0).min(Z_MAX),
            Some(prev) => solve_boundary(prev, t_prev, t, increment),
        };
        // The sub-density is only needed to place the next boundary.
        if k < last {
            grid = Some(match &grid {
                None => {
                    let (nodes, weights) = simpson_grid(c, 0.0);
                    let density = nodes.iter().map(|&z| normal_pdf(z)).collect();
                    Grid {
                        nodes,
                        weights,
                        density,
                    }
                }
                Some(prev) => propagate(prev, t_prev, t, c),
            });
        }
        looks.push(Look {
            information_fraction: t,
            cumulative_alpha: spent,
            incremental_alpha: increment,
            z_boundary: c,
            nominal_p: 2.0 * normal_sf(c),
        });
        t_prev = t;
        spent_prev = spent;
    }
    Ok(looks)
}

/// Probability that |Z_k| ≥ `z_bounds[k]` at some look k when the score S(t) = Z(t)·√t is
/// a Brownian motion with drift `drift` per unit of information (E Z(1) = drift): the power
/// of a design for a standardised effect, or its size at drift 0. The same recursion as
/// [`boundaries`], with the drift in the transition densities.
///
/// Errors: as [`boundaries`] for the fractions; bounds of another length, or bounds or a
/// drift that are not finite and (for bounds) positive, give `InvalidInput`.
pub fn crossing_probability(
    information_fractions: &[f64],
    z_bounds: &[f64],
    drift: f64,
) -> Result<f64, StatsError> {
    check_fractions(information_fractions)?;
    if information_fractions.len() != z_bounds.len() {
        return Err(invalid("one bound per information fraction is needed"));
    }
    if z_bounds.iter().any(|c| !(c.is_finite() && *c > 0.0)) || !drift.is_finite() {
        return Err(invalid(
            "bounds must be positive and finite, the drift finite",
        ));
    }
    let mut total = 0.0;
    let mut grid: Option<Grid> = None;
    let mut t_prev = 0.0;
    for (&t, &c) in information_fractions.iter().zip(z_bounds) {
        let sd = (t - t_prev).sqrt();
        let (sq_t, sq_prev) = (t.sqrt(), t_prev.sqrt());
        let step = drift * (t - t_prev);
        // Z_k·√t − Z_{k−1}·√t_prev ~ N(drift·(t − t_prev), t − t_prev).
        let transition = |z: f64, u: f64| (z * sq_t - u * sq_prev - step) / sd;
        let (nodes, weights) = simpson_grid(c, drift * sq_t);
        let density: Vec<f64> = match &grid {
            None => {
                total += normal_sf(transition(c, 0.0)) + normal_cdf(transition(-c, 0.0));
                nodes
                    .iter()
                    .map(|&z| normal_pdf(transition(z, 0.0)) * sq_t / sd)
                    .collect()
            }
            Some(prev) => {
                let mass: Vec<(f64, f64)> = prev
                    .nodes
                    .iter()
                    .zip(&prev.weights)
                    .zip(&prev.density)
                    .map(|((u, w), g)| (*u, w * g))
                    .collect();
                total += mass
                    .iter()
                    .map(|(u, m)| {
                        m * (normal_sf(transition(c, *u)) + normal_cdf(transition(-c, *u)))
                    })
                    .sum::<f64>();
                nodes
                    .iter()
                    .map(|&z| {
                        mass.iter()
                            .map(|(u, m)| m * normal_pdf(transition(z, *u)))
                            .sum::<f64>()
                            * sq_t
                            / sd
                    })
                    .collect()
            }
        };
        grid = Some(Grid {
            nodes,
            weights,
            density,
        });
        t_prev = t;
    }
    Ok(total.clamp(0.0, 1.0))
}
