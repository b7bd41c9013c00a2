// Synchronous app API calls (`ctx.storage.sql.exec`, `getWebSockets`, ...): Cloudflare's API is
// synchronous where Stead's app API is HTTP. One worker thread makes the call while the main
// thread blocks in Atomics.wait; the answer comes back through receiveMessageOnPort. While it
// waits, the whole app (every object of this process) waits: keep synchronous calls short.

import { MessageChannel, Worker, receiveMessageOnPort } from "node:worker_threads";
import { SteadApiError, apiBase, decodeAnswer } from "./api.mjs";

let state = null;

function start() {
  const flag = new SharedArrayBuffer(4);
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(new URL("./sync-worker.mjs", import.meta.url), {
    workerData: { flag, port: port2, base: apiBase().href },
    transferList: [port2],
  });
  worker.unref();
  port1.unref();
  worker.on("error", (e) => {
    process.stderr.write(`stead-workers: the synchronous call thread failed: ${e.message}\n`);
    state = null;
  });
  state = { worker, port: port1, flag: new Int32Array(flag) };
  return state;
}

/** Longest wait for one synchronous call (a little over the sidecar's default turn timeout). */
const WAIT_MS = 40_000;

/** `POST /v1/{name}` under `token`, blocking until the answer; returns its JSON or throws. */
let seq = 0;

export function callSync(token, name, payload) {
  const s = state ?? start();
  const id = ++seq;
  const deadline = Date.now() + WAIT_MS;
  Atomics.store(s.flag, 0, 0);
  s.worker.postMessage({ id, name, token, body: JSON.stringify(payload ?? {}) });
  let msg = null;
  while (msg === null) {
    const left = deadline - Date.now();
    if (left <= 0) throw new SteadApiError(504, "sync_call_timeout", `the synchronous ${name} call got no answer within ${WAIT_MS / 1000} s`);
    Atomics.wait(s.flag, 0, 0, left);
    Atomics.store(s.flag, 0, 0);
    // Answers of earlier calls that timed out are dropped.
    for (let got = receiveMessageOnPort(s.port); got; got = receiveMessageOnPort(s.port)) {
      if (got.message.id === id) msg = got.message;
    }
  }
  if (msg.error) throw new SteadApiError(502, "api_unreachable", `the Stead app API cannot be reached: ${msg.error}`);
  return decodeAnswer(msg.status, Buffer.from(msg.body, "utf8"));
}
