#!/usr/bin/env python3
"""`make bench`: throughput and peak memory of `batchgate cost` beside jq and
a plain Python script, on one seeded OpenAI-shaped output file, in one run.

The file is generated once per line count and seed and kept under
target/bench. It is read once before timing, so that every tool reads it from
the page cache. Each tool runs under GNU time (/usr/bin/time), which reports
its peak resident memory: a child forked from this Python process would
report Python's own peak instead, because Linux keeps the peak across exec.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOKEN_KEYS = ("total", "succeeded", "failed", "input", "cached_input", "cache_write", "output")


def measure(command, scratch):
    """Runs a command and returns (seconds, peak RSS in MB, stdout)."""
    report = scratch / "time.out"
    timed = ["/usr/bin/time", "-f", "%M", "-o", report, *command]
    started = time.monotonic()
    finished = subprocess.run(timed, capture_output=True)
    seconds = time.monotonic() - started
    if finished.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{finished.stderr.decode(errors='replace')}")
    peak_kb = int(report.read_text().split()[-1])
    return seconds, peak_kb / 1024, finished.stdout


def batchgate_totals(stdout):
    report = json.loads(stdout)
    requests, tokens = report["requests"], report["tokens"]
    totals = {key: requests[key] for key in ("total", "succeeded", "failed")}
    totals.update({key: tokens[key] for key in ("input", "cached_input", "cache_write", "output")})
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--dir", type=Path, default=ROOT / "target" / "bench")
    parser.add_argument("--batchgate", type=Path, default=ROOT / "target" / "release" / "batchgate")
    arguments = parser.parse_args()

    if not Path("/usr/bin/time").exists():
        sys.exit("make bench needs GNU time at /usr/bin/time (Debian package time)")
    arguments.dir.mkdir(parents=True, exist_ok=True)
    data = arguments.dir / f"openai-output-{arguments.lines}-{arguments.seed}.jsonl"
    if not data.exists():
        print(f"generating {data} ({arguments.lines} lines, seed {arguments.seed})", flush=True)
        partial = data.with_suffix(".partial")
        subprocess.run(
            [sys.executable, HERE / "generate.py", "--lines", str(arguments.lines),
             "--seed", str(arguments.seed), "--output", partial],
            check=True,
        )
        partial.rename(data)
    size_mb = data.stat().st_size / 1e6
    with open(data, "rb") as warm:
        while warm.read(1 << 24):
            pass

    price_table = ROOT / "config" / "prices.toml"
    runs = [
        ("batchgate cost", [arguments.batchgate, "cost", data, "--provider", "openai",
                            "--price-table", price_table, "--json"], batchgate_totals),
        ("python json", [sys.executable, HERE / "sum_results.py", data], json.loads),
        ("jq", ["jq", "-n", "-c", "-f", HERE / "sum_results.jq", data], json.loads),
    ]
    results = []
    for name, command, read_totals in runs:
        print(f"running {name} ...", flush=True)
        seconds, rss, stdout = measure(command, arguments.dir)
        results.append((name, seconds, rss, read_totals(stdout)))

    speed = {name: size_mb / seconds for name, seconds, _, _ in results}
    print()
    print(f"file: {data} ({size_mb:,.0f} MB, {arguments.lines:,} lines, seed {arguments.seed})")
    print(f"machine: {os.cpu_count()} CPUs")
    print(f"{'tool':<16} {'seconds':>9} {'MB/s':>9} {'peak RSS MB':>12} {'x jq':>7} {'x python':>9}")
    for name, seconds, rss, _ in results:
        print(
            f"{name:<16} {seconds:>9.2f} {speed[name]:>9.1f} {rss:>12.1f} "
            f"{speed[name] / speed['jq']:>6.1f}x {speed[name] / speed['python json']:>8.1f}x"
        )
    reference = results[0][3]
    agree = all({key: totals[key] for key in TOKEN_KEYS} == reference for _, _, _, totals in results)
    print("totals: " + ", ".join(f"{key} {reference[key]:,}" for key in TOKEN_KEYS))
    print(f"all three totals agree: {'yes' if agree else 'NO'}")
    batchgate_rss = results[0][2]
    checks = [
        ("throughput at least 25x jq", speed["batchgate cost"] >= 25 * speed["jq"]),
        ("throughput at least 7x Python", speed["batchgate cost"] >= 7 * speed["python json"]),
        ("peak RSS at most 64 MB", batchgate_rss <= 64),
    ]
    for label, passed in checks:
        print(f"target {label}: {'met' if passed else 'NOT met'}")
    if not agree:
        for name, _, _, totals in results:
            print(f"  {name}: {totals}")
        sys.exit(1)


if __name__ == "__main__":
    main()
