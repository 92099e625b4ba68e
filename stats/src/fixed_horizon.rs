//! Fixed-horizon helpers: how far an experiment is from its planned sample size.
//!
//! A fixed-horizon test (`two_proportion_z_test`, `welch_t_test`, ...) is only valid when it
//! is read once, at the planned sample size; these helpers let the results page say whether
//! that point has been reached instead of inviting repeated peeking.

use serde::Serialize;

/// Progress of an experiment towards its planned sample size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HorizonProgress {
    /// Fraction of the planned units reached by the slowest variant (may exceed 1).
    pub fraction: f64,
    /// True once every variant has its planned units: the fixed-horizon result may be read.
    pub reached: bool,
    /// Units still missing, summed over variants.
    pub remaining_units: u64,
}

/// Progress of the variants' unit counts towards `planned_units_per_variant`.
///
/// The slowest variant gates the horizon because every comparison needs its own two groups
/// at full size. A plan of zero units, or no variants, counts as already reached.
pub fn horizon_progress(
    units_per_variant: &[u64],
    planned_units_per_variant: u64,
) -> HorizonProgress {
    if planned_units_per_variant == 0 || units_per_variant.is_empty() {
        return HorizonProgress {
            fraction: 1.0,
            reached: true,
            remaining_units: 0,
        };
    }
    let slowest = units_per_variant.iter().copied().min().unwrap_or(0);
    let remaining_units = units_per_variant
        .iter()
        .map(|&n| planned_units_per_variant.saturating_sub(n))
        .fold(0_u64, u64::saturating_add);
    HorizonProgress {
        fraction: slowest as f64 / planned_units_per_variant as f64,
        reached: remaining_units == 0,
        remaining_units,
    }
}
