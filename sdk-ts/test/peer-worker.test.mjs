// The workerd peer's worker.js (../shared/peers/workerd/) runs unchanged on Stead.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { RUNNER, openSocket, peerFiles, project, sleep, stack, start, stop, text } from "./helpers.mjs";

const peer = peerFiles();
let s;
let dir;

before(async () => {
  if (!peer) return;
  dir = project({
    "wrangler.toml": `name = "peer"
main = ${JSON.stringify(path.join(peer, "worker.js"))}
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"
`,
  });
  s = await stack({ classes: ["Counter", "Room"], runnerArgs: ["--config", path.join(dir, "wrangler.toml")] });
});

after(async () => {
  await s?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("the peer's counter counts through the front door with KV and with SQL", { skip: !peer && "workerd peer files not found" }, async () => {
  const got = [];
  for (const p of ["/counter/a", "/counter/a", "/counter/a", "/counter/a/get", "/counter/b/sql", "/counter/b/sql", "/counter/b"]) {
    got.push((await text(await fetch(s.url + p))).body);
  }
  assert.deepEqual(got, ["1", "2", "3", "3", "1", "2", "1"]);
  const missing = await text(await fetch(`${s.url}/nope`));
  assert.deepEqual(missing, { status: 404, body: "not found" });
});

test("the peer's counter reached by object route is the same object as through the front", { skip: !peer && "workerd peer files not found" }, async () => {
  await fetch(`${s.url}/counter/same`);
  const direct = await text(await fetch(`${s.url}/objects/Counter/name/same/get`));
  assert.deepEqual(direct, { status: 200, body: "1" });
});

test("the peer's chat room broadcasts numbered messages with each sender's name and counts them", { skip: !peer && "workerd peer files not found" }, async () => {
  // Through the Worker's front door, as on workerd: GET /room/lobby with Upgrade: websocket.
  const alice = openSocket(`${s.ws}/room/lobby?name=alice`);
  await alice.opened;
  const bob = openSocket(`${s.ws}/room/lobby?name=bob`);
  await bob.opened;
  alice.ws.send("hi");
  assert.deepEqual(await alice.take(1), ["1 alice: hi"]);
  assert.deepEqual(await bob.take(1), ["1 alice: hi"]);
  bob.ws.send("hello");
  assert.deepEqual(await alice.take(1), ["2 bob: hello"]);
  assert.deepEqual(await bob.take(1), ["2 bob: hello"]);
  const state = await (await fetch(`${s.url}/room/lobby`)).json();
  assert.deepEqual(state, { sockets: 2, msgs: 2 });
  alice.ws.close(1000, "bye");
  assert.equal((await alice.closed).code, 1000);
  bob.ws.close(1000, "bye");
  await bob.closed;
  const after = await (await fetch(`${s.url}/room/lobby`)).json();
  assert.deepEqual(after, { sockets: 0, msgs: 2 });
});

test("a WebSocket through the front door and one on the object route meet in the same room", { skip: !peer && "workerd peer files not found" }, async () => {
  const front = openSocket(`${s.ws}/room/both?name=front`);
  await front.opened;
  const direct = openSocket(`${s.ws}/objects/Room/name/both/?name=direct`);
  await direct.opened;
  direct.ws.send("hi");
  assert.deepEqual(await front.take(1), ["1 direct: hi"]);
  assert.deepEqual(await direct.take(1), ["1 direct: hi"]);
  for (const c of [front, direct]) {
    c.ws.close(1000, "bye");
    await c.closed;
  }
});

test("the runner exits 0 on SIGTERM and the peer's counter keeps its count across its restart", { skip: !peer && "workerd peer files not found" }, async () => {
  for (let i = 0; i < 3; i++) await fetch(`${s.url}/counter/durable`);
  await stop(s.runner);
  assert.equal(s.runner.exitCode, 0, `SIGTERM ends the runner with 0:\n${s.runner.output}`);
  const runnerEnv = { ...process.env, STEAD_APP_ADDR: `unix:${path.join(s.dir, "app.sock")}`, STEAD_API_URL: s.apiUrl };
  s.runner = start(process.execPath, [RUNNER, "serve", "--config", path.join(dir, "wrangler.toml")], { env: runnerEnv });
  for (let i = 0; i < 100 && !s.runner.output.includes("listening on"); i++) await sleep(100);
  const res = await text(await fetch(`${s.url}/counter/durable`));
  assert.deepEqual(res, { status: 200, body: "4" });
});
