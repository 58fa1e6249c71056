//! The `TALLYD_*` environment layer of the configuration: every key of
//! [`Config`] is settable as `TALLYD_` + its path in upper case, the table
//! and the key joined by `_` (`max_frame_bytes` -> `TALLYD_MAX_FRAME_BYTES`,
//! `[tpm] anchor_interval_secs` -> `TALLYD_TPM_ANCHOR_INTERVAL_SECS`,
//! `[access] unix_default` -> `TALLYD_ACCESS_UNIX_DEFAULT`).
//!
//! The names are derived from the struct, not listed by hand: [`keys`] runs
//! `Config`'s own `Deserialize` against a probe that records every field
//! serde asks for (an earlier hand-written list covered 8 keys and silently
//! ignored the rest, disk_warn_below_bytes among them). A key added to
//! `Config` is therefore settable at once, and the test that sets every key
//! fails until it is given a test value.
//!
//! Values: a key serde reads as a string takes the variable's text as it is
//! (`TALLYD_SOCKET_GROUP=1000` is the group named "1000"); any other is read
//! as a TOML value (`65536`, `true`, `["append", "read"]`, `0x01c17a11`), and
//! text that is no TOML value is taken as a string (so `TALLYD_SOCKET_MODE=0660`
//! works). Each variable is checked alone, so a malformed one is named.
//!
//! No layering library: figment would map the names (with `split("__")` for
//! tables) but has no list of the struct's keys, so it can neither warn about
//! an unknown variable with the closest known name nor tell strings from
//! numbers per key; the probe below is the only part that needs serde's
//! internals, and it is ~100 lines.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// Every variable starts with this.
pub const PREFIX: &str = "TALLYD_";

/// `TALLYD_*` variables that are not configuration keys, and who reads them.
pub const NOT_KEYS: &[(&str, &str)] = &[
    ("TALLYD_CONFIG", "the config file (tallyd --config)"),
    ("TALLYD_NO_TPM", "tallyd --no-tpm"),
    (
        "TALLYD_TPM_OWNER_AUTH",
        "the owner hierarchy's password (environment only)",
    ),
    (
        "TALLYD_TPM_ENDORSEMENT_AUTH",
        "the endorsement hierarchy's password (environment only)",
    ),
    ("TALLYD_HOLD_APPLY", "a test hook of debug builds"),
    ("TALLYD_CRASH_POINT", "a test hook of debug builds"),
    ("TALLYD_BIN", "the end-to-end tests' path to tallyd"),
];

/// Older names kept working: (variable, the key it sets).
pub const ALIASES: &[(&str, &str)] = &[("TALLYD_ANCHOR_INTERVAL_SECS", "tpm.anchor_interval_secs")];

/// How a key's value is read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// serde reads a string: the text as it is.
    Text,
    /// Anything else: a TOML value, or the text when it is none.
    Value,
}

/// One configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Table names then the key, e.g. `["tpm", "tcti"]`.
    pub path: Vec<&'static str>,
    pub leaf: Leaf,
}

impl Key {
    /// `tpm.tcti`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// `TALLYD_TPM_TCTI`.
    pub fn variable(&self) -> String {
        format!("{PREFIX}{}", self.path.join("_").to_uppercase())
    }
}

/// The file (if any), then the `TALLYD_*` variables of `vars` over it
/// (this module); flags go over the result. (Here, not in `config`, so
/// that `config` does not import the layer that imports it.) Returns the warnings
/// about unknown variables, for the log once it is set up.
pub fn load(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut table = match file {
        Some(path) => {
            // Parsed into the struct first, so the file's own errors name the file.
            let config = Config::from_file(path)?;
            match toml::Value::try_from(&config)? {
                toml::Value::Table(table) => table,
                _ => toml::Table::new(),
            }
        }
        None => toml::Table::new(),
    };
    let mut named = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        if !name.starts_with(PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(value) => named.push((name, value)),
            Err(_) => return Err(ConfigError::EnvNotUtf8 { variable: name }),
        }
    }
    let layer = layer(named)?;
    merge(&mut table, layer.table);
    let config =
        Config::deserialize(toml::Value::Table(table)).map_err(|err| ConfigError::Invalid {
            field: "environment",
            message: err.message().to_owned(),
        })?;
    Ok((config, layer.warnings))
}

/// Every key of [`Config`], tables' keys included, in declaration order.
pub fn keys() -> Vec<Key> {
    let mut keys = Vec::new();
    // The probe gives every field a placeholder value, which Config accepts
    // (validation is a separate step); an error would only cut the list short,
    // and the unit tests pin the list.
    let _ = Config::deserialize(Probe {
        path: Vec::new(),
        keys: &mut keys,
    });
    keys
}

/// The environment layer's result: the values to put over the file's, and
/// warnings for the log (it is not set up yet when this runs).
#[derive(Debug, Default)]
pub struct EnvLayer {
    pub table: toml::Table,
    pub warnings: Vec<String>,
}

/// Reads every `TALLYD_*` variable of `vars`: known keys (and aliases) go into
/// the table, each checked alone against `Config` so that a malformed value
/// is an error naming its variable; unknown ones are warned about, naming the
/// closest known variable.
pub fn layer(vars: impl IntoIterator<Item = (String, String)>) -> Result<EnvLayer, ConfigError> {
    let keys = keys();
    let by_name: BTreeMap<String, &Key> = keys.iter().map(|key| (key.variable(), key)).collect();
    let mut layer = EnvLayer::default();
    for (name, text) in vars {
        if !name.starts_with(PREFIX) || NOT_KEYS.iter().any(|(known, _)| *known == name) {
            continue;
        }
        let key = match ALIASES.iter().find(|(alias, _)| *alias == name) {
            Some((_, dotted)) => keys.iter().find(|key| key.dotted() == *dotted),
            None => by_name.get(&name).copied(),
        };
        let Some(key) = key else {
            let known = by_name
                .keys()
                .map(String::as_str)
                .chain(NOT_KEYS.iter().map(|(known, _)| *known));
            layer.warnings.push(match closest(&name, known) {
                Some(near) => {
                    format!("unknown environment variable {name} ignored (did you mean {near}?)")
                }
                None => format!("unknown environment variable {name} ignored"),
            });
            continue;
        };
        let mut alone = toml::Table::new();
        insert(&mut alone, &key.path, value(key.leaf, &text));
        Config::deserialize(toml::Value::Table(alone.clone())).map_err(|err| ConfigError::Env {
            variable: name.clone(),
            key: key.dotted(),
            message: err.message().to_owned(),
        })?;
        merge(&mut layer.table, alone);
    }
    Ok(layer)
}

/// The environment's text as the value of a key.
fn value(leaf: Leaf, text: &str) -> toml::Value {
    if leaf == Leaf::Value {
        // Exactly one key back, so text such as "1\nlog = 'x'" cannot set a
        // second key through this one.
        if let Ok(mut table) = format!("v = {text}").parse::<toml::Table>() {
            if table.len() == 1 {
                if let Some(value) = table.remove("v") {
                    return value;
                }
            }
        }
    }
    toml::Value::String(text.to_owned())
}

fn insert(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Puts `over`'s values over `base`'s, table by table.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (name, value) in over {
        match (base.get_mut(&name), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => merge(inner, over),
            (_, value) => {
                base.insert(name, value);
            }
        }
    }
}

/// The known name nearest to `name` (edit distance at most half its
/// length), for the unknown-variable warning.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|candidate| (distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= name.len() / 2)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A deserializer that answers every request with a placeholder and records
/// the path of every field serde asks for.
struct Probe<'k> {
    path: Vec<&'static str>,
    keys: &'k mut Vec<Key>,
}

#[derive(Debug)]
struct ProbeError(String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

impl Probe<'_> {
    fn leaf(self, leaf: Leaf) {
        self.keys.push(Key {
            path: self.path,
            leaf,
        });
    }
}

/// Leaves of every type but strings, structs, options and newtypes: recorded
/// as `Leaf::Value`, answered with an empty sequence (which `Vec`s accept) or
/// a zero.
macro_rules! value_leaves {
    ($($method:ident => $visit:ident($placeholder:expr)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            self.leaf(Leaf::Value);
            visitor.$visit($placeholder)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    value_leaves! {
        deserialize_any => visit_str(""),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0),
        deserialize_i16 => visit_i16(0),
        deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u8(0),
        deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0),
        deserialize_f64 => visit_f64(0.0),
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Value);
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Value);
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<u8>()))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Value);
        visitor.visit_map(de::value::MapDeserializer::new(
            std::iter::empty::<(u8, u8)>(),
        ))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Text);
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Text);
        visitor.visit_char(' ')
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_map(Fields {
            fields,
            next: 0,
            path: self.path,
            keys: self.keys,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.leaf(Leaf::Value);
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(first.into_deserializer())
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(visitor)
    }

    serde::forward_to_deserialize_any! {
        bytes byte_buf unit_struct tuple tuple_struct
    }
}

/// A struct's fields, each answered by a probe one level down.
struct Fields<'k> {
    fields: &'static [&'static str],
    next: usize,
    path: Vec<&'static str>,
    keys: &'k mut Vec<Key>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize((*field).into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let field = self.fields.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        let mut path = self.path.clone();
        path.push(field);
        seed.deserialize(Probe {
            path,
            keys: self.keys,
        })
    }
}

#[cfg(test)]
#[path = "config_env_tests.rs"]
mod tests;
