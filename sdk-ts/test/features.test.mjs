// The SDK's Cloudflare API on a real sidecar, through a TypeScript project bundled by the runner
// (test/fixtures/features: wrangler.toml, src/index.ts, an .html Text import).

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";
import { SDK_DIR, openSocket, sleep, stack, text } from "./helpers.mjs";

const CONFIG = path.join(SDK_DIR, "test", "fixtures", "features", "wrangler.toml");
let s;

before(async () => {
  s = await stack({
    classes: ["Store", "OldStyle", "Classic"],
    runnerArgs: ["--config", CONFIG],
    sidecarArgs: ["--alarm-first-retry", "200ms"],
  });
});

after(async () => {
  await s?.stop();
});

const post = (name, route, body) =>
  fetch(`${s.url}/objects/Store/name/${name}/${route}`, { method: "POST", body: JSON.stringify(body ?? {}) });
const json = async (res) => {
  assert.equal(res.status, 200, `status ${res.status}: ${await res.clone().text()}`);
  return res.json();
};

test("the front door serves Text module imports, vars and ids", async () => {
  const page = await text(await fetch(`${s.url}/page`));
  assert.equal(page.status, 200);
  assert.match(page.body, /<p>page<\/p>/);
  assert.deepEqual(await text(await fetch(`${s.url}/vars`)), { status: 200, body: "hello from vars" });
  const ids = await json(await fetch(`${s.url}/ids`));
  assert.equal(ids.equal, true);
  assert.equal(ids.name, "x");
  assert.equal(ids.unique, 64);
  assert.equal(ids.uniqueDiffers, true);
});

test("idFromName gives the id the sidecar gives the name, and the object knows its name", async () => {
  const ids = await json(await fetch(`${s.url}/ids`));
  const info = await json(await fetch(`${s.url}/objects/Store/name/x/info`));
  assert.equal(info.id, ids.a);
  assert.equal(info.name, "x");
  assert.equal(info.greeting, "hello from vars");
  const byId = await json(await fetch(`${s.url}/objects/Store/id/${ids.a}/info`));
  assert.equal(byId.id, ids.a);
});

test("blockConcurrencyWhile in the constructor finishes before the first event", async () => {
  assert.deepEqual(await text(await fetch(`${s.url}/objects/Store/name/boot/ready`)), { status: 200, body: "yes 1" });
});

test("KV get, put, delete, batch forms and deleteAll", async () => {
  assert.equal((await post("kv", "put", { key: "a", value: { n: 1 } })).status, 200);
  assert.deepEqual(await json(await post("kv", "get", { key: "a" })), { value: { n: 1 } });
  await post("kv", "put-many", { entries: { b: 2, c: "three" } });
  assert.deepEqual(await json(await post("kv", "get-many", { keys: ["c", "missing", "a"] })), { c: "three", a: { n: 1 } });
  assert.deepEqual(await json(await post("kv", "delete", { key: "a" })), { deleted: true });
  assert.deepEqual(await json(await post("kv", "delete", { key: "a" })), { deleted: false });
  assert.deepEqual(await json(await post("kv", "delete", { key: ["b", "c", "nope"] })), { deleted: 2 });
  await post("kv", "put", { key: "d", value: 4 });
  await post("kv", "delete-all");
  assert.deepEqual(await json(await post("kv", "get", { key: "d" })), { value: null });
  assert.deepEqual(await json(await post("kv", "get", { key: "boots" })), { value: null });
});

test("list honours start, startAfter, end, prefix, reverse and limit, from the cache and from the sidecar", async () => {
  await post("list", "put-many", { entries: { "a:1": 1, "a:2": 2, "a:3": 3, "b:1": 4, c: 5 } });
  const keys = async (opts) => (await json(await post("list", "list", opts))).map(([k]) => k);
  const check = async () => {
    assert.deepEqual(await keys({ prefix: "a:" }), ["a:1", "a:2", "a:3"]);
    assert.deepEqual(await keys({ start: "a:2", end: "b:2" }), ["a:2", "a:3", "b:1"]);
    assert.deepEqual(await keys({ startAfter: "a:2", limit: 2 }), ["a:3", "b:1"]);
    assert.deepEqual(await keys({ reverse: true, limit: 3 }), ["zz", "c", "boots"]);
    assert.deepEqual(await keys({ prefix: "a:", reverse: true }), ["a:3", "a:2", "a:1"]);
    const all = await json(await post("list", "list", {}));
    assert.deepEqual(all.find(([k]) => k === "c"), ["c", 5]);
    assert.equal(all.find(([k]) => k === "zz")[1].length, 70_000);
  };
  // A value over 16 KiB is written with a call; the state (now over 64 KiB) is not sent eagerly.
  await post("list", "put", { key: "zz", value: "z".repeat(70_000) });
  await check();
  // A rollback changes the incarnation: the new instance has no eager state and lists through the sidecar.
  await post("list", "put-then-throw", { key: "c", value: 0 });
  await check();
});

test("a throw after a write rolls the write back (atomic turns)", async () => {
  await post("atomic", "put", { key: "k", value: "before" });
  const res = await post("atomic", "put-then-throw", { key: "k", value: "after" });
  assert.equal(res.status, 500);
  const err = await res.json();
  assert.equal(err.error.code, "app_error");
  assert.match(err.error.message, /boom after a write/);
  assert.deepEqual(await json(await post("atomic", "get", { key: "k" })), { value: "before" });
});

test("structured-clone values round-trip through storage, across a new instance", async () => {
  assert.equal((await post("clone", "clone")).status, 200);
  // A rollback changes the incarnation: the next event builds a new instance and reads from the sidecar.
  await post("clone", "put-then-throw", { key: "x", value: 1 });
  const checks = await json(await post("clone", "clone-check"));
  assert.deepEqual(checks, { map: true, set: true, date: true, big: true, bytes: true, nan: true, undef: true });
});

test("sql.exec cursors: toArray, raw, one, columnNames, rowsRead, rowsWritten, BLOBs", async () => {
  const r = await json(await post("sql", "sql"));
  assert.deepEqual(r.rows, [
    { id: 1, name: "a", data: [7, 8] },
    { id: 2, name: "b", data: null },
  ]);
  assert.deepEqual(r.raw, [["a"], ["b"]]);
  assert.deepEqual(r.one, { n: 2 });
  assert.match(r.oneError, /exactly one/);
  assert.deepEqual(r.columns, ["id", "name", "data"]);
  assert.equal(r.written, 2);
  assert.ok(r.read >= 2, `rowsRead ${r.read}`);
});

test("transactionSync that throws rolls the whole turn back", async () => {
  await post("txn", "sql");
  const res = await post("txn", "txn-throw");
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "caught: abort the transaction");
  assert.deepEqual(await json(await post("txn", "sql-count")), { n: 2 });
});

test("alarms: setAlarm, getAlarm, deleteAlarm and the alarm handler with retryCount", async () => {
  const set = await json(await post("alarm", "alarm-set", { in: 60_000 }));
  assert.equal(typeof set.alarm, "number");
  assert.deepEqual((await json(await post("alarm", "alarm-get"))).alarm, set.alarm);
  assert.deepEqual(await json(await post("alarm", "alarm-delete")), { alarm: null });
  assert.equal((await json(await post("alarm", "alarm-get"))).alarm, null);

  await post("alarm", "put", { key: "fail-first-alarm", value: true });
  await post("alarm", "alarm-set", { in: 0 });
  let got;
  for (let i = 0; i < 100; i++) {
    got = await json(await post("alarm", "alarm-get"));
    if (got.fired.length > 0) break;
    await sleep(100);
  }
  // The first run threw (rolled back: its write of `fired` is gone); the retry succeeded.
  assert.deepEqual(got.fired, [{ retryCount: 1, isRetry: true }]);
  assert.equal(got.alarm, null);
});

test("JS RPC on stubs: results, thrown errors (rolled back), and cycles", async () => {
  const r = await json(await fetch(`${s.url}/rpc`));
  assert.deepEqual(r, { first: 5, second: 7, error: "RangeError: no good", third: 7 });
  const other = await json(await post("caller", "call-other", { name: "callee", by: 3 }));
  assert.deepEqual(other, { n: 3 });
  const cycle = await json(await post("cyc", "call-self"));
  assert.deepEqual(cycle, { status: 508, code: "call_cycle" });
  const fetchCycle = await json(await post("cyc", "fetch-self"));
  assert.deepEqual(fetchCycle, { status: 508, code: "call_cycle" });
});

test("stub.fetch from the front forwards method, path and body", async () => {
  const put = await fetch(`${s.url}/store/fwd/put`, { method: "POST", body: JSON.stringify({ key: "k", value: 42 }) });
  assert.deepEqual(await text(put), { status: 200, body: "ok" });
  assert.deepEqual(await json(await post("fwd", "get", { key: "k" })), { value: 42 });
});

test("the older style class with constructor(state, env) works", async () => {
  assert.deepEqual(await text(await fetch(`${s.url}/objects/OldStyle/name/o/`)), { status: 200, body: "old 1" });
  assert.deepEqual(await text(await fetch(`${s.url}/objects/OldStyle/name/o/`)), { status: 200, body: "old 2" });
});

test("classic WebSockets: accept() and addEventListener while the object stays in memory", async () => {
  const a = openSocket(`${s.ws}/objects/Classic/name/room/`);
  await a.opened;
  const b = openSocket(`${s.ws}/objects/Classic/name/room/`);
  await b.opened;
  a.ws.send("one");
  assert.deepEqual(await a.take(1), ["echo one"]);
  assert.deepEqual(await b.take(1), ["echo one"]);
  b.ws.close(1000, "done");
  await b.closed;
  a.ws.send("two");
  assert.deepEqual(await a.take(1), ["echo two"]);
  a.ws.close(1000, "done");
  await a.closed;
  const refused = await fetch(`${s.url}/objects/Classic/name/room/`);
  assert.equal(refused.status, 426);
});
