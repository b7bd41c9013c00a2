// The thread that makes the synchronous app API calls: the main thread posts a call and waits
// on a shared flag with Atomics.wait; this thread makes the HTTP call, posts the answer on the
// reply port and wakes the main thread.

import http from "node:http";
import { parentPort, workerData } from "node:worker_threads";

const { flag: sab, port, base } = workerData;
const flag = new Int32Array(sab);
const url = new URL(base);
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function reply(id, msg) {
  port.postMessage({ id, ...msg });
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}

parentPort.on("message", ({ id, name, token, body }) => {
  const req = http.request(
    {
      agent,
      host: url.hostname,
      port: url.port || 80,
      method: "POST",
      path: `/v1/${name}`,
      headers: { "stead-turn": token, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
    },
    (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => reply(id, { status: res.statusCode, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", (e) => reply(id, { error: e.message }));
    },
  );
  req.setNoDelay(true);
  req.on("error", (e) => reply(id, { error: e.message }));
  req.end(body);
});
