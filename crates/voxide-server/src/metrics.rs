//! `GET /metrics`: Prometheus text exposition of what the server did and is doing — requests
//! by route and status, their latency (to the response's head: a streamed reply's first
//! bytes), requests running and waiting, and the models served.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters since the server started.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// (route, status) → requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route → latency histogram.
    latency: BTreeMap<String, Histogram>,
}

#[derive(Default)]
struct Histogram {
    /// Requests at or under each bucket's bound (not cumulative here; summed when written).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_s: f64,
}

impl Metrics {
    fn record(&self, route: &str, status: u16, seconds: f64) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *c.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = c.latency.entry(route.to_string()).or_default();
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            h.buckets[i] += 1;
        }
        h.count += 1;
        h.sum_s += seconds;
    }

    /// The exposition text: counters, histograms and the gauges passed in.
    fn render(&self, running: usize, waiting: usize, models: &[(String, &str)]) -> String {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP voxide_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE voxide_requests_total counter");
        for ((route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "voxide_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP voxide_request_duration_seconds Time to the response's head, by route."
        );
        let _ = writeln!(out, "# TYPE voxide_request_duration_seconds histogram");
        for (route, h) in &c.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "voxide_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "voxide_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "voxide_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_s
            );
            let _ = writeln!(
                out,
                "voxide_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP voxide_requests_running Requests holding a model slot."
        );
        let _ = writeln!(out, "# TYPE voxide_requests_running gauge");
        let _ = writeln!(out, "voxide_requests_running {running}");
        let _ = writeln!(
            out,
            "# HELP voxide_queue_depth Requests waiting for a model slot."
        );
        let _ = writeln!(out, "# TYPE voxide_queue_depth gauge");
        let _ = writeln!(out, "voxide_queue_depth {waiting}");
        let _ = writeln!(
            out,
            "# HELP voxide_model_loaded The models served (1 each), by id and kind."
        );
        let _ = writeln!(out, "# TYPE voxide_model_loaded gauge");
        for (id, kind) in models {
            let _ = writeln!(out, "voxide_model_loaded{{id=\"{id}\",kind=\"{kind}\"}} 1");
        }
        out
    }
}

/// Middleware: counts every request under its route pattern (unknown paths as "other", so
/// that scanners cannot grow the label set).
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let models: Vec<(String, &str)> = state
        .models
        .iter()
        .map(|m| (m.id.clone(), m.engine.kind()))
        .collect();
    let text = state.metrics.render(
        state.admission.running(),
        state.admission.waiting(),
        &models,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.record("/v1/models", 200, 0.002);
        m.record("/v1/models", 200, 0.3);
        m.record("/v1/audio/speech", 404, 0.001);
        let text = m.render(1, 2, &[("whisper-1".into(), "speech-to-text")]);
        assert!(
            text.contains("voxide_requests_total{route=\"/v1/models\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("voxide_requests_total{route=\"/v1/audio/speech\",status=\"404\"} 1"));
        assert!(text.contains(
            "voxide_request_duration_seconds_bucket{route=\"/v1/models\",le=\"0.005\"} 1"
        ));
        assert!(text
            .contains("voxide_request_duration_seconds_bucket{route=\"/v1/models\",le=\"0.5\"} 2"));
        assert!(text.contains("voxide_request_duration_seconds_count{route=\"/v1/models\"} 2"));
        assert!(text.contains("voxide_requests_running 1"));
        assert!(text.contains("voxide_queue_depth 2"));
        assert!(text.contains("voxide_model_loaded{id=\"whisper-1\",kind=\"speech-to-text\"} 1"));
    }
}
