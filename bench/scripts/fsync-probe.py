#!/usr/bin/env python3
"""How long this disk takes to make one small write durable: the floor under a strict commit.

    bench/scripts/fsync-probe.py [DIR] [--writes N]

Writes one 4,120-byte record (a WAL frame: 24-byte header and a 4 KiB page) and syncs it, N
times, in a scratch file in DIR (default: the current folder), three ways:

- overwrite, fsync: the record lands on space the file already has (a WAL that has wrapped);
- append, fsync: the file grows with every record (a WAL that is new since its object opened):
  the sync writes the inode and the block allocation too;
- overwrite, fdatasync.

Prints p50 / p90 / p99 in milliseconds for each. A strict commit of one object (`--sync file`)
is one such sync after its frames are written; compare the one-connection increment and
read-only latencies of `bench/scripts/turns.sh` with these (docs/benchmarks.md §17).
"""

import argparse
import os
import tempfile
import time

RECORD = 4120


def probe(dirname, writes, append, sync):
    fd, path = tempfile.mkstemp(prefix=".fsync-probe-", dir=dirname)
    try:
        if not append:
            os.pwrite(fd, b"\0" * RECORD * writes, 0)
            os.fsync(fd)
        took = []
        for i in range(writes):
            os.pwrite(fd, b"x" * RECORD, i * RECORD)
            start = time.perf_counter()
            sync(fd)
            took.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    took.sort()
    return [took[min(len(took) - 1, int(len(took) * q))] * 1e3 for q in (0.5, 0.9, 0.99)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=".", help="a folder on the disk to measure")
    ap.add_argument("--writes", type=int, default=2000, help="records per way (default 2000)")
    args = ap.parse_args()
    for name, append, sync in [
        ("overwrite, fsync", False, os.fsync),
        ("append, fsync", True, os.fsync),
        ("overwrite, fdatasync", False, os.fdatasync),
    ]:
        p50, p90, p99 = probe(args.dir, args.writes, append, sync)
        print(f"{name:22} p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
