#!/usr/bin/env python3
"""Benchmark of the Python client (docs/BENCHMARKS.md, "Python client").

Starts a release tallyd (``--no-tpm``, as tally-bench starts its daemons) on
a temporary data directory and prints:

* BatchWriter: events/s from one Python thread logging 256-byte events as
  fast as it can (until flush() returns);
* the cost of one ``log()`` call on the caller's thread, median and p99,
  each call timed with perf_counter_ns (the timer's own cost included);
* a lone synchronous ``Client.append`` loop (one event per request, waiting
  for each ack) as events/s and as a ratio to the Rust lone client measured
  in the same run: ``tally-bench --only lone`` runs alternate with Python
  runs (R P R P ... R) and the ratio is of the medians.

    python3 bench/python/bench_client.py [--quick] [--tally-bench PATH] [--tallyd PATH]

Needs ``pip install ./client/python`` in the running Python and a release
build (``cargo build --release -p tally-bench -p tally-daemon``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tally

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = b"x" * 256  # tally-bench's events: kind "bench", 256-byte payload


def start_tallyd(tallyd: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(work / "tally.sock")
    proc = subprocess.Popen(
        [str(tallyd), "--data-dir", str(work / "data"), "--socket", sock, "--log", "warn", "--no-tpm"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "tallyd.stderr", "wb"),  # noqa: SIM115 - lives as long as the daemon
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            tally.Client(sock, timeout=5).status()
            return proc, sock
        except tally.DaemonUnavailable:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "tallyd.stderr").read_text()) from None
            time.sleep(0.01)


def batch_writer_rate(sock: str, seconds: float) -> dict[str, float]:
    """Events/s from one thread, untimed calls: log() as fast as possible, then flush()."""
    with tally.BatchWriter(sock, linger=0.002, queue_size=1 << 20) as writer:
        log = writer.log
        started = time.perf_counter()
        until = started + seconds
        n = 0
        while True:
            for _ in range(1000):
                log("bench", actor="tally-bench", subject="event", payload=PAYLOAD)
            n += 1000
            if time.perf_counter() >= until:
                break
        logged = time.perf_counter() - started
        writer.flush(120)
        total = time.perf_counter() - started
        assert writer.acked == n and writer.dropped == 0, (writer.acked, n)
    return {"events": n, "events_per_sec": n / total, "log_calls_per_sec": n / logged}


def log_call_cost(sock: str, calls: int) -> dict[str, float]:
    """Each log() timed alone while the writer runs, as a caller on a hot path sees it."""
    samples = [0] * calls
    now = time.perf_counter_ns
    with tally.BatchWriter(sock, linger=0.002, queue_size=1 << 20) as writer:
        log = writer.log
        for i in range(calls):
            t0 = now()
            log("bench", actor="tally-bench", subject="event", payload=PAYLOAD)
            samples[i] = now() - t0
        writer.flush(120)
    # The timer's own cost, for the reader: two perf_counter_ns calls.
    empty = [0] * 10000
    for i in range(10000):
        t0 = now()
        empty[i] = now() - t0
    samples.sort()
    return {
        "calls": calls,
        "median_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[int(len(samples) * 0.99)] / 1e3,
        "max_us": samples[-1] / 1e3,
        "timer_overhead_us": statistics.median(empty) / 1e3,
    }


def wait_disk_quiet(work: Path, max_seconds: float = 30.0) -> float:
    """What tally-bench does before each scenario (bench/src/disk_probe.rs
    ``wait_quiet``): sync, then wait for ten 4 KiB write + fdatasync in a row,
    50 ms apart, each under 2 ms. Without it the Python run right after a Rust
    lone run paid for that run's deleted files being trimmed (``-o discard``)
    and the lone ratio read 0.77 instead of ~0.9 on a quiet machine."""
    os.sync()
    started = time.monotonic()
    path = work / "disk-quiet-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(4096), 0)
        os.fsync(fd)
        quiet = 0
        while quiet < 10 and time.monotonic() - started < max_seconds:
            time.sleep(0.05)
            t0 = time.perf_counter()
            os.pwrite(fd, b"\x01" * 4096, 0)
            os.fdatasync(fd)
            quiet = quiet + 1 if time.perf_counter() - t0 < 0.002 else 0
    finally:
        os.close(fd)
        path.unlink()
    return time.monotonic() - started


def lone_append_rate(sock: str, seconds: float) -> dict[str, float]:
    with tally.Client(sock) as client:
        client.append("warm-up")
        n = 0
        started = time.perf_counter()
        until = started + seconds
        while time.perf_counter() < until:
            client.append("bench", actor="tally-bench", subject="event", payload=PAYLOAD)
            n += 1
        elapsed = time.perf_counter() - started
    return {"events": n, "events_per_sec": n / elapsed}


def python_lone(tallyd: Path, work: Path, run: int, seconds: float) -> float:
    """One Python lone run on a fresh daemon and data directory, after the
    disk is quiet: what each ``tally-bench --only lone`` run gets."""
    run_dir = work / f"python-lone-{run}"
    run_dir.mkdir()
    wait_disk_quiet(work)
    proc, sock = start_tallyd(tallyd, run_dir)
    try:
        return lone_append_rate(sock, seconds)["events_per_sec"]
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(run_dir, ignore_errors=True)


def rust_lone(tally_bench: Path, tallyd: Path, quick: bool, work: Path, run: int) -> float:
    out = work / f"rust-lone-{run}.json"
    args = [str(tally_bench), "--only", "lone", "--tallyd", str(tallyd), "--json", str(out)]
    if quick:
        args.append("--quick")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["lone"]["events_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    parser.add_argument("--tally-bench", type=Path, default=target / "release" / "tally-bench")
    parser.add_argument("--tallyd", type=Path, default=target / "release" / "tallyd")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    slices = 2 if args.quick else 4
    calls = 100_000 if args.quick else 500_000
    for binary in (args.tally_bench, args.tallyd):
        if not binary.is_file():
            print(f"{binary} not found: cargo build --release -p tally-bench -p tally-daemon", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="tally-pybench-"))
    proc, sock = start_tallyd(args.tallyd, work)
    try:
        # Rust and Python lone runs alternate (R P R P ... R), and the ratio
        # is of the medians: the disk's fsync latency, which sets both, moves
        # from one minute to the next on a shared machine.
        rust_runs = [rust_lone(args.tally_bench, args.tallyd, args.quick, work, 0)]
        python_runs = []
        for run in range(1, slices + 1):
            python_runs.append(python_lone(args.tallyd, work, run, seconds / 2))
            rust_runs.append(rust_lone(args.tally_bench, args.tallyd, args.quick, work, run))
        rate = batch_writer_rate(sock, seconds)
        cost = log_call_cost(sock, calls)
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(work, ignore_errors=True)
    rust = statistics.median(rust_runs)
    python = statistics.median(python_runs)
    figures = {
        "python": sys.version.split()[0],
        "batch_writer": rate,
        "log_call": cost,
        "lone_append": {
            "python_events_per_sec": python_runs,
            "rust_lone_events_per_sec": rust_runs,
            "ratio_to_rust": python / rust,
        },
    }
    print(f"tally Python client benchmark (Python {figures['python']}, 256-byte payloads, tallyd --no-tpm)")
    print(f"{'figure':<44} {'value':>14} {'target':>10}")
    print(f"{'BatchWriter events/s (one thread, acked)':<44} {rate['events_per_sec']:>14,.0f} {'>= 200k':>10}")
    print(f"{'  log() calls/s while logging':<44} {rate['log_calls_per_sec']:>14,.0f}")
    print(f"{'log() cost median (us)':<44} {cost['median_us']:>14.2f} {'<= 5':>10}")
    print(f"{'log() cost p99 (us)':<44} {cost['p99_us']:>14.2f}")
    print(f"{'  timer overhead, included above (us)':<44} {cost['timer_overhead_us']:>14.2f}")
    print(f"{'lone Client.append events/s (median)':<44} {python:>14,.0f}")
    print(f"{'  each run':<44} {', '.join(f'{r:,.0f}' for r in python_runs):>14}")
    print(f"{'Rust lone client events/s (median)':<44} {rust:>14,.0f}")
    print(f"{'  each run':<44} {', '.join(f'{r:,.0f}' for r in rust_runs):>14}")
    print(f"{'lone append: Python / Rust':<44} {figures['lone_append']['ratio_to_rust']:>14.2f} {'>= 0.8':>10}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
