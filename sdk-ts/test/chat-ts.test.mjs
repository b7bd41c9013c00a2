// examples/chat-ts (the TypeScript twin of examples/chat) on a real sidecar: the same behaviour
// the Rust chat's tests check (e2e/tests/protocol2.rs), and the same page.

import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { REPO_DIR, openSocket, stack, text } from "./helpers.mjs";

const EXAMPLE = path.join(REPO_DIR, "examples", "chat-ts");
let s;

before(async () => {
  s = await stack({ classes: ["ChatRoom"], runnerArgs: ["--dir", EXAMPLE], sidecarArgs: ["--idle-timeout", "500ms"] });
});

after(async () => {
  await s?.stop();
});

const ws = (room, name) => `${s.ws}/objects/ChatRoom/name/${room}/ws?name=${encodeURIComponent(name)}`;
const parsed = async (sock, n) => (await sock.take(n)).map((m) => JSON.parse(m));

test("the front door serves the same page as the Rust chat", async () => {
  const page = await text(await fetch(`${s.url}/`));
  assert.equal(page.status, 200);
  assert.equal(page.body, fs.readFileSync(path.join(REPO_DIR, "examples", "chat", "src", "index.html"), "utf8"));
  const missing = await fetch(`${s.url}/nope`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not_found");
});

test("messages are numbered, broadcast, and a rolled-back message leaves nothing", async () => {
  const alice = openSocket(ws("p2", "alice"));
  await alice.opened;
  const bob = openSocket(ws("p2", "bob"));
  await bob.opened;
  alice.ws.send("!rollback this");
  alice.ws.send("hello");
  for (const sock of [alice, bob]) {
    const [m] = await parsed(sock, 1);
    assert.deepEqual([m.seq, m.text, m.name], [1, "hello", "alice"]);
    assert.equal(typeof m.at_ms, "number");
  }
  const history = await (await fetch(`${s.url}/objects/ChatRoom/name/p2/messages`)).json();
  assert.deepEqual(history.map((m) => m.text), ["hello"]);
  alice.ws.close(1000, "");
  bob.ws.close(1000, "");
  await Promise.all([alice.closed, bob.closed]);
});

test("a socket that joins gets the history first; ping is answered pong; bad input gets errors", async () => {
  const a = openSocket(ws("hist", "ann"));
  await a.opened;
  for (const t of ["one", "  two  ", "", "three"]) a.ws.send(t);
  assert.deepEqual((await parsed(a, 3)).map((m) => [m.seq, m.text]), [[1, "one"], [2, "two"], [3, "three"]]);
  const b = openSocket(ws("hist", "ben"));
  await b.opened;
  assert.deepEqual((await parsed(b, 3)).map((m) => m.text), ["one", "two", "three"]);
  b.ws.send("ping");
  assert.deepEqual(await b.take(1), ["pong"]);
  b.ws.send(new Uint8Array([1]));
  assert.deepEqual(await parsed(b, 1), [{ error: "send text" }]);
  b.ws.send("x".repeat(2001));
  assert.deepEqual(await parsed(b, 1), [{ error: "at most 2000 characters" }]);
  const limited = await (await fetch(`${s.url}/objects/ChatRoom/name/hist/messages?limit=2`)).json();
  assert.deepEqual(limited.map((m) => m.text), ["two", "three"]);
  a.ws.close(1000, "");
  b.ws.close(1000, "");
  await Promise.all([a.closed, b.closed]);
});

test("names are read from the attachment after the room hibernated", async () => {
  const a = openSocket(ws("sleepy", "zoe"));
  await a.opened;
  await new Promise((r) => setTimeout(r, 1500));
  a.ws.send("after a nap");
  const [m] = await parsed(a, 1);
  assert.deepEqual([m.name, m.text], ["zoe", "after a nap"]);
  a.ws.close(1000, "");
  await a.closed;
});

test("a bad name, a socket elsewhere and /ws without an upgrade are refused", async () => {
  const get = (p, headers = {}) =>
    new Promise((resolve, reject) => {
      const req = http.get(`${s.url}/objects/ChatRoom/name/r${p}`, { headers });
      req.on("response", (r) => {
        let body = "";
        r.on("data", (c) => (body += c));
        r.on("end", () => resolve({ status: r.statusCode, body: JSON.parse(body) }));
      });
      req.on("upgrade", () => reject(new Error("upgraded")));
      req.on("error", reject);
    });
  const up = { upgrade: "websocket", connection: "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" };
  const bad = await get(`/ws?name=${"n".repeat(33)}`, up);
  assert.deepEqual([bad.status, bad.body.error.code], [400, "invalid_name"]);
  const elsewhere = await get("/other", up);
  assert.deepEqual([elsewhere.status, elsewhere.body.error.code], [404, "not_found"]);
  const plain = await get("/ws");
  assert.deepEqual([plain.status, plain.body.error.code], [426, "upgrade_required"]);
});
