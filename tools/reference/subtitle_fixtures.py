#!/usr/bin/env python3
"""Subtitle layout references for voxide: openai-whisper's WriteSRT / WriteVTT (and WriteTSV).

Writes `tests/fixtures/subtitles/openai_writers.json`: a few hand-made `transcribe()` results
(segments with per-word timings, as `word_timestamps=True` returns them, and one without
words) and, for each result and each option set of the writers' keyword arguments
(`max_line_width`, `max_line_count`, `max_words_per_line`, `highlight_words`), the exact text
that `writer.write_result(result, file=io.StringIO(), **options)` prints; and for each result
what WriteTSV prints (it takes no options).

The results exercise: several segments; a pause of more than 3 s (a subtitle break when both
`max_line_width` and `max_line_count` are given; openai-whisper measures it from the previous
word's start: 4.0 - 0.48 s here, while the gap after that word's end is under 3 s); words
longer than the line width; attached punctuation and a literal `-->` (kept: the word path does
not replace it); multi-byte words
(widths count code points); a segment with an empty `words` list (first and in the middle);
times past one hour; times of exactly half a millisecond (Python's `round` ties to even), in
a word and in a segment; a tab in a segment's text (WriteTSV writes a space);
overlapping and touching words (the gap cues of `highlight_words` compare formatted times);
and, in `edge`, words that only a careful port gets right: a whitespace-only word, a word with
U+001F (Python's `str.strip` removes it, Rust's `trim` does not), a word with an inner newline
(`highlight_words`' regex leaves it alone) and one with a final newline. The `zeros` option set
passes 0 for every limit, which the writers take as unset (`value or default`).

Only `whisper/utils.py` is loaded (it needs nothing but the standard library), so the script
runs without importing torch:

    /work/venv/ref/bin/python tools/reference/subtitle_fixtures.py
"""

import importlib.metadata
import importlib.util
import io
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/fixtures/subtitles/openai_writers.json"
GENERATOR = "tools/reference/subtitle_fixtures.py"


def load_whisper_utils():
    """openai-whisper's `whisper/utils.py`, without running the package's `__init__` (torch)."""
    package = Path(importlib.util.find_spec("whisper").origin).parent
    spec = importlib.util.spec_from_file_location("whisper_utils", package / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def segment(start, end, words):
    """A result segment; `words` is a list of (word, start, end) or None for no `words` key."""
    seg = {"start": start, "end": end}
    if words is None:
        return seg
    seg["text"] = "".join(w for w, _, _ in words)
    seg["words"] = [{"word": w, "start": s, "end": e, "probability": 0.9} for w, s, e in words]
    return seg


RESULTS = {
    "talk": [
        segment(0.0, 1.1, [(" Hello,", 0.0, 0.48), (" world.", 0.48, 1.0625)]),
        segment(4.0, 7.0, [
            (" This", 4.0, 4.2), (" is", 4.2, 4.3), (" extraordinarily", 4.4, 5.2),
            (" naïve,", 5.2, 5.6), (" café", 5.6, 6.0), (" 日本語!", 6.0, 6.6), (" -->", 6.6, 6.7),
            (" done.", 6.7, 7.0),
        ]),
        segment(12.0, 13.0, []),
        segment(3725.0, 3727.0, [
            (" internationalization", 3725.0, 3725.9), (" works.", 3725.8, 3726.2),
            (" Bye.", 3726.2004, 3727.0),
        ]),
    ],
    "edge": [
        segment(0.0, 1.0, []),
        segment(5.0, 9.0, [
            (" ", 5.0, 5.2), (" Spaced", 5.2, 5.6), (" \x1fodd", 5.6, 6.0),
            (" a\nb", 6.0, 6.5), (" end\n", 6.5, 7.0), (" tail", 7.0, 9.0),
        ]),
    ],
    "plain": [
        {"start": 0.0, "end": 1.5, "text": " Hello."},
        {"start": 2.0625, "end": 2.5, "text": " Tie\tbreak."},
        {"start": 3661.25, "end": 3725.5, "text": " --> World"},
    ],
}

OPTIONS = {
    "defaults": {},
    "width20": {"max_line_width": 20},
    "width20_count2": {"max_line_width": 20, "max_line_count": 2},
    "words3": {"max_words_per_line": 3},
    "words2_width20_count2": {"max_words_per_line": 2, "max_line_width": 20, "max_line_count": 2},
    "zeros": {"max_line_width": 0, "max_line_count": 0, "max_words_per_line": 0},
    "highlight": {"highlight_words": True},
    "highlight_width16_count1": {
        "highlight_words": True, "max_line_width": 16, "max_line_count": 1,
    },
}


def main():
    utils = load_whisper_utils()
    srt, vtt = utils.WriteSRT("."), utils.WriteVTT(".")
    cases = []
    for result_name, segments in RESULTS.items():
        result = {"text": "".join(s.get("text", "") for s in segments), "segments": segments}
        for options_name, options in OPTIONS.items():
            case = {"result": result_name, "options": options_name}
            for key, writer in (("srt", srt), ("vtt", vtt)):
                out = io.StringIO()
                writer.write_result(result, file=out, **options)
                case[key] = out.getvalue()
            cases.append(case)
    tsv = {}
    for result_name, segments in RESULTS.items():
        out = io.StringIO()
        utils.WriteTSV(".").write_result({"segments": segments}, file=out)
        tsv[result_name] = out.getvalue()
    fixture = {
        "generator": f"{GENERATOR}: openai-whisper's WriteSRT / WriteVTT "
                     "write_result(result, file, **options) on hand-made results, and WriteTSV's",
        "openai_whisper": importlib.metadata.version("openai-whisper"),
        "results": RESULTS,
        "options": OPTIONS,
        "cases": cases,
        "tsv": tsv,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}: {len(cases)} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
