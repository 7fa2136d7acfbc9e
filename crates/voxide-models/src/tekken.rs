//! Tekken tokenizer: Mistral's `tekken.json` (tiktoken-style byte-level BPE), used by Voxtral.
//!
//! File layout (specs/voxtral-realtime.md §13):
//! - `config`: `pattern` (pre-tokenizer regex), `num_vocab_tokens`, `default_vocab_size`,
//!   `default_num_special_tokens`, `version`;
//! - `vocab[]`: `{rank, token_bytes (base64), token_str}`, ranks 0, 1, 2, … in order, the first
//!   256 being the single bytes 0x00–0xFF;
//! - `special_tokens[]`: `{rank, token_str, is_control}`, ranks 0, 1, 2, … in order; when the
//!   list is shorter than `default_num_special_tokens` the rest are `<SPECIAL_{id}>` control
//!   tokens (as mistral-common fills them);
//! - `audio` (optional, §10.1): the audio front end and streaming parameters.
//!
//! **Ids.** Ids below `default_num_special_tokens` (1000) are special tokens. An id `n` at or
//! above it is `vocab[n − 1000]`; the vocabulary is cut to `default_vocab_size − 1000` entries,
//! so ids run up to `default_vocab_size − 1` (131 071), the model's vocabulary.
//!
//! **Decoding** concatenates the raw bytes of the text tokens (special tokens yield nothing,
//! like mistral-common's `SpecialTokenPolicy.IGNORE`) and turns them into UTF-8 lossily, so a
//! character split across tokens reassembles. [`TekkenDecoder`] does the same incrementally.
//!
//! **Encoding** ([`Tekken::encode`], plain text only, no special tokens) splits the text with
//! the file's regex and merges bytes by rank as tiktoken does. Transcription does not need it:
//! the Voxtral Realtime prompt is fixed ids.
//!
//! All token bytes live in one buffer with offsets, so the 150 000-entry file loads with a
//! handful of allocations besides the JSON parse itself.

use crate::error::{Error, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Beginning of sequence, `<s>`.
pub const BOS: &str = "<s>";
/// End of sequence, `</s>`.
pub const EOS: &str = "</s>";
/// `[STREAMING_PAD]`: emitted in silence and while waiting out the delay (Voxtral Realtime).
pub const STREAMING_PAD: &str = "[STREAMING_PAD]";
/// `[STREAMING_WORD]`: word/emission-group marker (Voxtral Realtime), never printed.
pub const STREAMING_WORD: &str = "[STREAMING_WORD]";
/// `[AUDIO]`: audio placeholder of the offline Voxtral models.
pub const AUDIO: &str = "[AUDIO]";
/// `[BEGIN_AUDIO]`: start of an audio span in the offline Voxtral models.
pub const BEGIN_AUDIO: &str = "[BEGIN_AUDIO]";
/// `[TRANSCRIBE]`: transcription request of the offline Voxtral models.
pub const TRANSCRIBE: &str = "[TRANSCRIBE]";

/// Sanity bound on `default_num_special_tokens` (real files have 1000).
const MAX_SPECIAL: u64 = 1 << 20;

/// What the in-memory constructors name in their errors.
const IN_MEMORY: &str = "<in-memory tekken.json>";

/// `audio_encoding_config` of the `audio` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AudioEncodingConfig {
    /// Mel bins (128).
    pub num_mel_bins: u32,
    /// STFT hop in samples (160).
    pub hop_length: u32,
    /// STFT window in samples (400).
    pub window_size: u32,
}

/// The `audio` section of `tekken.json` (specs/voxtral-realtime.md §10.1), as mistral-common's
/// `AudioConfig`. The streaming fields are absent from the offline models' files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AudioSection {
    /// Input sample rate in Hz (16 000).
    pub sampling_rate: u32,
    /// Audio tokens (decoder positions) per second (12.5).
    pub frame_rate: f64,
    /// Mel front end.
    pub audio_encoding_config: AudioEncodingConfig,
    /// Offline models: pad the audio to multiples of this many seconds.
    #[serde(default)]
    pub chunk_length_s: Option<f64>,
    /// `"streaming"` (Voxtral Realtime) or `"instruct"` (the default when absent).
    #[serde(default = "default_transcription_format")]
    pub transcription_format: String,
    /// Default delay between audio and text (480 ms).
    #[serde(default)]
    pub transcription_delay_ms: Option<f64>,
    /// Streaming look-ahead (2.5 ms).
    #[serde(default)]
    pub streaming_look_ahead_ms: Option<f64>,
    /// Streaming look-back (52.5 ms).
    #[serde(default)]
    pub streaming_look_back_ms: Option<f64>,
    /// Audio tokens of zero padding before the audio (32).
    #[serde(default)]
    pub streaming_n_left_pad_tokens: Option<u32>,
}

fn default_transcription_format() -> String {
    "instruct".to_owned()
}

impl AudioSection {
    /// Whether the file describes a streaming model (`transcription_format == "streaming"`).
    pub fn is_streaming(&self) -> bool {
        self.transcription_format == "streaming"
    }

    /// Audio samples per audio token: `sampling_rate / frame_rate` (1280).
    pub fn samples_per_token(&self) -> u32 {
        (f64::from(self.sampling_rate) / self.frame_rate) as u32
    }

    /// Mel frames per audio token: `samples_per_token / hop_length` (8).
    pub fn frames_per_token(&self) -> u32 {
        self.samples_per_token() / self.audio_encoding_config.hop_length.max(1)
    }

    /// Audio tokens covering `delay_ms` of delay, by mistral-common's arithmetic
    /// (`AudioConfig.get_num_delay_tokens`): 480 ms → 6.
    pub fn num_delay_tokens(&self, delay_ms: f64) -> u32 {
        let samples = (delay_ms / 1000.0 * f64::from(self.sampling_rate)) as u64;
        let hop = u64::from(self.audio_encoding_config.hop_length.max(1));
        let frames = if samples.is_multiple_of(hop) {
            samples / hop
        } else {
            (samples as f64 / hop as f64 - 1.0).ceil() as u64
        };
        frames.div_ceil(u64::from(self.frames_per_token().max(1))) as u32
    }

    /// [`Self::num_delay_tokens`] of the file's `transcription_delay_ms`, if it has one.
    pub fn default_delay_tokens(&self) -> Option<u32> {
        self.transcription_delay_ms
            .map(|ms| self.num_delay_tokens(ms))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let enc = &self.audio_encoding_config;
        if !(self.frame_rate.is_finite() && self.frame_rate > 0.0) {
            return Err(format!(
                "audio.frame_rate must be positive, not {}",
                self.frame_rate
            ));
        }
        if self.sampling_rate == 0
            || enc.num_mel_bins == 0
            || enc.hop_length == 0
            || enc.window_size == 0
        {
            return Err(
                "audio: sampling_rate, num_mel_bins, hop_length and window_size must be positive"
                    .into(),
            );
        }
        if self.samples_per_token() < enc.hop_length {
            return Err(format!(
                "audio: one token ({} samples at frame_rate {}) is shorter than hop_length {}",
                self.samples_per_token(),
                self.frame_rate,
                enc.hop_length
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// file format (serde)

#[derive(Deserialize)]
struct RawFile<'a> {
    config: RawConfig,
    #[serde(borrow)]
    vocab: Vec<RawVocab<'a>>,
    special_tokens: Vec<RawSpecial>,
    #[serde(default)]
    audio: Option<AudioSection>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    num_vocab_tokens: Option<u64>,
    default_vocab_size: u64,
    default_num_special_tokens: u64,
    #[serde(default)]
    version: Option<String>,
}

/// One vocabulary entry; `token_str` (which may be null) is skipped, not allocated.
#[derive(Deserialize)]
struct RawVocab<'a> {
    rank: u64,
    #[serde(borrow)]
    token_bytes: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawSpecial {
    rank: u64,
    token_str: String,
    #[serde(default = "yes")]
    is_control: bool,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// tokenizer

/// A special token: its `token_str` and whether it is a control token.
#[derive(Debug, Clone)]
struct Special {
    name: String,
    is_control: bool,
}

/// Encoding tables, built on the first [`Tekken::encode`].
struct Encoder {
    regex: tokenizers::utils::SysRegex,
    ranks: HashMap<Vec<u8>, u32>,
}

struct Inner {
    path: PathBuf,
    n_special: u32,
    vocab_size: u32,
    /// Bytes of text token `r` are `bytes[offsets[r]..offsets[r + 1]]` (rank `r` = id − n_special).
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    specials: Vec<Special>,
    bos: u32,
    eos: u32,
    pattern: Option<String>,
    version: Option<String>,
    audio: Option<AudioSection>,
    encoder: OnceLock<std::result::Result<Encoder, String>>,
}

/// A loaded `tekken.json`. Cloning is cheap (the tables are shared).
#[derive(Clone)]
pub struct Tekken {
    inner: Arc<Inner>,
}

impl fmt::Debug for Tekken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tekken")
            .field("path", &self.inner.path)
            .field("version", &self.inner.version)
            .field("vocab_size", &self.inner.vocab_size)
            .field("num_special_tokens", &self.inner.n_special)
            .field("audio", &self.inner.audio)
            .finish_non_exhaustive()
    }
}

impl Tekken {
    /// Loads a `tekken.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tekken> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the contents of a `tekken.json` file (errors name an in-memory file).
    pub fn from_json_bytes(json: &[u8]) -> Result<Tekken> {
        Self::parse(json, Path::new(IN_MEMORY))
    }

    fn parse(json: &[u8], path: &Path) -> Result<Tekken> {
        let err = |message: String| Error::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let raw: RawFile<'_> = serde_json::from_slice(json).map_err(|e| {
            err(match e.classify() {
                serde_json::error::Category::Data => format!("not a tekken.json file: {e}"),
                _ => format!("not a JSON file: {e}"),
            })
        })?;
        Self::build(raw, path).map_err(err)
    }

    fn build(raw: RawFile<'_>, path: &Path) -> std::result::Result<Tekken, String> {
        let cfg = &raw.config;
        let n_special = cfg.default_num_special_tokens;
        let vocab_size = cfg.default_vocab_size;
        if vocab_size > u64::from(u32::MAX) {
            return Err(format!(
                "config.default_vocab_size {vocab_size} is too large"
            ));
        }
        if n_special > MAX_SPECIAL {
            return Err(format!(
                "config.default_num_special_tokens {n_special} is implausibly large"
            ));
        }
        if vocab_size <= n_special {
            return Err(format!(
                "config.default_vocab_size ({vocab_size}) must exceed default_num_special_tokens ({n_special})"
            ));
        }
        let n_text = (vocab_size - n_special) as usize;
        if let Some(declared) = cfg.num_vocab_tokens {
            if (raw.vocab.len() as u64) < declared {
                return Err(format!(
                    "vocab has {} entries but config.num_vocab_tokens declares {declared} (truncated file?)",
                    raw.vocab.len()
                ));
            }
        }
        if raw.vocab.len() < n_text {
            return Err(format!(
                "vocab has {} entries, fewer than default_vocab_size - default_num_special_tokens = {n_text}",
                raw.vocab.len()
            ));
        }

        // Text tokens: only the first n_text entries are reachable (mistral-common cuts there).
        let total: usize = raw.vocab[..n_text]
            .iter()
            .map(|v| v.token_bytes.len() / 4 * 3 + 3)
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(n_text + 1);
        offsets.push(0u32);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (i, entry) in raw.vocab[..n_text].iter().enumerate() {
            if entry.rank != i as u64 {
                return Err(format!(
                    "vocab entry {i} has rank {}: ranks must be 0, 1, 2, ... in order, without duplicates",
                    entry.rank
                ));
            }
            let start = bytes.len();
            b64.decode_vec(entry.token_bytes.as_bytes(), &mut bytes)
                .map_err(|e| {
                    format!(
                        "vocab entry {i}: token_bytes {:?} is not base64: {e}",
                        entry.token_bytes
                    )
                })?;
            let piece = &bytes[start..];
            if i < 256 && piece != [i as u8] {
                return Err(format!(
                    "vocab entry {i} must be the single byte 0x{i:02x}, not {piece:02x?}"
                ));
            }
            if piece.is_empty() {
                return Err(format!("vocab entry {i} has no bytes"));
            }
            offsets.push(
                u32::try_from(bytes.len()).map_err(|_| "vocab bytes exceed 4 GiB".to_owned())?,
            );
        }

        // Special tokens, filled up to n_special as mistral-common does.
        if raw.special_tokens.len() as u64 > n_special {
            return Err(format!(
                "{} special tokens, more than config.default_num_special_tokens ({n_special})",
                raw.special_tokens.len()
            ));
        }
        let mut specials = Vec::with_capacity(n_special as usize);
        let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(n_special as usize);
        for (i, s) in raw.special_tokens.iter().enumerate() {
            if s.rank != i as u64 {
                return Err(format!(
                    "special token entry {i} ({:?}) has rank {}: ranks must be 0, 1, 2, ... in order, without duplicates",
                    s.token_str, s.rank
                ));
            }
            if let Some(prev) = by_name.insert(&s.token_str, i) {
                return Err(format!(
                    "special tokens {prev} and {i} are both {:?}",
                    s.token_str
                ));
            }
            specials.push(Special {
                name: s.token_str.clone(),
                is_control: s.is_control,
            });
        }
        for i in specials.len()..n_special as usize {
            let name = format!("<SPECIAL_{i}>");
            if by_name.contains_key(name.as_str()) {
                return Err(format!("special token {name} is listed under another rank"));
            }
            specials.push(Special {
                name,
                is_control: true,
            });
        }
        let find = |name: &str| {
            specials
                .iter()
                .position(|s| s.name == name)
                .map(|i| i as u32)
        };
        let bos = find(BOS).ok_or_else(|| format!("no special token {BOS}"))?;
        let eos = find(EOS).ok_or_else(|| format!("no special token {EOS}"))?;

        if let Some(audio) = &raw.audio {
            audio.validate()?;
        }
        bytes.shrink_to_fit();
        Ok(Tekken {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                n_special: n_special as u32,
                vocab_size: vocab_size as u32,
                bytes,
                offsets,
                specials,
                bos,
                eos,
                pattern: raw.config.pattern,
                version: raw.config.version,
                audio: raw.audio,
                encoder: OnceLock::new(),
            }),
        })
    }

    /// The model's vocabulary size, `config.default_vocab_size` (131 072): ids are
    /// `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size as usize
    }

    /// Fails unless the tokenizer has exactly the model's `vocab_size` tokens.
    pub fn require_vocab_size(&self, vocab_size: usize) -> Result<()> {
        if self.vocab_size() == vocab_size {
            return Ok(());
        }
        Err(Error::Tokenizer {
            path: self.inner.path.clone(),
            message: format!(
                "{} tokens, but the model has {vocab_size}",
                self.vocab_size()
            ),
        })
    }

    /// Number of special tokens, `config.default_num_special_tokens` (1000): ids below it are
    /// special.
    pub fn num_special_tokens(&self) -> usize {
        self.inner.n_special as usize
    }

    /// `config.version` (`"v7"`, …), if present.
    pub fn version(&self) -> Option<&str> {
        self.inner.version.as_deref()
    }

    /// `config.pattern`, the pre-tokenizer regex, if present.
    pub fn pattern(&self) -> Option<&str> {
        self.inner.pattern.as_deref()
    }

    /// The `audio` section, if the file has one.
    pub fn audio(&self) -> Option<&AudioSection> {
        self.inner.audio.as_ref()
    }

    /// The file the tokenizer was loaded from (a placeholder for [`Self::from_json_bytes`]).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Id of the special token named `name` (its `token_str`, e.g. `"[STREAMING_PAD]"`).
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.inner
            .specials
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32)
    }

    /// Like [`Self::special_id`], with an error naming the file when the token is missing.
    pub fn require_special(&self, name: &str) -> Result<u32> {
        self.special_id(name).ok_or_else(|| Error::Tokenizer {
            path: self.inner.path.clone(),
            message: format!("no special token {name}"),
        })
    }

    /// `<s>` (1); every file has it (checked when loading).
    pub fn bos(&self) -> u32 {
        self.inner.bos
    }

    /// `</s>` (2); every file has it (checked when loading).
    pub fn eos(&self) -> u32 {
        self.inner.eos
    }

    /// `[STREAMING_PAD]` (32), or an error for files without it.
    pub fn streaming_pad(&self) -> Result<u32> {
        self.require_special(STREAMING_PAD)
    }

    /// `[STREAMING_WORD]` (33), or an error for files without it.
    pub fn streaming_word(&self) -> Result<u32> {
        self.require_special(STREAMING_WORD)
    }

    /// Whether `id` is a special token (`id < num_special_tokens()`).
    pub fn is_special(&self, id: u32) -> bool {
        id < self.inner.n_special
    }

    /// Whether `id` is a special token marked `is_control`.
    pub fn is_control(&self, id: u32) -> bool {
        self.inner
            .specials
            .get(id as usize)
            .is_some_and(|s| s.is_control)
    }

    /// Whether `id` is a text token (`num_special_tokens() <= id < vocab_size()`).
    pub fn is_text(&self, id: u32) -> bool {
        id >= self.inner.n_special && id < self.inner.vocab_size
    }

    /// The `token_str` of a special token, `None` for other ids.
    pub fn special_name(&self, id: u32) -> Option<&str> {
        self.inner
            .specials
            .get(id as usize)
            .map(|s| s.name.as_str())
    }

    /// Raw bytes of a text token; empty for special tokens and ids past the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let inner = &*self.inner;
        if !self.is_text(id) {
            return &[];
        }
        let r = (id - inner.n_special) as usize;
        &inner.bytes[inner.offsets[r] as usize..inner.offsets[r + 1] as usize]
    }

    /// A readable form of one token for logs: the special token's name, or the text token's
    /// bytes as lossy UTF-8, or `<id?>` past the vocabulary.
    pub fn piece(&self, id: u32) -> String {
        match self.special_name(id) {
            Some(name) => name.to_owned(),
            None if self.is_text(id) => String::from_utf8_lossy(self.token_bytes(id)).into_owned(),
            None => format!("<{id}?>"),
        }
    }

    /// Concatenated bytes of the text tokens among `ids` (special tokens and ids past the
    /// vocabulary yield nothing).
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// Decodes `ids` to text: the text tokens' bytes concatenated, then lossy UTF-8. Special
    /// tokens print nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        match String::from_utf8(self.decode_bytes(ids)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// An incremental decoder over this tokenizer.
    pub fn stream_decoder(&self) -> TekkenDecoder {
        TekkenDecoder::new(self)
    }

    fn encoder(&self) -> Result<&Encoder> {
        let inner = &*self.inner;
        let built = inner.encoder.get_or_init(|| {
            let pattern = inner.pattern.as_deref().ok_or("config has no pattern")?;
            let regex = tokenizers::utils::SysRegex::new(pattern)
                .map_err(|e| format!("config.pattern does not compile: {e}"))?;
            let n = inner.offsets.len() - 1;
            let mut ranks = HashMap::with_capacity(n);
            for r in 0..n {
                let piece = &inner.bytes[inner.offsets[r] as usize..inner.offsets[r + 1] as usize];
                if let Some(prev) = ranks.insert(piece.to_vec(), r as u32) {
                    return Err(format!("vocab entries {prev} and {r} have the same bytes"));
                }
            }
            Ok(Encoder { regex, ranks })
        });
        built.as_ref().map_err(|message| Error::Tokenizer {
            path: inner.path.clone(),
            message: message.clone(),
        })
    }

    /// Encodes plain text (no special tokens, no BOS) as tiktoken does: split with
    /// `config.pattern`, then merge each piece's bytes by rank. The first call builds the
    /// encoding tables (tens of milliseconds for the full vocabulary).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.encoder()?;
        let offset = self.inner.n_special;
        let mut out = Vec::new();
        for (start, end) in enc.regex.find_iter(text) {
            let piece = &text.as_bytes()[start..end];
            if let Some(&r) = enc.ranks.get(piece) {
                out.push(r + offset);
                continue;
            }
            let bounds = byte_pair_merge(&enc.ranks, piece);
            for w in bounds.windows(2) {
                let part = &piece[w[0]..w[1]];
                let r = enc.ranks.get(part).ok_or_else(|| Error::Tokenizer {
                    path: self.inner.path.clone(),
                    message: format!("cannot encode the bytes {part:02x?}: not in the vocabulary"),
                })?;
                out.push(r + offset);
            }
        }
        Ok(out)
    }
}

/// tiktoken's `_byte_pair_merge`: repeatedly merge the adjacent pair whose concatenation has
/// the lowest rank; returns the part boundaries (`0, …, piece.len()`).
fn byte_pair_merge(ranks: &HashMap<Vec<u8>, u32>, piece: &[u8]) -> Vec<usize> {
    if piece.len() < 2 {
        return vec![0, piece.len()];
    }
    let rank_of = |b: &[u8]| ranks.get(b).copied().unwrap_or(u32::MAX);
    // parts[i] = (start, rank of the merge of parts i and i + 1)
    let mut parts: Vec<(usize, u32)> = Vec::with_capacity(piece.len() + 1);
    for i in 0..piece.len() - 1 {
        parts.push((i, rank_of(&piece[i..i + 2])));
    }
    parts.push((piece.len() - 1, u32::MAX));
    parts.push((piece.len(), u32::MAX));
    let get = |parts: &[(usize, u32)], i: usize| {
        if i + 3 < parts.len() {
            rank_of(&piece[parts[i].0..parts[i + 3].0])
        } else {
            u32::MAX
        }
    };
    loop {
        let (mut best, mut at) = (u32::MAX, usize::MAX);
        for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
            if r < best {
                (best, at) = (r, i);
            }
        }
        if best == u32::MAX {
            break;
        }
        if at > 0 {
            parts[at - 1].1 = get(&parts, at - 1);
        }
        parts[at].1 = get(&parts, at);
        parts.remove(at + 1);
    }
    parts.into_iter().map(|(s, _)| s).collect()
}

/// Incremental decoding: push ids one by one and get the text they complete. An incomplete
/// UTF-8 sequence at the end is held back until its continuation bytes arrive; invalid bytes
/// become U+FFFD exactly as in [`Tekken::decode`], so the concatenated output of all pushes and
/// [`TekkenDecoder::finish`] equals `decode` of all ids.
#[derive(Debug, Clone)]
pub struct TekkenDecoder {
    tekken: Tekken,
    pending: Vec<u8>,
}

impl TekkenDecoder {
    /// A decoder with nothing pending.
    pub fn new(tekken: &Tekken) -> Self {
        TekkenDecoder {
            tekken: tekken.clone(),
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes (often empty: special tokens, or part of
    /// a multi-byte character).
    pub fn push(&mut self, id: u32) -> String {
        let bytes = self.tekken.token_bytes(id);
        if bytes.is_empty() {
            return String::new();
        }
        self.pending.extend_from_slice(bytes);
        self.take_complete()
    }

    /// Adds several tokens; returns the text they complete.
    pub fn push_all(&mut self, ids: &[u32]) -> String {
        for &id in ids {
            self.pending.extend_from_slice(self.tekken.token_bytes(id));
        }
        self.take_complete()
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flushes what is held back (an incomplete character becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Drops what is held back without emitting it.
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is the prefix from_utf8 just accepted.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranks(pieces: &[&[u8]]) -> HashMap<Vec<u8>, u32> {
        let mut m: HashMap<Vec<u8>, u32> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        for (i, p) in pieces.iter().enumerate() {
            m.insert(p.to_vec(), 256 + i as u32);
        }
        m
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tekken>();
        send_sync::<TekkenDecoder>();
    }

    #[test]
    fn bpe_merges_lowest_rank_first() {
        // "ab" (256) merges before "bc" (257); then "abc" (258) joins "ab" + "c".
        let r = ranks(&[b"ab", b"bc", b"abc"]);
        assert_eq!(byte_pair_merge(&r, b"abc"), vec![0, 3]);
        // Without "abc": "ab" | "c".
        let r = ranks(&[b"ab", b"bc"]);
        assert_eq!(byte_pair_merge(&r, b"abc"), vec![0, 2, 3]);
        // "bc" ranked first: "a" | "bc".
        let r = ranks(&[b"bc", b"ab"]);
        assert_eq!(byte_pair_merge(&r, b"abc"), vec![0, 1, 3]);
        assert_eq!(byte_pair_merge(&r, b"x"), vec![0, 1]);
        assert_eq!(byte_pair_merge(&r, b"xyz"), vec![0, 1, 2, 3]);
    }
}
