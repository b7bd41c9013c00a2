// The hibernation WebSocket API: sockets held by the sidecar outlive the object's instance.

import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { SDK_DIR, openSocket, sleep, stack } from "./helpers.mjs";

const MAIN = path.join(SDK_DIR, "test", "fixtures", "hibernate", "worker.js");
let s;

before(async () => {
  s = await stack({
    classes: ["Hub", "Echo"],
    runnerArgs: ["--main", MAIN, "--binding", "HUB=Hub", "--binding", "ECHO=Echo"],
    sidecarArgs: ["--idle-timeout", "300ms"],
  });
});

after(async () => {
  await s?.stop();
});

const hub = (q) => `${s.ws}/objects/Hub/name/h/?${q}`;
const info = async () => (await fetch(`${s.url}/objects/Hub/name/h/`)).json();

test("a refused upgrade gets the object's status and body", async () => {
  const res = await new Promise((resolve, reject) => {
    const req = http.get(`${s.url}/objects/Hub/name/h/?user=nobody`, {
      headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" },
    });
    req.on("response", (r) => {
      let body = "";
      r.on("data", (c) => (body += c));
      r.on("end", () => resolve({ status: r.statusCode, body }));
    });
    req.on("upgrade", () => reject(new Error("the upgrade was accepted")));
    req.on("error", reject);
  });
  assert.deepEqual(res, { status: 403, body: "go away" });
});

test("tags, attachments, auto-response and messages work across the object's hibernation", async () => {
  const ann = openSocket(hub("user=ann&team=red"));
  await ann.opened;
  assert.deepEqual(await ann.take(1), ["welcome ann"]);
  const bob = openSocket(hub("user=bob&team=blue"));
  await bob.opened;
  assert.deepEqual(await bob.take(1), ["welcome bob"]);
  const cat = openSocket(hub("user=cat&team=red"));
  await cat.opened;
  assert.deepEqual(await cat.take(1), ["welcome cat"]);

  const before = await info();
  assert.equal(before.sockets, 3);
  assert.equal(before.red, 2);
  assert.deepEqual(before.users, ["ann", "bob", "cat"]);
  assert.deepEqual(before.tags, [["blue", "user:bob"], ["red", "user:ann"], ["red", "user:cat"]]);

  ann.ws.send("who");
  const [who] = await ann.take(1);
  assert.match(who, new RegExp(`^ann joined 1000 on ${before.instance}$`));

  // Let the object hibernate: its database closes after the idle timeout, the sockets stay.
  await sleep(1200);
  bob.ws.send("ping");
  assert.deepEqual(await bob.take(1), ["pong"]);
  bob.ws.send("who");
  const [who2] = await bob.take(1);
  assert.match(who2, /^bob joined 1000 on /);
  assert.notEqual(who2.split(" on ")[1], before.instance, "a new instance after hibernation");

  cat.ws.send("team red hello");
  assert.deepEqual(await ann.take(1), ["cat to red: hello"]);
  assert.deepEqual(await cat.take(1), ["cat to red: hello"]);
  bob.ws.send(new Uint8Array([1, 2, 3]));
  const [bin] = await bob.take(1);
  assert.deepEqual([...new Uint8Array(bin)], [3, 2, 1]);

  bob.ws.send("bye");
  const closed = await bob.closed;
  assert.equal(closed.code, 4000);
  assert.equal(closed.reason, "asked to leave");
  ann.ws.close(1000, "going away");
  await ann.closed;
  cat.ws.close(3001, "cat leaves");
  await cat.closed;
  let closes = [];
  for (let i = 0; i < 50 && closes.length < 3; i++) {
    closes = await (await fetch(`${s.url}/closes`)).json();
    if (closes.length < 3) await sleep(100);
  }
  const byUser = Object.fromEntries(closes.map((c) => [c.user, c]));
  assert.deepEqual(byUser.ann, { user: "ann", code: 1000, reason: "going away", wasClean: true });
  assert.deepEqual(byUser.cat, { user: "cat", code: 3001, reason: "cat leaves", wasClean: true });
  assert.equal(byUser.bob.code, 4000);
  assert.equal((await info()).sockets, 0);
});

test("a classic socket whose instance was dropped by hibernation is closed with 1012", async () => {
  const e = openSocket(`${s.ws}/objects/Echo/name/e/`);
  await e.opened;
  e.ws.send("a");
  assert.deepEqual(await e.take(1), ["echo a"]);
  await sleep(1200);
  e.ws.send("b");
  const closed = await e.closed;
  assert.equal(closed.code, 1012);
  assert.deepEqual(e.messages, []);
});
