//! The read bandwidth probed between decoding steps: each measured run cut into windows of a
//! few seconds, each window's steps against the probes at its two ends.
//!
//! A run's own probes (just before and after it) are tens of seconds apart, and on a shared
//! host the memory's rate moves within seconds (a Zen 3 host read 13–30 GB/s within minutes;
//! a Zen 5 one switched between ~50 and ~80 GB/s): most runs fell between probes that
//! disagreed, and got no verdict. The models mark each step with a tracing span entered
//! before their clock starts and left after it is read (`decoder_step`; Qwen3-TTS's
//! `talker_step` and `code_predictor`); [`StepWindows`] is a layer that probes on entering
//! one, once the window has lasted [`WINDOW`], so the probe's time stays out of the models'
//! timings (and is taken out of the run's wall time). A run's first window opens with the
//! probe just before the run. The step right after each probe is left out of its window: the
//! probe's 1 GiB pass has evicted whatever the step keeps cached.

use super::report::{RunFloor, StepReads};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tracing::span::Id;
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A transcription's decoder step.
pub const STT_PARTS: &[&str] = &["decoder_step"];
/// A Qwen3-TTS frame's parts: the talker's step and the code predictor's steps.
pub const TTS_PARTS: &[&str] = &["talker_step", "code_predictor"];

/// The least time between two probes inside a run: ~6 Voxtral Realtime steps on a slow host,
/// for a probe of ~0.1–0.2 s (three passes over 1 GiB).
pub const WINDOW: Duration = Duration::from_secs(2);

/// One window of a run: per tracked part, the steps counted and their total ms, and the
/// probes (GB/s) that opened and closed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub parts: Vec<(usize, f64)>,
    pub gbps_before: f64,
    pub gbps_after: f64,
}

impl Window {
    /// Mean ms per step of `part`; `None` where none was counted.
    pub fn ms_per_step(&self, part: usize) -> Option<f64> {
        let (count, ms) = self.parts[part];
        (count > 0).then(|| ms / count as f64)
    }

    /// The window as a [`RunFloor`]: `ms` per step (or frame) reading `reads`.
    pub fn floor(&self, ms: f64, reads: StepReads) -> RunFloor {
        RunFloor::between_last_probes(ms, reads, &[self.gbps_before, self.gbps_after])
    }
}

#[derive(Default)]
struct State {
    /// Whether a measured run is under way.
    active: bool,
    /// When the open window's probe was taken, and what it read.
    opened: Option<(Instant, f64)>,
    parts: Vec<(usize, f64)>,
    /// Tracked spans still to leave out after the last probe.
    skip: usize,
    /// The tracked span entered, and when.
    entered: Option<(usize, Instant)>,
    windows: Vec<Window>,
    /// Time the run spent in probes, ms.
    probe_ms: f64,
}

impl State {
    /// Closes the open window (where it counted a step) with a probe that read `gbps`.
    fn close(&mut self, gbps: f64) {
        if let Some((_, before)) = self.opened.take() {
            let empty = vec![(0, 0.0); self.parts.len()];
            let parts = std::mem::replace(&mut self.parts, empty);
            if parts.iter().any(|(count, _)| *count > 0) {
                self.windows.push(Window {
                    parts,
                    gbps_before: before,
                    gbps_after: gbps,
                });
            }
        }
    }
}

/// The layer: probes on entering a tracked span once the open window has lasted its length
/// (or at a run's first step), and times every tracked span it sees entered and left.
pub struct StepWindows {
    names: &'static [&'static str],
    window: Duration,
    probe: Box<dyn Fn() -> f64 + Send + Sync>,
    state: Arc<Mutex<State>>,
}

/// The bench's side of a [`StepWindows`] layer: runs started and finished.
#[derive(Clone)]
pub struct WindowsHandle {
    state: Arc<Mutex<State>>,
}

impl StepWindows {
    /// A layer timing the spans named `names` (the parts of one decoding cycle, in the order
    /// they run), probing with `probe` (GB/s) at most every `window`.
    pub fn new(
        names: &'static [&'static str],
        window: Duration,
        probe: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> (Self, WindowsHandle) {
        let state = Arc::new(Mutex::new(State {
            parts: vec![(0, 0.0); names.len()],
            ..State::default()
        }));
        let handle = WindowsHandle {
            state: state.clone(),
        };
        let layer = Self {
            names,
            window,
            probe: Box::new(probe),
            state,
        };
        (layer, handle)
    }

    /// The names of the spans the layer times.
    pub fn names(&self) -> &'static [&'static str] {
        self.names
    }

    /// Whether a span of this name is one the layer times.
    pub fn tracks(names: &[&str], name: &str) -> bool {
        names.contains(&name)
    }

    fn part<S: Subscriber + for<'a> LookupSpan<'a>>(
        &self,
        id: &Id,
        ctx: &Context<'_, S>,
    ) -> Option<usize> {
        let name = ctx.span(id)?.metadata().name();
        self.names.iter().position(|n| *n == name)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for StepWindows {
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(part) = self.part(id, &ctx) else {
            return;
        };
        let mut state = lock(&self.state);
        if !state.active {
            return;
        }
        if state
            .opened
            .is_some_and(|(at, _)| at.elapsed() >= self.window)
        {
            // Probed without the lock: the probe's own work may be traced too.
            drop(state);
            let clock = Instant::now();
            let gbps = (self.probe)();
            state = lock(&self.state);
            state.probe_ms += clock.elapsed().as_secs_f64() * 1e3;
            state.close(gbps);
            state.opened = Some((Instant::now(), gbps));
            state.skip = self.names.len();
        }
        state.entered = Some((part, Instant::now()));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(part) = self.part(id, &ctx) else {
            return;
        };
        let mut state = lock(&self.state);
        let Some((entered, at)) = state.entered.take() else {
            return;
        };
        if !state.active || entered != part {
            return;
        }
        if state.skip > 0 {
            state.skip -= 1;
        } else {
            let ms = at.elapsed().as_secs_f64() * 1e3;
            let (count, total) = &mut state.parts[part];
            *count += 1;
            *total += ms;
        }
    }
}

/// A measured run's windows, in order, and the time its probes took.
#[derive(Debug, Default)]
pub struct RunWindows {
    pub windows: Vec<Window>,
    /// Not the model's time: taken out of the run's wall time.
    pub probe_ms: f64,
}

impl WindowsHandle {
    /// A measured run begins, just after a probe that read `gbps`: its first window opens.
    /// The first probe inside the run comes [`WINDOW`] later, at a step: after a TTS run's
    /// first audio where that comes sooner (so the time to first audio holds no probe),
    /// and at the first decoder step of a transcription whose encoder took longer (that
    /// window, with no step, is dropped).
    pub fn start_run(&self, gbps: f64) {
        let mut state = lock(&self.state);
        state.active = true;
        state.opened = Some((Instant::now(), gbps));
        state.parts.iter_mut().for_each(|p| *p = (0, 0.0));
        state.skip = 0;
        state.entered = None;
        state.windows.clear();
        state.probe_ms = 0.0;
    }

    /// The run ended, and the probe after it read `gbps`.
    pub fn finish_run(&self, gbps: f64) -> RunWindows {
        let mut state = lock(&self.state);
        state.close(gbps);
        state.active = false;
        RunWindows {
            windows: std::mem::take(&mut state.windows),
            probe_ms: state.probe_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `body` under a layer whose probes take 1 ms and read 10, 20, 30, … GB/s, with the layer's
    /// handle and the count of probes taken so far.
    fn measured(
        names: &'static [&'static str],
        window: Duration,
        body: impl FnOnce(&WindowsHandle, &dyn Fn() -> usize),
    ) {
        let probes = Arc::new(AtomicUsize::new(0));
        let count = probes.clone();
        let (layer, handle) = StepWindows::new(names, window, move || {
            std::thread::sleep(Duration::from_millis(1));
            10.0 * (count.fetch_add(1, Ordering::SeqCst) + 1) as f64
        });
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            body(&handle, &|| probes.load(Ordering::SeqCst))
        });
    }

    fn step(name: &'static str) {
        match name {
            "decoder_step" => drop(tracing::trace_span!("decoder_step").entered()),
            "talker_step" => drop(tracing::trace_span!("talker_step").entered()),
            "code_predictor" => drop(tracing::trace_span!("code_predictor").entered()),
            _ => drop(tracing::trace_span!("prefill").entered()),
        }
    }

    #[test]
    fn each_step_opens_a_window_and_the_step_after_a_probe_is_left_out() {
        // A window of zero length: every tracked step probes first.
        measured(STT_PARTS, Duration::ZERO, |handle, probes| {
            step("decoder_step"); // a warm-up run: not measured, no probe
            handle.start_run(5.0);
            step("prefill"); // not tracked
            for _ in 0..3 {
                step("decoder_step");
            }
            let run = handle.finish_run(99.0);
            assert_eq!(probes(), 3);
            // Each step followed a probe, so none was counted: no window.
            assert!(run.windows.is_empty());
            // The probes' time, to be taken out of the run's wall time.
            assert!(run.probe_ms >= 3.0, "{}", run.probe_ms);
        });
    }

    #[test]
    fn windows_count_the_steps_between_probes() {
        measured(STT_PARTS, Duration::from_secs(3600), |handle, probes| {
            handle.start_run(5.0);
            for _ in 0..4 {
                step("decoder_step");
            }
            let run = handle.finish_run(42.0);
            // No probe inside the run: one window of four steps, between the run's probes.
            assert_eq!(probes(), 0);
            assert_eq!(run.probe_ms, 0.0);
            assert_eq!(run.windows.len(), 1);
            let w = &run.windows[0];
            assert_eq!(w.parts[0].0, 4);
            assert_eq!((w.gbps_before, w.gbps_after), (5.0, 42.0));
            assert!(w.ms_per_step(0).is_some());
            // A run with no step gives no window.
            handle.start_run(42.0);
            step("prefill");
            assert!(handle.finish_run(50.0).windows.is_empty());
        });
    }

    #[test]
    fn a_window_closes_at_the_first_step_past_its_length() {
        measured(STT_PARTS, Duration::from_millis(300), |handle, probes| {
            handle.start_run(5.0);
            step("decoder_step");
            std::thread::sleep(Duration::from_millis(350)); // an encoder pass, say
            for _ in 0..3 {
                step("decoder_step");
            }
            let run = handle.finish_run(42.0);
            // The sleep took the window past its length, so the second step probed (10 GB/s)
            // and was left out; the first window held one step, the second two.
            assert_eq!(probes(), 1);
            assert_eq!(run.windows[0].parts[0].0, 1);
            assert_eq!(
                (run.windows[0].gbps_before, run.windows[0].gbps_after),
                (5.0, 10.0)
            );
            assert_eq!(run.windows[1].parts[0].0, 2);
            assert_eq!(run.windows[1].gbps_after, 42.0);
        });
    }

    #[test]
    fn a_tts_probe_leaves_out_one_whole_frame() {
        measured(TTS_PARTS, Duration::from_millis(300), |handle, probes| {
            handle.start_run(5.0);
            step("code_predictor"); // frame 0's predictor
            std::thread::sleep(Duration::from_millis(350));
            for _ in 0..3 {
                step("talker_step"); // the first probes, and is left out with its predictor
                step("code_predictor");
            }
            let run = handle.finish_run(7.0);
            assert_eq!(probes(), 1);
            assert_eq!(run.windows.len(), 2);
            assert_eq!(
                (run.windows[0].parts[0].0, run.windows[0].parts[1].0),
                (0, 1)
            );
            assert_eq!(
                (run.windows[1].parts[0].0, run.windows[1].parts[1].0),
                (2, 2)
            );
            assert_eq!(run.windows[0].ms_per_step(0), None);
            assert!(run.windows[1].ms_per_step(1).is_some());
        });
    }

    #[test]
    fn only_the_named_spans_are_tracked() {
        assert!(StepWindows::tracks(STT_PARTS, "decoder_step"));
        assert!(!StepWindows::tracks(STT_PARTS, "prefill"));
        assert!(StepWindows::tracks(TTS_PARTS, "code_predictor"));
        assert!(!StepWindows::tracks(TTS_PARTS, "talker_prompt"));
    }
}
