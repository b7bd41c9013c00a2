#!/usr/bin/env python3
"""Memory retained per object after close (issue 8, defect 14).

Starts a release `stead sidecar` and the counter app on loopback (own temp data dir, both
killed at the end), touches objects one after another (POST .../increment), and prints the
sidecar's VmRSS (/proc/<pid>/status) at start, after 10,000 and 20,000 objects, and after
they all hibernated (stead_objects_open back to 0; --idle-timeout 2s) and --settle seconds more.

  bench/scripts/retention.py [--objects 20000] [--env NAME=VALUE ...] [--trim-after]

--env sets variables of the sidecar only (e.g. MALLOC_ARENA_MAX=2, LD_PRELOAD=...);
--trim-after additionally calls malloc_trim(0) in the idle sidecar through gdb and
measures again (what trimming would give, without rebuilding).
"""
import argparse, http.client, os, shutil, signal, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None

def wait_port(port, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz"); c.getresponse().read(); c.close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing answers on port {port}")

def touch(port, names, threads=8):
    errors = [0]
    def work(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in chunk:
            c.request("POST", f"/objects/Counter/name/{n}/increment", body=b"")
            r = c.getresponse(); r.read()
            if r.status != 200:
                errors[0] += 1
        c.close()
    ts = [threading.Thread(target=work, args=(names[i::threads],)) for i in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    return errors[0]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--trim-after", action="store_true")
    ap.add_argument("--port", type=int, default=18787)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--sidecar-arg", action="append", default=[])
    ap.add_argument("--log", help="file for the sidecar's output (RUST_LOG from --env, else warn)")
    ap.add_argument("--settle", type=float, default=12.0,
                    help="seconds to wait once no object is open, before measuring")
    a = ap.parse_args()
    p = a.port
    ing, api, adm, app = p, p + 1000, p + 1001, p + 1002
    data = tempfile.mkdtemp(prefix="stead-retention-")
    env = dict(os.environ)
    for kv in a.env:
        k, v = kv.split("=", 1); env[k] = v
    procs = []
    try:
        procs.append(subprocess.Popen(
            [os.path.join(a.bin_dir, "counter")],
            env={**os.environ, "STEAD_APP_ADDR": f"127.0.0.1:{app}", "STEAD_API_URL": f"http://127.0.0.1:{api}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sc = subprocess.Popen(
            [os.path.join(a.bin_dir, "stead"), "sidecar", "--ingress", f"127.0.0.1:{ing}",
             "--api", f"127.0.0.1:{api}", "--admin", f"127.0.0.1:{adm}", "--app", f"127.0.0.1:{app}",
             "--peer-addr", f"127.0.0.1:{p + 1003}", "--data-dir", data, "--classes", "Counter",
             "--idle-timeout", "2s", *a.sidecar_arg],
            env={"RUST_LOG": "warn", **env},
            stdout=open(a.log, "w") if a.log else subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(sc)
        wait_port(adm)
        time.sleep(0.5)
        rows = [("start", rss_kib(sc.pid), 0)]
        peak = [0.0]
        stop = threading.Event()
        def watch_open():  # the most objects open at once
            while not stop.is_set():
                peak[0] = max(peak[0], metric(adm, "stead_objects_open") or 0)
                time.sleep(0.2)
        watcher = threading.Thread(target=watch_open); watcher.start()
        touched, step = 0, 10000
        try:
            while touched < a.objects:
                n = min(step, a.objects - touched)
                err = touch(ing, [f"ret-{k}" for k in range(touched, touched + n)])
                touched += n
                rows.append((f"after {touched} objects (peak open {peak[0]:.0f})", rss_kib(sc.pid), err))
        finally:
            stop.set(); watcher.join()
        end = time.time() + 120
        while time.time() < end and (metric(adm, "stead_objects_open") or 0) > 0:
            time.sleep(0.5)
        time.sleep(a.settle)
        rows.append((f"all hibernated (open {metric(adm, 'stead_objects_open')})", rss_kib(sc.pid), 0))
        if a.trim_after:
            subprocess.run(["gdb", "-p", str(sc.pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            rows.append(("after malloc_trim(0) via gdb", rss_kib(sc.pid), 0))
        print(f"sidecar env {a.env} args {a.sidecar_arg}; at most {peak[0]:.0f} objects open at once")
        base = rows[0][1]
        for what, kib, err in rows:
            print(f"  {what:<44} VmRSS {kib / 1024:8.1f} MiB  (+{(kib - base) / 1024:7.1f} MiB, "
                  f"{(kib - base) * 1024 / max(peak[0], 1):7.0f} B per object open at the peak)"
                  + (f"  {err} non-200" if err else ""))
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGKILL)
            pr.wait()
        shutil.rmtree(data, ignore_errors=True)

if __name__ == "__main__":
    main()
