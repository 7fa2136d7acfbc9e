//! `POST /v1/chat/completions` on the Voxtral Mini 3B fixture (`voxtral-mini`).

use super::{jfk, models, Reply, TestServer};
use base64::Engine as _;
use serde_json::{json, Value};
use voxide_audio::{load_mono, AudioInput};
use voxide_models::voxtral::{Content, GenerateOptions, Generation, Message, Role, Stop, Voxtral};
use voxide_server::Engine;

const QUESTION: &str = "What is said in this recording?";

fn jfk_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(jfk()).unwrap())
}

/// `f` on the Voxtral Mini 3B the test server serves.
fn with_library<T>(f: impl FnOnce(&Voxtral) -> T) -> T {
    let models = models();
    let Engine::Transcriber(model) = &models.get("voxtral-mini").unwrap().engine else {
        panic!("voxtral-mini is a transcriber");
    };
    f(model.chat().expect("Voxtral Mini 3B answers questions"))
}

/// The library's answer to `messages` with `clips`, from the model the test server serves.
fn library_ask(
    messages: &[Message],
    clips: &[Vec<f32>],
    options: &GenerateOptions,
) -> (String, Generation) {
    with_library(|model| {
        model
            .ask(messages, clips, options, &mut |_, _| true)
            .unwrap()
    })
}

/// The tokenizer of the model the test server serves.
fn library_tokenizer() -> voxide_models::tekken::Tekken {
    with_library(|model| model.tokenizer().clone())
}

/// A question about jfk.wav: the conversation and its clip.
fn jfk_question() -> (Vec<Message>, Vec<f32>) {
    let samples = load_mono(&AudioInput::File(jfk()), 16_000).unwrap();
    let messages = vec![Message {
        role: Role::User,
        content: vec![
            Content::Audio { windows: 1 },
            Content::Text(QUESTION.into()),
        ],
    }];
    (messages, samples)
}

/// The library's answer to jfk.wav and [`QUESTION`].
pub fn library_answer(options: &GenerateOptions) -> (String, Generation) {
    let (messages, samples) = jfk_question();
    library_ask(&messages, &[samples], options)
}

/// The library's answer to `messages` without audio.
pub fn library_text_answer(
    messages: &[Message],
    options: &GenerateOptions,
) -> (String, Generation) {
    library_ask(messages, &[], options)
}

/// A request about jfk.wav with `audio` as its audio part and `extra` fields.
fn request(audio: Value, extra: Value) -> Value {
    let mut body = json!({
        "model": "voxtral-mini",
        "messages": [{ "role": "user", "content": [audio, { "type": "text", "text": QUESTION }] }],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn input_audio() -> Value {
    json!({ "type": "input_audio", "input_audio": { "data": jfk_base64(), "format": "wav" } })
}

/// The data lines of a chat stream: chunks as JSON, ending with `[DONE]`.
fn chunks_of(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let text = reply.text();
    let data: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("a data line"))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The streamed answer's text.
fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// A greedy answer equals the library's, in each of the three ways of sending the audio;
/// the usage counts the prompt (audio tokens included) and the answer.
#[test]
fn answers_equal_the_librarys() {
    let options = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let (want, generation) = library_answer(&options);
    assert!(!want.is_empty());
    let server = TestServer::start();
    let data_url = format!("data:audio/wav;base64,{}", jfk_base64());
    for audio in [
        input_audio(),
        // Mistral's API: the base64 itself.
        json!({ "type": "input_audio", "input_audio": jfk_base64() }),
        // vLLM's: a data URL.
        json!({ "type": "audio_url", "audio_url": { "url": data_url } }),
    ] {
        let reply = server.post_json(
            "/v1/chat/completions",
            &request(audio, json!({ "temperature": 0, "max_tokens": 12 })),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        let got = reply.json();
        assert_eq!(got["object"], "chat.completion");
        assert!(got["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(got["model"], "voxtral-mini");
        let choice = &got["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], want.as_str());
        let finish = if generation.stop == Stop::Eos {
            "stop"
        } else {
            "length"
        };
        assert_eq!(choice["finish_reason"], finish);
        let completion = generation.ids.len() + usize::from(generation.stop == Stop::Eos);
        assert_eq!(
            got["usage"],
            json!({
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": generation.prompt_tokens + completion,
            })
        );
        assert!(generation.prompt_tokens > 375, "the audio's tokens count");
    }
}

/// A conversation of text alone is answered as the library answers it, after a `system` (or
/// `developer`) message where one is given; the usage counts the text prompt.
#[test]
fn text_alone_is_answered_as_the_library_does() {
    let options = GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    };
    let user = |text: &str| Message::text(Role::User, text);
    let system = Message::text(Role::System, "Be brief.");
    let (plain, plain_generation) = library_text_answer(&[user("Say hello.")], &options);
    let (briefed, _) = library_text_answer(&[system, user("Say hello.")], &options);
    assert_ne!(plain, briefed, "the system prompt reaches the model");
    let server = TestServer::start();
    let ask = |messages: Value| {
        let body = json!({ "model": "voxtral-mini", "messages": messages, "temperature": 0, "max_tokens": 12 });
        let reply = server.post_json("/v1/chat/completions", &body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    };
    let got = ask(json!([{ "role": "user", "content": "Say hello." }]));
    assert_eq!(got["choices"][0]["message"]["content"], plain.as_str());
    assert_eq!(
        got["usage"]["prompt_tokens"],
        plain_generation.prompt_tokens
    );
    for role in ["system", "developer"] {
        let got = ask(json!([
            { "role": role, "content": "Be brief." },
            { "role": "user", "content": [{ "type": "text", "text": "Say hello." }] },
        ]));
        assert_eq!(
            got["choices"][0]["message"]["content"],
            briefed.as_str(),
            "{role}"
        );
    }
}

/// Sampling follows `temperature`, `top_p` and `seed` as the library does (the same seed
/// gives the same answer), and the penalties too.
#[test]
fn sampled_answers_follow_the_seed() {
    let options = GenerateOptions {
        max_new_tokens: 10,
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        ..GenerateOptions::default()
    };
    let (want, _) = library_answer(&options);
    let server = TestServer::start();
    let body = request(
        input_audio(),
        json!({ "temperature": 0.9, "top_p": 0.95, "seed": 7, "max_completion_tokens": 10 }),
    );
    for _ in 0..2 {
        let got = server.post_json("/v1/chat/completions", &body).json();
        assert_eq!(got["choices"][0]["message"]["content"], want.as_str());
    }
    // OpenAI's penalties, greedy: the library's answer with the same penalties, which differs
    // from the plain one.
    let penalised = GenerateOptions {
        max_new_tokens: 24,
        frequency_penalty: 1.5,
        presence_penalty: 0.5,
        ..GenerateOptions::default()
    };
    let (want, _) = library_answer(&penalised);
    let (plain, _) = library_answer(&GenerateOptions {
        max_new_tokens: 24,
        ..GenerateOptions::default()
    });
    assert_ne!(want, plain);
    let body = request(
        input_audio(),
        json!({ "temperature": 0, "max_tokens": 24, "frequency_penalty": 1.5, "presence_penalty": 0.5 }),
    );
    let got = server.post_json("/v1/chat/completions", &body).json();
    assert_eq!(got["choices"][0]["message"]["content"], want.as_str());
}

/// `stream: true` sends the role, the answer piece by piece (the same text as the whole
/// answer), the finish reason, the usage when asked, and `[DONE]`; a `stop` string cuts the
/// answer before it, streamed or not.
#[test]
fn streams_and_stop_strings() {
    let (want, generation) = library_answer(&GenerateOptions {
        max_new_tokens: 24,
        ..GenerateOptions::default()
    });
    let server = TestServer::start();
    let greedy = json!({ "temperature": 0, "max_tokens": 24 });
    let body = request(
        input_audio(),
        json!({ "temperature": 0, "max_tokens": 24, "stream": true,
                "stream_options": { "include_usage": true } }),
    );
    let chunks = chunks_of(&server.post_json("/v1/chat/completions", &body));
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.len() > 4, "the answer comes in pieces");
    assert_eq!(streamed_text(&chunks), want);
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one id for the stream");
    let (last, finish) = (&chunks[chunks.len() - 1], &chunks[chunks.len() - 2]);
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens"],
        generation.ids.len() + usize::from(generation.stop == Stop::Eos)
    );
    assert!(finish["choices"][0]["finish_reason"].is_string());
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    // Without include_usage no chunk has a `usage` field.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("stream_options");
    let chunks = chunks_of(&server.post_json("/v1/chat/completions", &plain));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(streamed_text(&chunks), want);

    // A stop string from the middle of the answer (two characters, so that some piece
    // boundary may split it): the answer ends before its first occurrence.
    let chars: Vec<char> = want.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &want[..want.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut body = request(input_audio(), greedy.clone());
        body["stop"] = json!(["never appears", stop]);
        body["stream"] = json!(stream);
        let reply = server.post_json("/v1/chat/completions", &body);
        let (text, finish) = if stream {
            let chunks = chunks_of(&reply);
            let finish = chunks.last().unwrap()["choices"][0]["finish_reason"].clone();
            (streamed_text(&chunks), finish)
        } else {
            let got = reply.json();
            let choice = &got["choices"][0];
            (
                choice["message"]["content"].as_str().unwrap().to_string(),
                choice["finish_reason"].clone(),
            )
        };
        assert_eq!(text, cut, "stream {stream}");
        assert_eq!(finish, "stop", "stream {stream}");
    }
}

/// `logprobs`: an entry per answer token with the library's log-probability, its token and
/// bytes, and `top_logprobs` alternatives (the greedy token first); a `stop` string cuts the
/// entries with the text; streamed, the same entries chunk by chunk; none without `logprobs`.
#[test]
fn logprobs_follow_the_librarys() {
    let options = GenerateOptions {
        max_new_tokens: 16,
        logprobs: Some(3),
        ..GenerateOptions::default()
    };
    let (want, generation) = library_answer(&options);
    let server = TestServer::start();
    let ask = |extra: Value| {
        let reply = server.post_json("/v1/chat/completions", &request(input_audio(), extra));
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["choices"][0].clone()
    };
    let choice =
        ask(json!({ "temperature": 0, "max_tokens": 16, "logprobs": true, "top_logprobs": 3 }));
    assert_eq!(choice["message"]["content"], want.as_str());
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), generation.ids.len());
    let tekken = library_tokenizer();
    for (entry, library) in content.iter().zip(&generation.logprobs) {
        assert_eq!(entry["logprob"].as_f64().unwrap() as f32, library.logprob);
        // A text token's own bytes; a special token (a random model emits them) by its name.
        assert_eq!(entry["token"], tekken.piece(library.id));
        let bytes = match tekken.is_text(library.id) {
            true => tekken.token_bytes(library.id).to_vec(),
            false => tekken.piece(library.id).into_bytes(),
        };
        assert_eq!(entry["bytes"], json!(bytes));
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy: the most likely token"
        );
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }

    let choice = ask(json!({ "temperature": 0, "max_tokens": 16, "logprobs": true }));
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), generation.ids.len());
    assert!(content.iter().all(|e| e["top_logprobs"] == json!([])));

    // A stop string from the middle: the entries end with the kept text.
    let chars: Vec<char> = want.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &want[..want.find(&stop).unwrap()];
    let choice = ask(json!({ "temperature": 0, "max_tokens": 16, "logprobs": true, "stop": stop }));
    assert_eq!(choice["message"]["content"], cut);
    // As many tokens as the kept text takes: the text of one fewer falls short of it.
    let n = choice["logprobs"]["content"].as_array().unwrap().len();
    assert!(n < generation.ids.len());
    assert!(tekken.decode(&generation.ids[..n]).starts_with(cut));
    assert!(tekken.decode(&generation.ids[..n - 1]).len() < cut.len());

    let choice = ask(json!({ "temperature": 0, "max_tokens": 4 }));
    assert!(choice["logprobs"].is_null());

    // Streamed: each chunk carries the entries of the tokens whose text starts in it; all
    // together, the whole answer's (cut at the stop string too).
    for stop in [None, Some(stop.as_str())] {
        let mut body = request(
            input_audio(),
            json!({ "temperature": 0, "max_tokens": 16, "logprobs": true, "top_logprobs": 3 }),
        );
        if let Some(stop) = stop {
            body["stop"] = json!(stop);
        }
        let whole = server.post_json("/v1/chat/completions", &body).json();
        body["stream"] = json!(true);
        let chunks = chunks_of(&server.post_json("/v1/chat/completions", &body));
        let streamed: Vec<Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
            .flatten()
            .cloned()
            .collect();
        assert_eq!(
            Value::Array(streamed),
            whole["choices"][0]["logprobs"]["content"],
            "stop {stop:?}"
        );
        let with_text = chunks.iter().filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        });
        assert!(with_text.clone().count() > 1);
        assert!(with_text
            .into_iter()
            .all(|c| c["choices"][0]["logprobs"].is_object()));
    }
    let chunks = chunks_of(&server.post_json(
        "/v1/chat/completions",
        &request(
            input_audio(),
            json!({ "temperature": 0, "max_tokens": 4, "stream": true }),
        ),
    ));
    assert!(chunks.iter().all(|c| c["choices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|choice| choice["logprobs"].is_null())));
}

/// Every bad request is a 400 naming its field.
#[test]
fn bad_requests_name_the_field() {
    let server = TestServer::start();
    let post = |body: &Value| server.post_json("/v1/chat/completions", body);
    let question = |content: Value| json!({ "model": "voxtral-mini", "messages": [{ "role": "user", "content": content }] });
    let text = json!({ "type": "text", "text": "Hi?" });
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "model": "whisper-1", "messages": [] }),
            "model",
            "answers no questions",
        ),
        (
            json!({ "model": "tts-1", "messages": [] }),
            "model",
            "text-to-speech",
        ),
        (
            json!({ "model": "voxtral-mini" }),
            "messages",
            "no `messages`",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": [input_audio(), text.clone()] }] }),
            "messages",
            "no system message",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [
                { "role": "user", "content": "Hi?" },
                { "role": "assistant", "content": "Yes." },
                { "role": "developer", "content": "Be brief." },
                { "role": "user", "content": "Hi?" }] }),
            "messages",
            "cannot follow an answer",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [], "top_logprobs": 2 }),
            "top_logprobs",
            "needs logprobs: true",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [], "logprobs": true, "top_logprobs": 21 }),
            "top_logprobs",
            "must lie in [0, 20]",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [{ "role": "tool", "content": "1" }] }),
            "messages",
            "role \"tool\" is not supported",
        ),
        (
            json!({ "model": "voxtral-mini", "messages": [
                { "role": "user", "content": [input_audio(), text.clone()] },
                { "role": "assistant", "content": "Yes." }] }),
            "messages",
            "the last message must be the user's",
        ),
        (
            question(json!([{ "type": "image_url", "image_url": { "url": "x" } }])),
            "messages",
            "part type \"image_url\"",
        ),
        (
            question(
                json!([{ "type": "audio_url", "audio_url": { "url": "https://example.com/a.wav" } }]),
            ),
            "messages",
            "only data: URLs",
        ),
        (
            question(json!([{ "type": "input_audio", "input_audio": { "data": "not base64!" } }])),
            "messages",
            "not valid base64",
        ),
        (
            question(
                json!([{ "type": "input_audio", "input_audio": { "data": "AAAA" } }, text.clone()]),
            ),
            "messages",
            "messages[0].content[0]",
        ),
        (
            request(input_audio(), json!({ "n": 2 })),
            "n",
            "not supported",
        ),
        (
            request(input_audio(), json!({ "n": 0 })),
            "n",
            "n must be 1",
        ),
        (
            request(input_audio(), json!({ "presence_penalty": 2.5 })),
            "presence_penalty",
            "[-2, 2]",
        ),
        (
            request(input_audio(), json!({ "temperature": 3 })),
            "temperature",
            "[0, 2]",
        ),
        (
            request(input_audio(), json!({ "temperature": "hot" })),
            "temperature",
            "must be a number",
        ),
        (
            request(input_audio(), json!({ "max_tokens": 0 })),
            "max_tokens",
            "at least 1",
        ),
        (
            request(input_audio(), json!({ "stop": ["a", "b", "c", "d", "e"] })),
            "stop",
            "at most 4",
        ),
    ];
    for (body, param, message) in cases {
        let error = post(&body).error(400);
        assert_eq!(error["param"], param, "{error}");
        let got = error["message"].as_str().unwrap();
        assert!(got.contains(message), "{message:?} not in {got:?}");
    }
    // Past the model's context: the limit in the message (the largest budget too, which must
    // not wrap around when added to the prompt).
    for max_tokens in [200_000, u64::MAX] {
        let error = post(&request(input_audio(), json!({ "max_tokens": max_tokens }))).error(400);
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("context of 131072"), "{error}");
    }
}

/// A cancel flag set before the work stops it where it stands: before the clip's encoder (an
/// error), or before the prompt's first block (no ids).
#[test]
fn a_cancelled_answer_stops_before_its_work() {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let options = GenerateOptions {
        cancel: Some(cancel),
        ..GenerateOptions::default()
    };
    let (with_audio, samples) = jfk_question();
    let err = with_library(|model| {
        model
            .ask(&with_audio, &[samples], &options, &mut |_, _| true)
            .unwrap_err()
    });
    assert!(matches!(err, voxide_models::Error::Cancelled), "{err}");
    let text = [Message::text(Role::User, QUESTION)];
    let (answer, generation) = library_text_answer(&text, &options);
    assert_eq!((answer.as_str(), generation.stop), ("", Stop::Cancelled));
    assert!(generation.ids.is_empty());
}

/// A client that leaves during a long prompt's prefill frees its slot at once: the prefill
/// stops at its next block (a ~110 000-token prompt takes tens of seconds on this model).
#[test]
fn a_client_gone_during_the_prefill_frees_its_slot() {
    use std::time::Duration;
    let server = TestServer::with(Default::default(), |c| c.limits.max_queue = 0);
    let question = "x ".repeat(55_000);
    let body = json!({"model": "voxtral-mini", "max_tokens": 1,
        "messages": [{"role": "user", "content": question}]})
    .to_string();
    let stream = super::start_post(
        &server,
        "/v1/chat/completions",
        "application/json",
        body.as_bytes(),
        body.len(),
    );
    super::wait_until("never started", || server.admission.available() == 0);
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let freed = super::wait_within(
        Duration::from_secs(10),
        "the prefill went on after the client left",
        || server.admission.available() != 0,
    );
    eprintln!("slot freed {freed:?} after the hang-up");
}
