//! Output formats: plain text, OpenAI's `json` and `verbose_json` transcription objects, SRT and
//! WebVTT subtitles (layouts as openai-whisper's writers).

use crate::error::{Error, Result};
use serde_json::json;
use std::borrow::Cow;
use std::fmt::Write;
use std::str::FromStr;
use voxide_models::{Segment, Transcript};

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
    /// Tab-separated `start`, `end` (integer milliseconds) and `text`, openai-whisper's `tsv`.
    Tsv,
    /// LRC lyrics, `[mm:ss.cc]text` a segment (whisper.cpp's `-olrc`).
    Lrc,
    /// `start,end,text` (milliseconds; the text quoted), whisper.cpp's `-ocsv`.
    Csv,
}

impl OutputFormat {
    /// File extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Txt => "txt",
            OutputFormat::Json | OutputFormat::VerboseJson => "json",
            OutputFormat::Srt => "srt",
            OutputFormat::Vtt => "vtt",
            OutputFormat::Tsv => "tsv",
            OutputFormat::Lrc => "lrc",
            OutputFormat::Csv => "csv",
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
            "tsv" => OutputFormat::Tsv,
            "lrc" => OutputFormat::Lrc,
            "csv" => OutputFormat::Csv,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "unknown output format {other:?} (txt, json, verbose_json, srt, vtt, tsv, lrc, csv)"
                )))
            }
        })
    }
}

/// `HH:MM:SS<sep>mmm`, hours optional (openai-whisper `format_timestamp`; Python's `round`
/// takes half milliseconds to even).
fn timestamp(seconds: f64, always_hours: bool, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round_ties_even() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if always_hours || h > 0 {
        format!("{h:02}:{m:02}:{s:02}{separator}{ms:03}")
    } else {
        format!("{m:02}:{s:02}{separator}{ms:03}")
    }
}

/// How subtitles are cut from word timings (openai-whisper's `--max_line_width`,
/// `--max_line_count`, `--max_words_per_line`, `--highlight_words`); without words, one cue per
/// segment. A limit of 0 counts as unset, as in openai-whisper (`value or default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubtitleOptions {
    pub max_line_width: Option<usize>,
    pub max_line_count: Option<usize>,
    pub max_words_per_line: Option<usize>,
    pub highlight_words: bool,
}

/// Renders `t` in `format` (`task` is "transcribe" or "translate", for verbose_json).
pub fn render(t: &Transcript, format: OutputFormat, task: &str) -> String {
    render_with(t, format, task, &SubtitleOptions::default())
}

/// [`render`] with subtitle layout options.
pub fn render_with(
    t: &Transcript,
    format: OutputFormat,
    task: &str,
    subtitles: &SubtitleOptions,
) -> String {
    let mut out = String::new();
    match format {
        OutputFormat::Txt => {
            for line in txt_lines(&t.segments) {
                let _ = writeln!(out, "{line}");
            }
        }
        OutputFormat::Json => out = json!({ "text": t.text }).to_string() + "\n",
        OutputFormat::VerboseJson => {
            let mut value = json!({
                "task": task,
                "language": voxide_models::whisper::tokenizer::language_name(&t.language).unwrap_or(&t.language),
                "duration": t.duration,
                "text": t.text,
                "segments": t.segments,
                "token_ids": t.token_ids,
            });
            // OpenAI's verbose transcription object lists every word once more, trimmed.
            if t.segments.iter().any(|s| s.words.is_some()) {
                value["words"] = t
                    .segments
                    .iter()
                    .flat_map(|s| s.words.iter().flatten())
                    .map(|w| json!({ "word": w.word.trim(), "start": w.start, "end": w.end }))
                    .collect();
            }
            out = serde_json::to_string_pretty(&value).expect("serialisable") + "\n";
        }
        OutputFormat::Srt => {
            let cues = cues(t, subtitles, |s| timestamp(s, true, ','));
            for (i, Cue { start, end, text }) in cues.into_iter().enumerate() {
                let _ = write!(out, "{}\n{start} --> {end}\n{text}\n\n", i + 1);
            }
        }
        OutputFormat::Vtt => {
            out.push_str("WEBVTT\n\n");
            for Cue { start, end, text } in cues(t, subtitles, |s| timestamp(s, false, '.')) {
                let _ = write!(out, "{start} --> {end}\n{text}\n\n");
            }
        }
        OutputFormat::Tsv => {
            // openai-whisper's `WriteTSV`, every segment: Python's `round` (half to even) of
            // the milliseconds.
            out.push_str("start\tend\ttext\n");
            for s in &t.segments {
                let ms = |seconds: f64| (1000.0 * seconds).round_ties_even() as i64;
                let text = py_strip(&s.text).replace('\t', " ");
                let _ = writeln!(out, "{}\t{}\t{text}", ms(s.start), ms(s.end));
            }
        }
        // whisper.cpp's writers (`output_lrc`, `output_csv`) on its 10 ms time units; the
        // segments with text, as `txt`.
        OutputFormat::Lrc => {
            out.push_str("[by:voxide]\n");
            for s in spoken(t) {
                let cs = centiseconds(s.start);
                let (min, sec, cs) = (cs / 6000, cs / 100 % 60, cs % 100);
                let _ = writeln!(out, "[{min:02}:{sec:02}.{cs:02}]{}", s.text);
            }
        }
        OutputFormat::Csv => {
            out.push_str("start,end,text\n");
            for s in spoken(t) {
                let (start, end) = (10 * centiseconds(s.start), 10 * centiseconds(s.end));
                let _ = writeln!(out, "{start},{end},\"{}\"", s.text.replace('"', "\"\""));
            }
        }
    }
    out
}

/// Seconds as whisper.cpp's times: whole 10 ms units.
fn centiseconds(seconds: f64) -> u64 {
    (seconds.max(0.0) * 100.0).round() as u64
}

/// A segment cue's text without its blank lines: in SRT and WebVTT a blank line ends the cue,
/// so a segment whose text holds one (Voxtral can emit newlines) would be cut short there.
/// openai-whisper writes the text as it is; cues laid out from words stay exactly its own.
fn without_blank_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !py_strip(l).is_empty()).collect();
    lines.join("\n")
}

/// The segments with text (openai-whisper also writes empty ones, as empty cues).
/// The lines of the `txt` format for `segments`: each spoken one's text, stripped as Python
/// strips. Segments found so far give the first lines of the whole transcript's (a front end
/// prints them as they come).
pub fn txt_lines(segments: &[Segment]) -> impl Iterator<Item = &str> {
    segments
        .iter()
        .map(|s| py_strip(&s.text))
        .filter(|line| !line.is_empty())
}

fn spoken(t: &Transcript) -> impl Iterator<Item = &Segment> {
    t.segments.iter().filter(|s| !py_strip(&s.text).is_empty())
}

/// Python's `str.isspace()`, which its regex `\s` shares: Unicode White_Space and the
/// separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// One subtitle cue, times already written in the format's style.
struct Cue {
    start: String,
    end: String,
    text: String,
}

/// The cues of openai-whisper's `SubtitlesWriter.iterate_result` (openai-whisper 20250625):
/// laid out from the words when the first segment has them, else one per segment with text.
fn cues(t: &Transcript, options: &SubtitleOptions, stamp: impl Fn(f64) -> String) -> Vec<Cue> {
    if t.segments.first().is_none_or(|s| s.words.is_none()) {
        return spoken(t)
            .map(|s| Cue {
                start: stamp(s.start),
                end: stamp(s.end),
                text: without_blank_lines(py_strip(&s.text)).replace("-->", "->"),
            })
            .collect();
    }
    let mut cues = Vec::new();
    for subtitle in word_subtitles(&t.segments, options) {
        let (first, last) = (&subtitle[0], &subtitle[subtitle.len() - 1]);
        let text: String = subtitle.iter().map(|w| &*w.text).collect();
        if !options.highlight_words {
            cues.push(Cue {
                start: stamp(first.start),
                end: stamp(last.end),
                text,
            });
            continue;
        }
        // One cue per word with that word underlined, and the plain text over the gaps between
        // words; gaps are found by comparing the written times, so a backwards cue comes out
        // where words overlap.
        let mut shown_until = stamp(first.start);
        for (i, word) in subtitle.iter().enumerate() {
            let (start, end) = (stamp(word.start), stamp(word.end));
            if shown_until != start {
                cues.push(Cue {
                    start: shown_until,
                    end: start.clone(),
                    text: text.clone(),
                });
            }
            let underlined = subtitle
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    if j == i {
                        Cow::Owned(underline(&w.text))
                    } else {
                        Cow::Borrowed(&*w.text)
                    }
                })
                .collect();
            cues.push(Cue {
                start,
                end: end.clone(),
                text: underlined,
            });
            shown_until = end;
        }
    }
    cues
}

/// A word as its subtitle prints it: stripped where it opens a line, after a `\n` where that
/// line is not the subtitle's first.
struct Placed<'a> {
    text: Cow<'a, str>,
    start: f64,
    end: f64,
}

/// Groups the words into subtitles as openai-whisper's `iterate_subtitles` does. Widths are
/// Python `len`s (code points). Each segment, and each run of `max_words_per_line` words in it,
/// opens a subtitle unless both `max_line_width` and `max_line_count` are given; then a
/// subtitle ends when it has `max_line_count` lines or after a pause of more than 3 s, measured
/// from the previous word's start.
fn word_subtitles<'a>(segments: &'a [Segment], options: &SubtitleOptions) -> Vec<Vec<Placed<'a>>> {
    let given = |limit: Option<usize>| limit.filter(|&n| n > 0);
    let (max_width, max_lines) = (given(options.max_line_width), given(options.max_line_count));
    let preserve_segments = max_width.is_none() || max_lines.is_none();
    let max_width = max_width.unwrap_or(1000);
    let run_len = given(options.max_words_per_line).unwrap_or(1000);
    // openai-whisper requires `words` on every segment once the first has them; here a segment
    // without counts as one without words.
    let words = |s: &'a Segment| s.words.as_deref().unwrap_or_default();

    let mut last_start = segments
        .iter()
        .flat_map(words)
        .map(|w| w.start)
        .chain(segments.first().map(|s| s.start))
        .next()
        .unwrap_or(0.0);
    let (mut subtitles, mut subtitle) = (Vec::new(), Vec::new());
    let (mut line_len, mut line_count) = (0, 1);
    for run in segments.iter().flat_map(|s| words(s).chunks(run_len)) {
        for (i, word) in run.iter().enumerate() {
            let len = word.word.chars().count();
            let long_pause = !preserve_segments && word.start - last_start > 3.0;
            let seg_break = i == 0 && !subtitle.is_empty() && preserve_segments;
            let text = if line_len > 0 && line_len + len <= max_width && !long_pause && !seg_break {
                line_len += len;
                Cow::Borrowed(word.word.as_str())
            } else {
                let stripped = py_strip(&word.word);
                let mid_line = line_len > 0;
                line_len = stripped.chars().count();
                let full = max_lines.is_some_and(|n| long_pause || line_count >= n);
                if seg_break || (full && !subtitle.is_empty()) {
                    subtitles.push(std::mem::take(&mut subtitle));
                    line_count = 1;
                    Cow::Borrowed(stripped)
                } else if mid_line {
                    line_count += 1;
                    Cow::Owned(format!("\n{stripped}"))
                } else {
                    Cow::Borrowed(stripped)
                }
            };
            subtitle.push(Placed {
                text,
                start: word.start,
                end: word.end,
            });
            last_start = word.start;
        }
    }
    if !subtitle.is_empty() {
        subtitles.push(subtitle);
    }
    subtitles
}

/// openai-whisper's `re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", word)`: `.` stops at a newline and
/// `$` also matches before a final one, so a word with a newline inside stays as it is.
fn underline(word: &str) -> String {
    let body = word.len() - word.trim_start_matches(is_py_space).len();
    let stop = word[body..].find('\n').map_or(word.len(), |p| body + p);
    if stop + 1 >= word.len() {
        format!(
            "{}<u>{}</u>{}",
            &word[..body],
            &word[body..stop],
            &word[stop..]
        )
    } else {
        word.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use voxide_models::Word;

    fn segment(id: usize, start: f64, end: f64, text: &str) -> Segment {
        Segment {
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
            words: None,
        }
    }

    fn word(word: &str, start: f64, end: f64) -> Word {
        Word {
            word: word.into(),
            start,
            end,
            probability: 0.9,
        }
    }

    fn transcript() -> Transcript {
        Transcript {
            language: "en".into(),
            duration: 3725.5,
            text: " Hello. --> World".into(),
            segments: vec![
                segment(0, 0.0, 1.5, " Hello."),
                segment(1, 1.5, 1.5, ""),
                segment(2, 3661.25, 3725.5, " --> World"),
            ],
            token_ids: vec![50364, 1, 2, 50439],
        }
    }

    #[test]
    fn lrc_and_csv_follow_whisper_cpp_writers() {
        let mut t = transcript();
        t.segments[0].text = " Hello, \"world\".".into();
        // 3661.25 s: 61 minutes (not wrapped into hours, as whisper.cpp's %02d), 1.25 s.
        assert_eq!(
            render(&t, OutputFormat::Lrc, "transcribe"),
            "[by:voxide]\n[00:00.00] Hello, \"world\".\n[61:01.25] --> World\n"
        );
        assert_eq!(
            render(&t, OutputFormat::Csv, "transcribe"),
            "start,end,text\n0,1500,\" Hello, \"\"world\"\".\"\n3661250,3725500,\" --> World\"\n"
        );
        assert_eq!("lrc".parse::<OutputFormat>().unwrap().extension(), "lrc");
        assert_eq!("csv".parse::<OutputFormat>().unwrap().extension(), "csv");
    }

    #[test]
    fn cue_text_keeps_no_blank_line() {
        let mut t = transcript();
        t.segments[0].text = " Hello.\n\n \nagain\nand again".into();
        assert_eq!(
            render(&t, OutputFormat::Srt, "transcribe"),
            "1\n00:00:00,000 --> 00:00:01,500\nHello.\nagain\nand again\n\n2\n01:01:01,250 --> 01:02:05,500\n-> World\n\n"
        );
        let vtt = render(&t, OutputFormat::Vtt, "transcribe");
        assert!(
            vtt.contains("00:01.500\nHello.\nagain\nand again\n\n01:01"),
            "{vtt}"
        );
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

    /// A `transcribe()` result of the fixture as a transcript (a segment's `words` key is
    /// optional, as in openai-whisper).
    fn fixture_transcript(segments: &Value) -> Transcript {
        let number = |v: &Value| v.as_f64().unwrap();
        let segments = segments
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(id, s)| Segment {
                words: s.get("words").map(|words| {
                    words
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|w| {
                            word(
                                w["word"].as_str().unwrap(),
                                number(&w["start"]),
                                number(&w["end"]),
                            )
                        })
                        .collect()
                }),
                ..segment(
                    id,
                    number(&s["start"]),
                    number(&s["end"]),
                    s["text"].as_str().unwrap(),
                )
            });
        Transcript {
            segments: segments.collect(),
            ..Transcript::default()
        }
    }

    /// The writers' keyword arguments of the fixture.
    fn fixture_options(options: &Value) -> SubtitleOptions {
        let limit = |key: &str| options.get(key).map(|v| v.as_u64().unwrap() as usize);
        SubtitleOptions {
            max_line_width: limit("max_line_width"),
            max_line_count: limit("max_line_count"),
            max_words_per_line: limit("max_words_per_line"),
            highlight_words: options
                .get("highlight_words")
                .is_some_and(|v| v.as_bool().unwrap()),
        }
    }

    /// Byte for byte as openai-whisper's WriteSRT / WriteVTT / WriteTSV print them
    /// (tools/reference/subtitle_fixtures.py), for every result and option set of the fixture.
    #[test]
    fn word_subtitles_match_openai_whisper_writers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/subtitles/openai_writers.json"
        );
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        let (results, options) = (&fixture["results"], &fixture["options"]);
        assert_eq!(
            cases.len(),
            results.as_object().unwrap().len() * options.as_object().unwrap().len()
        );
        for case in cases {
            let (result, option_set) = (
                case["result"].as_str().unwrap(),
                case["options"].as_str().unwrap(),
            );
            let t = fixture_transcript(&results[result]);
            let subtitles = fixture_options(&options[option_set]);
            for (format, key) in [(OutputFormat::Srt, "srt"), (OutputFormat::Vtt, "vtt")] {
                assert_eq!(
                    render_with(&t, format, "transcribe", &subtitles),
                    case[key].as_str().unwrap(),
                    "{result} with {option_set}, {key}"
                );
            }
        }
        // WriteTSV takes no options.
        let tsv = fixture["tsv"].as_object().unwrap();
        assert_eq!(tsv.len(), results.as_object().unwrap().len());
        for (result, want) in tsv {
            let t = fixture_transcript(&results[result]);
            let got = render(&t, OutputFormat::Tsv, "transcribe");
            assert_eq!(got, want.as_str().unwrap(), "{result}, tsv");
        }
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
        assert!(v.get("words").is_none());
        assert!(v["segments"][0].get("words").is_none());
        let j: serde_json::Value =
            serde_json::from_str(&render(&transcript(), OutputFormat::Json, "x")).unwrap();
        assert_eq!(j, serde_json::json!({"text": " Hello. --> World"}));
        assert!("xml".parse::<OutputFormat>().is_err());
    }

    /// With word timestamps, OpenAI's top-level `words` (trimmed, in order, across segments);
    /// each segment keeps openai-whisper's own `words`.
    #[test]
    fn verbose_json_lists_every_word() {
        let mut t = transcript();
        t.segments[0].words = Some(vec![word(" Hello.", 0.0, 1.5)]);
        t.segments[1].words = Some(vec![]);
        t.segments[2].words = Some(vec![
            word(" -->", 3661.25, 3662.0),
            word(" World", 3662.0, 3725.5),
        ]);
        let v: Value =
            serde_json::from_str(&render(&t, OutputFormat::VerboseJson, "transcribe")).unwrap();
        assert_eq!(
            v["words"],
            json!([
                {"word": "Hello.", "start": 0.0, "end": 1.5},
                {"word": "-->", "start": 3661.25, "end": 3662.0},
                {"word": "World", "start": 3662.0, "end": 3725.5},
            ])
        );
        assert_eq!(
            v["segments"][2]["words"][1],
            json!({"word": " World", "start": 3662.0, "end": 3725.5, "probability": 0.9})
        );
        assert_eq!(v["segments"][1]["words"], json!([]));
    }
}
