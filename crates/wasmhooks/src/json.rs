//! JSON text a plugin returns (a list or map value, a saved state), parsed
//! so that every number crosses exactly or is refused. serde_json parses a
//! whole number past `u64` as the nearest float, silently; with its
//! `float_roundtrip` feature (on in this workspace) every float parses to
//! the double it was written from.

use serde_json::Value;

/// Parses `text`, refusing a whole number (no fraction, no exponent) that
/// fits neither `i64` nor `u64`: the data map could only hold it rounded.
pub(crate) fn parse_exact(text: &str) -> Result<Value, String> {
    if let Some(number) = inexact_integer(text) {
        return Err(format!(
            "the whole number {} does not fit in 64 bits",
            crate::text::clean(number, 64)
        ));
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The first whole-number token outside strings that is past `i64::MIN`
/// or `u64::MAX`, if any. One pass over the bytes: strings are skipped
/// (with their escapes), and a number token is digits after an optional
/// minus, with a `.`, `e` or `E` making it a float.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let whole = !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'));
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = &text[start..i];
                // 19 digits always fit; past that, ask the parsers.
                if whole
                    && token.len() > 19
                    && token.parse::<i64>().is_err()
                    && token.parse::<u64>().is_err()
                {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_past_64_bits_are_refused_anywhere() {
        for text in [
            "18446744073709551616",
            "[1, 18446744073709551616]",
            r#"{"a": {"b": [-9223372036854775809]}}"#,
            "123456789012345678901234567890",
        ] {
            assert!(parse_exact(text).is_err(), "{text}");
        }
        for text in [
            "18446744073709551615",
            "-9223372036854775808",
            "[1e400]",
            r#"{"n": 1.8446744073709552e19, "s": "18446744073709551616 \" 99999999999999999999"}"#,
            "[0.000000000000000000000001]",
        ] {
            // 1e400 is refused by serde_json itself, as out of range.
            let exact = inexact_integer(text);
            assert!(exact.is_none(), "{text}: {exact:?}");
        }
    }

    #[test]
    fn floats_cross_to_the_double_they_were_written_from() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let f = f64::from_bits(state);
            if !f.is_finite() {
                continue;
            }
            let text = Value::from(f).to_string();
            let back = parse_exact(&format!("[{text}]")).expect("parses");
            assert_eq!(
                back[0].as_f64().map(f64::to_bits),
                Some(f.to_bits()),
                "{text}"
            );
        }
    }
}
