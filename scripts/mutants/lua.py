#!/usr/bin/env python3
"""Mutation testing of the Lua scripts (src/store/lua/*.lua): docs/MUTANTS.md.

The test binaries of the fast tier are built once with `--features mutants`; with that feature
`ScriptId::source` reads the scripts from `$EXPIRY_STREAM_LUA_DIR` (src/store/scripts.rs), so
each mutant is a copy of src/store/lua with one exact string replaced, and no rebuild.

For each mutant of scripts/mutants/lua.toml the tier's stages run in order and the first
failing stage kills it (a stage past its time limit kills it "by timeout"). Before any mutant:
every `from` must occur exactly once in its file, the unmutated copy must pass every stage, and
a copy with a broken common.lua must fail the first one (the override is really in effect).

Usage: scripts/mutants/lua.py [--out DIR] [--only ID,ID] [--check]
Writes DIR/results.jsonl (as it goes; --resume continues it), DIR/results.json, DIR/results.tsv, DIR/summary.md and one log per mutant in DIR/logs/.
Python 3.11+, standard library only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "src/store/lua"
CATALOGUE = ROOT / "scripts/mutants/lua.toml"
KINDS = {"drop-condition", "flip-comparison", "shift-bound", "remove-call", "change-unit"}

# The fast tier, cheapest and most model-based first: (name, test target, filters/args, limit s).
# Model-based stages run the scripts in the embedded Lua; the Redis stages send the same
# (mutated) text to a redis-server process each test starts. bad_input's command-line tests
# are left out: they run the `expiry-stream` binary, which is not rebuilt with the feature.
STAGES = [
    ("lib", "expiry_stream", [], 90),
    ("model", "model", [], 120),
    ("exactly_once", "exactly_once", [], 120),
    ("bad_input", "bad_input", ["non_utf8", "oversized", "truncated"], 90),
    ("sim", "sim", ["--skip", "without_"], 150),
    ("pipeline", "pipeline", [], 150),
]

ENV = {
    "EXPIRY_STREAM_REDIS": "process",
    # A failing snapshot or property test must not write into the tree, nor shrink for minutes.
    "INSTA_UPDATE": "no",
    "PROPTEST_DISABLE_FAILURE_PERSISTENCE": "1",
    "PROPTEST_MAX_SHRINK_ITERS": "0",
    "RUST_BACKTRACE": "0",
}


def load_catalogue():
    data = tomllib.loads(CATALOGUE.read_text())
    mutants = data["mutant"]
    errors = []
    seen = set()
    for m in mutants:
        for field in ("id", "file", "kind", "what", "from", "to"):
            if field not in m:
                errors.append(f"{m.get('id', '?')}: no `{field}`")
        if m["id"] in seen:
            errors.append(f"{m['id']}: duplicate id")
        seen.add(m["id"])
        if m["kind"] not in KINDS:
            errors.append(f"{m['id']}: kind {m['kind']!r} is not one of {sorted(KINDS)}")
        path = LUA / m["file"]
        if not path.exists():
            errors.append(f"{m['id']}: no file {path}")
            continue
        n = path.read_text().count(m["from"])
        if n != 1:
            errors.append(f"{m['id']}: `from` occurs {n} times in {m['file']} (must be exactly once)")
        if m["from"] == m["to"]:
            errors.append(f"{m['id']}: `from` and `to` are equal")
    if errors:
        sys.exit("lua.toml is out of date with src/store/lua:\n  " + "\n  ".join(errors))
    return mutants


def build():
    """Builds the tier's test binaries with the feature; returns {target: executable}."""
    targets = sorted({t for _, t, _, _ in STAGES if t != "expiry_stream"})
    cmd = ["nice", "-n", "19", "cargo", "test", "--features", "mutants", "--no-run", "--message-format=json", "--lib"]
    for t in targets:
        cmd += ["--test", t]
    print("build:", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("build failed")
    exes = {}
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("profile", {}).get("test") and msg.get("executable"):
            exes[msg["target"]["name"]] = msg["executable"]
    missing = [t for _, t, _, _ in STAGES if t not in exes]
    if missing:
        sys.exit(f"no test executable for {missing}")
    return exes


def run_stage(exe, args, limit, lua_dir, log):
    """('pass' | 'fail' | 'timeout', failing tests, seconds)."""
    tmp = tempfile.mkdtemp(prefix="mutant-run-")
    env = dict(os.environ, **ENV, EXPIRY_STREAM_LUA_DIR=str(lua_dir), TMPDIR=tmp)
    start = time.monotonic()
    # `timeout` signals its whole process group, so the redis-server processes the tests
    # started die with them.
    cmd = ["timeout", "-k", "5", str(limit), "nice", "-n", "19", exe] + args
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    secs = time.monotonic() - start
    shutil.rmtree(tmp, ignore_errors=True)
    log.write(f"$ {' '.join(cmd)}\n{p.stdout}\n(exit {p.returncode}, {secs:.1f} s)\n\n")
    if p.returncode < 0 or p.returncode == 143:
        # The run itself was interrupted (SIGTERM to the runner's group): record nothing.
        sys.exit(f"interrupted (exit {p.returncode}); continue with --resume")
    failed = re.findall(r"^test (\S+) \.\.\. FAILED", p.stdout, re.M)
    if p.returncode in (124, 137):
        # Killed either way; a test that failed before the limit is the better witness.
        return ("fail" if failed else "timeout"), failed, secs
    if p.returncode == 0:
        return "pass", [], secs
    if not failed:
        # Not a test's failure: the binary itself panicked or could not start.
        tail = p.stdout.strip().splitlines()[-1:] or ["(no output)"]
        failed = [f"(exit {p.returncode}: {tail[0][:120]})"]
    return "fail", failed, secs


def run_tier(exes, lua_dir, log, stages=STAGES):
    """Runs the stages in order until one fails: (status, stage, tests, seconds)."""
    total = 0.0
    for name, target, args, limit in stages:
        status, failed, secs = run_stage(exes[target], args, limit, lua_dir, log)
        total += secs
        if status != "pass":
            return ("killed" if status == "fail" else "timeout"), name, failed, total
    return "survived", None, [], total


def mutated_copy(m, into):
    d = Path(into)
    shutil.copytree(LUA, d, dirs_exist_ok=True)
    if m is not None:
        p = d / m["file"]
        text = p.read_text()
        assert text.count(m["from"]) == 1
        p.write_text(text.replace(m["from"], m["to"], 1))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "mutants.out/lua"))
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--check", action="store_true", help="only check the catalogue against the scripts")
    ap.add_argument("--interleave", action="store_true",
                    help="run the files' mutants in turn (a run cut short still covers every script)")
    ap.add_argument("--table", action="store_true", help="print OUT/results.jsonl as a Markdown table (docs/MUTANTS.md)")
    ap.add_argument("--no-build", action="store_true", help="reuse the binaries of the last build (OUT/exes.json)")
    ap.add_argument("--resume", action="store_true", help="skip the mutants already in OUT/results.jsonl")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not for recorded results)")
    a = ap.parse_args()

    mutants = load_catalogue()
    if a.table:
        print_table(mutants, Path(a.out))
        return
    print(f"catalogue: {len(mutants)} mutants, every `from` found exactly once")
    if a.check:
        return
    if a.only:
        ids = set(a.only.split(","))
        unknown = ids - {m["id"] for m in mutants}
        if unknown:
            sys.exit(f"unknown ids: {sorted(unknown)}")
        mutants = [m for m in mutants if m["id"] in ids]

    if a.interleave:
        by_file = {}
        for m in mutants:
            by_file.setdefault(m["file"], []).append(m)
        queues = list(by_file.values())
        mutants = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]

    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    exes_file = out / "exes.json"
    if a.no_build and exes_file.exists():
        # The binaries of an earlier build of this tree (no cargo: its lock may be held by others).
        exes = json.loads(exes_file.read_text())
    else:
        exes = build()
        exes_file.write_text(json.dumps(exes, indent=1) + "\n")
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="mutants-lua-") as tmp:
        # The override is in effect: a broken common.lua fails the first stage.
        broken = mutated_copy(None, Path(tmp) / "broken")
        (broken / "common.lua").write_text("this is not Lua\n" + (broken / "common.lua").read_text())
        with open(out / "logs/canary.log", "w") as log:
            status, _, _, _ = run_tier(exes, broken, log, STAGES[:1])
        if status != "killed":
            sys.exit("a broken common.lua passed the first stage: EXPIRY_STREAM_LUA_DIR is not in effect")
        print("canary: a broken common.lua fails the lib stage (the override is in effect)", flush=True)
        if not a.no_baseline:
            with open(out / "logs/baseline.log", "w") as log:
                status, stage, failed, secs = run_tier(exes, mutated_copy(None, Path(tmp) / "baseline"), log)
            if status != "survived":
                sys.exit(f"the unmutated scripts fail stage {stage} ({status}: {failed}); see {out}/logs/baseline.log")
            print(f"baseline: every stage passes on the unmutated scripts ({secs:.0f} s)", flush=True)

        results = []
        if a.resume:
            # Mutants already recorded by an interrupted run (same catalogue) are not run again.
            done = {json.loads(l)["id"]: json.loads(l) for l in open(out / "results.jsonl") if l.strip()}
            results = [done[m["id"]] for m in mutants if m["id"] in done]
            mutants = [m for m in mutants if m["id"] not in done]
            print(f"resume: {len(results)} mutants already recorded", flush=True)
        else:
            (out / "results.jsonl").write_text("")
        for i, m in enumerate(mutants, 1):
            d = mutated_copy(m, Path(tmp) / m["id"])
            with open(out / "logs" / f"{m['id']}.log", "w") as log:
                log.write(f"{m['id']} ({m['kind']}, {m['file']}): {m['what']}\n--- from\n{m['from']}\n+++ to\n{m['to']}\n\n")
                status, stage, failed, secs = run_tier(exes, d, log)
            shutil.rmtree(d)
            if status == "survived" and "equivalent" in m:
                status = "equivalent"
            r = dict(id=m["id"], file=m["file"], kind=m["kind"], what=m["what"], status=status, stage=stage,
                     tests=failed, seconds=round(secs, 1), equivalent=m.get("equivalent"))
            results.append(r)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            by = f" by {stage}: {', '.join(failed[:3])}" if stage else ""
            print(f"[{i}/{len(mutants)}] {m['id']}: {status}{by} ({secs:.0f} s)", flush=True)

    write_results(out, results, time.monotonic() - started)


def print_table(mutants, out):
    """Every catalogue entry with its recorded result (or "not run"), in catalogue order."""
    done = {}
    if (out / "results.jsonl").exists():
        done = {json.loads(l)["id"]: json.loads(l) for l in open(out / "results.jsonl") if l.strip()}
    print("| id | file | kind | result | stage: witness |")
    print("|---|---|---|---|---|")
    for m in mutants:
        r = done.get(m["id"])
        if r is None:
            result, witness = "not run", ""
        else:
            result = r["status"]
            witness = f"{r['stage']}: {', '.join(t.rsplit('::', 1)[-1] for t in r['tests'][:2])}" if r["stage"] else ""
        print(f"| `{m['id']}` | {m['file']} | {m['kind']} | {result} | {witness} |")


def write_results(out, results, secs):
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    with open(out / "results.tsv", "w") as f:
        f.write("id\tfile\tkind\tstatus\tstage\ttests\tseconds\n")
        for r in results:
            f.write(f"{r['id']}\t{r['file']}\t{r['kind']}\t{r['status']}\t{r['stage'] or ''}\t{' '.join(r['tests'])}\t{r['seconds']}\n")
    n = {s: sum(r["status"] == s for r in results) for s in ("killed", "timeout", "equivalent", "survived")}
    wrong_eq = [r["id"] for r in results if r["equivalent"] and r["status"] in ("killed", "timeout")]
    live = n["killed"] + n["timeout"] + n["survived"]
    rate = 100.0 * (n["killed"] + n["timeout"]) / live if live else 100.0
    lines = [
        f"Lua mutants: {len(results)} tried, {n['killed']} killed, {n['timeout']} killed by timeout, "
        f"{n['equivalent']} equivalent, {n['survived']} survived; "
        f"kill rate of non-equivalent mutants {rate:.1f}% ({secs / 60:.1f} min)",
    ]
    if wrong_eq:
        lines.append(f"marked equivalent but killed (fix the catalogue): {', '.join(wrong_eq)}")
    for r in results:
        if r["status"] == "survived":
            lines.append(f"  survived: {r['id']} ({r['file']}, {r['kind']}): {r['what']}")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if wrong_eq:
        sys.exit(1)


if __name__ == "__main__":
    main()
