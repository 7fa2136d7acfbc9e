#!/usr/bin/env python3
"""Chat prompts of Voxtral Mini 3B as mistral-common builds them, for conversations that its
request normaliser reshapes (InstructRequestNormalizerV7): consecutive turns of one role,
adjacent text chunks, empty chunks, answers with trailing spaces, clips of several windows;
conversations of text alone, with system messages where they stand; and the ones it refuses (a
system message beside audio or after an answer, an empty answer). Needs only mistral-common
(1.13.1, with soundfile), no torch.

Reads the committed synthetic v7 tekken.json (tests/fixtures/voxtral/tiny-random-mistral/) and
writes tests/fixtures/voxtral/chat_prompts.json:

    {"versions": {...}, "cases": {name: {"messages": [...], "pieces": [...]}},
     "errors": {name: {"messages": [...], "mistral_common": "<its exception>"}}}

Messages use OpenAI's shape; an audio chunk is {"type": "input_audio", "seconds": S,
"windows": W}: S seconds of silence at 16 kHz, which mistral-common pads to W 30 s windows
(375 [AUDIO] tokens each). "pieces" as in tiny-random.reference.json: lists of ids and
{"audio": n} runs of [AUDIO] (24).

    /work/venv-mistral/bin/python tools/reference/voxtral_chat_fixtures.py
"""
import base64
import io
import json
import math
import pathlib
import wave

import mistral_common
import numpy as np
from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/voxtral"
AUDIO = 24
RATE = 16000
WINDOW_SAMPLES = 30 * RATE


def audio(seconds):
    return {"type": "input_audio", "seconds": seconds,
            "windows": max(1, math.ceil(seconds * RATE / WINDOW_SAMPLES))}


def text(t):
    return {"type": "text", "text": t}


def user(*content):
    return {"role": "user", "content": list(content)}


def system(*content):
    """A system message: its text as a string, or text parts."""
    if len(content) == 1 and isinstance(content[0], str):
        return {"role": "system", "content": content[0]}
    return {"role": "system", "content": list(content)}


def wav_b64(seconds):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.zeros(int(seconds * RATE), dtype=np.int16).tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def to_mistral_common(message):
    content = message["content"]
    chunks = content if isinstance(content, str) else [
        AudioChunk(input_audio=wav_b64(c["seconds"])) if c["type"] == "input_audio"
        else TextChunk(text=c["text"]) for c in content]
    cls = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}[message["role"]]
    return cls(content=chunks)


def compact(ids):
    out, cur, i = [], [], 0
    while i < len(ids):
        if ids[i] == AUDIO:
            j = i
            while j < len(ids) and ids[j] == AUDIO:
                j += 1
            if cur:
                out.append(cur)
                cur = []
            out.append({"audio": j - i})
            i = j
        else:
            cur.append(int(ids[i]))
            i += 1
    if cur:
        out.append(cur)
    return out


Q = "What is said in this recording?"
CASES = {
    "adjacent_text_chunks": [user(audio(1), text(Q), text("Answer briefly."))],
    "consecutive_user_turns": [user(audio(1), text("first")), user(text("second"))],
    "user_turns_audio_between": [user(text("first"), audio(1)), user(audio(2), text("second"))],
    "string_turn_then_chunks": [{"role": "user", "content": "Listen:"}, user(audio(1))],
    "consecutive_answers": [user(audio(1), text(Q)),
                            {"role": "assistant", "content": "One."},
                            {"role": "assistant", "content": "Two.  "},
                            user(text("More?"))],
    "answer_trailing_space_and_newline": [user(audio(1), text(Q)),
                                          {"role": "assistant", "content": "Yes. \n "},
                                          user(text("Sure?"))],
    "answer_as_text_parts": [user(audio(1), text(Q)),
                             {"role": "assistant", "content": [text("x"), text("y")]},
                             user(text("And?"))],
    "answer_first": [{"role": "assistant", "content": "Hello."}, user(audio(1), text(Q))],
    "empty_text_chunks": [user(text(""), audio(1), text(""), text(Q))],
    "spaces_kept_in_user_text": [user(audio(1), text("  spaced  \n"))],
    "two_windows_and_unicode": [user(audio(31), text("Qu'est-ce qu'on entend ? 日本語"))],
    "text_alone": [user(text("Say hello."))],
    "system_then_text": [system("Be brief."), {"role": "user", "content": "Say hello."}],
    "system_parts_and_two_systems": [system(text("Be brief."), text(""), text("Be kind.")),
                                     system("Answer in French."), user(text("Say hello."))],
    "system_between_user_turns": [user(text("Hi.")), system("Be brief."), user(text("Again?"))],
    "system_spaces_kept": [system("  Be brief.  \n"), user(text("Hi  "))],
    "empty_system": [system(""), user(text("Hi."))],
    "text_conversation": [system("Be brief."), user(text("Hi.")),
                          {"role": "assistant", "content": "Hello! "}, user(text("Bye."))],
}
ERRORS = {
    "system_beside_audio": [{"role": "system", "content": "Be brief."}, user(audio(1), text(Q))],
    "empty_answer": [user(audio(1), text(Q)), {"role": "assistant", "content": ""},
                     user(text("Again?"))],
    "system_before_later_audio": [system("Be brief."), user(text("Hi.")),
                                  {"role": "assistant", "content": "Hello."}, user(audio(1), text(Q))],
    "system_after_answer": [user(text("Hi.")), {"role": "assistant", "content": "Hello."},
                            system("Be brief."), user(text("Again?"))],
}


def main():
    mt = MistralTokenizer.from_file(str(FIXTURES / "tiny-random-mistral/tekken.json"))
    out = {"versions": {"mistral_common": mistral_common.__version__,
                        "instruct_tokenizer": type(mt.instruct_tokenizer).__name__},
           "cases": {}, "errors": {}}
    for name, messages in CASES.items():
        enc = mt.encode_chat_completion(
            ChatCompletionRequest(messages=[to_mistral_common(m) for m in messages]))
        windows = sum(c["windows"] for m in messages if isinstance(m["content"], list)
                      for c in m["content"] if c["type"] == "input_audio")
        assert sum(t == AUDIO for t in enc.tokens) == 375 * windows, name
        out["cases"][name] = {"messages": messages, "pieces": compact(list(enc.tokens))}
    for name, messages in ERRORS.items():
        try:
            mt.encode_chat_completion(
                ChatCompletionRequest(messages=[to_mistral_common(m) for m in messages]))
        except Exception as e:  # noqa: BLE001 -- the refusal itself is the fixture
            out["errors"][name] = {"messages": messages, "mistral_common": f"{type(e).__name__}: {e}"}
        else:
            raise AssertionError(f"{name}: mistral-common accepted it")
    path = FIXTURES / "chat_prompts.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(out['cases'])} prompts, {len(out['errors'])} refusals")


if __name__ == "__main__":
    main()
