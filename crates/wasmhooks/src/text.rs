//! Plugin-supplied text on its way to a log, a report or a terminal. A
//! plugin chooses every byte of its error messages, log lines, manifest and
//! keys: a newline would forge a log line, an escape sequence would clear
//! the screen or recolour it, a bidi override would reorder what a reader
//! sees, and 30 MB would flood every log it reaches. So such text is cut to a
//! bound and its control characters are written as escapes, once, where it
//! enters the host's own types.

use std::fmt::Write as _;

/// Bytes of a plugin's message kept in an error: enough for a panic message
/// or a traceback's last lines.
pub const MESSAGE: usize = 2048;

/// `s` cut to at most `max` bytes (on a character boundary, saying how much
/// was cut) with control and direction-changing characters escaped.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    let mut cut = 0;
    for (i, c) in s.char_indices() {
        if out.len() >= max {
            cut = s.len() - i;
            break;
        }
        if needs_escape(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut > 0 {
        let _ = write!(out, "… ({cut} more bytes cut)");
    }
    out
}

/// Characters a terminal or a log reader would act on rather than show.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_cuts_long_text() {
        assert_eq!(clean("plain text, ünïcode", 100), "plain text, ünïcode");
        assert_eq!(clean("a\nERROR forged", 100), "a\\nERROR forged");
        assert_eq!(clean("\x1b[2J\u{202E}x", 100), "\\u{1b}[2J\\u{202e}x");
        let long = "é".repeat(1000);
        let cut = clean(&long, 11);
        assert!(cut.starts_with("éééééé"), "{cut}");
        assert!(cut.ends_with("(1988 more bytes cut)"), "{cut}");
    }
}
