#!/usr/bin/env python3
"""Qwen2 BPE text-tokenizer fixture for voxide (the text tokenizer of Qwen3-TTS, same class and
pipeline as Qwen/Qwen2-0.5B), computed with Hugging Face transformers.

The real Qwen2 vocabulary (151 643 BPE entries) is not available offline, so the tokenizer is
built from a real GPT-2-style byte-level BPE vocabulary of the shared tree instead:

    $VOXIDE_SHARED/assets/whisper/hf-vocab/multilingual/{vocab.json,merges.txt}
    (50 257 entries, ids 0..50256, 50 000 merges; NOT copied into the repository)

with the Qwen2 tokenizer classes of transformers 4.57.3 (Qwen2TokenizerFast and the slow
Qwen2Tokenizer), Qwen2-0.5B's tokenizer_config settings (eos = pad = `<|endoftext|>`, bos = unk
= None, errors "replace", clean_up_tokenization_spaces False, split_special_tokens False,
model_max_length 32768) and these added special tokens, in id order right after the vocabulary
(the real checkpoint has them at 151643, 151644, 151645, 151671, 151672, 151673):

    <|endoftext|>  <|im_start|>  <|im_end|>  <tts_pad>  <tts_text_bos>  <tts_text_eod>

(the TTS names are those of Qwen3-TTS's tokenizer_config; qwen-tts 0.1.1 only knows their ids:
config tts_pad/tts_bos/tts_eos_token_id = 151671/151672/151673.) All are AddedToken(special=True,
normalized=False, lstrip=False, rstrip=False, single_word=False).

Checks (asserted): fast == slow ids and decode on every case; the written config files plus the
two shared files (symlinked into a temp dir) reproduce the ids through
Qwen2TokenizerFast/Qwen2Tokenizer/AutoTokenizer.from_pretrained; every special token is one id.

Writes, under tests/fixtures/qwen3-tts/qwen2-tokenizer/ (relative to the repository root):

    tokenizer_config.json     from save_pretrained (added_tokens_decoder, special-token fields)
    special_tokens_map.json   from save_pretrained
    added_tokens.json         from save_pretrained ({content: id} of the six added tokens)
    reference.json            {vocab, versions, backend (normalizer / pre_tokenizer /
                              post_processor / decoder / model flags / added_tokens of the fast
                              tokenizer's tokenizer.json), pretokenizer_regex, special {name: id},
                              cases [{text, pieces, ids, tokens, decoded}], partial_decode [...]}

`pieces` are the pre-tokenizer regex matches of the NFC text (Python `regex`, asserted equal to
the fast backend's Split), null for texts holding an added token; `tokens` are the byte-level
BPE token strings. `decoded` is tokenizer.decode(ids) with the defaults (skip_special_tokens False,
clean_up_tokenization_spaces False): byte-level decoding, NFC-normalised text comes back
normalised, and invalid UTF-8 becomes U+FFFD (errors="replace").

Run: /work/venv/tts/bin/python tools/reference/qwen2_tokenizer_fixtures.py  (a few seconds)
"""

import json
import os
import shutil
import sys
import tempfile
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import regex as re_mod  # noqa: E402  (the `regex` module the slow Qwen2Tokenizer uses)
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AddedToken, AutoTokenizer, Qwen2Tokenizer, Qwen2TokenizerFast  # noqa: E402

SHARED = os.environ.get("VOXIDE_SHARED", "/work/shared")
VOCAB_REL = "assets/whisper/hf-vocab/multilingual"
VOCAB_DIR = os.path.join(SHARED, VOCAB_REL)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "qwen3-tts", "qwen2-tokenizer")

BACKEND_KEYS = ("normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens")
EOT = "<|endoftext|>"
# (fixture name, token content) in id order after <|endoftext|>
EXTRA_SPECIALS = [
    ("im_start", "<|im_start|>"),
    ("im_end", "<|im_end|>"),
    ("tts_pad", "<tts_pad>"),
    ("tts_bos", "<tts_text_bos>"),
    ("tts_eos", "<tts_text_eod>"),
]

CASES = [
    "",
    "Hello world.",
    "In 2024, 1234567 people",
    "I'll don't WE'RE they've she'd I'M it's",
    "我叫通义千问，是阿里云的开源大模型。",
    "caf\u00e9 vs cafe\u0301",                      # precomposed vs decomposed é (NFC)
    "e\u0301",                                      # lone decomposed é
    "\u212b \u1100\u1161 \ufb01",                   # Å sign, Hangul jamo -> NFC; ﬁ kept (no NFKC)
    "Grüße aus Köln, schöne Straße!",
    "L'été où l'élève a reçu «Noël» – déjà vu ?",
    "¿Dónde está el niño? ¡Mañana!",
    "Emoji: 😀👍🏽 👨‍👩‍👧 ❤️",
    "a\tb\t\tc\t",
    "a    b     c",
    "para one.\n\npara two.\n\n\n",
    "line1\r\nline2\rline3\n",
    "  leading and trailing  ",
    "   ",
    " ",
    "\n",
    "x=(a+b)*c; foo_bar.baz() $100 #tag @user",
    "नमस्ते दुनिया q\u0307",                          # combining marks are not \p{L}
    "½ ² Ⅻ ٣٤ ١٢",                                  # \p{N} beyond ASCII digits
    "a\u00a0b\u3000c",                              # NBSP, ideographic space
    "Привет, мир! Γειά σου κόσμε",
    "日本語のテキストと한국어 텍스트",
    "<|im_start|>assistant\nHello world.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nSpeak slowly, warmly.<|im_end|>\n",
    "<|im_start|>assistant\n我叫通义千问，是阿里云的开源大模型。<|im_end|>\n<|im_start|>assistant\n",
    "<tts_pad><tts_pad><tts_text_bos>Hi there<tts_text_eod><|endoftext|>",
    "foo<|im_end|>bar <|im_end|> baz",
    "<|im_start <im_start|> <|IM_START|> <tts_pad",   # near misses: plain text
]


def build(cls):
    special = dict(special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
    return cls(
        vocab_file=os.path.join(VOCAB_DIR, "vocab.json"),
        merges_file=os.path.join(VOCAB_DIR, "merges.txt"),
        errors="replace",
        unk_token=None,
        bos_token=None,
        eos_token=AddedToken(EOT, **special),
        pad_token=AddedToken(EOT, **special),
        additional_special_tokens=[AddedToken(t, **special) for _, t in EXTRA_SPECIALS],
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=32768,
    )


def encode_all(tok, texts):
    return [tok.encode(t, add_special_tokens=True) for t in texts]


def main():
    fast = build(Qwen2TokenizerFast)
    slow = build(Qwen2Tokenizer)
    backend = json.loads(fast.backend_tokenizer.to_str())

    # --- special tokens: one id each, same on both
    names = [("endoftext", EOT)] + EXTRA_SPECIALS
    special = {}
    for name, tok in names:
        f_ids, s_ids = fast.encode(tok), slow.encode(tok)
        assert len(f_ids) == 1 and f_ids == s_ids, (tok, f_ids, s_ids)
        assert fast.convert_tokens_to_ids(tok) == f_ids[0]
        special[tok] = f_ids[0]
    print("special:", special)

    # --- fast vs slow
    f_all, s_all = encode_all(fast, CASES), encode_all(slow, CASES)
    disagree = [(t, f, s) for t, f, s in zip(CASES, f_all, s_all) if f != s]
    for t, f, s in disagree:
        print(f"DISAGREE {t!r}\n  fast {f}\n  slow {s}", file=sys.stderr)
    assert not disagree, "fast and slow tokenizers disagree"
    for t, ids in zip(CASES, f_all):
        fd, sd = fast.decode(ids), slow.decode(ids)
        assert fd == sd, (t, fd, sd)
        assert fast.convert_ids_to_tokens(ids) == slow.convert_ids_to_tokens(ids), t

    # --- partial decodes (invalid UTF-8 -> U+FFFD), fast vs slow
    partial = []
    for text, cut in [("😀", 1), ("ǅ", 1), ("𝄞", 2), ("👍🏽", 3)]:
        ids = fast.encode(text)
        assert len(ids) > cut, (text, ids)
        sub = ids[:cut]
        fd, sd = fast.decode(sub), slow.decode(sub)
        assert fd == sd, (text, fd, sd)
        partial.append({"ids": sub, "decoded": fd, "note": f"first {cut} id(s) of {text!r}"})

    # --- save_pretrained, copy only the small config files
    os.makedirs(OUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_dir = os.path.join(tmp, "saved")
        written = fast.save_pretrained(save_dir)
        print("save_pretrained wrote:", sorted(os.path.basename(p) for p in written))
        copied = []
        for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
            src = os.path.join(save_dir, name)
            if not os.path.exists(src):
                continue
            with open(src, encoding="utf-8") as fh:
                content = json.load(fh)
            text = json.dumps(content)
            if name != "tokenizer_config.json" and "<|im_start|>" not in text:
                continue  # carries none of the added tokens
            shutil.copyfile(src, os.path.join(OUT_DIR, name))
            copied.append(name)
        print("copied:", copied)
        for stale in {"special_tokens_map.json", "added_tokens.json"} - set(copied):
            p = os.path.join(OUT_DIR, stale)
            if os.path.exists(p):
                os.remove(p)

        # --- reload from configs + symlinked shared vocab/merges: once with every copied file,
        # once with tokenizer_config.json alone (what the Rust side reads)
        variants = [("all configs", copied), ("tokenizer_config.json only", ["tokenizer_config.json"])]
        for variant, files in variants:
            load_dir = os.path.join(tmp, "reload-" + str(len(files)))
            os.makedirs(load_dir)
            for name in ("vocab.json", "merges.txt"):
                os.symlink(os.path.join(VOCAB_DIR, name), os.path.join(load_dir, name))
            for name in files:
                shutil.copyfile(os.path.join(OUT_DIR, name), os.path.join(load_dir, name))
            for label, loader in [
                ("Qwen2TokenizerFast", Qwen2TokenizerFast.from_pretrained),
                ("Qwen2Tokenizer", Qwen2Tokenizer.from_pretrained),
                ("AutoTokenizer", AutoTokenizer.from_pretrained),
            ]:
                re_tok = loader(load_dir)
                re_ids = encode_all(re_tok, CASES)
                assert re_ids == f_all, (variant, label)
                for tok, i in special.items():
                    assert re_tok.convert_tokens_to_ids(tok) == i, (variant, label, tok)
                for t, ids in zip(CASES, f_all):
                    assert re_tok.decode(ids) == fast.decode(ids), (variant, label, t)
                if isinstance(re_tok, Qwen2TokenizerFast):
                    re_backend = json.loads(re_tok.backend_tokenizer.to_str())
                    for k in BACKEND_KEYS:
                        assert re_backend[k] == backend[k], (variant, label, k)
                print(f"reload ({variant}) via {label} ({type(re_tok).__name__}): ids identical")

    # --- reference.json
    split = backend["pre_tokenizer"]["pretokenizers"][0]
    assert split["type"] == "Split", split
    regex = split["pattern"]["Regex"]
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert regex == PRETOKENIZE_REGEX, (regex, PRETOKENIZE_REGEX)
    model = {k: v for k, v in backend["model"].items() if k not in ("vocab", "merges")}

    # regex pieces of the NFC text (no added tokens in it), checked against the fast backend's
    # Split pre-tokenizer; None where the text holds an added token
    split_only = tokenizers.pre_tokenizers.Split(tokenizers.Regex(regex), behavior="isolated")
    pieces = []
    for t in CASES:
        if any(tok in t for tok in special):
            pieces.append(None)
            continue
        nfc = unicodedata.normalize("NFC", t)
        assert fast.backend_tokenizer.normalizer.normalize_str(t) == nfc, t
        mine = re_mod.findall(regex, nfc)
        theirs = [p for p, _ in split_only.pre_tokenize_str(nfc)]
        assert mine == theirs, (t, mine, theirs)
        pieces.append(mine)
    ref = {
        "description": "Qwen2 BPE tokenizer (Qwen2TokenizerFast == Qwen2Tokenizer, transformers) "
        "over the shared whisper multilingual vocab.json + merges.txt plus the added tokens of "
        "tokenizer_config.json; generated by tools/reference/qwen2_tokenizer_fixtures.py",
        "vocab": VOCAB_REL,
        "vocab_size": fast.vocab_size,
        "len_with_added": len(fast),
        "versions": {
            "python": sys.version.split()[0],
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "regex": re_mod.__version__,
        },
        "fast_equals_slow": True,
        "pretokenizer_regex": regex,
        "backend": {
            "normalizer": backend["normalizer"],
            "pre_tokenizer": backend["pre_tokenizer"],
            "post_processor": backend["post_processor"],
            "decoder": backend["decoder"],
            "model": model,
            "added_tokens": backend["added_tokens"],
        },
        "special": special,
        "cases": [
            {
                "text": t,
                "pieces": pc,
                "ids": ids,
                "tokens": fast.convert_ids_to_tokens(ids),
                "decoded": fast.decode(ids),
            }
            for t, ids, pc in zip(CASES, f_all, pieces)
        ],
        "partial_decode": partial,
    }
    path = os.path.join(OUT_DIR, "reference.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(ref, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    for name in sorted(os.listdir(OUT_DIR)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT_DIR, name))} bytes")


if __name__ == "__main__":
    main()
