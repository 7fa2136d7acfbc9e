//! Speech: the streamed WAV, PCM, FLAC, Ogg Opus and server-sent events carry exactly the
//! library's offline synthesis for the same text, voice and seed; a client that hangs up frees
//! its slot.

use super::{head, models, root, wait_within, TestServer};
use base64::Engine as _;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use voxide_audio::{AudioOutFormat, AudioWriter};
use voxide_models::qwen3_tts::{GenerationParams, SpeechRequest};
use voxide_server::speech::CHUNK_FRAMES;
use voxide_server::Engine;

const TEXT: &str = "Hello there.";
const SEED: u64 = 7;
const FRAMES: usize = 6;

/// The library's synthesis of TEXT by `tester` of `tts-1` with the server's settings
/// (qwen-tts' sampling defaults, chunks of up to CHUNK_FRAMES frames), as a stream in `format`.
pub fn library_audio(format: AudioOutFormat, seed: u64, frames: usize) -> Vec<u8> {
    library_speech("tts-1", "tester", format, seed, frames, 1.0)
}

/// [`library_audio`] by `voice` of model `id` (a preset speaker, or a voice cloned for a Base
/// model), played `speed` times as fast.
fn library_speech(
    id: &str,
    voice: &str,
    format: AudioOutFormat,
    seed: u64,
    frames: usize,
    speed: f32,
) -> Vec<u8> {
    let models = models();
    let model = models.get(id).unwrap();
    let Engine::Synthesizer(synthesizer) = &model.engine else {
        panic!("{id} is a synthesizer");
    };
    let cloned_voice = model.voices.get(voice).cloned();
    let request = SpeechRequest {
        text: TEXT.into(),
        voice: cloned_voice.is_none().then(|| voice.into()),
        instruct: None,
        cloned_voice,
        language: Some("auto".into()),
        params: GenerationParams {
            max_frames: frames,
            ..GenerationParams::default()
        },
        seed,
        non_streaming_text: None,
        chunk_frames: CHUNK_FRAMES,
    };
    let mut writer = AudioWriter::new(Vec::new(), format, synthesizer.sample_rate())
        .unwrap()
        .with_speed(speed);
    synthesizer
        .synthesize(&request, &mut |pcm| {
            writer.write(pcm).unwrap();
            Ok(true)
        })
        .unwrap();
    writer.finish().unwrap()
}

fn body(format: &str) -> serde_json::Value {
    json!({
        "model": "tts-1",
        "input": TEXT,
        "voice": "tester",
        "response_format": format,
        "seed": SEED,
        "max_frames": FRAMES,
    })
}

#[test]
fn wav_pcm_and_events_equal_the_offline_synthesis() {
    let want = library_audio(AudioOutFormat::Wav, SEED, FRAMES);
    assert!(want.len() > 44 && want[44..].iter().any(|&b| b != 0));
    let server = TestServer::start();

    let wav = server.post_json("/v1/audio/speech", &body("wav"));
    assert_eq!(wav.status, 200, "{}", String::from_utf8_lossy(&wav.body));
    assert_eq!(wav.header("content-type"), Some("audio/wav"));
    // Streamed as synthesised: chunked, no length known up front.
    assert_eq!(wav.header("transfer-encoding"), Some("chunked"));
    assert_eq!(&wav.body[..4], b"RIFF");
    assert_eq!(&wav.body[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([wav.body[22], wav.body[23]]), 1, "mono");
    assert_eq!(
        u32::from_le_bytes(wav.body[24..28].try_into().unwrap()),
        24_000
    );
    assert_eq!(u16::from_le_bytes([wav.body[34], wav.body[35]]), 16, "bits");
    assert_eq!(&wav.body[40..44], &u32::MAX.to_le_bytes(), "unknown length");
    assert!(
        wav.body == want,
        "the WAV differs from the offline synthesis"
    );

    let pcm = server.post_json("/v1/audio/speech", &body("pcm"));
    assert_eq!(pcm.status, 200);
    assert_eq!(pcm.header("content-type"), Some("audio/pcm"));
    assert!(
        pcm.body == want[44..],
        "the PCM differs from the offline synthesis"
    );

    // FLAC and Ogg Opus: the library's encoding of the same chunks, byte for byte; FLAC's
    // samples are the WAV's.
    for (format, content_type) in [
        ("flac", "audio/flac"),
        ("opus", "audio/ogg"),
        ("mp3", "audio/mpeg"),
    ] {
        let got = server.post_json("/v1/audio/speech", &body(format));
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.header("content-type"), Some(content_type));
        let encoded = library_audio(AudioOutFormat::from_name(format).unwrap(), SEED, FRAMES);
        assert!(
            got.body == encoded,
            "the {format} differs from the offline synthesis"
        );
    }
    // A long input in parts of at most 500 characters, each up to `max_frames`.
    let long = "Hello there. ".repeat(100);
    let parts = voxide_models::qwen3_tts::text_parts(&long, 500).len();
    let got = server.post_json(
        "/v1/audio/speech",
        &json!({"model": "tts-1", "input": long, "voice": "tester", "response_format": "pcm", "max_frames": 2}),
    );
    assert_eq!((got.status, parts), (200, 3));
    assert_eq!(got.body.len(), parts * 2 * 1920 * 2);

    // OpenAI's `speed`: the same speech, time-stretched as the library does it.
    let mut fast = body("pcm");
    fast["speed"] = 2.0.into();
    let got = server.post_json("/v1/audio/speech", &fast);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let stretched = library_speech("tts-1", "tester", AudioOutFormat::S16le, SEED, FRAMES, 2.0);
    assert!(
        got.body == stretched,
        "the speech at speed 2 differs from the library's"
    );
    assert_eq!(stretched.len(), (want.len() - 44) / 2);
    let flac =
        voxide_audio::decode_bytes(&library_audio(AudioOutFormat::Flac, SEED, FRAMES), "a.flac");
    let wav = voxide_audio::decode_bytes(&want, "a.wav");
    assert_eq!(flac.unwrap().channels, wav.unwrap().channels);

    let mut sse = body("pcm");
    sse["stream_format"] = "sse".into();
    let events = server.post_json("/v1/audio/speech", &sse).events();
    let (done, deltas) = events.split_last().unwrap();
    assert_eq!(done["type"], "speech.audio.done");
    let mut audio = Vec::new();
    for delta in deltas {
        assert_eq!(delta["type"], "speech.audio.delta");
        audio.extend(
            base64::engine::general_purpose::STANDARD
                .decode(delta["audio"].as_str().unwrap())
                .unwrap(),
        );
    }
    assert!(deltas.len() > 1, "one event per chunk");
    assert!(audio == want[44..], "the events' audio differs");

    // Another seed, other audio; OpenAI's defaults (no format: MP3) work as well.
    let mut other = body("wav");
    other["seed"] = 8.into();
    assert!(server.post_json("/v1/audio/speech", &other).body != want);
    let plain = server.post_json(
        "/v1/audio/speech",
        &json!({"model": "tts-1", "input": "Hi.", "voice": "dylan", "max_frames": 3, "speed": 1.0}),
    );
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-type"), Some("audio/mpeg"));
    // MPEG-2 Layer III frames (sync, version 2, layer III), no tag frame on a stream.
    assert_eq!(&plain.body[..2], &[0xFF, 0xF3][..]);

    // The requests in tester's voice after the first started from its cached voice positions.
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    let counter = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let (queries, hits) = (
        counter("voxide_prefix_cache_queries_total"),
        counter("voxide_prefix_cache_hits_total"),
    );
    assert!(hits > 0 && queries > hits, "{queries} queried, {hits} hit");
}

/// A Base model speaks in the voices cloned for it at start-up (`--voice`), named as the
/// request's `voice`: what the library says with the same cloned voice.
#[test]
fn cloned_voices_are_spoken_by_name() {
    let want = library_speech("tts-clone", "alice", AudioOutFormat::S16le, SEED, 4, 1.0);
    let server = TestServer::start();
    let got = server.post_json(
        "/v1/audio/speech",
        &json!({"model": "tts-clone", "input": TEXT, "voice": "alice", "response_format": "pcm",
                "seed": SEED, "max_frames": 4}),
    );
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(
        !want.is_empty() && got.body == want,
        "the cloned voice's speech differs"
    );
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    let server = TestServer::with(Default::default(), |c| c.limits.max_queue = 0);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let body = json!({"model": "tts-1", "input": "A long text to say.", "voice": "tester",
        "response_format": "pcm", "max_frames": 20_000})
    .to_string();
    stream
        .write_all(&head(
            "POST",
            "/v1/audio/speech",
            &[("Content-Type", "application/json")],
            body.len(),
        ))
        .unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(stream);
    // The random model never ends on its own: all 20 000 frames would take minutes (about
    // 100 frames/s); the next chunk after the hang-up stops it.
    let freed = wait_within(
        Duration::from_secs(30),
        "synthesis went on after the client left",
        || server.admission.available() != 0,
    );
    eprintln!("slot freed {freed:?} after the hang-up");
    let reply = server.post_json(
        "/v1/audio/speech",
        &json!({"model": "tts-1", "input": "Hi.", "voice": "tester", "max_frames": 2}),
    );
    assert_eq!(reply.status, 200);
}

/// `voxide serve --max-batch-size 3`: speech requests that run at once have their frames
/// generated together, each streaming the bytes it streams alone, and /metrics counts the
/// batches.
#[test]
fn concurrent_speech_is_generated_in_batches_and_sounds_as_alone() {
    let mut models = voxide_server::Registry::new();
    let spec = format!(
        "tts-1={}",
        root()
            .join("tests/fixtures/qwen3-tts/tiny-random")
            .display()
    );
    models.load(&spec.parse().unwrap(), None).unwrap();
    assert_eq!(models.batch_concurrent_decodes(3).unwrap(), ["tts-1"]);
    let server = TestServer::serving(models, voxide_server::ServerConfig::default(), |c| {
        c.limits.max_concurrency = 3;
    });
    let bodies = [
        body("pcm"),
        json!({"model": "tts-1", "input": "Good morning.", "voice": "dylan",
               "response_format": "wav", "seed": 3, "max_frames": 9}),
        json!({"model": "tts-1", "input": "Speech, three at a time.", "voice": "tester",
               "response_format": "pcm", "seed": 11, "max_frames": 7}),
    ];
    let post = |body: &serde_json::Value| {
        let reply = server.post_json("/v1/audio/speech", body);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.body
    };
    let batched = || server.batch_counters("tts-1");
    let alone: Vec<Vec<u8>> = bodies.iter().map(post).collect();
    let (frames, batches) = batched();
    // One at a time, each frame is a batch of its own.
    assert!(
        frames > bodies.len() && batches == frames,
        "{frames} {batches}"
    );
    for (i, a) in alone.iter().enumerate() {
        assert!(alone[..i].iter().all(|b| b != a), "request {i}");
    }

    let together = crate::at_once(&bodies, post);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(t == a, "request {i}: {} bytes, {} alone", t.len(), a.len());
    }
    let (all_frames, all_batches) = batched();
    let (frames, batches) = (all_frames - frames, all_batches - batches);
    assert!(batches < frames, "{frames} frames in {batches} batches");
}
