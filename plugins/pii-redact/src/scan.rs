//! Finding personal data in text by hand, byte by byte: no regex, so nothing
//! is compiled per call (or at all), and the same character classes that
//! define a match also say how much of a stream's tail could still become
//! one ([`hold_from`]).
//!
//! Every class here is ASCII, so every position this module returns is a
//! char boundary of the UTF-8 text it was given.

use std::borrow::Cow;

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `local@domain.tld`.
    Email,
    /// 10 or 11 digits, or 8 to 15 after a `+`, in groups.
    Phone,
    /// 13 to 19 digits, single spaces or dashes between groups, Luhn-valid.
    Card,
}

impl Kind {
    /// Every kind, in config order.
    pub const ALL: [Kind; 3] = [Kind::Email, Kind::Phone, Kind::Card];

    /// The kind's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
        }
    }

    /// The replacement text used when the config names none.
    pub fn default_replacement(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Phone => "[PHONE]",
            Kind::Card => "[CARD]",
        }
    }
}

/// What replaces each kind; `None`: the kind is left as it is.
#[derive(Debug, Clone)]
pub struct Redactor {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub card: Option<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            email: Some(Kind::Email.default_replacement().into()),
            phone: Some(Kind::Phone.default_replacement().into()),
            card: Some(Kind::Card.default_replacement().into()),
        }
    }
}

impl Redactor {
    fn replacement(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Email => self.email.as_deref(),
            Kind::Phone => self.phone.as_deref(),
            Kind::Card => self.card.as_deref(),
        }
    }

    /// The text with every match of an enabled kind replaced; borrowed
    /// when there was nothing to replace, so clean text costs no copy.
    ///
    /// Every kind is found whether enabled or not, so that turning cards
    /// off leaves a card number whole instead of redacting part of it as a
    /// phone number.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let found = find(text);
        if found
            .iter()
            .all(|&(_, _, kind)| self.replacement(kind).is_none())
        {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in found {
            if let Some(with) = self.replacement(kind) {
                out.push_str(&text[at..start]);
                out.push_str(with);
                at = end;
            }
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

/// A byte of an e-mail address's local part.
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// A byte of an e-mail address's domain.
fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// A byte that may stand in an e-mail address.
fn is_email_byte(b: u8) -> bool {
    is_local(b) || b == b'@'
}

/// A byte that may stand in a phone or card number (separators included).
fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

/// A byte a phone or card number may start with.
fn starts_number(b: u8) -> bool {
    b.is_ascii_digit() || b == b'+' || b == b'('
}

/// Where the part of a stream's text that could still become part of a
/// match begins: the tail from there is held until more text (or the end
/// of the stream) decides it. Text before it is final: it ends in a byte
/// that no address or number may hold, so no later text can change how it
/// reads. A tail longer than `max_held` bytes is not held (returns
/// `text.len()`), which bounds what a request keeps between chunks.
pub fn hold_from(text: &str, max_held: usize) -> usize {
    let b = text.as_bytes();
    let n = b.len();
    // The trailing run that could grow into an address...
    let mut email = n;
    while email > 0 && is_email_byte(b[email - 1]) {
        email -= 1;
    }
    // ...or into a number, from the first byte one may start with (the
    // separators before it belong to no number).
    let mut number = n;
    while number > 0 && is_number_byte(b[number - 1]) {
        number -= 1;
    }
    while number < n && !starts_number(b[number]) {
        number += 1;
    }
    // Back to a byte no address holds, and out of any stretch of number
    // bytes (`111186(4@` holds a number that ends before the `@`): what is
    // given out then never ends inside a word, an address or a number
    // whose reading the tail decides.
    let mut from = email.min(number);
    loop {
        let was = from;
        while from > 0 && is_email_byte(b[from - 1]) {
            from -= 1;
        }
        if from < n && is_number_byte(b[from]) {
            // The stretch `numbers` reads: number bytes from one a number
            // may start with.
            let mut run = from;
            while run > 0 && is_number_byte(b[run - 1]) {
                run -= 1;
            }
            while run < from && !starts_number(b[run]) {
                run += 1;
            }
            from = run;
        }
        if from == was {
            break;
        }
    }
    if n - from > max_held { n } else { from }
}

/// Every match in `text`, in order and without overlaps: (start, end, kind).
pub fn find(text: &str) -> Vec<(usize, usize, Kind)> {
    let b = text.as_bytes();
    let mut found: Vec<(usize, usize, Kind)> = emails(b)
        .into_iter()
        .map(|(s, e)| (s, e, Kind::Email))
        .collect();
    // Numbers, in the gaps between addresses.
    let mut gaps = Vec::with_capacity(found.len() + 1);
    let mut at = 0;
    for &(s, e, _) in &found {
        gaps.push((at, s));
        at = e;
    }
    gaps.push((at, b.len()));
    for (from, to) in gaps {
        numbers(b, from, to, &mut found);
    }
    found.sort_unstable_by_key(|&(s, _, _)| s);
    found
}

/// E-mail addresses: a local part, `@`, and a domain of dot-separated
/// labels whose last is two or more letters.
fn emails(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut done = 0;
    for at in 0..b.len() {
        if b[at] != b'@' || at < done {
            continue;
        }
        let mut start = at;
        while start > done && is_local(b[start - 1]) {
            start -= 1;
        }
        while start < at && b[start] == b'.' {
            start += 1;
        }
        if start == at {
            continue;
        }
        let mut end = at + 1;
        while end < b.len() && is_domain(b[end]) && !(b[end] == b'.' && b[end - 1] == b'.') {
            end += 1;
        }
        while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &b[at + 1..end];
        let mut labels = domain.split(|&c| c == b'.');
        let tld = labels.next_back().unwrap_or_default();
        let valid = domain.contains(&b'.')
            && domain.split(|&c| c == b'.').all(|l| !l.is_empty())
            && tld.len() >= 2
            && tld.iter().all(u8::is_ascii_alphabetic);
        if valid {
            out.push((start, end));
            done = end;
        }
    }
    out
}

/// A run of digits inside a number-like stretch of text.
struct Group {
    start: usize,
    end: usize,
}

/// Phone and card numbers in `b[from..to]`, pushed onto `out`.
fn numbers(b: &[u8], from: usize, to: usize, out: &mut Vec<(usize, usize, Kind)>) {
    let mut i = from;
    while i < to {
        if !starts_number(b[i]) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < to && is_number_byte(b[end]) {
            end += 1;
        }
        run(b, i, end, out);
        i = end;
    }
}

/// Whether the bytes between two digit groups keep them in one number:
/// at most two, at most one of ` -.` and at most one parenthesis.
fn joins(sep: &[u8]) -> bool {
    let plain = sep
        .iter()
        .filter(|c| matches!(c, b' ' | b'-' | b'.'))
        .count();
    let parens = sep.iter().filter(|c| matches!(c, b'(' | b')')).count();
    !sep.is_empty() && sep.len() <= 2 && plain <= 1 && parens <= 1 && !sep.contains(&b'+')
}

/// The numbers in one stretch of digits and separators: from each group,
/// the longest span of groups that reads as a card or a phone number
/// wins, so two numbers a space apart are two numbers, not one too long.
fn run(b: &[u8], start: usize, end: usize, out: &mut Vec<(usize, usize, Kind)>) {
    let mut groups = Vec::new();
    let mut i = start;
    while i < end {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < end && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push(Group { start: s, end: i });
        } else {
            i += 1;
        }
    }
    let Some(first) = groups.first() else {
        return;
    };
    // What stands before the first group: `+`, `(` or `+(` count.
    let lead = &b[start..first.start];
    let plus = lead == b"+" || lead == b"+(";
    let mut g = 0;
    'from: while g < groups.len() {
        let mut digits = 0;
        let mut last = g;
        // Spans of at most 19 digits with joining separators.
        while last < groups.len() {
            if last > g && !joins(&b[groups[last - 1].end..groups[last].start]) {
                break;
            }
            digits += groups[last].end - groups[last].start;
            if digits > 19 {
                break;
            }
            last += 1;
        }
        for j in (g..last).rev() {
            // A number inside a stretch begins and ends at a space:
            // `3.14159265358` holds no phone number after its dot.
            let spaced = |k: usize| b[groups[k].end..groups[k + 1].start].contains(&b' ');
            if (g > 0 && !spaced(g - 1)) || (j + 1 < groups.len() && !spaced(j)) {
                continue;
            }
            if let Some(found) = span(b, &groups[g..=j], g == 0 && plus) {
                out.push(found);
                g = j + 1;
                continue 'from;
            }
        }
        g += 1;
    }
}

/// Whether these groups read as a card or a phone number, and where.
fn span(b: &[u8], groups: &[Group], plus: bool) -> Option<(usize, usize, Kind)> {
    let first = groups.first()?;
    let last = groups.last()?;
    // Not glued to a word on either side.
    let mut start = first.start;
    if start > 0 && b[start - 1] == b'(' {
        start -= 1;
    }
    if plus && start > 0 && b[start - 1] == b'+' {
        start -= 1;
    }
    if start > 0 && b[start - 1].is_ascii_alphanumeric() {
        return None;
    }
    if last.end < b.len() && b[last.end].is_ascii_alphanumeric() {
        return None;
    }
    let digits: usize = groups.iter().map(|g| g.end - g.start).sum();
    let seps = groups.windows(2).map(|w| &b[w[0].end..w[1].start]);
    let card_seps = seps.clone().all(|s| s == b" " || s == b"-");
    if !plus && start == first.start && card_seps && (13..=19).contains(&digits) && luhn(b, groups)
    {
        return Some((start, last.end, Kind::Card));
    }
    let phone_digits = if plus { 8..=15 } else { 10..=11 };
    let later_groups_whole = groups[1..].iter().all(|g| g.end - g.start >= 2);
    if phone_digits.contains(&digits) && later_groups_whole && !looks_like_other_numbers(b, groups)
    {
        return Some((start, last.end, Kind::Phone));
    }
    None
}

/// Numbers models write all the time that have a phone number's digits:
/// dates with an hour (`2024-01-15 10:30`), a time right after, IP
/// addresses and versions (`172.16.254.100`). A phone number in dots has
/// three groups (`415.555.0100`).
fn looks_like_other_numbers(b: &[u8], groups: &[Group]) -> bool {
    let len = |i: usize| groups.get(i).map_or(0, |g| g.end - g.start);
    let sep = |i: usize| &b[groups[i].end..groups[i + 1].start];
    let date = matches!((len(0), len(1), len(2)), (4, 2, 2) | (2, 2, 4))
        && (sep(0) == b"-" || sep(0) == b".")
        && sep(0) == sep(1);
    let last = groups.last().map_or(0, |g| g.end);
    let time = b.get(last) == Some(&b':');
    let dots = groups
        .windows(2)
        .any(|w| b[w[0].end..w[1].start].contains(&b'.'));
    date || time || (dots && groups.len() != 3)
}

/// The Luhn checksum over the groups' digits.
fn luhn(b: &[u8], groups: &[Group]) -> bool {
    let mut sum = 0;
    let digits = groups
        .iter()
        .rev()
        .flat_map(|g| b[g.start..g.end].iter().rev());
    for (i, &d) in digits.enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> String {
        Redactor::default().redact(text).into_owned()
    }

    /// Streams `chunks` through the hold-back as the plugin does.
    fn stream(chunks: &[&str]) -> (Vec<String>, String) {
        let r = Redactor::default();
        let mut held = String::new();
        let mut outs = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let buf = format!("{held}{c}");
            let from = if i + 1 == chunks.len() {
                buf.len()
            } else {
                hold_from(&buf, 256)
            };
            outs.push(r.redact(&buf[..from]).into_owned());
            held = buf[from..].to_owned();
        }
        let all = outs.concat();
        (outs, all)
    }

    #[test]
    fn emails() {
        assert_eq!(redact("mail jane.doe+x@mail.example.com."), "mail [EMAIL].");
        assert_eq!(redact("a@b.c is no address"), "a@b.c is no address");
        assert_eq!(redact("x@y.com@z.org"), "[EMAIL]@z.org");
        assert_eq!(redact("@home"), "@home");
    }

    #[test]
    fn phones() {
        for p in [
            "+1 415-555-0100",
            "(415) 555-0100",
            "415.555.0100",
            "4155550100",
            "+44 20 7946 0958",
            "1-800-555-0199",
        ] {
            assert_eq!(redact(&format!("call {p} now")), "call [PHONE] now", "{p}");
        }
        for not in [
            "at 2024-01-15 10:30",
            "on 15-01-2024 10",
            "host 172.16.254.100",
            "10:30 4155550100:00",
            "pi is 3.14159265358",
            "1.5 2.5 3.5 4.5 5.5",
            "v12345678901x",
            "12345",
        ] {
            assert_eq!(redact(not), not);
        }
        assert_eq!(redact("415 555 0100 415 555 0101"), "[PHONE] [PHONE]");
    }

    #[test]
    fn cards() {
        for c in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "378282246310005",
        ] {
            assert_eq!(redact(&format!("card {c}.")), "card [CARD].", "{c}");
        }
        assert_eq!(redact("id 1234567812345678"), "id 1234567812345678");
        assert_eq!(redact("id 1234 5678 1234 5678"), "id 1234 5678 1234 5678");
    }

    #[test]
    fn hold_back_keeps_what_could_grow() {
        assert_eq!(hold_from("Hello wor", 256), 6);
        assert_eq!(hold_from("Hello, world!", 256), 13);
        assert_eq!(hold_from("call 415 555 ", 256), 5);
        assert_eq!(hold_from("x (415) 5", 256), 2);
        assert_eq!(hold_from("end ", 256), 4);
        assert_eq!(hold_from(&"a".repeat(300), 256), 300);
    }

    #[test]
    fn streams_split_anywhere_read_as_the_whole() {
        let text = "Write to jane.doe@example.com or call +1 (415) 555-0100; card 4111 1111 1111 1111, id 1234 5678 1234 5678. Thanks!";
        let whole = redact(text);
        for a in 1..text.len() {
            for b in (a + 1..text.len()).step_by(7) {
                let (_, all) = stream(&[&text[..a], &text[a..b], &text[b..]]);
                assert_eq!(all, whole, "split at {a}, {b}");
            }
        }
    }

    /// Text made of the bytes matches are made of, split at random: the
    /// stream always reads as the whole text does.
    #[test]
    fn random_streams_read_as_the_whole() {
        let alphabet = b"ab.-+@ ()0123456789 4111 415 com x:";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pieces = [
            "a@b.io",
            "4111 1111 1111 1111",
            "+1 415 555 0100",
            "(415) 555-0100",
            "2024-01-15 10:30",
            "172.16.254.100",
            "x@y.co.uk",
            "ñé",
            "+44 20 7946 0958",
            "5500-0000-0000-0004",
            ".",
        ];
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..next(40) {
                if next(8) == 0 {
                    text.push_str(pieces[next(pieces.len())]);
                } else {
                    text.push(char::from(alphabet[next(alphabet.len())]));
                }
            }
            let whole = redact(&text);
            let mut cuts: Vec<usize> = (0..next(5)).map(|_| next(text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for mut c in cuts {
                while !text.is_char_boundary(c) {
                    c += 1;
                }
                chunks.push(&text[at..c]);
                at = c;
            }
            chunks.push(&text[at..]);
            assert_eq!(stream(&chunks).1, whole, "{text:?} in {chunks:?}");
        }
    }
}
