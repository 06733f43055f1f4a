//! Guest-supplied text made safe for a terminal.
//!
//! The serial-log tail and the agent's error text come from the guest,
//! which is untrusted: raw, they could carry escape sequences that move the
//! cursor, retitle the window, rewrite what the user already saw or (on some
//! terminals) answer back into the input. Every control character (C0, DEL,
//! C1) and the bidirectional overrides that reorder what is shown become a
//! visible `\u{..}` escape; line breaks stay where the text is multi-line.

/// How a line break is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Keep `\n` (and `\t`): the text is a log excerpt.
    Keep,
    /// Escape them too: the text goes inside a one-line message.
    Escape,
}

fn is_unsafe(ch: char, lines: Lines) -> bool {
    match ch {
        '\n' | '\t' => lines == Lines::Escape,
        // C0, DEL and C1 controls (ESC, CSI, OSC, BEL, CR, backspace...).
        _ if ch.is_control() => true,
        // Bidirectional embeddings, overrides and isolates.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// `text` with every unsafe character replaced by its `\u{..}` escape.
pub fn printable(text: &str, lines: Lines) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if is_unsafe(ch, lines) {
            out.push_str(&format!("\\u{{{:x}}}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Bytes from the guest (lossy UTF-8) made printable.
pub fn printable_bytes(bytes: &[u8], lines: Lines) -> String {
    printable(&String::from_utf8_lossy(bytes), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_controls_are_shown_not_obeyed() {
        let hostile = "ok\x1b[2J\x1b]0;pwned\x07\r\x08\u{9b}31m\u{202e}gnp.exe";
        let shown = printable(hostile, Lines::Keep);
        assert_eq!(
            shown,
            "ok\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{d}\\u{8}\\u{9b}31m\\u{202e}gnp.exe"
        );
        assert!(!shown.chars().any(|ch| ch.is_control()));
    }

    #[test]
    fn line_breaks_are_kept_only_for_multi_line_text() {
        assert_eq!(printable("a\nb\tc", Lines::Keep), "a\nb\tc");
        assert_eq!(printable("a\nb\tc", Lines::Escape), "a\\u{a}b\\u{9}c");
        // Ordinary text, accents and emoji pass unchanged.
        assert_eq!(printable("héllo ✓ 🙂", Lines::Escape), "héllo ✓ 🙂");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            printable_bytes(b"a\xffb\x1b", Lines::Keep),
            "a\u{fffd}b\\u{1b}"
        );
    }
}
