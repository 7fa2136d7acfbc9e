//! Whisper's tokenizer: GPT-2 byte-level BPE for text (from `tokenizer.json`, or
//! `vocab.json` + `merges.txt`, or the token bytes of a whisper.cpp model file) and the special
//! tokens, whose ids follow from the vocabulary
//! size exactly as openai-whisper lays them out (see specs/whisper.md §5).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Model;

/// Language codes in token order (openai-whisper `LANGUAGES`); v3 vocabularies add `yue`.
pub const LANGUAGES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// English names of [`LANGUAGES`], in the same order (openai-whisper's, lowercase).
pub const LANGUAGE_NAMES: [&str; 100] = [
    "english",
    "chinese",
    "german",
    "spanish",
    "russian",
    "korean",
    "french",
    "japanese",
    "portuguese",
    "turkish",
    "polish",
    "catalan",
    "dutch",
    "arabic",
    "swedish",
    "italian",
    "indonesian",
    "hindi",
    "finnish",
    "vietnamese",
    "hebrew",
    "ukrainian",
    "greek",
    "malay",
    "czech",
    "romanian",
    "danish",
    "hungarian",
    "tamil",
    "norwegian",
    "thai",
    "urdu",
    "croatian",
    "bulgarian",
    "lithuanian",
    "latin",
    "maori",
    "malayalam",
    "welsh",
    "slovak",
    "telugu",
    "persian",
    "latvian",
    "bengali",
    "serbian",
    "azerbaijani",
    "slovenian",
    "kannada",
    "estonian",
    "macedonian",
    "breton",
    "basque",
    "icelandic",
    "armenian",
    "nepali",
    "mongolian",
    "bosnian",
    "kazakh",
    "albanian",
    "swahili",
    "galician",
    "marathi",
    "punjabi",
    "sinhala",
    "khmer",
    "shona",
    "yoruba",
    "somali",
    "afrikaans",
    "occitan",
    "georgian",
    "belarusian",
    "tajik",
    "sindhi",
    "gujarati",
    "amharic",
    "yiddish",
    "lao",
    "uzbek",
    "faroese",
    "haitian creole",
    "pashto",
    "turkmen",
    "nynorsk",
    "maltese",
    "sanskrit",
    "luxembourgish",
    "myanmar",
    "tibetan",
    "tagalog",
    "malagasy",
    "assamese",
    "tatar",
    "hawaiian",
    "lingala",
    "hausa",
    "bashkir",
    "javanese",
    "sundanese",
    "cantonese",
];

/// English name of a language code (`"en"` → `"english"`).
pub fn language_name(code: &str) -> Option<&'static str> {
    LANGUAGES
        .iter()
        .position(|&c| c == code)
        .map(|i| LANGUAGE_NAMES[i])
}

/// The code of a language given by code or by English name, case-insensitively
/// (`"English"` → `"en"`); openai-whisper's aliases such as "castilian" are not accepted.
pub fn language_code(code_or_name: &str) -> Option<&'static str> {
    let wanted = code_or_name.to_lowercase();
    LANGUAGES
        .iter()
        .zip(LANGUAGE_NAMES)
        .find(|(code, name)| **code == wanted || *name == wanted)
        .map(|(code, _)| *code)
}

/// Ids of the special tokens of one vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Multilingual (language and task tokens are meaningful).
    pub multilingual: bool,
    /// Number of language tokens (99, or 100 for v3).
    pub n_languages: u32,
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|translate|>`.
    pub translate: u32,
    /// `<|transcribe|>`.
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`.
    pub sot_prev: u32,
    /// `<|nospeech|>`.
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp t means (t − timestamp_begin) × 20 ms.
    pub timestamp_begin: u32,
}

impl SpecialTokens {
    /// The layout for a vocabulary of `n_vocab` tokens (51864 .en, 51865 v1/v2, 51866 v3).
    pub fn for_vocab(n_vocab: usize) -> Self {
        let n_vocab = n_vocab as u32;
        let multilingual = n_vocab >= 51865;
        let n_languages = n_vocab - 51765 - multilingual as u32;
        let eot = 50256 + multilingual as u32;
        let sot = eot + 1;
        let translate = sot + 1 + n_languages;
        Self {
            n_vocab,
            multilingual,
            n_languages,
            eot,
            sot,
            translate,
            transcribe: translate + 1,
            sot_lm: translate + 2,
            sot_prev: translate + 3,
            no_speech: translate + 4,
            no_timestamps: translate + 5,
            timestamp_begin: translate + 6,
        }
    }

    /// Token of a language code, if this vocabulary has it.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        let index = LANGUAGES.iter().position(|&l| l == code)? as u32;
        (index < self.n_languages).then_some(self.sot + 1 + index)
    }

    /// Language code of a language token.
    pub fn language_of(&self, token: u32) -> Option<&'static str> {
        let index = token.checked_sub(self.sot + 1)?;
        (index < self.n_languages).then(|| LANGUAGES[index as usize])
    }

    /// All language tokens, in id order.
    pub fn language_tokens(&self) -> std::ops::Range<u32> {
        self.sot + 1..self.sot + 1 + self.n_languages
    }
}

/// Text ↔ token ids for one Whisper vocabulary.
pub struct Tokenizer {
    bpe: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Each text token's bytes, when built from a whisper.cpp file (decoding reads them: its
    /// lossy tokens are not in the BPE).
    id_bytes: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, or `vocab.json` + `merges.txt`, from a checkpoint directory.
    pub fn from_dir(dir: &Path, n_vocab: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let bpe = if json.is_file() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| Error::Tokenizer {
                path: json.clone(),
                message: e.to_string(),
            })?
        } else if vocab.is_file() && merges.is_file() {
            let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .build()
                .map_err(|e| Error::Tokenizer {
                    path: vocab.clone(),
                    message: e.to_string(),
                })?;
            let mut tok = tokenizers::Tokenizer::new(model);
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            tok.with_decoder(Some(ByteLevelDecoder::default()));
            tok
        } else {
            return Err(Error::MissingFile {
                dir: dir.to_owned(),
                file: "tokenizer.json".into(),
                hint: " (nor vocab.json + merges.txt)".into(),
            });
        };
        Ok(Self {
            bpe,
            special: SpecialTokens::for_vocab(n_vocab),
            id_bytes: None,
        })
    }

    /// Builds the tokenizer from the token bytes of a whisper.cpp model file (id = BPE rank, as
    /// in openai-whisper's tiktoken files). Such files carry no merge list; it is derived from
    /// the ranks as transformers' tiktoken converter does: every split of a token into two
    /// lower-ranked tokens is a merge, ordered by the token's rank, then by the parts' ranks.
    /// Byte-level BPE with these merges encodes as tiktoken does. Special tokens (ids from the
    /// end-of-text id on) are left out of the BPE; their ids come from the vocabulary size.
    ///
    /// whisper.cpp's converted files are lossy: every token that is not valid UTF-8 on its own
    /// (1476 of the multilingual vocabulary's, 344 of GPT-2's) was stored as U+FFFD. The 256
    /// single-byte tokens are restored (their ranks are GPT-2's byte order); the other lossy
    /// tokens (duplicated byte strings) stay out of the BPE and decode to U+FFFD, as in
    /// whisper.cpp. A `tokenizer.json` beside the file avoids both ([`WhisperPipeline`]).
    ///
    /// [`WhisperPipeline`]: super::WhisperPipeline
    pub fn from_token_bytes(tokens: &[Vec<u8>], n_vocab: usize, source: &Path) -> Result<Self> {
        let special = SpecialTokens::for_vocab(n_vocab);
        let fail = |message: String| Error::Tokenizer {
            path: source.to_owned(),
            message,
        };
        if tokens.len() < 256 {
            return Err(fail(format!(
                "the vocabulary has {} tokens; a byte-level BPE needs at least the 256 bytes",
                tokens.len()
            )));
        }
        let byte_char = gpt2_byte_chars();
        let to_string =
            |bytes: &[u8]| -> String { bytes.iter().map(|&b| byte_char[b as usize]).collect() };
        let mut id_bytes: Vec<Vec<u8>> = tokens.to_vec();
        for (id, b) in gpt2_byte_order().into_iter().enumerate() {
            id_bytes[id] = vec![b];
        }
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        for t in id_bytes.iter().take(special.eot as usize) {
            *seen.entry(t.as_slice()).or_default() += 1;
        }
        let ranks: HashMap<&[u8], u32> = id_bytes
            .iter()
            .take(special.eot as usize)
            .enumerate()
            .filter(|(_, t)| !t.is_empty() && seen[t.as_slice()] == 1)
            .map(|(id, t)| (t.as_slice(), id as u32))
            .collect();
        let mut merges = Vec::new();
        let mut ordered: Vec<(&[u8], u32)> = ranks.iter().map(|(t, r)| (*t, *r)).collect();
        ordered.sort_unstable_by_key(|&(_, r)| r);
        for (token, rank) in ordered.iter().filter(|(t, _)| t.len() > 1) {
            let mut local: Vec<(u32, u32, usize)> = (1..token.len())
                .filter_map(|i| {
                    let left = *ranks.get(&token[..i])?;
                    let right = *ranks.get(&token[i..])?;
                    (left < *rank && right < *rank).then_some((left, right, i))
                })
                .collect();
            local.sort_unstable();
            merges.extend(
                local
                    .into_iter()
                    .map(|(_, _, i)| (to_string(&token[..i]), to_string(&token[i..]))),
            );
        }
        let vocab: Vocab = ranks.iter().map(|(t, &r)| (to_string(t), r)).collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut bpe = tokenizers::Tokenizer::new(model);
        bpe.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        bpe.with_decoder(Some(ByteLevelDecoder::default()));
        id_bytes.truncate(special.eot as usize);
        Ok(Self {
            bpe,
            special,
            id_bytes: Some(id_bytes),
        })
    }

    /// The BPE tokens' bytes by id (special tokens excluded), as whisper.cpp files store the
    /// vocabulary: the inverse of [`Tokenizer::from_token_bytes`].
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let char_byte = gpt2_char_bytes();
        if let Some(table) = &self.id_bytes {
            return table.clone();
        }
        let vocab = self.bpe.get_model().get_vocab();
        let mut tokens =
            vec![Vec::new(); vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0)];
        for (piece, id) in vocab {
            // Pieces outside the byte alphabet (none in Whisper's) keep their UTF-8 bytes.
            tokens[id as usize] = piece
                .chars()
                .flat_map(|c| match char_byte.get(&c) {
                    Some(&b) => vec![b],
                    None => c.to_string().into_bytes(),
                })
                .collect();
        }
        tokens
    }

    /// The special-token layout.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Text → ids (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .bpe
            .encode(text, false)
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids → text. Special and timestamp tokens are dropped; bytes that do not form valid UTF-8
    /// become U+FFFD, as openai-whisper's `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&t| t < self.special.eot)
            .collect();
        if let Some(table) = &self.id_bytes {
            let bytes: Vec<u8> = text
                .iter()
                .flat_map(|&t| table.get(t as usize).into_iter().flatten().copied())
                .collect();
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        self.bpe
            .decode(&text, false)
            .map_err(|e| Error::InvalidRequest(format!("cannot detokenize: {e}")))
    }

    /// Ids → text as openai-whisper's `Tokenizer.decode`: timestamps are dropped, other special
    /// tokens are written by name (`<|en|>`, ...). Used for a decode's text and compression ratio.
    pub fn decode_with_specials(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        let mut run = Vec::new();
        for &t in ids.iter().filter(|&&t| t < self.special.timestamp_begin) {
            if t < self.special.eot {
                run.push(t);
                continue;
            }
            out.push_str(&self.decode(&run)?);
            run.clear();
            out.push_str(&self.special_name(t));
        }
        out.push_str(&self.decode(&run)?);
        Ok(out)
    }

    /// The bytes of `ids`, special and timestamp tokens written by name (openai-whisper's
    /// `decode_with_timestamps` before its UTF-8 decoding).
    fn bytes_with_specials(&self, ids: &[u32], char_byte: &HashMap<char, u8>) -> Vec<u8> {
        let mut out = Vec::new();
        for &t in ids {
            if t >= self.special.eot {
                out.extend_from_slice(self.special_name(t).as_bytes());
            } else if let Some(table) = &self.id_bytes {
                out.extend_from_slice(table.get(t as usize).map_or(&[][..], Vec::as_slice));
            } else if let Some(piece) = self.bpe.id_to_token(t) {
                for c in piece.chars() {
                    match char_byte.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
            }
        }
        out
    }

    /// Splits tokens into words as openai-whisper's `split_to_word_tokens`: at every token
    /// that completes valid UTF-8 for languages written without spaces (zh, ja, th, lo, my,
    /// yue), else at leading spaces, punctuation and special tokens. Returns (word, tokens).
    pub fn split_to_word_tokens(&self, tokens: &[u32], language: &str) -> Vec<(String, Vec<u32>)> {
        let subwords = self.split_tokens_on_unicode(tokens);
        if ["zh", "ja", "th", "lo", "my", "yue"].contains(&language) {
            return subwords;
        }
        let mut words: Vec<(String, Vec<u32>)> = Vec::new();
        for (subword, subword_tokens) in subwords {
            let special = subword_tokens[0] >= self.special.eot;
            let with_space = subword.starts_with(' ');
            // Python's `subword.strip() in string.punctuation` is a substring test.
            let punctuation = PUNCTUATION.contains(subword.trim());
            match words.last_mut() {
                Some((word, word_tokens)) if !(special || with_space || punctuation) => {
                    word.push_str(&subword);
                    word_tokens.extend(subword_tokens);
                }
                _ => words.push((subword, subword_tokens)),
            }
        }
        words
    }

    /// openai-whisper's `split_tokens_on_unicode`: a token ends a piece when the text so far
    /// decodes without U+FFFD, or when its U+FFFD is one of the full text's own.
    fn split_tokens_on_unicode(&self, tokens: &[u32]) -> Vec<(String, Vec<u32>)> {
        let char_byte = gpt2_char_bytes();
        let decode = |ids: &[u32]| {
            String::from_utf8_lossy(&self.bytes_with_specials(ids, &char_byte)).into_owned()
        };
        let full: Vec<char> = decode(tokens).chars().collect();
        let mut pieces = Vec::new();
        let mut current = Vec::new();
        let mut offset = 0;
        for &t in tokens {
            current.push(t);
            let decoded = decode(&current);
            let complete = match decoded.chars().position(|c| c == '\u{fffd}') {
                None => true,
                Some(i) => full.get(offset + i) == Some(&'\u{fffd}'),
            };
            if complete {
                offset += decoded.chars().count();
                pieces.push((decoded, std::mem::take(&mut current)));
            }
        }
        pieces
    }

    /// Name of a special token as openai-whisper writes it.
    pub fn special_name(&self, t: u32) -> String {
        let s = &self.special;
        if let Some(code) = s.language_of(t) {
            return format!("<|{code}|>");
        }
        let name = match t {
            t if t == s.eot => "endoftext",
            t if t == s.sot => "startoftranscript",
            t if t == s.translate => "translate",
            t if t == s.transcribe => "transcribe",
            t if t == s.sot_lm => "startoflm",
            t if t == s.sot_prev => "startofprev",
            t if t == s.no_speech => "nospeech",
            t if t == s.no_timestamps => "notimestamps",
            t if t >= s.timestamp_begin => {
                return format!("<|{:.2}|>", (t - s.timestamp_begin) as f32 * 0.02)
            }
            // Unused slots between the language tokens and <|translate|> (.en vocabularies).
            _ => return format!("<|{t}|>"),
        };
        format!("<|{name}|>")
    }

    /// The tokens openai-whisper suppresses as non-speech (`suppress_tokens = "-1"`): symbols
    /// and music signs, with and without a leading space, plus the first tokens of " -" and " '".
    pub fn non_speech_tokens(&self) -> Result<Vec<u32>> {
        if self.id_bytes.is_some() {
            // A whisper.cpp vocabulary cannot encode the music signs exactly (its partial-UTF-8
            // tokens are lost); the set is a constant of each Whisper vocabulary.
            return Ok(if self.special.multilingual {
                NON_SPEECH_MULTILINGUAL.to_vec()
            } else {
                NON_SPEECH_GPT2.to_vec()
            });
        }
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        let misc = ["♩", "♪", "♫", "♬", "♭", "♮", "♯"];
        let mut result = vec![self.encode(" -")?[0], self.encode(" '")?[0]];
        for symbol in symbols.iter().map(String::as_str).chain(misc) {
            for text in [symbol.to_string(), format!(" {symbol}")] {
                let tokens = self.encode(&text)?;
                if tokens.len() == 1 || misc.contains(&symbol) {
                    result.push(tokens[0]);
                }
            }
        }
        result.sort_unstable();
        result.dedup();
        Ok(result)
    }
}

/// openai-whisper's non-speech tokens of the multilingual vocabulary (v1–v3), as its
/// `non_speech_tokens` derives them (checked against the reference in the tests).
/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

const NON_SPEECH_MULTILINGUAL: [u32; 82] = [
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359,
    503, 522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268,
    3536, 3846, 3961, 4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331,
    12562, 13793, 14157, 14635, 15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675, 22520,
    26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470, 36865, 42863, 47425, 49870, 50254,
];

/// The same for the English-only (GPT-2) vocabulary.
const NON_SPEECH_GPT2: [u32; 84] = [
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357,
    366, 438, 532, 685, 705, 796, 930, 1058, 1220, 1267, 1279, 1303, 1343, 1377, 1391, 1635, 1782,
    1875, 2162, 2361, 2488, 3467, 4008, 4211, 4600, 4808, 5299, 5855, 6329, 7203, 9609, 9959,
    10563, 10786, 11420, 11709, 11907, 13163, 13697, 13700, 14808, 15306, 16410, 16791, 17992,
    19203, 19510, 20724, 22305, 22935, 27007, 30109, 30420, 33409, 34949, 40283, 40493, 40549,
    47282, 49146,
];

/// Whether GPT-2's byte alphabet keeps byte `b` as its own character.
fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes of ranks 0..256 of GPT-2's (and Whisper's) vocabularies: the printable bytes,
/// then the others, each in byte order (`bytes_to_unicode`'s order).
fn gpt2_byte_order() -> [u8; 256] {
    let mut order = [0u8; 256];
    let bytes = (0..=255u8)
        .filter(|&b| printable(b))
        .chain((0..=255u8).filter(|&b| !printable(b)));
    for (slot, b) in order.iter_mut().zip(bytes) {
        *slot = b;
    }
    order
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`): printable Latin-1 bytes map
/// to themselves, the others to U+0100 onwards in byte order.
pub(crate) fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below the surrogates")
        };
    }
    table
}

/// The inverse of [`gpt2_byte_chars`]: character → byte.
pub(crate) fn gpt2_char_bytes() -> HashMap<char, u8> {
    gpt2_byte_chars()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}
