//! Prompts of Voxtral Mini 3B, token for token as mistral-common builds them (checked against
//! its output in the parity fixtures):
//!
//! * transcription: `<s> [INST] [BEGIN_AUDIO] [AUDIO]×375·k [/INST] lang:xx [TRANSCRIBE]`
//!   (`lang:xx` left out when the language is detected);
//! * chat: `<s>`, then per user turn `[INST]`, its chunks in order (audio: `[BEGIN_AUDIO]` +
//!   `[AUDIO]`×375·k; text: its tokens) and `[/INST]`; per assistant turn its tokens and `</s>`;
//!   per system message `[SYSTEM_PROMPT]`, its text and `[/SYSTEM_PROMPT]`, where it stands.
//!   Before that the conversation is normalised as mistral-common's request normaliser does
//!   (`InstructRequestNormalizerV7`): consecutive user or assistant turns become one turn
//!   (system messages stay one each), adjacent pieces of text (in a message or across the
//!   turns joined) become one, joined by a blank line, empty text is dropped, and an answer
//!   loses its trailing spaces. A conversation may hold no audio: Voxtral answers text as the
//!   language model it is built on (as vLLM serves it).

use crate::tekken::Tekken;
use crate::{Error, Result};

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions (`[SYSTEM_PROMPT]`): mistral-common takes none beside audio for Voxtral's
    /// tokenizer, so [`check_conversation`] refuses them in a conversation with audio.
    System,
    User,
    Assistant,
}

impl Role {
    /// The role of a chat message's `role` field: `user`, `assistant`, `system` (or OpenAI's
    /// newer `developer`, which stands for it).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" | "developer" => Some(Role::System),
            _ => None,
        }
    }
}

/// One piece of a user turn.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    /// A clip of `windows` 30 s windows (375 audio tokens each).
    Audio {
        windows: usize,
    },
    Text(String),
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Content>,
}

impl Message {
    /// A turn of text alone (mistral-common's messages with a string `content`).
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Content::Text(text.into())],
        }
    }
}

/// The control tokens a prompt uses, looked up by name in tekken.json.
struct Controls {
    bos: u32,
    eos: u32,
    inst: u32,
    inst_end: u32,
    begin_audio: u32,
    audio: u32,
    transcribe: u32,
}

impl Controls {
    fn of(tekken: &Tekken) -> Result<Self> {
        Ok(Self {
            bos: tekken.bos(),
            eos: tekken.eos(),
            inst: tekken.require_special("[INST]")?,
            inst_end: tekken.require_special("[/INST]")?,
            begin_audio: tekken.require_special("[BEGIN_AUDIO]")?,
            audio: tekken.require_special("[AUDIO]")?,
            transcribe: tekken.require_special("[TRANSCRIBE]")?,
        })
    }

    fn push_audio(&self, ids: &mut Vec<u32>, tokens: usize) {
        ids.push(self.begin_audio);
        ids.extend(std::iter::repeat_n(self.audio, tokens));
    }
}

/// The transcription request for a clip of `windows` 30 s windows of `tokens_per_window`
/// audio tokens, in `language` (an ISO 639-1 code) or detected (`None`).
pub fn transcription(
    tekken: &Tekken,
    windows: usize,
    tokens_per_window: usize,
    language: Option<&str>,
) -> Result<Vec<u32>> {
    let c = Controls::of(tekken)?;
    let mut ids = vec![c.bos, c.inst];
    c.push_audio(&mut ids, windows * tokens_per_window);
    ids.push(c.inst_end);
    if let Some(language) = language {
        ids.extend(tekken.encode(&format!("lang:{language}"))?);
    }
    ids.push(c.transcribe);
    Ok(ids)
}

/// What joins two pieces of text that meet when turns or chunks are merged
/// (mistral-common's `_DEFAULT_JOIN_STR`).
const TEXT_JOIN: &str = "\n\n";

/// `messages` as mistral-common's V7 normaliser leaves them: each run of user or assistant
/// turns merged into one turn (each system message kept apart), whose adjacent pieces of text
/// are joined by [`TEXT_JOIN`] (empty pieces dropped); an answer's trailing spaces removed.
fn normalize(messages: &[Message]) -> Vec<Message> {
    let mut turns: Vec<Message> = Vec::new();
    for message in messages {
        let joins =
            message.role != Role::System && turns.last().is_some_and(|t| t.role == message.role);
        if !joins {
            turns.push(Message {
                role: message.role,
                content: Vec::new(),
            });
        }
        let turn = turns.last_mut().expect("pushed above");
        for content in &message.content {
            match (content, turn.content.last_mut()) {
                (Content::Text(text), _) if text.is_empty() => {}
                (Content::Text(text), Some(Content::Text(before))) => {
                    before.push_str(TEXT_JOIN);
                    before.push_str(text);
                }
                _ => turn.content.push(content.clone()),
            }
        }
    }
    for turn in turns.iter_mut().filter(|t| t.role == Role::Assistant) {
        if let Some(Content::Text(text)) = turn.content.last_mut() {
            text.truncate(text.trim_end_matches(' ').len());
        }
    }
    turns
}

/// The chat prompt of `messages`, ending with the last user turn's `[/INST]` (the model
/// answers next).
pub fn chat(tekken: &Tekken, messages: &[Message], tokens_per_window: usize) -> Result<Vec<u32>> {
    let c = Controls::of(tekken)?;
    check_conversation(messages)?;
    let mut ids = vec![c.bos];
    for turn in normalize(messages) {
        let [open, close] = match turn.role {
            Role::User => [Some(c.inst), Some(c.inst_end)],
            Role::Assistant => [None, Some(c.eos)],
            // Looked up only when used: a tokenizer without them still transcribes.
            Role::System => [
                Some(tekken.require_special("[SYSTEM_PROMPT]")?),
                Some(tekken.require_special("[/SYSTEM_PROMPT]")?),
            ],
        };
        ids.extend(open);
        for content in &turn.content {
            match content {
                Content::Audio { windows } => c.push_audio(&mut ids, windows * tokens_per_window),
                Content::Text(text) => ids.extend(tekken.encode(text)?),
            }
        }
        ids.extend(close);
    }
    Ok(ids)
}

/// Refuses a conversation that [`chat`] cannot prompt: none, one that does not end with the
/// user's turn (the model answers it), an empty user turn, an answer without text, audio in
/// an answer, a system message beside audio (mistral-common refuses one before its v13
/// tokenizers; Voxtral's is v7) or after an answer (its message order). Needs no model, so a
/// front end can check a request before it loads one.
pub fn check_conversation(messages: &[Message]) -> Result<()> {
    let invalid = |m: &str| Err(Error::InvalidRequest(m.into()));
    match messages.last() {
        None => return invalid("a conversation needs at least one message"),
        Some(m) if m.role != Role::User => {
            return invalid("the last message must be the user's: the model answers it")
        }
        _ => {}
    }
    let has_audio = |m: &Message| m.content.iter().any(|c| matches!(c, Content::Audio { .. }));
    let any_audio = messages.iter().any(has_audio);
    for (i, message) in messages.iter().enumerate() {
        let audio = has_audio(message);
        match message.role {
            Role::System if any_audio => {
                return invalid(
                    "Voxtral takes no system message beside audio (mistral-common refuses one for \
                     its tokenizer): put the instruction in the user's message",
                )
            }
            Role::System if i > 0 && messages[i - 1].role == Role::Assistant => {
                return invalid(
                    "a system message cannot follow an answer (mistral-common's message order)",
                )
            }
            Role::User if message.content.is_empty() => {
                return invalid("a user message has no content")
            }
            Role::Assistant if audio => return invalid("an assistant message cannot hold audio"),
            _ => {}
        }
    }
    if normalize(messages)
        .iter()
        .any(|t| t.role == Role::Assistant && t.content.is_empty())
    {
        return invalid("an assistant message has no text");
    }
    Ok(())
}

/// The ISO 639-1 codes (pycountry's 184, as mistral-common's `LanguageAlpha2` validates a
/// transcription request's language).
const ISO_639_1: [&str; 184] = [
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bi",
    "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da", "de",
    "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr", "fy",
    "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz", "ia",
    "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka", "kg", "ki", "kj", "kk",
    "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln", "lo",
    "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb", "nd",
    "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi", "pl",
    "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "sh", "si", "sk",
    "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti",
    "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo",
    "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// A transcription request's language as the prompt's `lang:xx` takes it: an ISO 639-1 code
/// in any case (mistral-common lowercases it), or a code this accepts beside it (`whisper`:
/// Whisper's names, e.g. "French", mapped to their codes) where that code is ISO 639-1.
/// `None` for what mistral-common refuses (Whisper's `haw`, `jw`, `yue`, unknown names).
pub fn transcription_language(language: &str, whisper: Option<&str>) -> Option<&'static str> {
    let iso = |code: &str| ISO_639_1.iter().find(|&&c| c == code).copied();
    iso(&language.to_ascii_lowercase()).or_else(|| whisper.and_then(iso))
}

/// The instruction `--task translate --language xx` sends after the audio: "Translate this
/// audio into French." (English language names, as mistral-common's validation uses).
pub fn translation_instruction(language: &str) -> Result<String> {
    let name = language_name(language).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "unknown target language {language:?}; use an ISO 639-1 code such as en, fr, de"
        ))
    })?;
    Ok(format!("Translate this audio into {name}."))
}

/// English names of the languages Voxtral was trained on (the model card's eight) and a few
/// more ISO 639-1 codes it is commonly asked for.
pub fn language_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "en" => "English",
        "fr" => "French",
        "de" => "German",
        "es" => "Spanish",
        "pt" => "Portuguese",
        "hi" => "Hindi",
        "nl" => "Dutch",
        "it" => "Italian",
        "ar" => "Arabic",
        "zh" => "Chinese",
        "ja" => "Japanese",
        "ko" => "Korean",
        "ru" => "Russian",
        "pl" => "Polish",
        "tr" => "Turkish",
        "uk" => "Ukrainian",
        "sv" => "Swedish",
        "cs" => "Czech",
        "ro" => "Romanian",
        "el" => "Greek",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The languages mistral-common's `LanguageAlpha2` takes (pycountry's ISO 639-1 codes, in
    /// any case), and Whisper's names of them; not Whisper's codes outside ISO 639-1.
    #[test]
    fn transcription_languages_are_iso_639_1() {
        assert!(
            ISO_639_1.windows(2).all(|w| w[0] < w[1]),
            "sorted, once each"
        );
        for (given, whisper, want) in [
            ("fr", Some("fr"), Some("fr")),
            ("FR", None, Some("fr")),
            ("ab", None, Some("ab")),
            ("Ga", None, Some("ga")),
            ("French", Some("fr"), Some("fr")),
            ("haw", Some("haw"), None),
            ("jw", Some("jw"), None),
            ("xx", None, None),
            ("", None, None),
        ] {
            assert_eq!(transcription_language(given, whisper), want, "{given}");
        }
    }
}
