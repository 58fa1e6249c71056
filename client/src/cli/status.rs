//! `tally status`: the log's size, head (the last record's entry hash),
//! Merkle root, store figures and anchoring state, as text or JSON.

use serde_json::json;

use crate::cli::connect::{connect, Target};

/// Prints the daemon's status.
pub async fn run(target: &Target, json: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let status = client.status().await?;
    if json {
        println!(
            "{}",
            json!({
                "size": status.size,
                "head_hash": hex::encode(&status.head_hash),
                "root_hash": hex::encode(&status.root_hash),
                "log_id": hex::encode(&status.log_id),
                "server": status.server_name,
                "format_version": status.format_version,
                "store_used_bytes": status.store_used_bytes,
                "store_map_bytes": status.store_map_bytes,
                "disk_free_bytes": status.disk_free_bytes,
                "disk_warn_below_bytes": status.disk_warn_below_bytes,
                "disk_warning": status.disk_warning,
                "queued_events": status.queued_events,
                "tpm_enabled": status.tpm_enabled,
                "anchoring": status.anchoring,
                "last_anchor_counter": status.last_anchor_counter,
                "last_anchor_size": status.last_anchor_size,
                "last_anchor_age_millis": status.last_anchor_age_millis,
                "unanchored_events": status.unanchored_events,
                "last_anchor_error": status.last_anchor_error,
                "oldest_unanchored_age_millis": status.oldest_unanchored_age_millis,
            })
        );
    } else {
        println!("server:        {}", status.server_name);
        println!("log id:        {}", hex::encode(&status.log_id));
        println!("size:          {} records", status.size);
        println!("head:          {}", hex::encode(&status.head_hash));
        println!("merkle root:   {}", hex::encode(&status.root_hash));
        println!(
            "store:         {} bytes used of a {} byte map",
            status.store_used_bytes, status.store_map_bytes
        );
        println!("disk free:     {} bytes", status.disk_free_bytes);
        if !status.disk_warning.is_empty() {
            println!("disk warning:  {}", status.disk_warning);
        }
        println!("queued events: {}", status.queued_events);
        if status.tpm_enabled && status.last_anchor_age_millis == 0 && status.last_anchor_size == 0
        {
            println!(
                "last anchor:   none yet (TPM counter at {}; anchors every {} s when the log grows)",
                status.last_anchor_counter,
                status.anchor_interval_millis / 1000
            );
        }
        if status.tpm_enabled && (status.last_anchor_age_millis > 0 || status.last_anchor_size > 0)
        {
            println!(
                "last anchor:   TPM counter {} covering {} records, {:.1} s ago (every {} s when the log grows)",
                status.last_anchor_counter,
                status.last_anchor_size,
                status.last_anchor_age_millis as f64 / 1000.0,
                status.anchor_interval_millis / 1000
            );
        }
        if status.tpm_enabled {
            println!(
                "unanchored:    {} records (oldest acked {:.1} s ago)",
                status.unanchored_events,
                status.oldest_unanchored_age_millis as f64 / 1000.0
            );
            if status.anchoring == "failing" {
                println!("anchoring:     FAILING: {}", status.last_anchor_error);
                println!("               appends continue; the unanchored records above are exposed until the TPM answers");
            } else if !status.last_anchor_error.is_empty() {
                println!("anchor error:  {}", status.last_anchor_error);
            }
        } else {
            println!("TPM:           OFF (hash chain only)");
        }
    }
    Ok(())
}
