// What an object does between events (timers, promises it did not await), and the client's
// address as CF-Connecting-IP, on a real sidecar.

import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { openSocket, project, sleep, stack, text } from "./helpers.mjs";

const WORKER = `
import { DurableObject } from "cloudflare:workers";

const later = (ms) => new Promise((r) => setTimeout(r, ms));

export class Ticker extends DurableObject {
  async fetch(req) {
    const url = new URL(req.url);
    const s = this.ctx.storage;
    switch (url.pathname) {
      case "/timer":
        // Runs after this answer has left: a turn of its own.
        setTimeout(async () => {
          const n = (await s.get("n")) ?? 0;
          await s.put("n", n + 1);
        }, 20);
        return new Response("started");
      case "/unawaited":
        (async () => {
          await later(20);
          await s.put("late", "written");
          await s.setAlarm(Date.now() + 3_600_000);
        })();
        return new Response("started");
      case "/txn-later":
        // Concurrent read-modify-writes, each whole in one turn: none is lost.
        for (let i = 0; i < 5; i++) {
          setTimeout(() => s.transaction(async (txn) => {
            const n = (await txn.get("t")) ?? 0;
            await later(5);
            await txn.put("t", n + 1);
          }), 10);
        }
        return new Response("started");
      case "/block-later":
        // blockConcurrencyWhile between events: its storage calls need turns of their own, and
        // the events that arrive meanwhile wait for it.
        setTimeout(() => this.ctx.blockConcurrencyWhile(async () => {
          await s.put("blocked", "begun");
          await later(200);
          await s.put("blocked", "done");
        }), 10);
        return new Response("started");
      case "/call-later":
        setTimeout(() => this.env.TICKER.getByName("callee").bump(url.searchParams.get("by")), 20);
        return new Response("started");
      case "/sql-later":
        setTimeout(async () => {
          let message = "no error";
          try {
            this.ctx.storage.sql.exec("SELECT 1");
          } catch (e) {
            message = e.message;
          }
          await s.put("sql", message);
        }, 20);
        return new Response("started");
      case "/read":
        return Response.json({
          n: (await s.get("n")) ?? 0,
          late: (await s.get("late")) ?? null,
          alarm: (await s.getAlarm()) !== null,
          bumped: (await s.get("bumped")) ?? 0,
          sql: (await s.get("sql")) ?? null,
          t: (await s.get("t")) ?? 0,
          blocked: (await s.get("blocked")) ?? null,
        });
      case "/ip":
      case "/forward-ip":
        return new Response(req.headers.get("cf-connecting-ip") ?? "none");
      default:
        if (req.headers.get("Upgrade") === "websocket") {
          const [client, server] = Object.values(new WebSocketPair());
          this.ctx.acceptWebSocket(server);
          return new Response(null, { status: 101, webSocket: client });
        }
        return new Response("not found", { status: 404 });
    }
  }
  async bump(by) {
    await this.ctx.storage.put("bumped", ((await this.ctx.storage.get("bumped")) ?? 0) + Number(by));
    return true;
  }
  async alarm() {}
  async webSocketMessage(ws, msg) {
    ws.send("now " + msg);
    setTimeout(() => ws.send("later " + msg), 20);
  }
}

export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === "/ip") return new Response(req.headers.get("cf-connecting-ip") ?? "none");
    if (url.pathname === "/forward-ip") return env.TICKER.getByName("ip").fetch(req);
    if (url.pathname === "/ws-in-front") {
      // (server.accept() here throws already: only an object can accept.)
      const [client] = Object.values(new WebSocketPair());
      return new Response(null, { status: 101, webSocket: client });
    }
    return new Response("not found", { status: 404 });
  },
};
`;

let s;
let dir;

before(async () => {
  dir = project({
    "wrangler.toml": `main = "worker.js"
[[durable_objects.bindings]]
name = "TICKER"
class_name = "Ticker"
`,
    "worker.js": WORKER,
  });
  s = await stack({ classes: ["Ticker"], runnerArgs: ["--config", path.join(dir, "wrangler.toml")] });
});

after(async () => {
  await s?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** Reads `/read` of object `name` until `done(state)`, at most ~10 s; returns the last state. */
async function until(name, done) {
  let state;
  for (let i = 0; i < 100; i++) {
    state = await (await fetch(`${s.url}/objects/Ticker/name/${name}/read`)).json();
    if (done(state)) return state;
    await sleep(100);
  }
  return state;
}

test("a timer's storage writes after the event answered are seen by later requests", async () => {
  for (let i = 1; i <= 3; i++) {
    assert.deepEqual(await text(await fetch(`${s.url}/objects/Ticker/name/t/timer`)), { status: 200, body: "started" });
    const state = await until("t", (st) => st.n === i);
    assert.equal(state.n, i, `after ${i} timers: ${JSON.stringify(state)}`);
  }
  // Durable: the runner's memory is not where the count lives.
  const logs = s.runner.output;
  assert.doesNotMatch(logs, /outside an event|comes after its event/, logs);
});

test("a promise the handler did not await writes storage and sets an alarm in turns of its own", async () => {
  await fetch(`${s.url}/objects/Ticker/name/u/unawaited`);
  const state = await until("u", (st) => st.late === "written" && st.alarm);
  assert.equal(state.late, "written");
  assert.equal(state.alarm, true);
});

test("transaction() between events runs whole in one turn, so concurrent timers lose no update", async () => {
  await fetch(`${s.url}/objects/Ticker/name/x/txn-later`);
  const state = await until("x", (st) => st.t === 5);
  assert.equal(state.t, 5);
});

test("blockConcurrencyWhile between events holds later events until it is done, and its storage works", async () => {
  await fetch(`${s.url}/objects/Ticker/name/b/block-later`);
  await sleep(100);
  // Arrives while the block runs: answered only after it, so it sees its last write.
  const state = await (await fetch(`${s.url}/objects/Ticker/name/b/read`)).json();
  assert.equal(state.blocked, "done");
});

test("a timer's call to another object runs in that object's own turn", async () => {
  await fetch(`${s.url}/objects/Ticker/name/caller/call-later?by=5`);
  const state = await until("callee", (st) => st.bumped === 5);
  assert.equal(state.bumped, 5);
});

test("synchronous SQL between events throws and says what to use instead", async () => {
  await fetch(`${s.url}/objects/Ticker/name/q/sql-later`);
  const state = await until("q", (st) => st.sql !== null);
  assert.match(state.sql, /between events .* asynchronous ctx\.storage/);
});

test("ws.send from a timer after the message event reaches the client", async () => {
  const c = openSocket(`${s.ws}/objects/Ticker/name/w/ws`);
  await c.opened;
  c.ws.send("a");
  assert.deepEqual(await c.take(2), ["now a", "later a"]);
  c.ws.close(1000, "bye");
  await c.closed;
});

/** GET `path` from the loopback address `from`, with extra `headers`. */
function getFrom(from, path, headers = {}) {
  const u = new URL(s.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path, localAddress: from, headers }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("CF-Connecting-IP is the client's address on the front door and on object routes, and cannot be forged", async () => {
  const forged = { "cf-connecting-ip": "203.0.113.9", "stead-client-addr": "203.0.113.10" };
  assert.deepEqual(await getFrom("127.0.0.3", "/ip", forged), { status: 200, body: "127.0.0.3" });
  assert.deepEqual(await getFrom("127.0.0.4", "/objects/Ticker/name/ip/ip", forged), { status: 200, body: "127.0.0.4" });
  // The front passes the request on to an object: the object sees the header the front saw.
  assert.deepEqual(await getFrom("127.0.0.5", "/forward-ip", forged), { status: 200, body: "127.0.0.5" });
});

test("a front that accepts a WebSocket itself gets 501 websocket_in_front", async () => {
  const res = await getFrom("127.0.0.1", "/ws-in-front", {
    connection: "Upgrade",
    upgrade: "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  });
  assert.equal(res.status, 501, res.body);
  assert.equal(JSON.parse(res.body).error.code, "websocket_in_front");
});
