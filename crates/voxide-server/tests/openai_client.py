"""The official `openai` Python client against a running `voxide serve`.

Usage: python openai_client.py BASE_URL API_KEY AUDIO OUT_DIR

BASE_URL is the server's `http://HOST:PORT/v1`; it must serve a speech-to-text model as
`whisper-1`, the Qwen3-TTS CustomVoice fixture (voice `tester`) as `tts-1` and the Voxtral
Mini 3B fixture as `voxtral-mini`. Prints one
JSON object with what the client got; writes the speech it received to OUT_DIR/speech.wav,
speech.pcm, speech.flac, speech.opus and speech.mp3. Exits non-zero (with a traceback) when the client fails or raises the
wrong error.
"""

import base64
import json
import sys
import wave
from pathlib import Path

import openai


def main() -> None:
    base_url, api_key, audio, out_dir = sys.argv[1:5]
    out = Path(out_dir)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    result = {"openai_version": openai.__version__}

    result["models"] = [m.id for m in client.models.list().data]

    with open(audio, "rb") as f:
        result["json"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
    with open(audio, "rb") as f:
        result["srt"] = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="srt"
        )
    for response_format in ("text", "vtt"):
        with open(audio, "rb") as f:
            result[response_format] = client.audio.transcriptions.create(
                model="whisper-1", file=f, response_format=response_format
            )
    with open(audio, "rb") as f:
        result["translation"] = client.audio.translations.create(model="whisper-1", file=f).text
    with open(audio, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
        result["verbose_segments"] = len(verbose.segments or [])
        result["verbose_duration"] = verbose.duration
    with open(audio, "rb") as f:
        result["chunked"] = client.audio.transcriptions.create(
            model="voxtral-mini", file=f, response_format="verbose_json",
            chunking_strategy={"type": "server_vad", "silence_duration_ms": 500},
        ).model_dump(include={"text", "duration"})
    with open(audio, "rb") as f:
        events = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        result["stream"] = [(e.type, getattr(e, "delta", None) or getattr(e, "text", None)) for e in events]

    seeded = {"seed": 3, "max_frames": 6}
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="tester", input="Hello there.", response_format="wav", extra_body=seeded
    ) as response:
        result["speech_content_type"] = response.headers.get("content-type")
        with open(out / "speech.wav", "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="tester", input="Hello there.", response_format="pcm", extra_body=seeded
    ) as response:
        response.stream_to_file(out / "speech.pcm")
    for fmt in ("flac", "opus", "mp3"):
        speech = client.audio.speech.create(
            model="tts-1", voice="tester", input="Hello there.", response_format=fmt, extra_body=seeded
        )
        result[f"{fmt}_content_type"] = speech.response.headers.get("content-type")
        speech.write_to_file(out / f"speech.{fmt}")

    result["chat"] = chat(client, audio)

    errors = {}
    try:
        client.audio.speech.create(model="tts-1", voice="tester", input="Hi.", response_format="aac")
    except openai.BadRequestError as e:
        errors["aac"] = [e.status_code, e.body.get("message") if isinstance(e.body, dict) else str(e.body)]
    try:
        with open(audio, "rb") as f:
            client.audio.transcriptions.create(model="whisper-9", file=f)
    except openai.NotFoundError as e:
        errors["unknown_model"] = [e.status_code, e.code]
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    except openai.AuthenticationError as e:
        errors["bad_key"] = [e.status_code, e.code]
    result["errors"] = errors

    result["realtime"] = realtime(client, audio)

    print(json.dumps(result))


def chat(client: openai.OpenAI, audio: str) -> dict:
    """A question about the clip to `voxtral-mini` (Voxtral Mini 3B), whole and streamed; and
    one of text alone after a system message, with log-probabilities."""
    with open(audio, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {"type": "text", "text": "What is said in this recording?"},
    ]}]
    whole = client.chat.completions.create(
        model="voxtral-mini", messages=messages, temperature=0, max_tokens=12
    )
    stream = client.chat.completions.create(
        model="voxtral-mini", messages=messages, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        pieces.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    text_alone = client.chat.completions.create(
        model="voxtral-mini", temperature=0, max_tokens=12,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        logprobs=True, top_logprobs=2,
    )
    return {
        "content": whole.choices[0].message.content,
        "text_alone": text_alone.choices[0].message.content,
        "text_alone_logprobs": [[t.logprob, len(t.top_logprobs)] for t in text_alone.choices[0].logprobs.content],
        "finish_reason": whole.choices[0].finish_reason,
        "usage": whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
        "streamed": "".join(pieces),
        "streamed_usage": usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
    }


def realtime(client: openai.OpenAI, audio: str) -> dict:
    """A GA Realtime transcription session: the 16 kHz WAV appended in 100 ms pieces, then
    committed; returns the event types and the transcript."""
    with wave.open(audio, "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = w.readframes(w.getnframes())
    got = {"types": []}
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        got["types"].append(connection.recv().type)
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 16000},
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": None,
                    }
                },
            }
        )
        piece = 3200  # bytes: 100 ms
        for at in range(0, len(pcm), piece):
            connection.input_audio_buffer.append(audio=base64.b64encode(pcm[at : at + piece]).decode())
        connection.input_audio_buffer.commit()
        for event in connection:
            got["types"].append(event.type)
            if event.type == "conversation.item.input_audio_transcription.completed":
                got["transcript"] = event.transcript
                break
            if event.type == "error":
                got["error"] = event.error.message
                break
    return got


if __name__ == "__main__":
    main()
