#!/usr/bin/env python3
"""Flame graphs from `perf script` output, without dependencies.

    perf script -i perf.data | bench/scripts/flamegraph.py --title "alarm set" > out.svg
    perf script -i perf.data | bench/scripts/flamegraph.py --folded > out.folded

Reads `perf script` text (samples with call chains, from `perf record -g` or
`--call-graph dwarf`), folds each sample's stack into `process;root;...;leaf count`, and draws a
flame graph as a self-contained SVG (hover a frame for its name, samples and share). Frames are
coloured by kind: sidecar code (stead_*), SQLite (sqlite3*), the kernel, the rest.
`--top N` also prints the N leaf frames with most samples (self time) to stderr.
"""

import argparse
import collections
import html
import re
import sys

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.+?)\s+\((.*)\)\s*$")


def simplify(sym):
    """Shortens a demangled Rust/C++ symbol: no hash suffix, no argument lists, short generics."""
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    # Drop generic arguments (nested): keeps names readable.
    out, depth = [], 0
    for ch in sym:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<..>")
            continue
        if ch == ">" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    sym = "".join(out)
    sym = re.sub(r"\(.*\)$", "", sym)
    return sym.replace(";", ":") or "[unknown]"


def fold(lines):
    """`perf script` lines -> Counter of 'comm;frame;...' stacks (root first)."""
    stacks = collections.Counter()
    comm, frames = None, []

    def flush():
        if comm is not None:
            stacks[";".join([comm] + [simplify(f) for f in reversed(frames)])] += 1

    for line in lines:
        if not line.strip():
            flush()
            comm, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            flush()
            comm, frames = line.split()[0], []
            continue
        m = FRAME.match(line)
        if m:
            sym, dso = m.group(1), m.group(2)
            if sym == "[unknown]":
                sym = "[" + dso.rsplit("/", 1)[-1] + "]"
            frames.append(sym)
    flush()
    return stacks


def colour(name):
    h = sum(map(ord, name)) % 40
    if name.startswith(("stead", "<stead", "counter", "chat")):
        return "rgb(%d,%d,%d)" % (230, 120 + h, 40)
    if "sqlite" in name:
        return "rgb(%d,%d,%d)" % (70 + h, 150 + h, 220)
    if name.startswith("[k") or "_sys_" in name or name.startswith(("do_", "__x64", "entry_SYSCALL")):
        return "rgb(%d,%d,%d)" % (200 + h // 2, 100, 100)
    return "rgb(%d,%d,%d)" % (220, 180 + h, 60 + h)


def svg(stacks, title, width=1600, row=16, min_width=1.5):
    root = {"n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    total = root["n"] or 1
    rects, depth_max = [], 0

    def walk(node, name, x, depth):
        nonlocal depth_max
        w = node["n"] / total * (width - 20)
        if w < min_width:
            return
        depth_max = max(depth_max, depth)
        rects.append((name, x, depth, w, node["n"]))
        cx = x
        for kid_name, kid in sorted(node["kids"].items()):
            walk(kid, kid_name, cx, depth + 1)
            cx += kid["n"] / total * (width - 20)

    walk(root, "all", 10, 0)
    height = (depth_max + 1) * row + 60
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="monospace" font-size="11">'
        % (width, height),
        '<rect width="100%%" height="100%%" fill="#f8f8f8"/><text x="%d" y="20" font-size="15" text-anchor="middle">%s (%d samples)</text>'
        % (width // 2, html.escape(title), total),
    ]
    for name, x, depth, w, n in rects:
        y = height - 20 - (depth + 1) * row
        name = name if len(name) <= 160 else name[:157] + "..."
        label = html.escape(name)
        tip = "%s — %d samples (%.2f%%)" % (label, n, 100.0 * n / total)
        chars = int(w / 7)
        text = label if len(name) <= chars else (html.escape(name[: chars - 2]) + ".." if chars > 3 else "")
        out.append(
            '<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" rx="1"/>'
            '<text x="%.1f" y="%d">%s</text></g>'
            % (tip, x, y, w, row - 1, colour(name), x + 2, y + row - 4, text)
        )
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--title", default="flame graph")
    ap.add_argument("--folded", action="store_true", help="print folded stacks instead of SVG")
    ap.add_argument("--top", type=int, default=0, help="print the N hottest leaf frames to stderr")
    args = ap.parse_args()
    stacks = fold(sys.stdin)
    if args.top:
        leaves = collections.Counter()
        for s, n in stacks.items():
            leaves[s.rsplit(";", 1)[-1]] += n
        total = sum(leaves.values()) or 1
        for name, n in leaves.most_common(args.top):
            print("%6.2f%% %7d  %s" % (100.0 * n / total, n, name), file=sys.stderr)
    if args.folded:
        for s, n in sorted(stacks.items()):
            print(s, n)
    else:
        print(svg(stacks, args.title))


if __name__ == "__main__":
    main()
