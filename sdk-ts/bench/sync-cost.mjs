// What a synchronous app API call (sql.exec) costs against an asynchronous one: both against a
// trivial HTTP server in another thread, which answers like /v1/sql/exec, so that only the SDK's
// side is measured.   node sdk-ts/bench/sync-cost.mjs [calls]
import { Worker } from "node:worker_threads";

const n = Number(process.argv[2] ?? 5000);
const server = new Worker(
  `const http = require("node:http");
   const { parentPort } = require("node:worker_threads");
   const s = http.createServer((q, r) => { q.resume(); q.on("end", () => r.end('{"columns":["x"],"rows":[[1]],"rows_read":0,"rows_written":0}')); });
   s.listen(0, "127.0.0.1", () => parentPort.postMessage(s.address().port));`,
  { eval: true },
);
const port = await new Promise((r) => server.once("message", r));
process.env.STEAD_API_URL = `http://127.0.0.1:${port}`;
const { callSync } = await import("../src/sync.mjs");
const { call } = await import("../src/api.mjs");
for (let i = 0; i < 500; i++) {
  callSync("t", "sql/exec", { sql: "SELECT 1" });
  await call("t", "sql/exec", { sql: "SELECT 1" });
}
let t = performance.now();
for (let i = 0; i < n; i++) callSync("t", "sql/exec", { sql: "SELECT 1", params: [] });
const sync = ((performance.now() - t) * 1000) / n;
t = performance.now();
for (let i = 0; i < n; i++) await call("t", "sql/exec", { sql: "SELECT 1", params: [] });
const async_ = ((performance.now() - t) * 1000) / n;
console.log(JSON.stringify({ calls: n, sync_us_per_call: Math.round(sync), async_us_per_call: Math.round(async_) }));
process.exit(0);
