#!/usr/bin/env python3
"""CPU time per operation, by process and thread group, while a benchmark runs.

    bench/scripts/cpu-per-op.py --ops-field FIELD [--procs stead,counter] -- BENCH-COMMAND...

Samples the CPU time (user + system, from /proc/PID/task/TID/stat) of every thread of the
processes whose executable is named in --procs, runs BENCH-COMMAND (a `stead-bench` run that
prints a JSON line), samples again, and divides each thread group's CPU time (threads named
alike, numbers stripped: `stead-storage-3` counts as `stead-storage`) by the number of
operations the JSON line's FIELD reports. The benchmark client's own CPU time (its rusage) is
divided the same way. Start the servers (e.g. `stead dev`) before, stop them after.

Examples (docs/benchmarks.md §15):

    cpu-per-op.py --ops-field set_ok -- stead-bench alarms --url ... --objects 10000 \\
        --all-due-after-ms 600000 --timeout 1          # the sets only: the fires come later
    cpu-per-op.py --ops-field sent_total --procs stead,chat -- stead-bench ws-fanout --url ...
"""

import argparse
import collections
import glob
import json
import os
import resource
import subprocess
import sys


def sample(names):
    tick = os.sysconf("SC_CLK_TCK")
    acc = collections.Counter()
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(proc + "/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        exe = os.path.basename(cmd[0].decode(errors="replace")) if cmd and cmd[0] else ""
        if exe not in names:
            continue
        # `stead dev` and `stead sidecar` are told apart by their subcommand.
        label = exe + (" " + cmd[1].decode(errors="replace") if exe == "stead" and len(cmd) > 1 else "")
        for task in glob.glob(proc + "/task/*"):
            try:
                stat = open(task + "/stat").read()
                comm = open(task + "/comm").read().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            acc[(label, comm.rstrip("0123456789-"))] += (int(fields[11]) + int(fields[12])) / tick
    return acc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops-field", required=True, help="field of the benchmark's JSON line that counts the operations")
    ap.add_argument("--procs", default="stead,counter,chat", help="executable names to account, comma separated")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the benchmark command after --")
    names = set(args.procs.split(","))
    before = sample(names)
    run = subprocess.run(command, capture_output=True, text=True)
    after = sample(names)
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stdout.write(run.stdout)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"cpu-per-op: the benchmark printed no JSON line (exit {run.returncode}): {run.stderr[-500:]}")
    ops = json.loads(lines[-1]).get(args.ops_field)
    if not ops:
        sys.exit(f"cpu-per-op: the JSON line has no non-zero {args.ops_field!r}")
    print(f"CPU per operation ({args.ops_field} = {ops:g}), µs:")
    total = 0.0
    for key in sorted(after, key=lambda k: before.get(k, 0) - after[k]):
        spent = after[key] - before.get(key, 0)
        if spent > 0:
            total += spent
            print(f"  {key[0]:<16} {key[1]:<20} {spent * 1e6 / ops:8.0f}")
    print(f"  {'servers, in all':<37} {total * 1e6 / ops:8.0f}")
    print(f"  {'benchmark client':<37} {(client.ru_utime + client.ru_stime) * 1e6 / ops:8.0f}")


if __name__ == "__main__":
    main()
