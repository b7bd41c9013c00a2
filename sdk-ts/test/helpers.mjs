// Test helpers: a real `stead sidecar` and the runner as child processes, on free loopback
// ports, killed when the test ends (and by the kernel if the test process dies: setpriv
// --pdeathsig, where it exists).

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SDK_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = path.resolve(SDK_DIR, "..");
export const RUNNER = path.join(SDK_DIR, "bin", "stead-workers.mjs");
export const STEAD_BIN = process.env.STEAD_BIN || path.join(REPO_DIR, "target", "debug", "stead");

/** The workerd peer's files (worker.js, config.capnp), found as scripts/peer-workerd.sh finds them. */
export function peerFiles() {
  for (const cand of [process.env.STEAD_PEER_FILES, path.resolve(REPO_DIR, "../shared/peers/workerd"), "/work/shared/peers/workerd"]) {
    if (cand && fs.existsSync(path.join(cand, "worker.js"))) return cand;
  }
  return null;
}

const HAVE_SETPRIV = spawnSync("setpriv", ["--help"], { stdio: "ignore" }).status === 0;

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** Spawns a child that dies with this process; its output is kept in `child.output`. */
export function start(cmd, args, opts = {}) {
  const [file, argv] = HAVE_SETPRIV ? ["setpriv", ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
  const child = spawn(file, argv, { ...opts, stdio: ["ignore", "pipe", "pipe"] });
  child.output = "";
  const keep = (d) => {
    child.output += d.toString();
    if (child.output.length > 200_000) child.output = child.output.slice(-100_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

export async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const t = setTimeout(() => child.kill("SIGKILL"), 5000);
  await child.exited;
  clearTimeout(t);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `url` until it answers `want` (status), at most `tries` times. */
export async function waitFor(url, want = 200, tries = 150) {
  let last;
  for (let i = 0; i < tries; i++) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === want) return;
      last = res.status;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`${url} did not answer ${want} (last: ${last})`);
}

/**
 * A one-shard Stead: a sidecar serving `classes` and the runner serving the project given by
 * `runnerArgs` (e.g. ["--config", file]). Returns {url, api, stop, sidecar, runner, dir}.
 */
export async function stack({ classes, runnerArgs, sidecarArgs = [], env = {}, nodeArgs = [] }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "stead-ts-test-"));
  const [ingress, api, admin, peer] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const appAddr = `unix:${path.join(dir, "app.sock")}`;
  const sidecar = start(STEAD_BIN, [
    "sidecar",
    "--ingress", `127.0.0.1:${ingress}`,
    "--api", `127.0.0.1:${api}`,
    "--admin", `127.0.0.1:${admin}`,
    "--app", appAddr,
    "--peer-addr", `127.0.0.1:${peer}`,
    "--data-dir", path.join(dir, "data"),
    "--classes", classes.join(","),
    ...sidecarArgs,
  ]);
  const runner = start(process.execPath, [...nodeArgs, RUNNER, "serve", ...runnerArgs], {
    env: { ...process.env, STEAD_APP_ADDR: appAddr, STEAD_API_URL: `http://127.0.0.1:${api}`, ...env },
  });
  const s = {
    url: `http://127.0.0.1:${ingress}`,
    ws: `ws://127.0.0.1:${ingress}`,
    apiUrl: `http://127.0.0.1:${api}`,
    dir,
    sidecar,
    runner,
    async stop() {
      await Promise.all([stop(this.runner), stop(this.sidecar)]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(`http://127.0.0.1:${admin}/healthz`);
    for (let i = 0; i < 150 && !runner.output.includes("listening on"); i++) {
      if (runner.exitCode !== null) break;
      await sleep(100);
    }
    if (!runner.output.includes("listening on")) throw new Error(`the runner did not start:\n${runner.output}`);
  } catch (e) {
    await s.stop();
    throw new Error(`${e.message}\nsidecar:\n${sidecar.output.slice(-3000)}`);
  }
  return s;
}

/** Writes `files` (name -> text) into a fresh temp project folder; returns its path. */
export function project(files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "stead-ts-project-"));
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

export async function text(res) {
  return { status: res.status, body: await res.text() };
}

/** Opens a WebSocket (Node's experimental client) and collects its messages. */
export function openSocket(url) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const messages = [];
  const waiters = [];
  ws.addEventListener("message", (e) => {
    messages.push(e.data);
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise((resolve) => ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason })));
  const opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => resolve());
    ws.addEventListener("error", () => reject(new Error(`WebSocket ${url} failed`)));
  });
  return {
    ws,
    messages,
    closed,
    opened,
    /** Resolves once `n` messages arrived (at most ~10 s). */
    async take(n) {
      const deadline = Date.now() + 10_000;
      while (messages.length < n && Date.now() < deadline) {
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
      return messages.splice(0, n);
    },
  };
}
