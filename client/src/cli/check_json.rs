//! The parts of a `--json` check object every verify document shares
//! (docs/VERIFY-JSON.md): its status word, its kind names, the object
//! itself. A module below the documents that use it (`verify_json`,
//! `verify_content`, `verify_range`), so none of them imports another for it.

use std::fmt::Debug;

use serde_json::{Map, Value};

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Checked in part (e.g. `--anchors newest`: not every signature).
    Partial,
    /// Not checked (what it needs was not given).
    Skipped,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Partial => "partial",
            Status::Skipped => "skipped",
        }
    }
}

/// `RecordModified { seq: 3, .. }` -> `record_modified`.
pub fn kind_of(value: &impl Debug) -> String {
    let debug = format!("{value:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let mut kind = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kind.push('_');
            }
            kind.push(c.to_ascii_lowercase());
        } else {
            kind.push(c);
        }
    }
    kind
}

/// One check object: name, status, message, then `fields`.
pub fn check(name: &str, status: Status, message: String, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), name.into());
    object.insert("status".into(), status.word().into());
    object.insert("message".into(), message.into());
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}
