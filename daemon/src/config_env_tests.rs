use std::ffi::OsString;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(name, value)| (OsString::from(name), OsString::from(value)))
        .collect()
}

/// A non-default value for every key, as the environment gives it, and the
/// TOML value the effective configuration must then hold. A key added to
/// `Config` fails `every_key_is_set_by_its_variable` until it is listed here.
const EVERY_KEY: &[(&str, &str, &str)] = &[
    ("data_dir", "/srv/tally", "'/srv/tally'"),
    ("socket", "/srv/tally.sock", "'/srv/tally.sock'"),
    ("socket_mode", "0600", "'0600'"),
    ("vsock_port", "5005", "5005"),
    ("socket_group", "1000", "'1000'"),
    ("max_frame_bytes", "65536", "65536"),
    ("max_events_per_append", "77", "77"),
    ("queue_bytes", "1048576", "1048576"),
    ("queue_jobs", "33", "33"),
    ("max_inflight_per_connection", "9", "9"),
    ("batch_max_events", "111", "111"),
    ("batch_max_bytes", "2097152", "2097152"),
    ("batch_linger_micros", "250", "250"),
    ("ack_journal_max_bytes", "0", "0"),
    ("read_page_records", "55", "55"),
    ("max_connections", "12", "12"),
    ("max_connections_per_peer", "3", "3"),
    ("append_rate_per_peer", "1000", "1000"),
    ("append_burst_per_peer", "2000", "2000"),
    ("idle_timeout_secs", "61", "61"),
    ("slow_reader_timeout_secs", "7", "7"),
    ("map_initial_bytes", "2097152", "2097152"),
    ("map_max_bytes", "4194304", "4194304"),
    ("disk_warn_below_bytes", "12345", "12345"),
    ("shutdown_grace_secs", "4", "4"),
    ("log", "debug", "'debug'"),
    ("tpm.enabled", "false", "false"),
    ("tpm.tcti", "swtpm:path=/tmp/x", "'swtpm:path=/tmp/x'"),
    ("tpm.counter_index", "0x01c17b11", "'0x01c17b11'"),
    ("tpm.pcrs", "sha256:0,7", "'sha256:0,7'"),
    ("tpm.anchor_interval_secs", "3", "3"),
    ("tpm.timeout_secs", "5", "5"),
    ("access.unix_default", "[\"read\"]", "['read']"),
    (
        "access.grants",
        "[{uid = 1000, roles = [\"admin\"]}]",
        "[{uid = 1000, roles = ['admin']}]",
    ),
    ("access.denials_logged_per_minute", "6", "6"),
    ("retention.payload_max_age_secs", "86400", "86400"),
    ("retention.kinds", "{prompt = 3600}", "{prompt = 3600}"),
    ("retention.interval_secs", "30", "30"),
    (
        "content.personal_attributes",
        "['user.email', 'ssn']",
        "['user.email', 'ssn']",
    ),
    (
        "content.personal_attribute_prefixes",
        "['pii.']",
        "['pii.']",
    ),
];

fn at<'a>(value: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
    dotted
        .split('.')
        .try_fold(value, |value, part| value.as_table()?.get(part))
}

fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .unwrap()
        .remove("v")
        .unwrap()
}

#[test]
fn the_keys_are_the_structs_fields_and_their_names_do_not_collide() {
    let keys = keys();
    let dotted: Vec<String> = keys.iter().map(Key::dotted).collect();
    let listed: Vec<&str> = EVERY_KEY.iter().map(|(key, _, _)| *key).collect();
    assert_eq!(dotted, listed);
    let mut names: Vec<String> = keys.iter().map(Key::variable).collect();
    names.extend(NOT_KEYS.iter().map(|(name, _)| (*name).to_owned()));
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "two keys share a variable name");
    let leaf = |name: &str| keys.iter().find(|key| key.dotted() == name).unwrap().leaf;
    assert_eq!(leaf("socket_group"), Leaf::Text);
    assert_eq!(leaf("tpm.tcti"), Leaf::Text);
    assert_eq!(leaf("max_frame_bytes"), Leaf::Value);
    assert_eq!(leaf("tpm.counter_index"), Leaf::Value, "string or integer");
    assert_eq!(
        keys.iter()
            .find(|key| key.dotted() == "disk_warn_below_bytes")
            .unwrap()
            .variable(),
        "TALLYD_DISK_WARN_BELOW_BYTES"
    );
}

/// Regression: only 8 keys had a variable, the rest were silently ignored
/// (disk_warn_below_bytes among them).
#[test]
fn every_key_is_set_by_its_variable() {
    let keys = keys();
    let env: Vec<(String, String)> = EVERY_KEY
        .iter()
        .map(|(dotted, text, _)| {
            let key = keys.iter().find(|key| key.dotted() == *dotted).unwrap();
            (key.variable(), (*text).to_owned())
        })
        .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (config, warnings) = crate::config_env::load(None, vars(&pairs)).unwrap();
    assert_eq!(warnings, Vec::<String>::new());
    let effective = toml::Value::try_from(&config).unwrap();
    let default = toml::Value::try_from(Config::default()).unwrap();
    for (dotted, _, expected) in EVERY_KEY {
        let expected = parse_value(expected);
        assert_eq!(at(&effective, dotted), Some(&expected), "{dotted}");
        assert_ne!(
            at(&default, dotted),
            Some(&expected),
            "{dotted}: the test value is the default"
        );
    }
}

#[test]
fn the_old_names_keep_working_and_flags_stay_out_of_the_key_list() {
    let (config, warnings) = crate::config_env::load(
        None,
        vars(&[
            ("TALLYD_ANCHOR_INTERVAL_SECS", "4"),
            ("TALLYD_NO_TPM", "1"),
            ("TALLYD_TPM_OWNER_AUTH", "secret"),
            ("TALLYD_CONFIG", "/nowhere"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.tpm.anchor_interval_secs, 4);
    assert!(
        config.tpm.enabled,
        "TALLYD_NO_TPM is the flag's, read by clap"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn an_unknown_variable_is_warned_about_with_the_closest_known_name() {
    let (config, warnings) = crate::config_env::load(
        None,
        vars(&[
            ("TALLYD_MAX_FRAME", "1"),
            ("TALLYD_ZZZZZZZZZZZZZZZZZZZ", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(
        warnings,
        [
            "unknown environment variable TALLYD_MAX_FRAME ignored (did you mean TALLYD_MAX_FRAME_BYTES?)",
            "unknown environment variable TALLYD_ZZZZZZZZZZZZZZZZZZZ ignored",
        ]
    );
}

#[test]
fn a_malformed_value_names_its_variable() {
    let err =
        crate::config_env::load(None, vars(&[("TALLYD_MAX_FRAME_BYTES", "lots")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("environment variable TALLYD_MAX_FRAME_BYTES (sets max_frame_bytes): "),
        "{text}"
    );
    let err = crate::config_env::load(None, vars(&[("TALLYD_TPM_ENABLED", "maybe")])).unwrap_err();
    assert!(err.to_string().contains("TALLYD_TPM_ENABLED"), "{err}");
    // A second line cannot smuggle in another key.
    let err = crate::config_env::load(None, vars(&[("TALLYD_QUEUE_JOBS", "5\nlog = 'trace'")]))
        .unwrap_err();
    assert!(err.to_string().contains("TALLYD_QUEUE_JOBS"), "{err}");
}

#[test]
fn the_environment_goes_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tallyd.toml");
    std::fs::write(
        &path,
        "queue_jobs = 7\nlog = \"warn\"\n[tpm]\npcrs = \"sha256:1\"\n",
    )
    .unwrap();
    let (config, _) = crate::config_env::load(
        Some(&path),
        vars(&[("TALLYD_QUEUE_JOBS", "8"), ("TALLYD_TPM_TIMEOUT_SECS", "9")]),
    )
    .unwrap();
    assert_eq!(config.queue_jobs, 8);
    assert_eq!(config.log, "warn");
    assert_eq!(
        config.tpm.pcrs, "sha256:1",
        "the file's other [tpm] keys stay"
    );
    assert_eq!(config.tpm.timeout_secs, 9);
}
