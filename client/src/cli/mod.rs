//! The `tally` CLI's subcommands, one file per family; `main.rs` holds the
//! top-level flags and the subcommand list and dispatches here. Part of the
//! binary only: the library never imports from here.

pub mod anchors;
pub mod append;
pub mod check_json;
pub mod connect;
pub mod disclose;
pub mod erase;
pub mod export;
pub mod progress;
pub mod proof;
pub mod render;
pub mod select;
pub mod sequential;
pub mod show;
pub mod status;
pub mod tail;
pub mod tpm;
pub mod trust;
pub mod verify;
pub mod verify_content;
pub mod verify_json;
pub mod verify_live;
pub mod verify_range;
pub mod when;
