// The same requests and WebSocket messages against the workerd peer's worker.js on Stead and on
// workerd (Cloudflare's open-source runtime), answers compared. workerd comes from
// scripts/peer-workerd.sh (installed into ~/.cache/stead-peer-workerd) or $STEAD_WORKERD_BIN;
// without it this file is skipped.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { freePort, openSocket, peerFiles, project, stack, start, stop, text, waitFor } from "./helpers.mjs";

const peer = peerFiles();
const workerdBin = [
  process.env.STEAD_WORKERD_BIN,
  path.join(process.env.STEAD_PEER_DIR || path.join(os.homedir(), ".cache", "stead-peer-workerd"), "node_modules", ".bin", "workerd"),
].find((p) => p && fs.existsSync(p));
const skip = !peer ? "workerd peer files not found" : !workerdBin ? "workerd not installed (run scripts/peer-workerd.sh install once, or set STEAD_WORKERD_BIN)" : false;
// CI installs workerd and the peer files are beside the checkout: there a skip is a failure.
if (skip && process.env.STEAD_REQUIRE_PEERS === "1") throw new Error(`the workerd comparison cannot run: ${skip}`);

let stead;
let workerd;
let wdir;
let pdir;
let wurl;

before(async () => {
  if (skip) return;
  wdir = fs.mkdtempSync(path.join(os.tmpdir(), "stead-ts-workerd-"));
  const port = await freePort();
  const capnp = fs.readFileSync(path.join(peer, "config.capnp"), "utf8").replace("127.0.0.1:8787", `127.0.0.1:${port}`);
  fs.writeFileSync(path.join(wdir, "config.capnp"), capnp);
  fs.copyFileSync(path.join(peer, "worker.js"), path.join(wdir, "worker.js"));
  fs.mkdirSync(path.join(wdir, "do-data"));
  workerd = start(workerdBin, ["serve", "config.capnp", "--directory-path", `do-storage=${path.join(wdir, "do-data")}`], { cwd: wdir });
  wurl = `http://127.0.0.1:${port}`;
  await waitFor(`${wurl}/nope`, 404);
  pdir = project({
    "wrangler.toml": `main = ${JSON.stringify(path.join(peer, "worker.js"))}
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"
`,
  });
  stead = await stack({ classes: ["Counter", "Room"], runnerArgs: ["--config", path.join(pdir, "wrangler.toml")] });
});

after(async () => {
  await Promise.all([stead?.stop(), stop(workerd)]);
  for (const d of [wdir, pdir]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

test("HTTP requests get the same answers on Stead and on workerd", { skip }, async () => {
  const paths = [
    "/counter/a", "/counter/a", "/counter/b", "/counter/a/get", "/counter/a",
    "/counter/s/sql", "/counter/s/sql", "/counter/s/sql", "/counter/s/get",
    "/room/empty", "/nope", "/counter",
  ];
  for (const p of paths) {
    const [a, b] = await Promise.all([fetch(stead.url + p).then(text), fetch(wurl + p).then(text)]);
    assert.deepEqual(a, b, `GET ${p}: Stead ${JSON.stringify(a)}, workerd ${JSON.stringify(b)}`);
  }
});

/** Runs the same chat on one server: returns every message each socket got, and the room's state. */
async function chat(url, route) {
  const names = ["ann", "bob", "cat"];
  const socks = [];
  for (const n of names) {
    const s = openSocket(`${route}?name=${n}`);
    await s.opened;
    socks.push(s);
  }
  const got = [[], [], []];
  const script = [[0, "hello"], [1, "hi ann"], [2, "hey"], [0, "bye"]];
  for (const [who, msg] of script) {
    socks[who].ws.send(msg);
    for (let i = 0; i < socks.length; i++) got[i].push(...(await socks[i].take(1)));
  }
  socks[2].ws.close(1000, "done");
  await socks[2].closed;
  const room = `${url}/room/cmp`;
  let state;
  for (let i = 0; i < 50; i++) {
    state = await (await fetch(room)).json();
    if (state.sockets === 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const s of socks.slice(0, 2)) {
    s.ws.close(1000, "done");
    await s.closed;
  }
  return { got, state };
}

test("the same WebSocket chat gives the same messages on Stead and on workerd", { skip }, async () => {
  // The same URL on both: the Worker's front door passes the upgrade to the Room object.
  const onStead = await chat(stead.url, `${stead.ws}/room/cmp`);
  const onWorkerd = await chat(wurl, `${wurl.replace("http:", "ws:")}/room/cmp`);
  assert.deepEqual(onStead, onWorkerd);
  assert.deepEqual(onStead.got[0], ["1 ann: hello", "2 bob: hi ann", "3 cat: hey", "4 ann: bye"]);
  assert.deepEqual(onStead.state, { sockets: 2, msgs: 4 });
});
