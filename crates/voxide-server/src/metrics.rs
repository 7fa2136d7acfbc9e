//! `GET /metrics`: Prometheus text exposition of what the server did and is doing — requests
//! by route and status, their latency (to the response's head: a streamed reply's first
//! bytes), seconds of audio transcribed and synthesised and the model time they took (their
//! ratio is the real-time factor), speech prompt positions and those the prefix cache gave,
//! requests running and waiting, realtime sessions open, and the models served.

use crate::models::Engine;
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;
use voxide_models::batching::BatchStats;

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
    /// work ("transcription", "speech") → (seconds of audio, seconds of model time).
    audio: BTreeMap<&'static str, (f64, f64)>,
    /// Speech prompts' positions, and those of them the prefix cache gave.
    prompt_positions: u64,
    cached_positions: u64,
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

    /// One finished piece of model work: `audio_s` of audio in `wall_s`.
    pub(crate) fn add_audio(&self, work: &'static str, audio_s: f64, wall_s: f64) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let totals = c.audio.entry(work).or_default();
        totals.0 += audio_s;
        totals.1 += wall_s;
    }

    /// One speech prompt of `positions` positions, `cached` of them from the prefix cache.
    pub(crate) fn add_speech_prompt(&self, positions: usize, cached: usize) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.prompt_positions += positions as u64;
        c.cached_positions += cached as u64;
    }

    /// The exposition text: counters, histograms and the gauges passed in.
    fn render(&self, gauges: &Gauges) -> String {
        let Gauges {
            running,
            waiting,
            uploads,
            realtime_sessions,
            models,
            batches,
        } = gauges;
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for sample in samples {
                let _ = writeln!(out, "{sample}");
            }
        };
        family(
            "voxide_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
            c.requests
                .iter()
                .map(|((route, status), n)| {
                    format!("voxide_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}")
                })
                .collect(),
        );
        let name = "voxide_request_duration_seconds";
        let mut histograms = Vec::new();
        for (route, h) in &c.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                histograms.push(format!(
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                ));
            }
            histograms.push(format!(
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            ));
            histograms.push(format!("{name}_sum{{route=\"{route}\"}} {}", h.sum_s));
            histograms.push(format!("{name}_count{{route=\"{route}\"}} {}", h.count));
        }
        family(
            name,
            "histogram",
            "Time to the response's head, by route.",
            histograms,
        );
        family(
            "voxide_audio_seconds_total",
            "counter",
            "Seconds of audio transcribed or synthesised.",
            c.audio
                .iter()
                .map(|(work, (audio_s, _))| {
                    format!("voxide_audio_seconds_total{{work=\"{work}\"}} {audio_s}")
                })
                .collect(),
        );
        family(
            "voxide_model_seconds_total",
            "counter",
            "Model time spent on that audio (over the audio seconds: the real-time factor).",
            c.audio
                .iter()
                .map(|(work, (_, wall_s))| {
                    format!("voxide_model_seconds_total{{work=\"{work}\"}} {wall_s}")
                })
                .collect(),
        );
        family(
            "voxide_prefix_cache_queries_total",
            "counter",
            "Speech prompt positions looked up in the talker's prefix cache.",
            vec![format!(
                "voxide_prefix_cache_queries_total {}",
                c.prompt_positions
            )],
        );
        family(
            "voxide_prefix_cache_hits_total",
            "counter",
            "Speech prompt positions the prefix cache gave (over the queries: the hit rate).",
            vec![format!(
                "voxide_prefix_cache_hits_total {}",
                c.cached_positions
            )],
        );
        family(
            "voxide_requests_running",
            "gauge",
            "Requests holding a model slot.",
            vec![format!("voxide_requests_running {running}")],
        );
        family(
            "voxide_queue_depth",
            "gauge",
            "Requests waiting for a model slot.",
            vec![format!("voxide_queue_depth {waiting}")],
        );
        family(
            "voxide_uploads_held",
            "gauge",
            "Transcription uploads held in memory: being read, waiting or running.",
            vec![format!("voxide_uploads_held {uploads}")],
        );
        family(
            "voxide_realtime_sessions",
            "gauge",
            "Realtime WebSocket sessions open.",
            vec![format!("voxide_realtime_sessions {realtime_sessions}")],
        );
        family(
            "voxide_batched_decodes_total",
            "counter",
            "Windows (Whisper), decoder steps (the Voxtrals) or speech frames (Qwen3-TTS) of concurrent requests decoded in batches (serve --max-batch-size), by model.",
            batches
                .iter()
                .map(|(id, s)| format!("voxide_batched_decodes_total{{id=\"{id}\"}} {}", s.decodes))
                .collect(),
        );
        family(
            "voxide_decode_batches_total",
            "counter",
            "Batches those were decoded in (decodes over batches: the mean batch), by model.",
            batches
                .iter()
                .map(|(id, s)| format!("voxide_decode_batches_total{{id=\"{id}\"}} {}", s.batches))
                .collect(),
        );
        family(
            "voxide_model_loaded",
            "gauge",
            "The models served (1 each), by id and kind.",
            models
                .iter()
                .map(|(id, kind)| format!("voxide_model_loaded{{id=\"{id}\",kind=\"{kind}\"}} 1"))
                .collect(),
        );
        out
    }
}

/// What is going on now.
struct Gauges {
    running: usize,
    waiting: usize,
    /// Uploads holding an upload slot, their bodies still arriving included.
    uploads: usize,
    realtime_sessions: usize,
    /// (id, kind) of each model served.
    models: Vec<(String, &'static str)>,
    /// What each model that batches concurrent requests' windows, steps or frames has batched.
    batches: Vec<(String, BatchStats)>,
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
    let gauges = Gauges {
        running: state.admission.running(),
        waiting: state.admission.waiting(),
        uploads: state.limits.max_concurrency + state.limits.max_queue
            - state.uploads.available_permits(),
        realtime_sessions: state.limits.max_realtime_sessions - state.sessions.available_permits(),
        models: state
            .models
            .iter()
            .map(|m| (m.id.clone(), m.engine.kind()))
            .collect(),
        batches: state
            .models
            .iter()
            .filter_map(|m| match &m.engine {
                Engine::Transcriber(t) => t.batch_stats().map(|s| (m.id.clone(), s)),
                Engine::Synthesizer(s) => s.batch_stats().map(|s| (m.id.clone(), s)),
            })
            .collect(),
    };
    let text = state.metrics.render(&gauges);
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
        m.add_audio("transcription", 11.0, 0.5);
        m.add_audio("transcription", 4.0, 0.25);
        m.add_speech_prompt(13, 0);
        m.add_speech_prompt(13, 8);
        let text = m.render(&Gauges {
            running: 1,
            waiting: 2,
            uploads: 4,
            realtime_sessions: 3,
            models: vec![("whisper-1".into(), "speech-to-text")],
            batches: vec![(
                "whisper-1".into(),
                BatchStats {
                    decodes: 7,
                    batches: 3,
                    largest: 4,
                },
            )],
        });
        assert!(
            text.contains("voxide_batched_decodes_total{id=\"whisper-1\"} 7")
                && text.contains("voxide_decode_batches_total{id=\"whisper-1\"} 3"),
            "{text}"
        );
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
        assert!(text.contains("voxide_audio_seconds_total{work=\"transcription\"} 15"));
        assert!(text.contains("voxide_model_seconds_total{work=\"transcription\"} 0.75"));
        assert!(text.contains("voxide_prefix_cache_queries_total 26"));
        assert!(text.contains("voxide_prefix_cache_hits_total 8"));
        assert!(text.contains("voxide_requests_running 1"));
        assert!(text.contains("voxide_queue_depth 2"));
        assert!(text.contains("voxide_realtime_sessions 3"));
        assert!(text.contains("voxide_uploads_held 4"));
        assert!(text.contains("voxide_model_loaded{id=\"whisper-1\",kind=\"speech-to-text\"} 1"));
    }
}
