//! Configuration: a TOML file, then environment variables, then flags (each
//! overriding the one before). Unknown keys in the file are an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::store::MapSizing;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/tally";
pub use tally_client::DEFAULT_SOCKET;
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_MAX_FRAME_BYTES: usize = tally_client::frame::DEFAULT_MAX_FRAME;
pub const DEFAULT_MAX_EVENTS_PER_APPEND: usize = 10_000;
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;
pub const DEFAULT_QUEUE_JOBS: usize = 4096;
pub const DEFAULT_MAX_INFLIGHT_PER_CONNECTION: usize = 256;
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 16_384;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 16 << 20;
pub const DEFAULT_BATCH_LINGER_MICROS: u64 = 0;
/// 256 KiB: the group commit of a pool of one-event workers (100 of them
/// make batches of ~80 events, ~28 KB) is acked after the journal's one
/// flush instead of LMDB's two. Measured (issue 17, `tally-bench --only
/// many-clients`, quiet): 100 connections 19k -> 42-46k events/s, ack p50
/// 5.0 -> 1.7 ms; 1,000 connections 30k -> 36-38k. A full-speed pipelined
/// batch (megabytes) still goes straight to LMDB.
pub const DEFAULT_ACK_JOURNAL_MAX_BYTES: usize = 256 << 10;
/// A journaled batch always fits in the active region, which is applied
/// once a quarter full.
pub const MAX_ACK_JOURNAL_BATCH: usize = crate::journal::REGION / 2;
pub const DEFAULT_READ_PAGE_RECORDS: usize = 1024;
pub const DEFAULT_MAP_INITIAL_BYTES: usize = 1 << 30;
pub const DEFAULT_MAP_MAX_BYTES: usize = 1 << 40;
/// Warn (log and `tally status`) when the data directory's file system has
/// less than this free: 1 GiB is about 6 minutes of the store's growth at
/// 10,000 events/s of ~300 bytes (it grows ~1.7 times the record bytes with
/// the tree and B-tree pages), room to act before appends get STORAGE_FULL.
pub const DEFAULT_DISK_WARN_BELOW_BYTES: u64 = 1 << 30;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Connections served at once. An idle one costs about 17 KiB of RSS
/// (docs/DESIGN.md section 6), so 4,096 are about 70 MiB and as many file
/// descriptors (the systemd unit allows 65,536).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections of one peer (uid or vsock CID): half of the total, so one
/// runaway uid cannot take every slot (another uid's `tally status` or
/// follower still gets in), and a pool of 1,000 one-event worker processes
/// running as one uid is admitted with room to spare (256, the old default,
/// refused 744 of them with BUSY).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 2048;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_SLOW_READER_TIMEOUT_SECS: u64 = 30;
/// tss-esapi logs every context close at info; keep it to warnings.
pub const DEFAULT_LOG: &str = "info,tss_esapi=warn";
/// Default NV counter index (owner range), the TPM side's default.
pub use tally_attest::tpm::provision::DEFAULT_COUNTER_INDEX;
pub const DEFAULT_PCRS: &str = "sha256:0,1,2,3,4,5,6,7";
/// Default anchoring interval: at most 3.15M increments a year on a busy log.
/// The counter is ORDERLY, so the TPM writes it to NV once per 256 increments
/// (reference implementation): about 12,300 NV writes a year, 40 years of a
/// 500k-write NV rating. See docs/DESIGN.md, "NV wear and exposure window".
pub const DEFAULT_ANCHOR_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_TPM_TIMEOUT_SECS: u64 = 30;

/// TPM anchoring settings (`[tpm]` in the file).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TpmSettings {
    /// Anchor the log in the TPM. Off: a hash chain only (not protected
    /// against a root attacker; a warning is logged at start).
    pub enabled: bool,
    /// TCTI; unset: `TCTI`, then `TPM2TOOLS_TCTI`, then `device:/dev/tpmrm0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcti: Option<String>,
    /// NV counter index handle, e.g. "0x01c17a11" (a TOML integer such as
    /// 0x01c17a11 is taken too). The owner record takes the next index.
    #[serde(deserialize_with = "string_or_integer")]
    pub counter_index: String,
    /// PCRs quoted with every anchor, tpm2-tools syntax (SHA-256 bank only).
    pub pcrs: String,
    /// Anchor the head this often when the log grew (seconds).
    pub anchor_interval_secs: u64,
    /// Give up on a TPM command after this long (the attempt is retried later).
    pub timeout_secs: u64,
}

impl Default for TpmSettings {
    fn default() -> Self {
        TpmSettings {
            enabled: true,
            tcti: None,
            counter_index: format!("{DEFAULT_COUNTER_INDEX:#010x}"),
            pcrs: DEFAULT_PCRS.into(),
            anchor_interval_secs: DEFAULT_ANCHOR_INTERVAL_SECS,
            timeout_secs: DEFAULT_TPM_TIMEOUT_SECS,
        }
    }
}

impl TpmSettings {
    /// The counter index as a number.
    pub fn counter_index(&self) -> Result<u32, ConfigError> {
        // Hex with or without "0x" (the attest parser reads text without the
        // prefix as decimal, so the prefix is put back on).
        let digits = self
            .counter_index
            .trim_start_matches("0x")
            .trim_start_matches("0X");
        // Below 0x01ffffff: the owner record lives at counter_index + 1.
        tally_attest::identity::parse_nv_index(&format!("0x{digits}"))
            .filter(|index| (0x0100_0000..0x01ff_ffff).contains(index))
            .ok_or_else(|| ConfigError::Invalid {
                field: "tpm.counter_index",
                message: format!(
                    "{:?} is not an NV index handle 0x01000000..0x01fffffe (the owner record takes the next index)",
                    self.counter_index
                ),
            })
    }
}

/// `counter_index = "0x01c17a11"` or `counter_index = 0x01c17a11`: kept as the
/// hex string either way.
fn string_or_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Index {
        Text(String),
        Number(u64),
    }
    Ok(match Index::deserialize(deserializer)? {
        Index::Text(text) => text,
        Index::Number(number) => format!("{number:#010x}"),
    })
}

/// The daemon's settings. Every field has a default; see `tallyd.example.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the log lives (`store/` for LMDB, `tallyd.lock`).
    pub data_dir: PathBuf,
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
    /// Mode of the socket file, as an octal string ("0660").
    pub socket_mode: String,
    /// Also listen on vsock (for guest VMs) on this port, any local CID.
    /// vsock peers have no role unless `[[access.grants]]` names their CID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_port: Option<u32>,
    /// Group owning the socket file (name or gid); unset keeps the daemon's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Largest request frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most events in one append request.
    pub max_events_per_append: usize,
    /// Bytes of appends that may wait for the writer before clients block.
    pub queue_bytes: usize,
    /// Append requests that may wait for the writer (in the open and
    /// sealed batches) before clients block.
    pub queue_jobs: usize,
    /// Requests one connection may have in flight.
    pub max_inflight_per_connection: usize,
    /// A commit batch is sealed (queued, and the next opens behind it) at
    /// this many events...
    pub batch_max_events: usize,
    /// ...or this many bytes.
    pub batch_max_bytes: usize,
    /// The commit thread takes a batch this long after its first event
    /// (0: at once, with whatever arrived during the previous commit).
    pub batch_linger_micros: u64,
    /// A batch of at most this many record bytes is acked after one flush
    /// of the ack journal and committed to LMDB (two flushes) later,
    /// together with others (0: every batch goes straight to LMDB).
    pub ack_journal_max_bytes: usize,
    /// Most records per read or follow response.
    pub read_page_records: usize,
    /// Connections served at once, in total and per peer (uid or vsock CID):
    /// the per-peer limit keeps one peer from taking every slot; it must fit
    /// the largest worker pool that runs as one uid.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Events per second each peer may append (0: unlimited), and the burst.
    pub append_rate_per_peer: u64,
    pub append_burst_per_peer: u64,
    /// Close a connection that sends no request for this long (seconds).
    pub idle_timeout_secs: u64,
    /// Disconnect a client that takes no response for this long (seconds).
    pub slow_reader_timeout_secs: u64,
    /// Initial and largest LMDB map size, in bytes.
    pub map_initial_bytes: usize,
    pub map_max_bytes: usize,
    /// Warn in the log and in `tally status` when the data directory's file
    /// system has fewer free bytes than this (0: never).
    pub disk_warn_below_bytes: u64,
    /// How long a shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace_secs: u64,
    /// Log filter (tracing's env-filter syntax), e.g. "info" or "tally_daemon=debug".
    pub log: String,
    /// TPM anchoring.
    pub tpm: TpmSettings,
    /// Who may do what (reloaded on SIGHUP).
    pub access: crate::access::AccessConfig,
    /// Erasing content on a schedule (docs/DESIGN.md section 3b).
    pub retention: crate::erasure::retention::RetentionConfig,
    /// Which attributes are erasable content besides the payload
    /// (docs/DESIGN.md, section 3b).
    pub content: crate::content::ContentSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: DEFAULT_DATA_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            socket_mode: format!("{DEFAULT_SOCKET_MODE:04o}"),
            socket_group: None,
            vsock_port: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_events_per_append: DEFAULT_MAX_EVENTS_PER_APPEND,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            queue_jobs: DEFAULT_QUEUE_JOBS,
            max_inflight_per_connection: DEFAULT_MAX_INFLIGHT_PER_CONNECTION,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_linger_micros: DEFAULT_BATCH_LINGER_MICROS,
            ack_journal_max_bytes: DEFAULT_ACK_JOURNAL_MAX_BYTES,
            read_page_records: DEFAULT_READ_PAGE_RECORDS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            append_rate_per_peer: 0,
            append_burst_per_peer: 0,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            slow_reader_timeout_secs: DEFAULT_SLOW_READER_TIMEOUT_SECS,
            map_initial_bytes: DEFAULT_MAP_INITIAL_BYTES,
            map_max_bytes: DEFAULT_MAP_MAX_BYTES,
            disk_warn_below_bytes: DEFAULT_DISK_WARN_BELOW_BYTES,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            log: DEFAULT_LOG.into(),
            tpm: TpmSettings::default(),
            access: crate::access::AccessConfig::default(),
            retention: crate::erasure::retention::RetentionConfig::default(),
            content: crate::content::ContentSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot print the configuration: {0}")]
    Print(#[from] toml::ser::Error),
    #[error("environment variable {variable} (sets {key}): {message}")]
    Env {
        variable: String,
        key: String,
        message: String,
    },
    #[error("environment variable {variable} is not UTF-8")]
    EnvNotUtf8 { variable: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The configuration as TOML (what `tallyd config` prints).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Checks ranges and returns the socket mode.
    pub fn validate(&self) -> Result<u32, ConfigError> {
        let mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                field: "socket_mode",
                message: format!("{:?} is not an octal mode like \"0660\"", self.socket_mode),
            })?;
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_events_per_append", self.max_events_per_append),
            ("queue_bytes", self.queue_bytes),
            ("queue_jobs", self.queue_jobs),
            (
                "max_inflight_per_connection",
                self.max_inflight_per_connection,
            ),
            ("batch_max_events", self.batch_max_events),
            ("batch_max_bytes", self.batch_max_bytes),
            ("read_page_records", self.read_page_records),
            ("max_connections", self.max_connections),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("idle_timeout_secs", self.idle_timeout_secs as usize),
            (
                "slow_reader_timeout_secs",
                self.slow_reader_timeout_secs as usize,
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.max_frame_bytes > tally_client::frame::MAX_CONFIGURABLE_FRAME {
            return Err(ConfigError::Invalid {
                field: "max_frame_bytes",
                message: format!(
                    "must be at most {} (clients accept responses up to twice that)",
                    tally_client::frame::MAX_CONFIGURABLE_FRAME
                ),
            });
        }
        if self.ack_journal_max_bytes > MAX_ACK_JOURNAL_BATCH {
            return Err(ConfigError::Invalid {
                field: "ack_journal_max_bytes",
                message: format!(
                    "must be at most {MAX_ACK_JOURNAL_BATCH} (half a region of the ack journal)"
                ),
            });
        }
        self.tpm.counter_index()?;
        self.access
            .validate()
            .map_err(|message| ConfigError::Invalid {
                field: "access",
                message,
            })?;
        if self.tpm.enabled && self.tpm.anchor_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "tpm.anchor_interval_secs",
                message: "must be at least 1".into(),
            });
        }
        if self.map_initial_bytes < 1 << 20 || self.map_max_bytes < self.map_initial_bytes {
            return Err(ConfigError::Invalid {
                field: "map_initial_bytes",
                message: "need 1 MiB <= map_initial_bytes <= map_max_bytes".into(),
            });
        }
        Ok(mode)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame_bytes,
            max_events_per_append: self.max_events_per_append,
            read_page_records: self.read_page_records,
            max_inflight_per_connection: self.max_inflight_per_connection,
            queue_bytes: self.queue_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            slow_reader_timeout: Duration::from_secs(self.slow_reader_timeout_secs),
        }
    }

    pub fn map_sizing(&self) -> MapSizing {
        MapSizing {
            initial: self.map_initial_bytes,
            max: self.map_max_bytes,
        }
    }

    pub fn batch_policy(&self) -> crate::sequencer::BatchPolicy {
        crate::sequencer::BatchPolicy {
            max_events: self.batch_max_events,
            max_bytes: self.batch_max_bytes,
            max_jobs: self.queue_jobs,
            linger: Duration::from_micros(self.batch_linger_micros),
            journal_max_bytes: self.ack_journal_max_bytes,
            apply_after: crate::sequencer::APPLY_AFTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_override_defaults_and_unknown_keys_fail() {
        let config: Config =
            toml::from_str("data_dir = \"/tmp/x\"\nsocket_mode = \"0600\"\n").unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.validate().unwrap(), 0o600);
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(toml::from_str::<Config>("data_dri = \"/tmp/x\"\n").is_err());
        let printed = config.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&printed).unwrap(), config);
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = include_str!("../../tallyd.example.toml");
        let parsed: Config = toml::from_str(example).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_counter_index_is_a_hex_string_or_a_toml_integer_below_the_last_index() {
        let as_text: Config = toml::from_str("[tpm]\ncounter_index = \"0x01c17b11\"\n").unwrap();
        let as_number: Config = toml::from_str("[tpm]\ncounter_index = 0x01c17b11\n").unwrap();
        assert_eq!(as_text.tpm.counter_index().unwrap(), 0x01c1_7b11);
        assert_eq!(as_number, as_text);
        // The owner record needs the next index.
        let last: Config = toml::from_str("[tpm]\ncounter_index = 0x01ffffff\n").unwrap();
        assert!(last.tpm.counter_index().is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let config = Config {
            socket_mode: "rw-rw----".into(),
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "socket_mode",
                ..
            })
        ));
        let config = Config {
            queue_jobs: 0,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "queue_jobs",
                ..
            })
        ));
        let config = Config {
            ack_journal_max_bytes: MAX_ACK_JOURNAL_BATCH + 1,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "ack_journal_max_bytes",
                ..
            })
        ));
        let config = Config {
            ack_journal_max_bytes: 0,
            ..Config::default()
        };
        assert!(config.validate().is_ok(), "0 turns the journal off");
    }
}
