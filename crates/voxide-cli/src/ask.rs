//! `voxide ask`: questions about audio, or text alone (Voxtral Mini 3B's chat mode), the
//! answer streamed to stdout as it decodes.

use crate::transcribe::{kv_precision, precision, set_threads};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use voxide_audio::{load_mono, AudioInput};
use voxide_models::voxtral::{self, Content, GenerateOptions, Message, Role};
use voxide_runtime::{load_voxtral, resolve_model};

#[derive(Args, Debug)]
pub struct AskArgs {
    /// The question (a new user turn after --messages, if given).
    question: Option<String>,
    /// Model: a Voxtral Mini 3B directory, or a hub id (mistralai/Voxtral-Mini-3B-2507).
    #[arg(short, long, env = "VOXIDE_MODEL")]
    model: String,
    /// Audio the question is about (repeat for several clips, in order); `-` reads stdin.
    /// Without audio the model answers the text alone.
    #[arg(short, long, value_name = "FILE")]
    audio: Vec<String>,
    /// Instructions before the conversation (`[SYSTEM_PROMPT]`); only without audio, as
    /// mistral-common refuses a system prompt beside audio for Voxtral's tokenizer.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// A conversation as JSON: [{"role": "user", "content": [{"type": "audio", "path": "a.wav"},
    /// {"type": "text", "text": "…"}]}, {"role": "assistant", "content": "…"}, …]; audio
    /// paths are relative to the file.
    #[arg(long, value_name = "FILE")]
    messages: Option<PathBuf>,
    /// 0 answers greedily; above 0 samples at this temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// OpenAI's frequency penalty, −2 to 2: each answer token's logit loses this per time it
    /// was already said.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    /// OpenAI's presence penalty, −2 to 2: each token already said loses this once.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    /// At most N tokens in the answer.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_new_tokens: usize,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Weight precision: auto (the checkpoint's), f32, f16, bf16, or int8 (the decoder's
    /// matrices, quantized per row at load).
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::PRECISIONS)]
    precision: String,
    /// KV-cache precision: auto (f16 beside bf16, f16 or quantized weights, f32 beside
    /// f32 ones), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::KV_PRECISIONS)]
    kv_precision: String,
    /// Print timings (encoder, prefill, decoder ms/step, first token) to stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// A conversation and the audio files its audio chunks take, in order.
struct Conversation {
    messages: Vec<Message>,
    clips: Vec<AudioInput>,
}

/// Reads a `--messages` file.
fn read_messages(path: &Path) -> Result<Conversation> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read --messages {}: {e}", path.display()))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("--messages {}: not JSON ({e})", path.display()))?;
    let bad = |what: String| anyhow!("--messages {}: {what}", path.display());
    let base = path.parent().unwrap_or(Path::new("."));
    let mut conversation = Conversation {
        messages: Vec::new(),
        clips: Vec::new(),
    };
    let turns = json
        .as_array()
        .ok_or_else(|| bad("expected a list of messages".into()))?;
    for (i, turn) in turns.iter().enumerate() {
        let role = match turn["role"].as_str() {
            Some(name) => Role::from_name(name).ok_or_else(|| {
                bad(format!(
                    "message {i}: role \"{name}\" (user, assistant or system)"
                ))
            })?,
            None => {
                return Err(bad(format!(
                    "message {i}: no role (user, assistant or system)"
                )))
            }
        };
        let content = match &turn["content"] {
            Value::String(text) => vec![Content::Text(text.clone())],
            Value::Array(chunks) => chunks
                .iter()
                .map(|chunk| match chunk["type"].as_str() {
                    Some("text") => chunk["text"]
                        .as_str()
                        .map(|t| Content::Text(t.to_string()))
                        .ok_or_else(|| bad(format!("message {i}: a text chunk without text"))),
                    Some("audio") => {
                        let file = chunk["path"].as_str().ok_or_else(|| {
                            bad(format!("message {i}: an audio chunk without a path"))
                        })?;
                        conversation.clips.push(AudioInput::File(base.join(file)));
                        Ok(Content::Audio { windows: 1 })
                    }
                    Some(other) => Err(bad(format!(
                        "message {i}: chunk type \"{other}\" (text or audio)"
                    ))),
                    None => Err(bad(format!(
                        "message {i}: a chunk without a \"type\" (text or audio)"
                    ))),
                })
                .collect::<Result<_>>()?,
            Value::Null => return Err(bad(format!("message {i}: no content"))),
            _ => {
                return Err(bad(format!(
                    "message {i}: content must be a string or a list of chunks"
                )))
            }
        };
        conversation.messages.push(Message { role, content });
    }
    Ok(conversation)
}

pub fn run(args: AskArgs) -> Result<()> {
    set_threads(args.threads)?;
    let mut conversation = Conversation {
        messages: Vec::new(),
        clips: Vec::new(),
    };
    if let Some(system) = &args.system {
        conversation
            .messages
            .push(Message::text(Role::System, system.clone()));
    }
    if let Some(path) = &args.messages {
        let read = read_messages(path)?;
        conversation.messages.extend(read.messages);
        conversation.clips = read.clips;
    }
    if let Some(question) = &args.question {
        if question.trim().is_empty() {
            bail!("the question is empty");
        }
        let mut content: Vec<Content> = args
            .audio
            .iter()
            .map(|_| Content::Audio { windows: 1 })
            .collect();
        conversation
            .clips
            .extend(args.audio.iter().map(|a| AudioInput::from_arg(a)));
        content.push(Content::Text(question.clone()));
        conversation.messages.push(Message {
            role: Role::User,
            content,
        });
    } else if !args.audio.is_empty() {
        bail!("--audio needs a question (or put the audio in --messages)");
    }
    if args.audio.iter().filter(|a| *a == "-").count() > 1 {
        bail!("standard input can be read once: give `--audio -` at most once");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if conversation.messages.is_empty() {
        bail!("nothing to ask: give a question (with --audio FILE) or --messages FILE");
    }
    voxtral::prompt::check_conversation(&conversation.messages)?;
    if !(0.0..=2.0).contains(&args.temperature) {
        bail!("--temperature {} must lie in [0, 2]", args.temperature);
    }
    crate::check_top_p(args.top_p)?;
    for (flag, value) in [
        ("--frequency-penalty", args.frequency_penalty),
        ("--presence-penalty", args.presence_penalty),
    ] {
        if !(-2.0..=2.0).contains(&value) {
            bail!("{flag} must lie in [-2, 2]");
        }
    }
    // The clips are decoded before the model loads: a path that cannot be read or a file
    // that is not audio fails at once.
    let clips = conversation
        .clips
        .iter()
        .map(|input| Ok(load_mono(input, voxtral::SAMPLE_RATE)?))
        .collect::<Result<Vec<_>>>()?;
    let clock = Instant::now();
    let source = resolve_model(&args.model)?;
    let model = load_voxtral(
        &source,
        &candle_core::Device::Cpu,
        precision(&args.precision),
    )?;
    crate::release_freed_memory();
    if args.verbose {
        note!(
            "model: {} loaded in {:.0} ms",
            source.path().display(),
            clock.elapsed().as_secs_f64() * 1e3
        );
    }
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        frequency_penalty: args.frequency_penalty,
        presence_penalty: args.presence_penalty,
        seed: args.seed,
        kv_dtype: kv_precision(&args.kv_precision),
        ..GenerateOptions::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let result = model.ask(&conversation.messages, &clips, &options, &mut |piece, _| {
        let written = match piece.is_empty() {
            true => Ok(()),
            false => stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush()),
        };
        written.map_err(|e| write_error = Some(e)).is_ok()
    });
    if let Some(e) = write_error {
        // A closed pipe (`| head`) ends the answer early; that is not a failure of ours.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        bail!("cannot write to stdout: {e}");
    }
    let (_, generation) = result?;
    writeln!(stdout).ok();
    if args.verbose {
        let t = &generation.timings;
        note!(
            "encoder {:.0} ms ({} windows) | prefill {:.0} ms | decoder {:.2} ms/step ({} steps) | first token {:.0} ms",
            t.encoder_ms,
            t.encoder_calls,
            t.prefill_ms,
            t.ms_per_step(),
            t.steps,
            t.first_token_ms.unwrap_or(0.0),
        );
    }
    Ok(())
}
