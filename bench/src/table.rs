//! The text table printed on stdout: each scenario's figures next to the
//! baselines it is compared with, then the targets and whether they were met.

use crate::daemon::CpuUse;
use crate::format::{count, mib, number};
use crate::report::Results;

impl Results {
    /// The figures and the targets as aligned text tables.
    pub fn table(&self) -> String {
        let mut out = format!(
            "tally-bench{} on {} x {} ({}), load average {:.2} at start, {:.0} s\n\n",
            if self.quick { " --quick" } else { "" },
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.filesystem,
            self.machine.load_average_at_start,
            self.total_seconds
        );
        let mut rows = vec![row(["scenario", "figure", "value"])];
        figures(self, &mut rows);
        out += &align(&rows);
        out += "\n";
        let mut rows = vec![row([
            "target",
            "measured",
            "baseline (same run)",
            "ratio",
            "required",
            "met",
        ])];
        for target in &self.targets {
            rows.push(vec![
                target.name.to_owned(),
                format!("{} {}", number(target.value), target.unit),
                target.baseline.clone().unwrap_or_else(|| "-".into()),
                target
                    .ratio
                    .map_or_else(|| "-".into(), |r| format!("{r:.3}")),
                target.required.clone(),
                if target.met { "yes" } else { "NO" }.to_owned(),
            ]);
        }
        out += &align(&rows);
        if let Some(reason) = &self.anchoring_skipped {
            out += &format!("\nanchoring: skipped ({reason})\n");
        }
        out
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|cell| (*cell).to_owned()).collect()
}

fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out += line.join("  ").trim_end();
        out += "\n";
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out += &rule.join("  ");
            out += "\n";
        }
    }
    out
}

fn push(rows: &mut Vec<Vec<String>>, scenario: &str, figure: &str, value: String) {
    rows.push(vec![scenario.to_owned(), figure.to_owned(), value]);
}

fn cpu(use_: &CpuUse) -> String {
    let busiest: Vec<String> = {
        let mut threads: Vec<_> = use_.tallyd_threads.iter().collect();
        threads.sort_by(|a, b| b.1.on_cpu.total_cmp(&a.1.on_cpu));
        threads
            .iter()
            .take(3)
            .map(|(name, share)| {
                format!(
                    "{name} {:.2} +{:.2} waiting",
                    share.on_cpu, share.waiting_for_cpu
                )
            })
            .collect()
    };
    format!(
        "tallyd {:.2} ({}), bench {:.2}",
        use_.tallyd_cores,
        busiest.join(", "),
        use_.bench_cores
    )
}

fn figures(results: &Results, rows: &mut Vec<Vec<String>>) {
    if let Some(tp) = &results.throughput {
        let name = format!("throughput ({} clients)", tp.clients);
        push(rows, &name, "durable events/s", count(tp.events_per_sec));
        push(
            rows,
            &name,
            "payload MB/s (records MB/s)",
            format!("{:.1} ({:.1})", tp.payload_mb_per_sec, tp.record_mb_per_sec),
        );
        push(
            rows,
            &name,
            "commits/s, events per commit",
            format!("{}, {:.0}", count(tp.commits_per_sec), tp.events_per_commit),
        );
        push(
            rows,
            &name,
            "record bytes",
            format!("{:.0}", tp.record_bytes),
        );
        push(rows, &name, "CPU cores", cpu(&tp.cpu));
    }
    if let Some(heed) = &results.baselines.heed {
        push(
            rows,
            "baseline: bare heed",
            &format!("events/s (batch {}, 1 commit each)", heed.batch),
            format!(
                "{} ({} commits/s, p50 {:.1} ms)",
                count(heed.events_per_sec),
                count(heed.commits_per_sec),
                heed.p50_ms
            ),
        );
    }
    if !results.ingest_over_heed_by_slice.is_empty() {
        let mut ratios = results.ingest_over_heed_by_slice.clone();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        push(
            rows,
            "ingest / bare heed",
            &format!("by slice: min / median / max of {}", ratios.len()),
            format!(
                "{:.2} / {:.2} / {:.2}",
                ratios[0],
                median,
                ratios[ratios.len() - 1]
            ),
        );
    }
    if let Some(fsync) = &results.baselines.fsync_batch {
        push(
            rows,
            "baseline: write+fdatasync",
            &format!("commits/s ({:.0} bytes each)", fsync.bytes_per_commit),
            format!(
                "{} (= {} events/s, p50 {:.1} ms)",
                count(fsync.commits_per_sec),
                count(fsync.events_per_sec),
                fsync.p50_ms
            ),
        );
    }
    for row in &results.followers {
        let mode = row.offered_per_sec.map_or("full speed".to_owned(), |rate| {
            format!("{} /s", count(rate as f64))
        });
        let name = format!("followers: {} @ {mode} ({})", row.followers, row.binary);
        let ratio = row
            .ingest_ratio_to_none
            .map_or(String::new(), |ratio| format!(", {ratio:.2} of none"));
        push(
            rows,
            &name,
            "ingest events/s",
            format!("{}{ratio}", count(row.ingest_per_sec)),
        );
        if row.followers > 0 {
            let ms = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("{ms:.1}"));
            push(
                rows,
                &name,
                "lag (arrival - ack) p50 / p99 / max ms",
                format!(
                    "{} / {} / {}",
                    ms(row.lag_p50_ms),
                    ms(row.lag_p99_ms),
                    ms(row.lag_max_ms)
                ),
            );
            push(
                rows,
                &name,
                "kept up (got every acked record)",
                format!(
                    "{} of {} (fewest received {} of {})",
                    row.kept_up,
                    row.followers,
                    count(row.min_received as f64),
                    count(row.acked as f64)
                ),
            );
            push(
                rows,
                &name,
                "received while the writers ran (slowest)",
                format!(
                    "{} of {} ({}/s)",
                    count(row.min_received_while_writing as f64),
                    count(row.acked as f64),
                    count(row.min_received_while_writing as f64 / row.seconds.max(1e-9))
                ),
            );
        }
        push(rows, &name, "CPU cores", cpu(&row.cpu));
    }
    for latency in &results.latency {
        let name = format!("latency @ {} /s", count(latency.offered_per_sec));
        push(
            rows,
            &name,
            "achieved events/s",
            count(latency.achieved_per_sec),
        );
        push(
            rows,
            &name,
            "ack p50 / p99 / p99.9 / max ms",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                latency.p50_ms, latency.p99_ms, latency.p999_ms, latency.max_ms
            ),
        );
        push(
            rows,
            &name,
            "send lag p99 ms (bench side)",
            format!("{:.2}", latency.send_lag_p99_ms),
        );
        push(
            rows,
            &name,
            "slowest 4 KiB fdatasync of a disk probe, ms",
            format!("{:.2}", latency.disk_probe_max_ms),
        );
        push(rows, &name, "CPU cores", cpu(&latency.cpu));
    }
    if let Some(lone) = &results.lone {
        push(rows, "lone client", "events/s", count(lone.events_per_sec));
        push(
            rows,
            "lone client",
            "round trip p50 / p99 ms",
            format!("{:.2} / {:.2}", lone.p50_ms, lone.p99_ms),
        );
        push(
            rows,
            "lone client",
            "LMDB commits per event",
            format!("{:.2}", lone.commits_per_event),
        );
    }
    if let Some(fsync) = &results.baselines.fsync_single {
        push(
            rows,
            "baseline: write+fdatasync",
            &format!("per s, 1 record ({:.0} bytes)", fsync.bytes_per_commit),
            format!(
                "{} (p50 / p99 {:.2} / {:.2} ms)",
                count(fsync.commits_per_sec),
                fsync.p50_ms,
                fsync.p99_ms
            ),
        );
    }
    if let Some(in_place) = &results.baselines.in_place_single {
        push(
            rows,
            "baseline: in-place write",
            "per s, one 4 KiB block, O_DIRECT|O_DSYNC",
            format!(
                "{} (p50 / p99 {:.2} / {:.2} ms)",
                count(in_place.commits_per_sec),
                in_place.p50_ms,
                in_place.p99_ms
            ),
        );
        if let Some(lone) = &results.lone {
            push(
                rows,
                "lone client",
                "ratio to the in-place write (stricter floor)",
                format!("{:.2}", lone.events_per_sec / in_place.events_per_sec),
            );
        }
    }
    if let Some(heed) = &results.baselines.heed_single {
        push(
            rows,
            "baseline: bare heed",
            "commits/s, 1 record each",
            format!(
                "{} (p50 / p99 {:.2} / {:.2} ms)",
                count(heed.commits_per_sec),
                heed.p50_ms,
                heed.p99_ms
            ),
        );
    }
    if let Some(socket) = &results.baselines.socket {
        push(
            rows,
            "baseline: Unix socket",
            &format!("round trips/s ({} B request)", socket.request_bytes),
            format!(
                "{} (p50 / p99 {:.3} / {:.3} ms)",
                count(socket.round_trips_per_sec),
                socket.p50_ms,
                socket.p99_ms
            ),
        );
        if let Some(in_place) = &results.baselines.in_place_single {
            let ceiling = 1e3 / (in_place.p50_ms + socket.p50_ms);
            push(
                rows,
                "lone client ceiling",
                "1 / (in-place write p50 + socket p50), ratio to fsync",
                format!(
                    "{} /s, {:.2}",
                    count(ceiling),
                    results
                        .baselines
                        .fsync_single
                        .as_ref()
                        .map_or(f64::NAN, |fsync| ceiling / fsync.events_per_sec)
                ),
            );
        }
        if let Some(fsync) = &results.baselines.fsync_single {
            let ceiling = 1e3 / (fsync.p50_ms + socket.p50_ms);
            push(
                rows,
                "lone client ceiling, append",
                "1 / (fdatasync p50 + socket p50), ratio to fsync",
                format!(
                    "{} /s, {:.2}",
                    count(ceiling),
                    ceiling / fsync.events_per_sec
                ),
            );
            if let Some(heed) = &results.baselines.heed_single {
                let ceiling = 1e3 / (heed.p50_ms + socket.p50_ms);
                push(
                    rows,
                    "lone client ceiling, LMDB",
                    "1 / (heed commit p50 + socket p50), ratio to fsync",
                    format!(
                        "{} /s, {:.2}",
                        count(ceiling),
                        ceiling / fsync.events_per_sec
                    ),
                );
            }
        }
    }
    if let Some(verify) = &results.verify {
        let name = format!("verify ({} events)", count(verify.events as f64));
        push(
            rows,
            &name,
            "events/s (warm), MB/s",
            format!("{}, {:.0}", count(verify.events_per_sec), verify.mb_per_sec),
        );
        push(
            rows,
            &name,
            "export events/s (client library)",
            count(verify.export_events_per_sec),
        );
        push(
            rows,
            &name,
            "live events/s (from the daemon, no file); / export+verify",
            format!(
                "{}, {:.2}",
                count(verify.live_events_per_sec),
                (verify.export_seconds + verify.seconds) / verify.live_seconds
            ),
        );
    }
    if let Some(sha) = &results.baselines.sha256 {
        push(
            rows,
            "baseline: bare SHA-256",
            "records/s, MB/s (one core)",
            format!("{}, {:.0}", count(sha.events_per_sec), sha.mb_per_sec),
        );
    }
    let scenario_rows = results.check.iter().flat_map(|check| check.rows());
    let scenario_rows = scenario_rows.chain(results.growth.iter().flat_map(|g| g.rows()));
    let scenario_rows = scenario_rows.chain(results.erase.iter().flat_map(|e| e.rows()));
    rows.extend(scenario_rows.map(Vec::from));
    if let Some(many) = &results.many_clients {
        crate::scenario::many_clients::rows(many, &mut |scenario, figure, value| {
            push(rows, scenario, figure, value)
        });
    }
    if let Some(memory) = &results.memory {
        let name = format!(
            "memory ({} x {} x {} KiB)",
            memory.clients,
            memory.window,
            memory.batch * memory.payload_bytes / 1024
        );
        push(
            rows,
            &name,
            "peak RSS (VmHWM), idle RSS MiB",
            format!(
                "{:.0}, {:.0}",
                mib(memory.peak_rss_bytes),
                mib(memory.idle_rss_bytes)
            ),
        );
        push(
            rows,
            &name,
            "RSS peak middle / last third MiB",
            format!(
                "{:.0} / {:.0}",
                mib(memory.middle_third_peak_rss_bytes),
                mib(memory.last_third_peak_rss_bytes)
            ),
        );
        push(
            rows,
            &name,
            "offered in flight, queue_bytes MiB",
            format!(
                "{:.0}, {:.0}",
                mib(memory.offered_in_flight_bytes),
                mib(memory.queue_bytes)
            ),
        );
        push(
            rows,
            &name,
            "committed payload MB/s",
            format!("{:.1}", memory.committed_mb_per_sec),
        );
    }
    if let Some(anchoring) = &results.anchoring {
        push(
            rows,
            "anchoring",
            &format!(
                "events/s on / off (every {} s, median of {})",
                anchoring.interval_secs, anchoring.rounds
            ),
            format!(
                "{} / {}",
                count(anchoring.on_events_per_sec),
                count(anchoring.off_events_per_sec)
            ),
        );
        if let Some(latency) = &anchoring.anchor_latency {
            push(
                rows,
                "anchoring",
                &format!("anchor round trip p50 / p99 ms ({})", latency.anchors),
                format!("{} / {}", number(latency.p50_ms), number(latency.p99_ms)),
            );
        }
    }
}
