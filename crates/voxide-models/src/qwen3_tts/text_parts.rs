//! A long text cut into parts that are synthesised one after another, as TTS servers do
//! (Kokoro-FastAPI, openedai-speech): qwen-tts generates at most 2048 frames (164 s) in one
//! go, so a page of text is cut off, and one long generation drifts where short ones do not.
//!
//! A part holds at most `max_chars` characters and ends, by preference, after a sentence (`.`,
//! `!`, `?`, `…`, `;` before a space, CJK `。！？；`, or a line break), else after a clause (`,`
//! `:` before a space, CJK `，、：`), else at a space, else (one unbroken run of characters)
//! at the limit.

/// The part length voxide uses unless told otherwise: ~30 s of English speech, ~2 minutes of
/// Chinese, well within qwen-tts' 2048 frames.
pub const DEFAULT_PART_CHARS: usize = 500;

/// Where `text` (trimmed) is cut: parts of at most `max_chars` characters (`0`: never cut),
/// each trimmed and not empty. A text within the limit is one part, itself.
pub fn text_parts(text: &str, max_chars: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    // `0` never cuts: `nth(0)` would be the first character.
    while let Some((limit, _)) = rest.char_indices().nth(max_chars).filter(|_| max_chars > 0) {
        let window = &rest[..limit];
        let cut = last_break(window, &rest[limit..], is_sentence_end)
            .or_else(|| last_break(window, &rest[limit..], is_clause_end))
            .or_else(|| {
                window
                    .char_indices()
                    .rev()
                    .find(|&(i, c)| i > 0 && c.is_whitespace())
                    .map(|(i, _)| i)
            })
            .unwrap_or(limit);
        parts.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// What ends a sentence: the mark, and whether it needs a space (or line break) after it.
fn is_sentence_end(c: char) -> Option<bool> {
    match c {
        '.' | '!' | '?' | '…' | ';' => Some(true),
        '。' | '！' | '？' | '；' | '\n' => Some(false),
        _ => None,
    }
}

/// What ends a clause, as [`is_sentence_end`].
fn is_clause_end(c: char) -> Option<bool> {
    match c {
        ',' | ':' => Some(true),
        '，' | '、' | '：' => Some(false),
        _ => None,
    }
}

/// The byte offset just after the last mark `ends` finds in `window` (followed by a space where
/// it needs one: the next character of `window`, else the first of `after`), if any.
fn last_break(window: &str, after: &str, ends: fn(char) -> Option<bool>) -> Option<usize> {
    let mut chars = window.char_indices().peekable();
    let mut found = None;
    while let Some((i, c)) = chars.next() {
        let Some(needs_space) = ends(c) else {
            continue;
        };
        let next = chars
            .peek()
            .map(|&(_, n)| n)
            .or_else(|| after.chars().next());
        let end = i + c.len_utf8();
        if end > 0 && (!needs_space || next.is_none_or(char::is_whitespace)) {
            found = Some(end);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_text_is_one_part() {
        assert_eq!(text_parts("  Hello there.  ", 500), ["Hello there."]);
        assert_eq!(text_parts("Hello. World.", 0), ["Hello. World."]);
        assert!(text_parts("   ", 10).is_empty());
    }

    #[test]
    fn sentences_are_packed_into_parts() {
        let text = "One two. Three four five! Six? Seven eight nine ten.";
        assert_eq!(
            text_parts(text, 26),
            ["One two. Three four five!", "Six? Seven eight nine ten."]
        );
        // A decimal point and an abbreviation's dot with no space after are not sentence ends.
        assert_eq!(
            text_parts("Pi is 3.14159 exactly, or so, they say", 20),
            ["Pi is 3.14159", "exactly, or so,", "they say"]
        );
    }

    #[test]
    fn clauses_spaces_and_unbroken_runs() {
        assert_eq!(
            text_parts("first clause, second clause, third", 20),
            ["first clause,", "second clause, third"]
        );
        assert_eq!(text_parts("aaaa bbbb cccc", 10), ["aaaa bbbb", "cccc"]);
        // Cut at the limit inside a run, on a character boundary.
        assert_eq!(text_parts("ééééééé", 3), ["ééé", "ééé", "é"]);
    }

    #[test]
    fn cjk_marks_need_no_space() {
        assert_eq!(
            text_parts("今天天气很好。我们去公园吧！好的，走吧。", 8),
            ["今天天气很好。", "我们去公园吧！", "好的，走吧。"]
        );
        assert_eq!(
            text_parts("第一段\n第二段很长很长", 7),
            ["第一段", "第二段很长很长"]
        );
    }

    #[test]
    fn no_text_is_lost() {
        let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod \
                    tempor incididunt ut labore et dolore magna aliqua!\nUt enim ad minim \
                    veniam; quis nostrud exercitation ullamco laboris nisi ut aliquip.";
        for max in [1, 7, 30, 80, 1000] {
            let parts = text_parts(text, max);
            assert!(parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().count() <= max));
            let squeeze = |s: &str| s.split_whitespace().collect::<String>();
            assert_eq!(squeeze(&parts.join(" ")), squeeze(text), "{max}");
        }
    }
}
