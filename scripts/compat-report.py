#!/usr/bin/env python3
"""Writes docs/COMPAT.md (to stdout) from a `scripts/compat.sh` run: reports/compat/results.tsv
and the per-cell logs. Every cell comes from the run; nothing here is typed by hand but the
explanations of the differences, each naming the test that shows it."""
import datetime
import os
import re
import subprocess
import sys

out = sys.argv[1]
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "results.tsv")) if l.strip()]
servers = list(dict.fromkeys(r[0] for r in rows))
suites = list(dict.fromkeys(r[1] for r in rows))
cell = {(r[0], r[1]): (r[2], int(r[3])) for r in rows}


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True).stdout.strip()


def version(s):
    v = sh(f".servers/{s}/server", "--version")
    m = re.search(r"(Redis|Valkey) server v=(\S+)", v)
    return f"{m.group(1)} {m.group(2)}" if m else v


def log(s, suite):
    p = os.path.join(out, f"{s}.{suite.replace(' ', '-')}.log")
    return open(p, errors="replace").read() if os.path.exists(p) else ""


commit = sh("git", "rev-parse", "--short", "HEAD")
dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("# Compatibility: the servers users run\n")
print(f"Run of `just compat` on {when}, commit `{commit}`{dirty}, {os.cpu_count()} cores. Every cell is the")
print("outcome of that suite against that server (logs: `reports/compat/<server>.<suite>.log`, not")
print("committed); *refused* means the server was refused at connect (see below), so nothing ran.\n")
print("| server | " + " | ".join(suites) + " |")
print("|---|" + "---|" * len(suites))
for s in servers:
    cells = []
    for suite in suites:
        r, secs = cell[(s, suite)]
        cells.append(r if r == "refused" else f"{r} ({secs} s)")
    print(f"| {s} ({version(s)}) | " + " | ".join(cells) + " |")

print("\nSuites: *integration* `tests/pipeline` and `tests/exactly_once`; *bad input* `tests/bad_input`;")
print("*differential* `tests/differential` (the model against the server, "
      f"{os.environ.get('COMPAT_DIFFERENTIAL_CASES', '40')} cases); *model setting* `tests/compat`;")
print("*chaos subset* the scenarios kill-consumers, pause-consumer, replay and redis-restart-aof-always")
print("in containers built from the same binaries; *run 100k* `expiry-stream run --keys 100000`.\n")

print("## The oracle's verdict of each `run --keys 100000`\n")
for s in servers:
    v = [l for l in log(s, "run 100k").splitlines() if l.startswith("verdict:")]
    if v:
        print(f"- {s}: `{v[-1]}`")
    elif cell[(s, "run 100k")][0] == "refused":
        print(f"- {s}: refused (below)")
    else:
        print(f"- {s}: no verdict line (see its log)")

print("\n## Differences found, and the test that shows each\n")
print("1. **No `PEXPIRETIME` before Redis 7.0.** The capture step reads every key's deadline with it, so")
print("   Redis 6.2 is refused when the store connects, in one line (snapshot")
print("   `tests/compat/snapshots/compat__an_unsupported_server_is_refused_in_one_line.snap`):")
for s in servers:
    p = os.path.join(out, f"{s}.refusal.txt")
    if os.path.exists(p):
        print(f"   > {open(p).read().strip()}")
print("   Features are probed by command (`COMMAND INFO`, `store::compat`), never by version string:")
print("   Valkey reports `redis_version:7.2.4` whatever its own version.")
print("2. **A past `EXPIRE` publishes `expired` on Valkey, `del` on Redis** (valkey-io/valkey#1517). For a")
print("   tracked key another program gives a past expiry, Valkey's listener hears `expired` and the")
print("   pipeline emits the event at once (capture time as deadline); on Redis nothing is heard and the")
print("   key counts as deleted before its deadline, so no event. The model follows each server")
print("   (`store::model::Behaviour::past_expire_publishes_expired`, set by `Behaviour::of`), and")
print("   `tests/compat` (`a_past_expire_is_heard_and_captured_as_the_model_says_for_this_server`) checks")
print("   the server and the model set for it hear and capture the same:")
for s in servers:
    m = re.search(r"past PEXPIRE heard as expired: (\w+); stream entries: (\d+)", log(s, "model setting"))
    if m:
        print(f"   - {s}: heard as `expired`: {m.group(1)}, events emitted: {m.group(2)}")
print("\nNo other difference showed in these suites: the differential test compares every reply and the")
print("whole namespace (TTLs included) after every step on each server with the same model.")
