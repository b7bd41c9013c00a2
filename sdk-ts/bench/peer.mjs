// W1 (one hot counter, through the front and, on Stead, also by object route) and W4 (chat fanout) with the workerd peer's worker.js, on Stead with
// this SDK's runner and on workerd, in one run. Release binaries:
//
//   cargo build --release -p stead-sidecar -p stead-bench --bins
//   STEAD_BIN=target/release/stead STEAD_BENCH_BIN=target/release/stead-bench \
//     node sdk-ts/bench/peer.mjs [seconds]
//
// workerd comes from scripts/peer-workerd.sh (~/.cache/stead-peer-workerd) or STEAD_WORKERD_BIN.
// Prints one JSON line per measurement (stead-bench's own output) with a label.

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, peerFiles, project, stack, start, stop, waitFor } from "../test/helpers.mjs";

const secs = process.argv[2] ?? "10";
const bench = process.env.STEAD_BENCH_BIN ?? "target/release/stead-bench";
const peer = peerFiles();
const workerdBin = process.env.STEAD_WORKERD_BIN ?? path.join(os.homedir(), ".cache", "stead-peer-workerd", "node_modules", ".bin", "workerd");

function run(label, args) {
  const r = spawnSync(bench, [...args, "--duration", secs, "--warmup", "2", "--label", label], { encoding: "utf8", timeout: 300_000 });
  process.stdout.write(r.stdout);
  if (r.status !== 0) process.stderr.write(r.stderr);
}

const wdir = fs.mkdtempSync(path.join(os.tmpdir(), "stead-ts-bench-"));
const port = await freePort();
fs.writeFileSync(path.join(wdir, "config.capnp"), fs.readFileSync(path.join(peer, "config.capnp"), "utf8").replace("127.0.0.1:8787", `127.0.0.1:${port}`));
fs.copyFileSync(path.join(peer, "worker.js"), path.join(wdir, "worker.js"));
fs.mkdirSync(path.join(wdir, "do-data"));
const workerd = start(workerdBin, ["serve", "config.capnp", "--directory-path", `do-storage=${path.join(wdir, "do-data")}`], { cwd: wdir });
const pdir = project({
  "wrangler.toml": `main = ${JSON.stringify(path.join(peer, "worker.js"))}
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"
`,
});
const s = await stack({ classes: ["Counter", "Room"], runnerArgs: ["--config", path.join(pdir, "wrangler.toml")] });
try {
  const w = `http://127.0.0.1:${port}`;
  await waitFor(`${w}/nope`, 404);
  for (const round of [1, 2]) {
    run(`W1 stead+node r${round}`, ["http", "--method", "GET", "--url", `${s.url}/counter/{object}`]);
    run(`W1 stead+node direct r${round}`, ["http", "--method", "GET", "--url", `${s.url}/objects/Counter/name/{object}/`]);
    run(`W1 workerd r${round}`, ["http", "--method", "GET", "--url", `${w}/counter/{object}`]);
    for (const inflight of ["1", "16"]) {
      run(`W4 stead+node in-flight ${inflight} r${round}`, ["ws-fanout", "--url", `${s.ws}/room/{room}?name=u{i}`, "--in-flight", inflight]);
      run(`W4 workerd in-flight ${inflight} r${round}`, ["ws-fanout", "--url", `${w.replace("http:", "ws:")}/room/{room}?name=u{i}`, "--in-flight", inflight]);
    }
  }
} finally {
  await Promise.all([s.stop(), stop(workerd)]);
  fs.rmSync(wdir, { recursive: true, force: true });
  fs.rmSync(pdir, { recursive: true, force: true });
}
