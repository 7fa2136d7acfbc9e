//! Output formats: plain text, OpenAI's `json` and `verbose_json` transcription objects, SRT and
//! WebVTT subtitles (layouts as openai-whisper's writers).

use crate::error::{Error, Result};
use serde_json::json;
use std::fmt::Write;
use std::str::FromStr;
use voxide_models::Transcript;

/// How a transcript is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per segment.
    Txt,
    /// `{"text": ...}`.
    Json,
    /// OpenAI's verbose transcription object plus `token_ids`.
    VerboseJson,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
}

impl OutputFormat {
    /// File extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Txt => "txt",
            OutputFormat::Json | OutputFormat::VerboseJson => "json",
            OutputFormat::Srt => "srt",
            OutputFormat::Vtt => "vtt",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "txt" | "text" => OutputFormat::Txt,
            "json" => OutputFormat::Json,
            "verbose_json" => OutputFormat::VerboseJson,
            "srt" => OutputFormat::Srt,
            "vtt" => OutputFormat::Vtt,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "unknown output format {other:?} (txt, json, verbose_json, srt, vtt)"
                )))
            }
        })
    }
}

/// `HH:MM:SS<sep>mmm`, hours optional (openai-whisper `format_timestamp`).
fn timestamp(seconds: f64, always_hours: bool, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if always_hours || h > 0 {
        format!("{h:02}:{m:02}:{s:02}{separator}{ms:03}")
    } else {
        format!("{m:02}:{s:02}{separator}{ms:03}")
    }
}

/// Renders `t` in `format` (`task` is "transcribe" or "translate", for verbose_json).
pub fn render(t: &Transcript, format: OutputFormat, task: &str) -> String {
    let spoken = || t.segments.iter().filter(|s| !s.text.trim().is_empty());
    let mut out = String::new();
    match format {
        OutputFormat::Txt => {
            for s in spoken() {
                let _ = writeln!(out, "{}", s.text.trim());
            }
        }
        OutputFormat::Json => out = json!({ "text": t.text }).to_string() + "\n",
        OutputFormat::VerboseJson => {
            let value = json!({
                "task": task,
                "language": voxide_models::whisper::tokenizer::language_name(&t.language).unwrap_or(&t.language),
                "duration": t.duration,
                "text": t.text,
                "segments": t.segments,
                "token_ids": t.token_ids,
            });
            out = serde_json::to_string_pretty(&value).expect("serialisable") + "\n";
        }
        OutputFormat::Srt => {
            for (i, s) in spoken().enumerate() {
                let _ = write!(
                    out,
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    timestamp(s.start, true, ','),
                    timestamp(s.end, true, ','),
                    s.text.trim().replace("-->", "->")
                );
            }
        }
        OutputFormat::Vtt => {
            out.push_str("WEBVTT\n\n");
            for s in spoken() {
                let _ = write!(
                    out,
                    "{} --> {}\n{}\n\n",
                    timestamp(s.start, false, '.'),
                    timestamp(s.end, false, '.'),
                    s.text.trim().replace("-->", "->")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxide_models::Segment;

    fn transcript() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![1, 2],
            temperature: 0.0,
            avg_logprob: -0.25,
            compression_ratio: 1.2,
            no_speech_prob: 0.01,
        };
        Transcript {
            language: "en".into(),
            duration: 3725.5,
            text: " Hello. --> World".into(),
            segments: vec![
                seg(0, 0.0, 1.5, " Hello."),
                seg(1, 1.5, 1.5, ""),
                seg(2, 3661.25, 3725.5, " --> World"),
            ],
            token_ids: vec![50364, 1, 2, 50439],
        }
    }

    #[test]
    fn subtitles_follow_openai_whisper_writers() {
        let t = transcript();
        assert_eq!(
            render(&t, OutputFormat::Srt, "transcribe"),
            "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n01:01:01,250 --> 01:02:05,500\n-> World\n\n"
        );
        assert_eq!(
            render(&t, OutputFormat::Vtt, "transcribe"),
            "WEBVTT\n\n00:00.000 --> 00:01.500\nHello.\n\n01:01:01.250 --> 01:02:05.500\n-> World\n\n"
        );
        assert_eq!(
            render(&t, OutputFormat::Txt, "transcribe"),
            "Hello.\n--> World\n"
        );
    }

    #[test]
    fn verbose_json_is_openai_shaped_with_token_ids() {
        let v: serde_json::Value = serde_json::from_str(&render(
            &transcript(),
            OutputFormat::VerboseJson,
            "transcribe",
        ))
        .unwrap();
        assert_eq!(v["language"], "english");
        assert_eq!(v["duration"], 3725.5);
        assert_eq!(v["segments"][2]["start"], 3661.25);
        assert_eq!(
            v["segments"][0]["no_speech_prob"].as_f64().unwrap() as f32,
            0.01
        );
        assert_eq!(v["token_ids"], serde_json::json!([50364, 1, 2, 50439]));
        let j: serde_json::Value =
            serde_json::from_str(&render(&transcript(), OutputFormat::Json, "x")).unwrap();
        assert_eq!(j, serde_json::json!({"text": " Hello. --> World"}));
        assert!("xml".parse::<OutputFormat>().is_err());
    }
}
