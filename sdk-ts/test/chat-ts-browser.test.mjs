// examples/chat-ts in a real browser: headless Chromium (Debian's `chromium`, or $CHROMIUM)
// driven over the DevTools protocol. Two pages join the same room; what one sends, the other
// shows; a screenshot of the second lands in target/chat-ts-browser.png. Skipped without Chromium.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { REPO_DIR, sleep, stack, start, stop } from "./helpers.mjs";

const chromium = [process.env.CHROMIUM, "/usr/bin/chromium"].find((p) => p && fs.existsSync(p));
const skip = chromium ? false : "chromium not installed";
// CI installs Chromium: there a skip is a failure.
if (skip && process.env.STEAD_REQUIRE_PEERS === "1") throw new Error("the browser test cannot run: chromium not installed");
let s;
let browser;
let profile;

/** A DevTools connection; page commands go through flattened sessions. */
class Cdp {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.next = 0;
    this.pending = new Map();
    this.ws.addEventListener("message", (e) => {
      const msg = JSON.parse(e.data);
      const p = msg.id !== undefined && this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      }
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.addEventListener("open", resolve);
      this.ws.addEventListener("error", () => reject(new Error("cannot reach DevTools")));
    });
  }
  send(method, params = {}, sessionId) {
    const id = ++this.next;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }
  async page(url) {
    const { targetId } = await this.send("Target.createTarget", { url });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    return {
      eval: async (expression) => {
        const r = await this.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true }, sessionId);
        if (r.exceptionDetails) throw new Error(`${expression}: ${r.exceptionDetails.text}`);
        return r.result.value;
      },
      screenshot: async () => Buffer.from((await this.send("Page.captureScreenshot", { format: "png" }, sessionId)).data, "base64"),
    };
  }
}

async function until(what, fn) {
  for (let i = 0; i < 100; i++) {
    const v = await fn();
    if (v) return v;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

before(async () => {
  if (skip) return;
  s = await stack({ classes: ["ChatRoom"], runnerArgs: ["--dir", path.join(REPO_DIR, "examples", "chat-ts")] });
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "stead-ts-chromium-"));
  browser = start(chromium, [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
    "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=900,600", "about:blank",
  ]);
  await until("DevTools", async () => /DevTools listening on ws:\/\//.test(browser.output) || browser.exitCode !== null);
});

after(async () => {
  await Promise.all([s?.stop(), stop(browser)]);
  // Chromium's helper processes outlive its main one by a moment and may still write into the
  // profile's cache while it is removed (ENOTEMPTY): retry the removal as they end.
  if (profile) fs.rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 });
});

test("two browser pages chat in one room of the TypeScript chat", { skip }, async () => {
  const url = /DevTools listening on (ws:\/\/\S+)/.exec(browser.output)?.[1];
  assert.ok(url, browser.output);
  const cdp = new Cdp(url);
  await cdp.opened;
  const ann = await cdp.page(`${s.url}/?room=browser&name=ann`);
  const bob = await cdp.page(`${s.url}/?room=browser&name=bob`);
  for (const p of [ann, bob]) await until("the page to connect", () => p.eval("window.chatState && window.chatState.connected"));
  await ann.eval(`document.getElementById("text").value = "hello from ann"; document.getElementById("send").requestSubmit(); true`);
  const got = await until("bob to see ann's message", async () => {
    const m = await bob.eval("window.chatState.messages");
    return m.length ? m : null;
  });
  assert.deepEqual(got.map((m) => [m.seq, m.name, m.text]), [[1, "ann", "hello from ann"]]);
  await bob.eval(`document.getElementById("text").value = "hi ann"; document.getElementById("send").requestSubmit(); true`);
  const annSaw = await until("ann to see bob's reply", async () => {
    const m = await ann.eval("window.chatState.messages");
    return m.length >= 2 ? m : null;
  });
  assert.deepEqual(annSaw.map((m) => m.text), ["hello from ann", "hi ann"]);
  const shown = await bob.eval(`document.getElementById("log").innerText`);
  assert.match(shown, /ann\s*hello from ann/);
  fs.mkdirSync(path.join(REPO_DIR, "target"), { recursive: true });
  fs.writeFileSync(path.join(REPO_DIR, "target", "chat-ts-browser.png"), await bob.screenshot());
  cdp.ws.close();
});
