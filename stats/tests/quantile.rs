//! Quantile metrics against a unit-level (cluster) bootstrap computed with numpy on the same
//! raw events (`stats/reference/quantile_bootstrap.py` writes `quantile.json`): the
//! estimate is the sample quantile to the buckets' accuracy, and the delta-method standard
//! errors and interval agree with the bootstrap's.

use abx_stats::quantile::{self, QuantileEstimate, RELATIVE_ACCURACY};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let file: Value = serde_json::from_str(include_str!("../reference/quantile.json"))
        .expect("quantile.json parses");
    file["cases"].as_array().expect("cases").clone()
}

/// Each unit's histogram of its events.
fn units(group: &Value) -> Vec<Vec<(i32, u64)>> {
    group
        .as_array()
        .expect("units")
        .iter()
        .map(|unit| {
            quantile::histogram(
                unit.as_array()
                    .expect("events")
                    .iter()
                    .map(|v| (quantile::bucket(v.as_f64().expect("value")), 1)),
            )
        })
        .collect()
}

fn estimate(group: &Value, p: f64) -> QuantileEstimate {
    let units = units(group);
    quantile::quantile_of_units(units.iter().map(Vec::as_slice), p).expect("estimate")
}

fn number(case: &Value, field: &str) -> f64 {
    case[field].as_f64().expect(field)
}

#[test]
fn quantiles_agree_with_a_cluster_bootstrap() {
    for case in cases() {
        let name = case["name"].as_str().expect("name");
        let p = number(&case, "p");
        // How far the delta method's standard error may be from the bootstrap's on this one
        // sample (from the script, with its reason). The bootstrap's own Monte Carlo error
        // is about 1 % at 4,000 replicates; the rest is that both estimate one quantity
        // from one sample in different ways. Whether the interval covers is what the
        // simulation of docs/statistics.md §12d measures.
        let tolerance = number(&case, "se_tolerance");
        let c = estimate(&case["control"], p);
        let t = estimate(&case["treatment"], p);
        for (group, q, exact) in [
            ("control", &c, number(&case, "control_quantile")),
            ("treatment", &t, number(&case, "treatment_quantile")),
        ] {
            assert!(
                ((q.estimate - exact) / exact).abs() <= RELATIVE_ACCURACY + 1e-12,
                "{name} {group}: {} vs the sample quantile {exact}",
                q.estimate
            );
            let bootstrap = number(&case, &format!("{group}_se"));
            let ratio = q.variance.sqrt() / bootstrap;
            assert!(
                (ratio - 1.0).abs() <= tolerance,
                "{name} {group}: se {} vs bootstrap {bootstrap}",
                q.variance.sqrt()
            );
        }
        let comparison = quantile::quantile_test(&c, &t, 0.05).expect("comparison");
        let bootstrap_se = number(&case, "difference_se");
        let ratio = comparison.absolute.std_error / bootstrap_se;
        assert!(
            (ratio - 1.0).abs() <= tolerance,
            "{name}: difference se {} vs bootstrap {bootstrap_se}",
            comparison.absolute.std_error
        );
        // The interval is the estimate ± its half-width; the bootstrap's percentile interval
        // may be asymmetric, so their widths are compared.
        let interval = case["difference_ci"].as_array().expect("interval");
        let bootstrap_width =
            interval[1].as_f64().expect("end") - interval[0].as_f64().expect("end");
        let width = comparison.absolute.ci_upper - comparison.absolute.ci_lower;
        assert!(
            (width / bootstrap_width - 1.0).abs() <= tolerance,
            "{name}: interval width {width} vs bootstrap {bootstrap_width}"
        );
    }
}
