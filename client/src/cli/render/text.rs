//! The human line and the `cat` payload: every field a client chose (kind,
//! actor, subject, attribute keys and values, the payload) is shown so that
//! it can neither drive the terminal nor pass for another field. The peer
//! is the kernel's (SO_PEERCRED), so it alone is written in `[...]`, which
//! no client field can produce unquoted.

use tally_client::attributes::{attributes, to_text, AttrRef};
use tally_client::proto::{attribute_value, peer, Event, RecordBody};
use tally_client::record::{ContentState, DecodedRecord};

/// One record as one line: `TIME SEQ KIND actor=A subject=S [PEER] K=V...
/// (N payload bytes)`.
pub fn line(record: &DecodedRecord, time: &str) -> String {
    let none = Event::default();
    // Borrowed, not cloned: the payload can be large.
    let event = record.body.event.as_ref().unwrap_or(&none);
    let mut out = format!(
        "{time} {seq} {kind} actor={actor} subject={subject} [{peer}]",
        seq = record.header.seq,
        kind = token(&event.kind),
        actor = value(&event.actor),
        subject = value(&event.subject),
        peer = peer_text(&record.body),
    );
    for (key, attribute) in attributes(event) {
        let shown = match attribute {
            AttrRef::String(s) => value(s),
            AttrRef::Typed(array @ attribute_value::Value::ArrayValue(_)) => {
                json_text(&to_text(array))
            }
            AttrRef::Typed(typed) => value(&to_text(typed)),
        };
        out.push_str(&format!(" {}={shown}", token(key)));
    }
    out.push_str(&format!(" ({} payload bytes)", event.payload.len()));
    // Not a field a client can write: the text comes after the payload's
    // size, in brackets, as only the peer otherwise is.
    match record.content {
        ContentState::Erased => out.push_str(" [content erased]"),
        ContentState::Redacted => out.push_str(" [content redacted]"),
        ContentState::Inline | ContentState::Joined => {}
    }
    out
}

/// A payload for `-o cat`: UTF-8 text as it is, but with control and other
/// non-printing characters (newline, tab, ESC, bidi overrides) written as
/// Rust escapes (`\n`, `\u{1b}`), so one record is one line and cannot drive
/// the terminal; a byte that is not UTF-8 as `\xNN`. Backslashes and quotes
/// are left as they are, so a JSON payload stays readable: the escaping is
/// for the terminal, `-o json` is the exact form.
pub fn cat(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            if printable(c) || c == '"' || c == '\\' || c == ' ' {
                out.push(c);
            } else {
                out.extend(c.escape_debug());
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// A value after `name=`: as it is when that is unambiguous, else quoted
/// with Rust escapes (`"x uid=0"`, `"a\nb"`, `""`). Quoted when empty or
/// when it holds whitespace, a quote, a backslash, or a character that does
/// not print as itself, so a space can never start what looks like the next
/// field and a control character never reaches the terminal.
pub fn value(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| printable(c) && !c.is_whitespace()) {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

/// A standalone token (the kind) or an attribute key: as [`value`], and
/// also quoted when it holds `=`, `[` or `]`, so it cannot pass for a
/// `name=value` pair or for the peer.
pub fn token(text: &str) -> String {
    if text.contains(['=', '[', ']']) {
        format!("{text:?}")
    } else {
        value(text)
    }
}

/// A typed array's JSON text: its quotes and backslashes are JSON's own (the
/// text is balanced), so it is shown as it is unless it holds whitespace or
/// a character that does not print as itself.
fn json_text(text: &str) -> String {
    if text
        .chars()
        .all(|c| (printable(c) || c == '"' || c == '\\') && !c.is_whitespace())
    {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

/// The character prints as itself in Rust's debug form: not a control, not
/// a format character (bidi overrides, zero-width), not a double quote or
/// backslash (which that form escapes); a single quote counts as printing
/// (a string's debug form leaves it as it is).
fn printable(c: char) -> bool {
    let mut escaped = c.escape_debug();
    c == '\'' || (escaped.next() == Some(c) && escaped.next().is_none())
}

fn peer_text(body: &RecordBody) -> String {
    match body.peer.as_ref().and_then(|peer| peer.kind.as_ref()) {
        Some(peer::Kind::Unix(unix)) => format!("uid={} pid={}", unix.uid, unix.pid),
        Some(peer::Kind::Vsock(vsock)) => format!("cid={} port={}", vsock.cid, vsock.port),
        None => "peer=?".into(),
    }
}
