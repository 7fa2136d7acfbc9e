//! Tekken tokenizer (`tekken.json`, specs/voxtral-realtime.md §11, §13, §10.1): loading, id
//! mapping, batch and incremental decoding, encoding, and the errors of broken files. Most
//! tests build a small real-style file (1000 specials, the 256 single bytes first, the Voxtral
//! Realtime audio section) with serde_json.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use voxide_models::tekken::{Tekken, TekkenDecoder};
use voxide_models::Error;

/// tekken's pre-tokenizer regex (as in mistral-common's tekken files).
const PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Multi-byte pieces after the 256 single bytes (rank 256 + index, id 1256 + index).
const PIECES: &[&[u8]] = &[
    b"he",       // 256
    b"ll",       // 257
    b"hello",    // 258
    b" w",       // 259
    b" world",   // 260
    b"caf\xc3",  // 261: "café" split inside the é (C3 A9)
    b"\xa9!",    // 262
    b"\xe2\x82", // 263: the first two bytes of € (E2 82 AC)
    b"or",       // 264
];

fn b64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &b)| a | ((b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The special tokens of §11 at their ids; ranks without a known name get `<SPECIAL_i>`.
fn specials(n: usize) -> Vec<Value> {
    let named = [
        (0, "<unk>"),
        (1, "<s>"),
        (2, "</s>"),
        (3, "[INST]"),
        (4, "[/INST]"),
        (24, "[AUDIO]"),
        (25, "[BEGIN_AUDIO]"),
        (32, "[STREAMING_PAD]"),
        (33, "[STREAMING_WORD]"),
        (34, "[TRANSCRIBE]"),
    ];
    (0..n)
        .map(|i| {
            let name = named
                .iter()
                .find(|(id, _)| *id == i)
                .map(|(_, s)| s.to_string())
                .unwrap_or_else(|| format!("<SPECIAL_{i}>"));
            json!({"rank": i, "token_str": name, "is_control": true})
        })
        .collect()
}

fn vocab() -> Vec<Value> {
    let mut v: Vec<Value> = (0..256)
        .map(|b| {
            let s = if b < 128 {
                Value::String(char::from(b as u8).to_string())
            } else {
                Value::Null
            };
            json!({"rank": b, "token_bytes": b64(&[b as u8]), "token_str": s})
        })
        .collect();
    for (i, p) in PIECES.iter().enumerate() {
        let s = std::str::from_utf8(p)
            .map(Value::from)
            .unwrap_or(Value::Null);
        v.push(json!({"rank": 256 + i, "token_bytes": b64(p), "token_str": s}));
    }
    v
}

/// A real-style file: 1000 specials (35 listed, the rest filled in), all of [`vocab`].
fn real_style() -> Value {
    let vocab = vocab();
    json!({
        "config": {
            "pattern": PATTERN,
            "num_vocab_tokens": vocab.len(),
            "default_vocab_size": 1000 + vocab.len(),
            "default_num_special_tokens": 1000,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": specials(35),
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": null,
            "transcription_delay_ms": 480,
            "streaming_look_ahead_ms": 2.5,
            "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 32,
            "transcription_format": "streaming",
        },
    })
}

fn load(v: &Value) -> Tekken {
    Tekken::from_json_bytes(&serde_json::to_vec(v).unwrap()).unwrap()
}

/// The id of multi-byte piece `i` of [`PIECES`].
fn piece(i: usize) -> u32 {
    1256 + i as u32
}

/// The id of the single byte `b`.
fn byte(b: u8) -> u32 {
    1000 + b as u32
}

#[test]
fn loads_ids_and_special_tokens() {
    let t = load(&real_style());
    assert_eq!(t.num_special_tokens(), 1000);
    assert_eq!(t.vocab_size(), 1000 + 256 + PIECES.len());
    assert_eq!(t.version(), Some("v7"));
    assert_eq!(t.pattern(), Some(PATTERN));
    assert_eq!((t.bos(), t.eos()), (1, 2));
    assert_eq!(t.streaming_pad().unwrap(), 32);
    assert_eq!(t.streaming_word().unwrap(), 33);
    assert_eq!(t.special_id("[AUDIO]"), Some(24));
    assert_eq!(t.special_id("[BEGIN_AUDIO]"), Some(25));
    assert_eq!(t.special_id("[TRANSCRIBE]"), Some(34));
    // Ranks past the listed 35 are filled in as mistral-common does.
    assert_eq!(t.special_id("<SPECIAL_999>"), Some(999));
    assert_eq!(t.special_name(500), Some("<SPECIAL_500>"));
    assert_eq!(t.special_id("[NOPE]"), None);
    let e = t.require_special("[NOPE]").unwrap_err().to_string();
    assert!(e.contains("[NOPE]") && !e.contains('\n'), "{e}");
    assert!(t.is_special(999) && !t.is_special(1000));
    assert!(t.is_control(32) && !t.is_control(1000));
    assert!(t.is_text(1000) && !t.is_text(999) && !t.is_text(t.vocab_size() as u32));
    assert_eq!(t.piece(32), "[STREAMING_PAD]");
    assert_eq!(t.piece(piece(2)), "hello");
}

#[test]
fn audio_section() {
    let t = load(&real_style());
    let a = t.audio().expect("audio section");
    assert_eq!(a.sampling_rate, 16000);
    assert_eq!(a.frame_rate, 12.5);
    assert_eq!(a.audio_encoding_config.num_mel_bins, 128);
    assert_eq!(a.audio_encoding_config.hop_length, 160);
    assert_eq!(a.audio_encoding_config.window_size, 400);
    assert_eq!(a.transcription_delay_ms, Some(480.0));
    assert_eq!(a.streaming_look_ahead_ms, Some(2.5));
    assert_eq!(a.streaming_look_back_ms, Some(52.5));
    assert_eq!(a.streaming_n_left_pad_tokens, Some(32));
    assert_eq!(a.chunk_length_s, None);
    assert!(a.is_streaming());
    assert_eq!(a.samples_per_token(), 1280);
    assert_eq!(a.frames_per_token(), 8);
    assert_eq!(a.default_delay_tokens(), Some(6));
    assert_eq!(a.num_delay_tokens(80.0), 1);
    assert_eq!(a.num_delay_tokens(2400.0), 30);

    let mut v = real_style();
    v.as_object_mut().unwrap().remove("audio");
    assert!(load(&v).audio().is_none());
}

#[test]
fn id_1000_is_byte_zero_and_specials_are_offset() {
    let t = load(&real_style());
    assert_eq!(t.token_bytes(1000), &[0x00]);
    assert_eq!(t.token_bytes(1255), &[0xff]);
    assert_eq!(t.token_bytes(byte(b'A')), b"A");
    assert_eq!(t.token_bytes(piece(4)), b" world");
    assert_eq!(t.decode(&[1000]), "\0");
    assert_eq!(t.decode(&[byte(b'A')]), "A");
    // Ids below 1000 are special tokens, never vocab entries.
    assert_eq!(t.token_bytes(65), b"");
    assert_eq!(t.token_bytes(0), b"");
    // Past the vocabulary: nothing.
    assert_eq!(t.token_bytes(t.vocab_size() as u32), b"");
    assert_eq!(t.decode(&[u32::MAX, byte(b'x')]), "x");
}

#[test]
fn control_tokens_print_nothing() {
    let t = load(&real_style());
    let all_specials: Vec<u32> = (0..1000).collect();
    assert_eq!(t.decode(&all_specials), "");
    let ids = [1, 32, 32, piece(2), 33, piece(4), 32, 2];
    assert_eq!(t.decode(&ids), "hello world");
    let mut d = t.stream_decoder();
    let parts: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    assert_eq!(parts, ["", "", "", "hello", "", " world", "", ""]);
    assert_eq!(d.finish(), "");
}

#[test]
fn utf8_split_across_tokens_batch() {
    let t = load(&real_style());
    assert_eq!(t.decode(&[piece(5), piece(6)]), "café!");
    assert_eq!(t.decode(&[piece(7), byte(0xac)]), "€");
    // A special token between the halves does not break the character.
    assert_eq!(t.decode(&[piece(5), 32, piece(6)]), "café!");
    // A lone half is lossy.
    assert_eq!(t.decode(&[piece(5)]), "caf\u{fffd}");
    assert_eq!(t.decode_bytes(&[piece(5), piece(6)]), "café!".as_bytes());
}

#[test]
fn utf8_split_across_tokens_incremental() {
    let t = load(&real_style());
    let mut d = TekkenDecoder::new(&t);
    assert_eq!(d.push(piece(5)), "caf");
    assert!(d.has_pending());
    assert_eq!(d.push(33), "");
    assert_eq!(d.push(piece(6)), "é!");
    assert!(!d.has_pending());
    // € one byte at a time.
    assert_eq!(d.push(byte(0xe2)), "");
    assert_eq!(d.push(byte(0x82)), "");
    assert_eq!(d.push(byte(0xac)), "€");
    // A 4-byte character (U+1F600) one byte at a time.
    let out: Vec<String> = "😀".bytes().map(|b| d.push(byte(b))).collect();
    assert_eq!(out, ["", "", "", "😀"]);
    assert_eq!(d.finish(), "");
}

#[test]
fn finish_flushes_an_incomplete_character() {
    let t = load(&real_style());
    let mut d = t.stream_decoder();
    assert_eq!(d.push(piece(7)), "");
    assert_eq!(d.finish(), "\u{fffd}");
    assert!(!d.has_pending());
    // After finish the decoder starts afresh.
    assert_eq!(d.push(byte(b'a')), "a");
    d.push(byte(0xc3));
    d.reset();
    assert_eq!(d.push(byte(b'b')), "b");
}

#[test]
fn incremental_equals_batch_with_invalid_bytes() {
    let t = load(&real_style());
    // Invalid lead byte, lone continuation bytes, a truncated sequence followed by ASCII,
    // an overlong encoding, a surrogate, and valid text around them.
    let bytes: &[u8] = b"a\xffb\x80\x80c\xe2\x82d\xc0\xafe\xed\xa0\x80f\xf0\x9f\x98\x80g\xe2";
    let mut ids: Vec<u32> = bytes.iter().map(|&b| byte(b)).collect();
    ids.splice(3..3, [32, piece(5), piece(6), 1]);
    let batch = t.decode(&ids);
    let mut d = t.stream_decoder();
    let mut streamed: String = ids.iter().map(|&id| d.push(id)).collect();
    streamed.push_str(&d.finish());
    assert_eq!(streamed, batch);
    assert!(
        batch.starts_with("a\u{fffd}bcafé!\u{fffd}\u{fffd}c\u{fffd}d"),
        "{batch:?}"
    );
    assert!(batch.ends_with("f😀g\u{fffd}"), "{batch:?}");
    // push_all gives the same.
    let mut d = t.stream_decoder();
    let mut all = d.push_all(&ids);
    all.push_str(&d.finish());
    assert_eq!(all, batch);
}

#[test]
fn vocab_is_cut_to_default_vocab_size() {
    let mut v = real_style();
    // Keep the single bytes and the first two pieces only.
    v["config"]["default_vocab_size"] = json!(1000 + 258);
    let t = load(&v);
    assert_eq!(t.vocab_size(), 1258);
    assert_eq!(t.token_bytes(piece(1)), b"ll");
    assert_eq!(t.token_bytes(piece(2)), b"");
    assert_eq!(t.decode(&[piece(0), piece(2)]), "he");
    // Entries past the cut are not even decoded (mistral-common ignores them too).
    v["vocab"][262]["token_bytes"] = json!("***");
    v["vocab"][262]["rank"] = json!(7);
    load(&v);
}

#[test]
fn token_str_may_be_null_or_missing() {
    let mut v = real_style();
    v["vocab"][65]["token_str"] = Value::Null;
    v["vocab"][66].as_object_mut().unwrap().remove("token_str");
    assert_eq!(load(&v).decode(&[byte(b'A'), byte(b'B')]), "AB");
}

#[test]
fn short_special_list_is_filled_and_is_control_defaults() {
    let mut v = real_style();
    v["special_tokens"] = json!([
        {"rank": 0, "token_str": "<unk>", "is_control": true},
        {"rank": 1, "token_str": "<s>", "is_control": true},
        {"rank": 2, "token_str": "</s>"},
    ]);
    let t = load(&v);
    assert_eq!(t.special_name(3), Some("<SPECIAL_3>"));
    assert!(t.is_control(2) && t.is_control(3));
    assert!(t.streaming_pad().is_err());
}

#[test]
fn encode_plain_text() {
    let t = load(&real_style());
    // "hello" is one token; " world" too; "!" a single byte.
    assert_eq!(
        t.encode("hello world!").unwrap(),
        [piece(2), piece(4), byte(b'!')]
    );
    // "hell" is not a token: merges "he" + "ll" by rank.
    assert_eq!(t.encode("hell").unwrap(), [piece(0), piece(1)]);
    // " wor": " w" (rank 259) merges before "or" (rank 264), leaving " w" + "or".
    assert_eq!(t.encode(" wor").unwrap(), [piece(3), piece(8)]);
    assert_eq!(t.encode("").unwrap(), Vec::<u32>::new());
    for text in ["hello world", "Grüße, 世界! 😀\n\n  x  ", "café! €5 1234"] {
        let ids = t.encode(text).unwrap();
        assert!(ids.iter().all(|&id| t.is_text(id)));
        assert_eq!(t.decode(&ids), text);
    }
    // Without a pattern encoding fails cleanly, decoding still works.
    let mut v = real_style();
    v["config"].as_object_mut().unwrap().remove("pattern");
    let t = load(&v);
    assert!(t.encode("x").unwrap_err().to_string().contains("pattern"));
    assert_eq!(t.decode(&[piece(2)]), "hello");
}

// ---------------------------------------------------------------------------------------------
// errors

/// The error message of parsing `json`, checked to be one line naming the in-memory source.
fn error_of(json: &[u8]) -> String {
    let e = Tekken::from_json_bytes(json).unwrap_err();
    assert!(matches!(e, Error::Tokenizer { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

fn error_of_value(v: &Value) -> String {
    error_of(&serde_json::to_vec(v).unwrap())
}

fn without(key: &str) -> Value {
    let mut v = real_style();
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn not_json_is_an_error() {
    for bad in [
        &b"hello"[..],
        b"",
        b"{\"config\": ",
        b"\xff\xfe",
        b"{\"vocab\": [}",
    ] {
        let msg = error_of(bad);
        assert!(msg.contains("not a JSON file"), "{msg}");
    }
}

#[test]
fn json_that_is_not_tekken_is_an_error() {
    for (v, what) in [
        (json!([1, 2, 3]), ""),
        (json!({"model": {"type": "BPE"}}), ""),
        (without("vocab"), "vocab"),
        (without("special_tokens"), "special_tokens"),
        (without("config"), "config"),
    ] {
        let msg = error_of_value(&v);
        assert!(
            msg.contains("not a tekken.json file") && msg.contains(what),
            "{msg}"
        );
    }
    let mut v = real_style();
    v["config"]
        .as_object_mut()
        .unwrap()
        .remove("default_vocab_size");
    assert!(error_of_value(&v).contains("default_vocab_size"));
    let mut v = real_style();
    v["vocab"][3]["token_bytes"] = json!(12);
    assert!(error_of_value(&v).contains("not a tekken.json file"));
}

#[test]
fn bad_base64_is_an_error() {
    for bad in ["***", "QQ", "QQ=", "Q===", "QUJD!"] {
        let mut v = real_style();
        v["vocab"][258]["token_bytes"] = json!(bad);
        let msg = error_of_value(&v);
        assert!(
            msg.contains("vocab entry 258") && msg.contains("base64"),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn vocab_smaller_than_declared_is_an_error() {
    let mut v = real_style();
    v["vocab"].as_array_mut().unwrap().truncate(260);
    // num_vocab_tokens still declares all entries.
    assert!(error_of_value(&v).contains("num_vocab_tokens"));
    v["config"]["num_vocab_tokens"] = json!(260);
    let msg = error_of_value(&v);
    assert!(msg.contains("fewer than") && msg.contains("265"), "{msg}");
    v["config"]["default_vocab_size"] = json!(1000);
    assert!(error_of_value(&v).contains("must exceed"));
    v["config"]["default_num_special_tokens"] = json!(4_000_000_000u64);
    v["config"]["default_vocab_size"] = json!(4_000_000_300u64);
    assert!(error_of_value(&v).contains("implausibly large"));
    v["config"]["default_num_special_tokens"] = json!(-1);
    assert!(error_of_value(&v).contains("not a tekken.json file"));
}

#[test]
fn bad_ranks_are_errors() {
    // Out of order.
    let mut v = real_style();
    v["vocab"][260]["rank"] = json!(261);
    v["vocab"][261]["rank"] = json!(260);
    assert!(error_of_value(&v).contains("vocab entry 260 has rank 261"));
    // Duplicate.
    let mut v = real_style();
    v["vocab"][261]["rank"] = json!(260);
    assert!(error_of_value(&v).contains("vocab entry 261 has rank 260"));
    // The first 256 entries must be the single bytes.
    let mut v = real_style();
    v["vocab"][65]["token_bytes"] = json!(b64(b"B"));
    assert!(error_of_value(&v).contains("single byte 0x41"));
    // Special tokens: out of order, duplicate names, too many, no <s>.
    let mut v = real_style();
    v["special_tokens"][5]["rank"] = json!(6);
    assert!(error_of_value(&v).contains("special token entry 5"));
    let mut v = real_style();
    v["special_tokens"][5]["token_str"] = json!("<s>");
    assert!(error_of_value(&v).contains("both \"<s>\""));
    let mut v = real_style();
    v["special_tokens"] = json!(specials(1001));
    assert!(error_of_value(&v).contains("more than"));
    let mut v = real_style();
    v["special_tokens"][1]["token_str"] = json!("<bos>");
    assert!(error_of_value(&v).contains("no special token <s>"));
    // A filler name taken by a listed token under another rank.
    let mut v = real_style();
    v["special_tokens"][5]["token_str"] = json!("<SPECIAL_40>");
    assert!(error_of_value(&v).contains("<SPECIAL_40>"));
}

#[test]
fn bad_audio_section_is_an_error() {
    let mut v = real_style();
    v["audio"]["frame_rate"] = json!(0);
    assert!(error_of_value(&v).contains("frame_rate"));
    let mut v = real_style();
    v["audio"]
        .as_object_mut()
        .unwrap()
        .remove("audio_encoding_config");
    assert!(error_of_value(&v).contains("audio_encoding_config"));
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxide-tekken-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn from_file_reads_and_names_the_file_in_errors() {
    let good = temp_file(
        "good-tekken.json",
        &serde_json::to_vec(&real_style()).unwrap(),
    );
    let t = Tekken::from_file(&good).unwrap();
    assert_eq!(t.path(), good.as_path());
    assert_eq!(t.decode(&[piece(2)]), "hello");

    let bad = temp_file("bad-tekken.json", b"not json at all");
    let msg = Tekken::from_file(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("bad-tekken.json") && msg.contains("not a JSON file"),
        "{msg}"
    );

    let missing = good.with_file_name("missing-tekken.json");
    let e = Tekken::from_file(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("missing-tekken.json"));

    let t2 = Tekken::from_file(&good).unwrap();
    let msg = t2.require_special("[X]").unwrap_err().to_string();
    assert!(msg.contains("good-tekken.json"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// files on disk

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The synthetic tiny Voxtral Realtime checkpoint's tokenizer.
#[test]
fn tiny_random_fixture() {
    let path = repo().join("tests/fixtures/voxtral-realtime/tiny-random-mistral/tekken.json");
    let t = Tekken::from_file(&path).unwrap();
    assert_eq!(t.num_special_tokens(), 1000);
    assert_eq!((t.bos(), t.eos()), (1, 2));
    assert_eq!(t.streaming_pad().unwrap(), 32);
    assert_eq!(t.streaming_word().unwrap(), 33);
    assert_eq!(t.token_bytes(1000), &[0x00]);
    for b in 0..=255u8 {
        assert_eq!(t.token_bytes(1000 + b as u32), &[b]);
    }
    let specials: Vec<u32> = (0..1000).collect();
    assert_eq!(t.decode(&specials), "");
    for id in 1000..t.vocab_size() as u32 {
        assert!(!t.token_bytes(id).is_empty(), "id {id}");
    }
    let a = t.audio().expect("audio section");
    assert_eq!((a.sampling_rate, a.frame_rate), (16000, 12.5));
    assert_eq!(a.samples_per_token(), 1280);
    assert_eq!(a.default_delay_tokens(), Some(6));
    assert_eq!(a.streaming_n_left_pad_tokens, Some(32));
    assert!(a.is_streaming());
}

/// Load time of a full-size file (150 000 entries, 15 MB), by default the synthetic one that
/// `tools/random_weights.py voxtral-realtime` writes; `VOXIDE_TEKKEN_JSON` picks another.
/// Run with `cargo test --release -p voxide-models --test tekken -- --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size tekken.json (tools/random_weights.py voxtral-realtime)"]
fn full_size_load_time() {
    let path = std::env::var_os("VOXIDE_TEKKEN_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/models/voxtral-realtime/tekken.json"));
    let bytes = std::fs::read(&path).unwrap();
    let mut best = f64::INFINITY;
    let mut t = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        t = Some(Tekken::from_json_bytes(&bytes).unwrap());
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let t = t.unwrap();
    let t0 = Instant::now();
    let ids = t
        .encode("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    let encode_first = t0.elapsed().as_secs_f64();
    eprintln!(
        "{}: {:.1} MB, vocab_size {}, parse {:.1} ms (best of 5), first encode {:.1} ms ({} ids)",
        path.display(),
        bytes.len() as f64 / 1e6,
        t.vocab_size(),
        best * 1e3,
        encode_first * 1e3,
        ids.len()
    );
    assert_eq!(t.vocab_size(), 131072);
    assert_eq!(t.token_bytes(1000), &[0x00]);
    assert!(best < 1.0, "parse took {best:.3} s");
}
