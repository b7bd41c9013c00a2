// Socket operations travel with the answer (`stead-carry: websockets`): a room's turns make no
// websockets/* call of their own, and what they send still leaves only if the turn commits, in
// the order it was sent.

import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import fs from "node:fs";
import { after, before, test } from "node:test";
import { openSocket, project, stack } from "./helpers.mjs";

const WORKER = `
import { DurableObject } from "cloudflare:workers";
export class Room extends DurableObject {
  async fetch(req) {
    const name = new URL(req.url).searchParams.get("name");
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    server.serializeAttachment({ name });
    this.ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
    server.send("welcome " + name);
    return new Response(null, { status: 101, webSocket: client });
  }
  async webSocketMessage(ws, msg) {
    const { name } = ws.deserializeAttachment();
    for (const peer of this.ctx.getWebSockets()) peer.send(name + ": " + msg);
    if (msg === "fail") throw new Error("this turn rolls back");
    if (msg === "kick") ws.close(4000, "kicked");
  }
}
export default { fetch() { return new Response("not found", { status: 404 }); } };
`;

/** The app API between the runner and the sidecar, counted by path. */
const calls = new Map();
let apiTarget;
const tap = http.createServer((req, res) => {
  calls.set(req.url, (calls.get(req.url) ?? 0) + 1);
  const up = http.request(`${apiTarget}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on("error", (e) => res.destroy(e));
  req.pipe(up);
});

let s;
let dir;

before(async () => {
  await new Promise((r) => tap.listen(0, "127.0.0.1", r));
  dir = project({ "worker.js": WORKER });
  s = await stack({
    classes: ["Room"],
    runnerArgs: ["--main", path.join(dir, "worker.js"), "--binding", "ROOM=Room"],
    env: { STEAD_API_URL: `http://127.0.0.1:${tap.address().port}` },
  });
  apiTarget = s.apiUrl;
});

after(async () => {
  await s?.stop();
  tap.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const room = (name) => `${s.ws}/objects/Room/name/r/?name=${name}`;

test("a room's sends, attachments, auto-response and closes travel with its answers, gated by the commit", async () => {
  const ann = openSocket(room("ann"));
  await ann.opened;
  assert.deepEqual(await ann.take(1), ["welcome ann"]);
  const bob = openSocket(room("bob"));
  await bob.opened;
  assert.deepEqual(await bob.take(1), ["welcome bob"]);

  ann.ws.send("hi");
  assert.deepEqual(await ann.take(1), ["ann: hi"]);
  assert.deepEqual(await bob.take(1), ["ann: hi"]);

  // A turn that throws after sending sends nothing; the next one's messages come in order.
  ann.ws.send("fail");
  ann.ws.send("after");
  assert.deepEqual(await bob.take(1), ["ann: after"]);
  assert.deepEqual(await ann.take(1), ["ann: after"]);

  bob.ws.send("ping");
  assert.deepEqual(await bob.take(1), ["pong"]);

  bob.ws.send("kick");
  assert.deepEqual(await ann.take(1), ["bob: kick"]);
  assert.deepEqual(await bob.take(1), ["bob: kick"]);
  assert.equal((await bob.closed).code, 4000);

  const carried = ["send", "broadcast", "attachment", "auto-response", "close"].map((op) => `/v1/websockets/${op}`);
  const made = [...calls].filter(([p]) => carried.includes(p));
  assert.deepEqual(made, [], `socket operations made as calls: ${JSON.stringify([...calls])}`);
  // The socket list is read once per incarnation, by getWebSockets(): two here, as the turn that
  // threw started a new one.
  assert.ok((calls.get("/v1/websockets/list") ?? 0) <= 2, JSON.stringify([...calls]));
  ann.ws.close();
});
