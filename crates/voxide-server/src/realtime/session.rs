//! One realtime session's audio work, on a blocking thread of its own: the appended audio
//! resampled to 16 kHz and cut into Silero's 512-sample windows; with server VAD each window's
//! speech probability drives the turns (OpenAI's `server_vad`), otherwise the client's commits
//! end the items. Each item is transcribed by its model: a streaming model (Voxtral Realtime)
//! decodes as the audio arrives and sends deltas at once; a clip model (Whisper) transcribes
//! the item's audio when it ends, in a model slot like any request.

use super::protocol::{ProtocolError, Settings};
use super::Outbox;
use crate::{AppState, Deltas, Engine};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use voxide_audio::StreamResampler;
use voxide_models::silero_vad::{TurnDetector, TurnEvent, VadState, SAMPLE_RATE, WINDOW};
use voxide_runtime::Segment;
use voxide_runtime::{SpeechStream, TranscribeRequest, Transcriber};

/// What the connection hands the session, in the client's order.
pub(super) enum Command {
    /// New settings (checked already).
    Configure(Settings),
    /// Decoded samples at the format's rate.
    Audio(Vec<f32>),
    /// `input_audio_buffer.commit` (with the client's event id).
    Commit(Option<String>),
    /// `input_audio_buffer.clear`.
    Clear,
}

/// The shortest item a commit takes, as OpenAI's (100 ms).
const MIN_COMMIT_SAMPLES: usize = SAMPLE_RATE as usize / 10;

/// Runs a session until the connection drops its sender.
pub(super) fn run(
    shared: &AppState,
    settings: Settings,
    mut inbox: mpsc::Receiver<Command>,
    out: Outbox,
    runtime: Handle,
) {
    let mut session = Session::new(shared, settings, out, runtime);
    while let Some(command) = inbox.blocking_recv() {
        if session.out.is_closed() {
            break;
        }
        session.handle(command);
    }
}

struct Session<'a> {
    shared: &'a AppState,
    settings: Settings,
    out: Outbox,
    runtime: Handle,
    resampler: StreamResampler,
    /// 16 kHz samples short of a window.
    pending: Vec<f32>,
    /// 16 kHz samples handled since the session began (the timeline of every `_ms` field).
    position: usize,
    /// The last samples before `position` (a turn's prefix padding comes from them), from
    /// `recent_start`.
    recent: Vec<f32>,
    recent_start: usize,
    vad: Option<VadState<'a>>,
    turns: Option<TurnDetector>,
    item: Option<Item<'a>>,
    /// Where the last item ended: a new turn's prefix does not reach back before it.
    consumed_until: usize,
    previous_item_id: Option<String>,
    items: usize,
}

/// The item being filled.
struct Item<'a> {
    id: String,
    /// First sample, on the session's timeline.
    start: usize,
    samples: usize,
    work: Work<'a>,
}

enum Work<'a> {
    /// A clip model: the audio, transcribed at the end.
    Clip {
        model: Arc<dyn Transcriber>,
        request: Box<TranscribeRequest>,
        audio: Vec<f32>,
    },
    /// A streaming model: the text so far.
    Stream {
        stream: Box<dyn SpeechStream + 'a>,
        text: String,
        /// Model time spent on it.
        busy_s: f64,
    },
    /// The model failed on it (a `failed` event was sent); the rest is dropped.
    Failed,
}

impl<'a> Session<'a> {
    fn new(shared: &'a AppState, settings: Settings, out: Outbox, runtime: Handle) -> Self {
        let mut session = Self {
            shared,
            resampler: resampler(&settings),
            turns: settings.turn_detection.map(TurnDetector::new),
            vad: shared.models.vad().map(|vad| vad.state()),
            settings,
            out,
            runtime,
            pending: Vec::new(),
            position: 0,
            recent: Vec::new(),
            recent_start: 0,
            item: None,
            consumed_until: 0,
            previous_item_id: None,
            items: 0,
        };
        session.recent.reserve(session.recent_capacity());
        session
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Configure(settings) => self.configure(settings),
            Command::Audio(samples) => match self.resampler.push(&samples) {
                Ok(samples) => self.audio(&samples),
                Err(e) => self.error(ProtocolError::new("invalid_audio", e.to_string()), None),
            },
            Command::Commit(client_event) => {
                self.flush_resampler();
                self.commit(client_event)
            }
            Command::Clear => {
                self.item = None;
                self.pending.clear();
                self.resampler = resampler(&self.settings);
                if let Some(turns) = &mut self.turns {
                    turns.end_turn();
                }
                self.out
                    .send_blocking("input_audio_buffer.cleared", json!({}));
            }
        }
    }

    /// Takes the audio the resampler still holds (its filter's lag: ~7 ms at 24 kHz) into the
    /// buffer, and starts a fresh one: the audio appended so far is all there is.
    fn flush_resampler(&mut self) {
        match self.resampler.finish() {
            Ok(tail) => self.audio(&tail),
            Err(e) => self.error(ProtocolError::new("invalid_audio", e.to_string()), None),
        }
        self.resampler = resampler(&self.settings);
    }

    fn configure(&mut self, settings: Settings) {
        if settings.format.rate() != self.settings.format.rate() {
            // The audio appended at the old rate ends with it.
            self.flush_resampler();
            self.resampler = resampler(&settings);
        }
        if settings.turn_detection != self.settings.turn_detection {
            self.turns = settings.turn_detection.map(TurnDetector::new);
        }
        self.settings = settings;
    }

    /// Samples prefix padding may need, plus a window.
    fn recent_capacity(&self) -> usize {
        let prefix_ms = self
            .settings
            .turn_detection
            .map_or(0, |t| t.prefix_padding_ms);
        SAMPLE_RATE as usize * prefix_ms as usize / 1000 + WINDOW
    }

    fn audio(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
        let whole = self.pending.len() / WINDOW * WINDOW;
        // Taken for the loop (window() borrows self), then given back: one buffer for the
        // whole session.
        let mut pending = std::mem::take(&mut self.pending);
        for window in pending[..whole].chunks_exact(WINDOW) {
            self.window(window);
        }
        pending.drain(..whole);
        self.pending = pending;
    }

    /// One 512-sample window: the turns it changes, and the item it belongs to.
    fn window(&mut self, window: &[f32]) {
        let start = self.position;
        self.position += window.len();
        self.remember(window);
        let turn = match (&mut self.turns, &mut self.vad) {
            (Some(turns), Some(vad)) => match vad.probability(window) {
                Ok(p) => turns.push(start, p),
                Err(e) => {
                    self.error(ProtocolError::new("vad_failed", e.to_string()), None);
                    None
                }
            },
            // Without turn detection every window belongs to the open item.
            _ => {
                if self.item.is_none() {
                    self.open(start);
                }
                None
            }
        };
        match turn {
            Some(TurnEvent::Started { start: from }) if self.item.is_none() => {
                let from = from.max(self.consumed_until).max(self.recent_start);
                let prefix = self.recent[from - self.recent_start..].to_vec();
                let id = self.open(from);
                // Announced before its audio goes in: a streaming model may answer at once.
                self.out.send_blocking(
                    "input_audio_buffer.speech_started",
                    json!({ "audio_start_ms": ms(from), "item_id": id }),
                );
                self.feed(&prefix);
            }
            _ => self.feed(window),
        }
        if let Some(TurnEvent::Stopped { end }) = turn {
            if let Some(item) = &self.item {
                self.out.send_blocking(
                    "input_audio_buffer.speech_stopped",
                    json!({ "audio_end_ms": ms(end), "item_id": item.id }),
                );
                self.finish_item();
            }
        } else if self
            .item
            .as_ref()
            .is_some_and(|item| item.samples as f64 >= self.max_item_samples())
        {
            // A turn that never ends (or a client that never commits) is cut at the longest
            // audio the server transcribes.
            if let Some(turns) = &mut self.turns {
                turns.end_turn();
            }
            self.finish_item();
        }
    }

    fn max_item_samples(&self) -> f64 {
        self.shared.limits.max_audio_s * SAMPLE_RATE as f64
    }

    fn remember(&mut self, window: &[f32]) {
        self.recent.extend_from_slice(window);
        let keep = self.recent_capacity();
        if self.recent.len() >= 2 * keep {
            let drop = self.recent.len() - keep;
            self.recent.drain(..drop);
            self.recent_start += drop;
        }
    }

    /// Opens an item at `start`; returns its id.
    fn open(&mut self, start: usize) -> String {
        self.items += 1;
        let id = format!("item_{:06}", self.items);
        let work = self.work_for_settings().unwrap_or_else(|e| {
            self.out.failed(&id, &e);
            Work::Failed
        });
        self.item = Some(Item {
            id: id.clone(),
            start,
            samples: 0,
            work,
        });
        id
    }

    /// How the configured model transcribes an item.
    fn work_for_settings(&self) -> Result<Work<'a>, String> {
        let id = self.settings.model.as_deref().unwrap_or_default();
        let model = self.shared.model(id).map_err(|e| e.message)?;
        let Engine::Transcriber(model) = &model.engine else {
            return Err(format!("{id} is not a speech-to-text model"));
        };
        let request = self.settings.request();
        Ok(match model.stream(&request) {
            Some(stream) => Work::Stream {
                stream: stream.map_err(|e| e.to_string())?,
                text: String::new(),
                busy_s: 0.0,
            },
            None => Work::Clip {
                model: model.clone(),
                request: Box::new(request),
                audio: Vec::new(),
            },
        })
    }

    /// Adds audio to the open item, if any (a streaming model decodes it at once).
    fn feed(&mut self, samples: &[f32]) {
        let Some(item) = &mut self.item else { return };
        if samples.is_empty() {
            return;
        }
        item.samples += samples.len();
        let failure = match &mut item.work {
            Work::Clip { audio, .. } => {
                audio.extend_from_slice(samples);
                None
            }
            Work::Stream {
                stream,
                text,
                busy_s,
            } => {
                let clock = Instant::now();
                let pushed = stream.push(samples);
                *busy_s += clock.elapsed().as_secs_f64();
                match pushed {
                    Ok(delta) if delta.is_empty() => None,
                    Ok(delta) => {
                        text.push_str(&delta);
                        let covered = ms(item.start) + (stream.decoded_until_s() * 1e3) as u64;
                        self.out.delta(&item.id, &delta, covered);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            Work::Failed => None,
        };
        if let Some(message) = failure {
            item.work = Work::Failed;
            self.out.failed(&item.id, &message);
        }
    }

    /// `input_audio_buffer.commit`: the audio so far ends the item.
    fn commit(&mut self, client_event: Option<String>) {
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            let start = self.position;
            self.position += pending.len();
            if self.item.is_none() && self.turns.is_none() {
                self.open(start);
            }
            self.feed(&pending);
        }
        let samples = self.item.as_ref().map_or(0, |item| item.samples);
        if samples < MIN_COMMIT_SAMPLES {
            let message = match (&self.item, &self.turns) {
                // Under server VAD the buffer holds the speech heard, not all that came.
                (None, Some(_)) => {
                    "nothing to commit: server VAD has heard no speech since the last item".into()
                }
                _ => format!(
                    "buffer too small: expected at least 100 ms of audio, but the buffer has {:.2} ms",
                    samples as f64 / 16.0
                ),
            };
            self.error(
                ProtocolError::new("input_audio_buffer_commit_empty", message),
                client_event.as_deref(),
            );
            return;
        }
        if let Some(turns) = &mut self.turns {
            turns.end_turn();
        }
        self.finish_item();
    }

    /// Commits the open item and transcribes what is left of it.
    fn finish_item(&mut self) {
        let Some(item) = self.item.take() else { return };
        self.consumed_until = item.start + item.samples;
        let previous = self.previous_item_id.replace(item.id.clone());
        self.out.send_blocking(
            "input_audio_buffer.committed",
            json!({ "previous_item_id": previous, "item_id": item.id }),
        );
        self.out.send_blocking(
            self.out.item_created(),
            json!({
                "previous_item_id": previous,
                "item": {
                    "id": item.id, "object": "realtime.item", "type": "message",
                    "status": "completed", "role": "user",
                    "content": [{ "type": "input_audio", "transcript": null }],
                },
            }),
        );
        let seconds = item.samples as f64 / SAMPLE_RATE as f64;
        let transcript = match item.work {
            Work::Failed => return,
            Work::Stream {
                mut stream,
                mut text,
                mut busy_s,
            } => {
                let clock = Instant::now();
                let rest = stream.finish();
                busy_s += clock.elapsed().as_secs_f64();
                match rest {
                    Ok(rest) => {
                        if !rest.is_empty() {
                            self.out.delta(&item.id, &rest, ms(self.consumed_until));
                        }
                        text.push_str(&rest);
                        self.shared.metrics.add_audio("realtime", seconds, busy_s);
                        text
                    }
                    Err(e) => return self.out.failed(&item.id, &e.to_string()),
                }
            }
            Work::Clip {
                model,
                request,
                audio,
            } => {
                // Off this thread, so that the turns of the audio still arriving are found
                // on time while the item waits for a slot and is transcribed.
                let clip = Clip {
                    shared: Arc::clone(self.shared),
                    out: self.out.clone(),
                    item_id: item.id,
                    end_ms: ms(self.consumed_until),
                    model,
                    request,
                    audio,
                };
                let runtime = self.runtime.clone();
                self.runtime
                    .spawn_blocking(move || clip.transcribe(&runtime));
                return;
            }
        };
        self.out.completed(&item.id, &transcript, seconds);
    }

    fn error(&self, error: ProtocolError, client_event: Option<&str>) {
        self.out.send_error_blocking(&error, client_event);
    }
}

/// A clip model's item, transcribed in a model slot like any request.
struct Clip {
    shared: AppState,
    out: Outbox,
    item_id: String,
    /// Where the item ends on the session's timeline.
    end_ms: u64,
    model: Arc<dyn Transcriber>,
    request: Box<TranscribeRequest>,
    audio: Vec<f32>,
}

impl Clip {
    fn transcribe(self, runtime: &Handle) {
        let shared = &self.shared;
        let Ok(_slot) = runtime.block_on(shared.admit(shared.deadline())) else {
            let message = "the server is busy: every model slot is in use and the queue is full";
            return self.out.failed(&self.item_id, message);
        };
        let clock = Instant::now();
        // Text goes out as it decodes (a window's segments; Voxtral Mini 3B's pieces), the
        // first without its leading space, so that the deltas add up to the transcript.
        let mut deltas = Deltas::default();
        let mut said = false;
        let mut send = |segments: &[Segment], pending: &str| {
            for delta in deltas.next(segments, pending) {
                let delta = if said { &delta } else { delta.trim_start() };
                if !delta.is_empty() {
                    self.out.delta(&self.item_id, delta, self.end_ms);
                    said = true;
                }
            }
        };
        let transcribed = self.model.transcribe(&self.audio, &self.request, &mut |p| {
            send(p.segments, p.pending);
            !self.out.is_closed()
        });
        let transcript = match transcribed {
            Ok((transcript, _)) => transcript,
            Err(e) => {
                let message = format!("the transcription failed: {e}");
                return self.out.failed(&self.item_id, &message);
            }
        };
        let seconds = self.audio.len() as f64 / SAMPLE_RATE as f64;
        shared
            .metrics
            .add_audio("realtime", seconds, clock.elapsed().as_secs_f64());
        send(&transcript.segments, "");
        self.out.completed(&self.item_id, &transcript.text, seconds);
    }
}

fn resampler(settings: &Settings) -> StreamResampler {
    // The formats' rates are all valid.
    StreamResampler::new(settings.format.rate(), SAMPLE_RATE)
        .expect("audio formats have non-zero rates")
}

/// Samples at 16 kHz to milliseconds.
fn ms(samples: usize) -> u64 {
    (samples / (SAMPLE_RATE as usize / 1000)) as u64
}
