#!/usr/bin/env python3
"""Voxtral Mini 3B answering text alone, as transformers does: conversations without audio (a
question, one after a system prompt, a multi-turn one) prompted by mistral-common and answered
greedily by VoxtralForConditionalGeneration on the committed random checkpoint
(tests/fixtures/voxtral/tiny-random-hf, written by voxtral_fixtures.py). Needs torch,
transformers 5.23.0 and mistral-common 1.13.1.

Writes tests/fixtures/voxtral/text_chat.json:

    {"versions": {...}, "max_new_tokens": N,
     "cases": {name: {"messages": [...], "prompt_ids": [...], "greedy_ids": [...]}}}

Messages use OpenAI's shape (text only). greedy_ids: generate(do_sample=False), the prompt
left out, end-of-sequence kept where the model emits it.

    python tools/reference/voxtral_text_fixtures.py
"""
import json
import pathlib

import mistral_common
import torch
import transformers
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import VoxtralForConditionalGeneration

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/voxtral"
MAX_NEW_TOKENS = 12
ROLES = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}
CASES = {
    "question": [{"role": "user", "content": "Say hello."}],
    "system_then_question": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Say hello."}],
    "conversation": [{"role": "system", "content": "Answer in French."},
                     {"role": "user", "content": "Hi."},
                     {"role": "assistant", "content": "Bonjour."},
                     {"role": "user", "content": "How are you?"}],
}


def main():
    torch.manual_seed(0)
    mt = MistralTokenizer.from_file(str(FIXTURES / "tiny-random-hf/tekken.json"))
    model = VoxtralForConditionalGeneration.from_pretrained(FIXTURES / "tiny-random-hf",
                                                            dtype=torch.float32).eval()
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "mistral_common": mistral_common.__version__},
           "max_new_tokens": MAX_NEW_TOKENS, "cases": {}}
    for name, messages in CASES.items():
        request = ChatCompletionRequest(messages=[ROLES[m["role"]](content=m["content"]) for m in messages])
        prompt = mt.encode_chat_completion(request).tokens
        ids = torch.tensor([prompt])
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS)[0]
        assert seq[:len(prompt)].tolist() == prompt, name
        out["cases"][name] = {"messages": messages, "prompt_ids": prompt,
                              "greedy_ids": seq[len(prompt):].tolist()}
    path = FIXTURES / "text_chat.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}: {len(out['cases'])} conversations")


if __name__ == "__main__":
    main()
