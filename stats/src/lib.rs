//! The statistics engine of abx.
//!
//! Every function is pure: it takes sufficient statistics (counts, sums, sums of squares and
//! cross-products per group, see [`sufficient`]) and returns a serialisable result or a
//! [`StatsError`]. Nothing here reads the clock, does IO or draws random numbers (the seeded
//! generator of [`montecarlo`] serves only the simulations that check the methods), so the
//! origin service can call these functions O(variants × metrics) times per request.
//! `docs/statistics.md` is the normative description of every formula.
//!
//! | Question | Function |
//! | --- | --- |
//! | Did a conversion rate change? | [`two_proportion_z_test`] |
//! | Did a mean or per-unit sum change? | [`welch_t_test`] |
//! | Did a ratio metric change? | [`ratio_test`] |
//! | Same, with a pre-exposure covariate | [`cuped_test`] |
//! | Correct for many metrics × variants | [`adjust_p_values`] |
//! | Peek daily without inflating errors | [`sequential`], [`group_sequential`] |
//! | Chance to beat control | [`beta_binomial`], [`bayesian::gaussian`] |
//! | Is the traffic split broken? | [`srm_test`], [`sequential_srm_test`] on every refresh |
//! | How many units are needed? | [`power`] |
//! | Do two experiments interact? | [`interaction`] |
//! | Is a guardrail harmed? | [`guardrail`] |
//! | Does the effect fade or grow over days? | [`trend`] |
//! | Does the effect differ between subgroups? | [`heterogeneity::cochran_q`] |

mod distribution;

pub mod bayesian;
pub mod cuped;
pub mod effect;
pub mod error;
pub mod fixed_horizon;
pub mod group_sequential;
pub mod guardrail;
pub mod heterogeneity;
pub mod interaction;
pub mod mean;
pub mod montecarlo;
pub mod multiple;
pub mod power;
pub mod proportion;
pub mod quantile;
pub mod ratio;
pub mod sequential;
pub mod srm;
pub mod sufficient;
pub mod trend;

pub use bayesian::{BayesianResult, beta_binomial};
pub use cuped::{CupedComparison, cuped_test, ratio_cuped_test};
pub use effect::{Comparison, Effect, LiftUnavailable, RelativeLift, relative_lift};
pub use error::StatsError;
pub use mean::welch_t_test;
pub use multiple::{Correction, adjust_p_values};
pub use proportion::two_proportion_z_test;
pub use quantile::{QuantileEstimate, quantile_test};
pub use ratio::ratio_test;
pub use srm::{SequentialSrm, SrmResult, sequential_srm_test, srm_test};
pub use sufficient::{CovariateMoments, Moments, Proportion, RatioCovariateMoments, RatioMoments};
