//! Counters and histograms for `GET /metrics` (Prometheus text exposition format).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Process-wide figures. Gauges that need the database (lag, dead letters) are filled in by
/// the `/metrics` handler at scrape time.
#[derive(Default)]
pub struct Telemetry {
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_processed: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    pub ingest_overloaded: AtomicU64,
    /// Highest event sequence number written, and the pipeline's position.
    pub log_head: AtomicI64,
    pub pipeline_position: AtomicI64,
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Telemetry {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn lag_events(&self) -> i64 {
        (self.log_head.load(Ordering::Relaxed) - self.pipeline_position.load(Ordering::Relaxed))
            .max(0)
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default();
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Renders everything; `gauges` are extra `(name, help, value)` lines.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counters = [
            (
                "abx_events_accepted_total",
                "Events durably logged.",
                &self.events_accepted,
            ),
            (
                "abx_events_rejected_total",
                "Events refused as invalid.",
                &self.events_rejected,
            ),
            (
                "abx_events_duplicate_total",
                "Events dropped because their event_id was already logged.",
                &self.events_duplicate,
            ),
            (
                "abx_events_processed_total",
                "Events consumed by the metric pipeline.",
                &self.events_processed,
            ),
            (
                "abx_events_dead_lettered_total",
                "Events moved to the dead-letter table.",
                &self.events_dead_lettered,
            ),
            (
                "abx_ingest_overloaded_total",
                "Event requests refused with 503 for backpressure.",
                &self.ingest_overloaded,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "abx_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP request latency by route.\n# TYPE {name} histogram"
        );
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, method, status), h) in requests.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let t = Telemetry::default();
        t.observe_request("/api/v1/events", "POST", 202, Duration::from_micros(700));
        t.observe_request("/api/v1/events", "POST", 202, Duration::from_millis(30));
        let text = t.render(&[("abx_pipeline_lag_events", "Lag.", 3.0)]);
        assert!(text.contains(r#"abx_http_request_duration_seconds_bucket{route="/api/v1/events",method="POST",status="202",le="0.001"} 1"#));
        assert!(text.contains(r#"abx_http_request_duration_seconds_bucket{route="/api/v1/events",method="POST",status="202",le="0.05"} 2"#));
        assert!(text.contains(r#"abx_http_request_duration_seconds_count{route="/api/v1/events",method="POST",status="202"} 2"#));
        assert!(text.contains("abx_pipeline_lag_events 3"));
    }
}
