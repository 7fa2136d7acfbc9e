//! The messages of OpenAI's Realtime transcription sessions: the session's settings as the
//! client updates them (the beta `transcription_session.update`, flat, and the GA
//! `session.update` with `type: "transcription"`, nested under `audio.input`), the session
//! object sent back in the same dialect, and the server's events.

use serde_json::{json, Map, Value};
use voxide_models::silero_vad::TurnParams;
use voxide_runtime::TranscribeRequest;

/// Which names the client speaks: the beta's (`transcription_session.*`, sent when the client
/// announces `OpenAI-Beta: realtime=v1`) or the GA API's (`session.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Beta,
    Ga,
}

/// How the appended audio is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioFormat {
    /// 16-bit little-endian mono PCM at this rate (OpenAI's `pcm16` is 24 kHz).
    Pcm16 { rate: u32 },
    /// G.711 μ-law at 8 kHz.
    Ulaw,
    /// G.711 A-law at 8 kHz.
    Alaw,
}

impl AudioFormat {
    /// Samples per second.
    pub fn rate(self) -> u32 {
        match self {
            AudioFormat::Pcm16 { rate } => rate,
            AudioFormat::Ulaw | AudioFormat::Alaw => 8000,
        }
    }

    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            AudioFormat::Pcm16 { .. } => 2,
            AudioFormat::Ulaw | AudioFormat::Alaw => 1,
        }
    }

    /// Decodes whole samples of `bytes` (a trailing odd byte of PCM is an error upstream).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        use voxide_audio::g711::{alaw_to_linear, ulaw_to_linear};
        let scale = 1.0 / 32768.0;
        match self {
            AudioFormat::Pcm16 { .. } => bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 * scale)
                .collect(),
            AudioFormat::Ulaw => bytes
                .iter()
                .map(|&b| ulaw_to_linear(b) as f32 * scale)
                .collect(),
            AudioFormat::Alaw => bytes
                .iter()
                .map(|&b| alaw_to_linear(b) as f32 * scale)
                .collect(),
        }
    }

    /// The beta's name (an object for PCM at other rates than 24 kHz).
    fn beta(self) -> Value {
        match self {
            AudioFormat::Pcm16 { rate: 24000 } => json!("pcm16"),
            AudioFormat::Pcm16 { .. } => self.ga(),
            AudioFormat::Ulaw => json!("g711_ulaw"),
            AudioFormat::Alaw => json!("g711_alaw"),
        }
    }

    /// The GA API's object.
    fn ga(self) -> Value {
        match self {
            AudioFormat::Pcm16 { rate } => json!({ "type": "audio/pcm", "rate": rate }),
            AudioFormat::Ulaw => json!({ "type": "audio/pcmu" }),
            AudioFormat::Alaw => json!({ "type": "audio/pcma" }),
        }
    }

    fn parse(value: &Value, param: &str) -> Result<Self, ProtocolError> {
        let bad = || {
            ProtocolError::invalid(
                param,
                format!(
                    "unsupported audio format {value}: use \"pcm16\" (24 kHz), {{\"type\": \"audio/pcm\", \"rate\": 16000 or 24000}}, \"g711_ulaw\" or \"g711_alaw\" (8 kHz)"
                ),
            )
        };
        match value {
            Value::String(name) => match name.as_str() {
                "pcm16" | "audio/pcm" => Ok(AudioFormat::Pcm16 { rate: 24000 }),
                "g711_ulaw" | "audio/pcmu" => Ok(AudioFormat::Ulaw),
                "g711_alaw" | "audio/pcma" => Ok(AudioFormat::Alaw),
                _ => Err(bad()),
            },
            Value::Object(object) => match object.get("type").and_then(Value::as_str) {
                Some("audio/pcm") => match object.get("rate").map(Value::as_u64) {
                    None => Ok(AudioFormat::Pcm16 { rate: 24000 }),
                    Some(Some(rate @ (16000 | 24000))) => {
                        Ok(AudioFormat::Pcm16 { rate: rate as u32 })
                    }
                    Some(_) => Err(bad()),
                },
                // G.711 is 8 kHz by definition: another rate is not this format.
                Some(g711 @ ("audio/pcmu" | "audio/pcma")) => {
                    match object.get("rate").map(Value::as_u64) {
                        None | Some(Some(8000)) => Ok(if g711 == "audio/pcmu" {
                            AudioFormat::Ulaw
                        } else {
                            AudioFormat::Alaw
                        }),
                        Some(_) => Err(bad()),
                    }
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// A session's effective settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub format: AudioFormat,
    /// The model transcribing (a served speech-to-text model's id).
    pub model: Option<String>,
    /// Language code; `None` detects it.
    pub language: Option<String>,
    /// Whisper's initial prompt.
    pub prompt: Option<String>,
    /// `server_vad`'s parameters; `None`: the client commits.
    pub turn_detection: Option<TurnParams>,
}

/// A client's message the session cannot take: sent back as an `error` event.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A field with an unusable value.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new("invalid_value", message)
        }
    }
}

/// The fields of one update, wherever the dialect nests them; `Some(Value::Null)`: cleared.
#[derive(Default)]
struct Update<'a> {
    format: Option<(&'a Value, String)>,
    transcription: Option<(&'a Value, String)>,
    turn_detection: Option<(&'a Value, String)>,
    noise_reduction: Option<(&'a Value, String)>,
}

impl Settings {
    /// A new session's: 24 kHz PCM, `model` if the URL named one, server VAD at OpenAI's
    /// defaults where the server has a VAD model.
    pub fn new(model: Option<String>, has_vad: bool) -> Self {
        Self {
            format: AudioFormat::Pcm16 { rate: 24000 },
            model,
            language: None,
            prompt: None,
            turn_detection: has_vad.then(TurnParams::default),
        }
    }

    /// What an item of this session asks of its model.
    pub fn request(&self) -> TranscribeRequest {
        TranscribeRequest {
            language: Some(self.language.clone().unwrap_or_else(|| "auto".into())),
            prompt: self.prompt.clone(),
            ..TranscribeRequest::default()
        }
    }

    /// Applies the `session` of an update event (only the fields present change); the
    /// settings are unchanged on error.
    pub fn apply(&self, session: &Value, dialect: Dialect) -> Result<Self, ProtocolError> {
        let session = session
            .as_object()
            .ok_or_else(|| ProtocolError::invalid("session", "`session` must be an object"))?;
        let update = match dialect {
            Dialect::Beta => beta_update(session),
            Dialect::Ga => ga_update(session)?,
        };
        let mut next = self.clone();
        if let Some((value, param)) = update.format {
            next.format = AudioFormat::parse(value, &param)?;
        }
        if let Some((value, param)) = update.transcription {
            next.apply_transcription(value, &param)?;
        }
        if let Some((value, param)) = update.turn_detection {
            next.turn_detection = turn_detection(value, &param)?;
        }
        if let Some((value, param)) = update.noise_reduction {
            if !value.is_null() {
                return Err(ProtocolError::invalid(
                    &param,
                    "noise reduction is not supported; leave it null",
                ));
            }
        }
        if let Some(include) = session.get("include") {
            let empty = include.is_null() || include.as_array().is_some_and(Vec::is_empty);
            if !empty {
                return Err(ProtocolError::invalid(
                    "session.include",
                    "`include` (log-probabilities) is not supported; leave it null",
                ));
            }
        }
        Ok(next)
    }

    fn apply_transcription(&mut self, value: &Value, param: &str) -> Result<(), ProtocolError> {
        let Some(object) = value.as_object() else {
            return Err(ProtocolError::invalid(
                param,
                "the transcription settings must be an object: {\"model\": ID, \"language\": .., \"prompt\": ..}",
            ));
        };
        let text = |key: &str| -> Result<Option<Option<String>>, ProtocolError> {
            match object.get(key) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                Some(Value::String(s)) => Ok(Some((!s.is_empty()).then(|| s.clone()))),
                Some(_) => Err(ProtocolError::invalid(
                    &format!("{param}.{key}"),
                    format!("`{key}` must be a string"),
                )),
            }
        };
        if let Some(model) = text("model")? {
            if model.is_none() && object.get("model").is_some_and(|m| m == "") {
                return Err(ProtocolError::invalid(
                    &format!("{param}.model"),
                    "`model` is empty: name a model of /v1/models",
                ));
            }
            self.model = model;
        }
        if let Some(language) = text("language")? {
            // Refused here, where the client set it, rather than at every later commit.
            if let Some(code) = language.as_deref().filter(|&l| l != "auto") {
                if voxide_models::whisper::tokenizer::language_code(code).is_none() {
                    return Err(ProtocolError::invalid(
                        &format!("{param}.language"),
                        format!("unknown language {code:?}; use a code such as en, de, fr"),
                    ));
                }
            }
            self.language = language;
        }
        if let Some(prompt) = text("prompt")? {
            self.prompt = prompt;
        }
        Ok(())
    }

    /// The session object of `created` / `updated` events, in the client's dialect.
    pub fn render(&self, id: &str, dialect: Dialect) -> Value {
        let transcription = json!({
            "model": self.model,
            "language": self.language,
            "prompt": self.prompt.clone().unwrap_or_default(),
        });
        let turn_detection = self.turn_detection.map_or(Value::Null, |t| {
            json!({
                "type": "server_vad",
                "threshold": t.threshold,
                "prefix_padding_ms": t.prefix_padding_ms,
                "silence_duration_ms": t.silence_duration_ms,
            })
        });
        match dialect {
            Dialect::Beta => json!({
                "id": id,
                "object": "realtime.transcription_session",
                "input_audio_format": self.format.beta(),
                "input_audio_transcription": transcription,
                "turn_detection": turn_detection,
                "input_audio_noise_reduction": null,
                "include": null,
            }),
            Dialect::Ga => json!({
                "type": "transcription",
                "id": id,
                "object": "realtime.transcription_session",
                "audio": { "input": {
                    "format": self.format.ga(),
                    "transcription": transcription,
                    "turn_detection": turn_detection,
                    "noise_reduction": null,
                }},
                "include": null,
            }),
        }
    }
}

fn beta_update(session: &Map<String, Value>) -> Update<'_> {
    let field = |key: &str| session.get(key).map(|v| (v, format!("session.{key}")));
    Update {
        format: field("input_audio_format"),
        transcription: field("input_audio_transcription"),
        turn_detection: field("turn_detection"),
        noise_reduction: field("input_audio_noise_reduction"),
    }
}

fn ga_update(session: &Map<String, Value>) -> Result<Update<'_>, ProtocolError> {
    match session.get("type").and_then(Value::as_str) {
        Some("transcription") | None => {}
        Some(other) => {
            return Err(ProtocolError::invalid(
                "session.type",
                format!(
                    "this server runs transcription sessions only (session type {other:?}); connect to /v1/realtime?intent=transcription and send \"type\": \"transcription\""
                ),
            ))
        }
    }
    let input = match session.get("audio").map(|a| a.get("input")) {
        None | Some(None) => return Ok(Update::default()),
        Some(Some(input)) => input.as_object().ok_or_else(|| {
            ProtocolError::invalid("session.audio.input", "`audio.input` must be an object")
        })?,
    };
    let field = |key: &str| {
        input
            .get(key)
            .map(|v| (v, format!("session.audio.input.{key}")))
    };
    Ok(Update {
        format: field("format"),
        transcription: field("transcription"),
        turn_detection: field("turn_detection"),
        noise_reduction: field("noise_reduction"),
    })
}

fn turn_detection(value: &Value, param: &str) -> Result<Option<TurnParams>, ProtocolError> {
    let object = match value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        _ => {
            return Err(ProtocolError::invalid(
                param,
                "`turn_detection` must be null or {\"type\": \"server_vad\", ..}",
            ))
        }
    };
    match object.get("type").and_then(Value::as_str) {
        Some("server_vad") | None => {}
        Some(other) => {
            return Err(ProtocolError::invalid(
                &format!("{param}.type"),
                format!("turn detection {other:?} is not supported; use \"server_vad\" or null"),
            ))
        }
    }
    let defaults = TurnParams::default();
    let threshold = match object.get("threshold") {
        None | Some(Value::Null) => defaults.threshold,
        Some(v) => v
            .as_f64()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                ProtocolError::invalid(
                    &format!("{param}.threshold"),
                    "`threshold` must be a number from 0 to 1",
                )
            })?,
    };
    let millis = |key: &str, default: u32| -> Result<u32, ProtocolError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&ms| ms <= 60_000)
                .map(|ms| ms as u32)
                .ok_or_else(|| {
                    ProtocolError::invalid(
                        &format!("{param}.{key}"),
                        format!("`{key}` must be a whole number of milliseconds up to 60000"),
                    )
                }),
        }
    };
    Ok(Some(TurnParams {
        threshold,
        prefix_padding_ms: millis("prefix_padding_ms", defaults.prefix_padding_ms)?,
        silence_duration_ms: millis("silence_duration_ms", defaults.silence_duration_ms)?,
    }))
}

/// One server event, its type first.
pub fn event(kind: &str, event_id: String, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), json!(kind));
    object.insert("event_id".into(), json!(event_id));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

/// The `error` event for `error`, naming the client event that caused it.
pub fn error_event(event_id: String, error: &ProtocolError, client_event: Option<&str>) -> Value {
    event(
        "error",
        event_id,
        json!({ "error": {
            "type": "invalid_request_error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event,
        }}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_and_ga_updates_set_the_same_settings() {
        let start = Settings::new(None, true);
        let beta = start
            .apply(
                &json!({
                    "input_audio_format": {"type": "audio/pcm", "rate": 16000},
                    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                }),
                Dialect::Beta,
            )
            .unwrap();
        let ga = start
            .apply(
                &json!({"type": "transcription", "audio": {"input": {
                    "format": {"type": "audio/pcm", "rate": 16000},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                }}}),
                Dialect::Ga,
            )
            .unwrap();
        assert_eq!(beta, ga);
        assert_eq!(beta.format, AudioFormat::Pcm16 { rate: 16000 });
        assert_eq!(beta.model.as_deref(), Some("whisper-1"));
        assert_eq!(beta.turn_detection.unwrap().silence_duration_ms, 800);
        assert_eq!(beta.turn_detection.unwrap().prefix_padding_ms, 300);
        // Only what is present changes; null turns detection off.
        let off = beta
            .apply(&json!({"turn_detection": null}), Dialect::Beta)
            .unwrap();
        assert_eq!(off.turn_detection, None);
        assert_eq!(off.model.as_deref(), Some("whisper-1"));
        // The session object says what was set, in each dialect.
        let rendered = beta.render("sess_1", Dialect::Ga);
        assert_eq!(rendered["audio"]["input"]["format"]["rate"], 16000);
        assert_eq!(
            start.render("sess_1", Dialect::Beta)["input_audio_format"],
            "pcm16"
        );
    }

    #[test]
    fn bad_settings_name_their_field() {
        let start = Settings::new(None, true);
        let cases = [
            (
                json!({"input_audio_format": "mp3"}),
                "session.input_audio_format",
            ),
            (
                json!({"input_audio_format": {"type": "audio/pcmu", "rate": 16000}}),
                "session.input_audio_format",
            ),
            (
                json!({"turn_detection": {"type": "semantic_vad"}}),
                "session.turn_detection.type",
            ),
            (
                json!({"turn_detection": {"threshold": 2}}),
                "session.turn_detection.threshold",
            ),
            (
                json!({"input_audio_transcription": {"model": 3}}),
                "session.input_audio_transcription.model",
            ),
            (
                json!({"input_audio_transcription": {"model": ""}}),
                "session.input_audio_transcription.model",
            ),
            (
                json!({"input_audio_noise_reduction": {"type": "near_field"}}),
                "session.input_audio_noise_reduction",
            ),
            (
                json!({"input_audio_transcription": {"language": "xx"}}),
                "session.input_audio_transcription.language",
            ),
        ];
        for (session, param) in cases {
            let error = start.apply(&session, Dialect::Beta).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{session}");
        }
        let error = start
            .apply(&json!({"type": "realtime"}), Dialect::Ga)
            .unwrap_err();
        assert_eq!(error.param.as_deref(), Some("session.type"));
    }

    #[test]
    fn audio_formats_decode_to_unit_range_samples() {
        let pcm = AudioFormat::Pcm16 { rate: 24000 };
        assert_eq!(
            pcm.decode(&[0x00, 0x80, 0xff, 0x7f, 0, 0]),
            vec![-1.0, 32767.0 / 32768.0, 0.0]
        );
        assert_eq!(AudioFormat::Ulaw.decode(&[0xff, 0x7f]), vec![0.0, 0.0]);
        assert_eq!(AudioFormat::Alaw.rate(), 8000);
    }
}
