// The app side of the app protocol: turns sidecar events into calls of the user's Durable
// Object classes and stateless front, and their results into answers (protocol 2: writes travel
// with the answer, eager state fills a per-incarnation cache).

import crypto from "node:crypto";
import v8 from "node:v8";
import { call, rawRequest } from "./api.mjs";
import { NodeResponse } from "./globals.mjs";
import { currentEvent } from "./context.mjs";
import { DurableObjectId, RPC_HEADER, RPC_SECRET_HEADER } from "./namespace.mjs";
import { DurableObjectStorage, ObjectCache, TurnStorage, sendWrites } from "./storage.mjs";
import { callSync } from "./sync.mjs";
import { WebSocket, attachmentToJson } from "./websocket.mjs";

const HEX64 = /^[0-9a-f]{64}$/;
/**
 * Marks the object call an object makes to itself to run work that has no turn (a timer, a
 * promise not awaited, after its event answered): the value names a batch of that work, known
 * only to this process (random, 128 bits).
 */
export const DETACHED_HEADER = "x-stead-detached";
/** Largest answer body that carries the writes in front of it; larger ones send them with calls. */
const MAX_CARRYING_BODY = 16 << 20;
/** The `op` of a socket operation carried in `stead-writes`, by the call it stands for. */
const CARRIED_OPS = {
  "websockets/send": "send",
  "websockets/broadcast": "broadcast",
  "websockets/close": "close",
  "websockets/attachment": "attachment",
  "websockets/auto-response": "auto_response",
};

/** Methods a stub's RPC may not reach. */
const NOT_RPC = new Set([
  "constructor",
  "fetch",
  "alarm",
  "webSocketMessage",
  "webSocketClose",
  "webSocketError",
  "ctx",
  "env",
]);

export function log(msg) {
  process.stderr.write(`stead-workers: ${msg}\n`);
}

/** An answer to the sidecar: status, header pairs, body. */
function answer(status, headers, body) {
  return { status, headers, body: body ?? Buffer.alloc(0) };
}

function jsonError(status, code, message, extra = []) {
  const body = Buffer.from(JSON.stringify({ error: { code, message } }), "utf8");
  return answer(status, [["content-type", "application/json"], ...extra], body);
}

class Reject extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function decodePct(raw) {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/** What a user handler gave back, as an answer (reads the Response body). */
async function fromResponse(res) {
  if (!(res instanceof NodeResponse)) {
    throw new TypeError(`a fetch handler must return a Response, got ${res === undefined ? "undefined" : typeof res}`);
  }
  const headers = [];
  for (const [k, v] of res.headers) {
    if (k === "set-cookie" || k === "content-length" || k === "transfer-encoding" || k === "connection") continue;
    headers.push([k, v]);
  }
  for (const c of res.headers.getSetCookie?.() ?? []) headers.push(["set-cookie", c]);
  const body = res.body ? Buffer.from(await res.arrayBuffer()) : Buffer.alloc(0);
  return answer(res.status, headers, body);
}

function errorAnswer(e, where) {
  log(`${where} threw; the turn rolls back: ${e && e.stack ? e.stack : e}`);
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return jsonError(500, "app_error", message);
}

/** The execution context of a stateless request (`ctx` of `fetch(request, env, ctx)`). */
class ExecutionContext {
  waitUntil(promise) {
    Promise.resolve(promise).catch((e) => log(`a waitUntil promise failed: ${e && e.stack ? e.stack : e}`));
  }
  passThroughOnException() {}
  get props() {
    return {};
  }
}

/** `ctx` / `state` of a Durable Object: one per object instance (incarnation). */
export class DurableObjectState {
  #instance;
  constructor(instance) {
    this.#instance = instance;
    this.id = instance.objectId;
    this.storage = new DurableObjectStorage(() => instance.liveTurn(), instance);
    this.props = {};
  }
  waitUntil(promise) {
    Promise.resolve(promise).catch((e) => log(`a waitUntil promise failed: ${e && e.stack ? e.stack : e}`));
  }
  blockConcurrencyWhile(fn) {
    const p = Promise.resolve().then(fn);
    this.#instance.blockers.push(p.catch(() => {}));
    return p;
  }
  acceptWebSocket(ws, tags = []) {
    if (!(ws instanceof WebSocket)) throw new TypeError("acceptWebSocket() takes the server end of a WebSocketPair");
    if (ws._classic) throw new Error("this WebSocket was already accepted with ws.accept()");
    tags = [...tags].map(String);
    if (tags.length > 10) throw new RangeError("a WebSocket has at most 10 tags");
    for (const t of tags) {
      if (t.includes(",") || Buffer.byteLength(t) > 256 || t.length === 0) {
        throw new RangeError(`WebSocket tag ${JSON.stringify(t)} must be 1 to 256 bytes without commas`);
      }
    }
    ws._hibernatable = true;
    this.#instance.bindSocket(ws, tags);
  }
  getWebSockets(tag) {
    const sockets = this.#instance.allSockets();
    return tag === undefined ? sockets : sockets.filter((s) => s._tags.includes(String(tag)));
  }
  getTags(ws) {
    return [...(ws._tags ?? [])];
  }
  setWebSocketAutoResponse(pair) {
    this.#instance.autoResponse = pair ?? null;
    const body = pair ? { request: pair.request, response: pair.response } : {};
    this.#instance.socketCall("websockets/auto-response", body);
  }
  getWebSocketAutoResponse() {
    return this.#instance.autoResponse ?? null;
  }
  getWebSocketAutoResponseTimestamp(_ws) {
    return null;
  }
  setHibernatableWebSocketEventTimeout(_ms) {}
  getHibernatableWebSocketEventTimeout() {
    return null;
  }
  abort(reason) {
    this.#instance.runtime.dropInstance(this.#instance);
    throw reason instanceof Error ? reason : new Error(reason ?? "the object was aborted");
  }
}

/** One object's in-memory instance under one incarnation. */
class Instance {
  constructor(runtime, className, id, name, incarnation) {
    this.runtime = runtime;
    this.className = className;
    this.key = `${className}/${id}`;
    this.incarnation = incarnation;
    this.objectId = new DurableObjectId(id, name);
    this.cache = new ObjectCache();
    this.obj = null;
    this.ctx = null;
    this.turn = null;
    this.blockers = [];
    /** id -> WebSocket known in memory */
    this.sockets = new Map();
    this.socketsLoaded = false;
    this.autoResponse = null;
    this.chain = Promise.resolve();
    /** work with no turn, gathered in this microtask, not yet sent (see detached()) */
    this.pendingBatch = null;
    /** the turn of an event waiting for blockConcurrencyWhile() promises, while it waits */
    this.waitingTurn = null;
  }

  /**
   * The turn the calling code runs in, when it is a turn of this object still in progress; null
   * for code that runs after its event answered (timers, promises not awaited), or outside any.
   */
  liveTurn() {
    const ev = currentEvent.getStore();
    if (!ev || !ev.instance || ev.instance.key !== this.key) return null;
    return ev.turn && !ev.turn.finished ? ev.turn : null;
  }

  /**
   * Runs `fn` in a turn of its own: work the object does between events. Everything asked for in
   * one microtask goes into one batch; the batch runs in one turn, in order with the object's
   * other events (an object call to itself). Resolves with `fn`'s result once that turn has
   * committed; rejects if it failed (nothing of the batch was written then).
   */
  detached(fn) {
    return new Promise((resolve, reject) => {
      let batch = this.pendingBatch;
      if (!batch) {
        batch = { id: crypto.randomBytes(16).toString("hex"), key: this.key, jobs: [], ran: false, rolledBack: false };
        this.pendingBatch = batch;
        queueMicrotask(() => {
          if (this.pendingBatch === batch) this.pendingBatch = null;
          // An event is in flight and waits for a blockConcurrencyWhile(): the batch cannot get
          // a turn of its own before that event ends, so it runs in that event's turn.
          if (this.waitingTurn) this.runtime.runBatchIn(this, batch, this.waitingTurn);
          else this.runtime.sendBatch(this, batch);
        });
      }
      batch.jobs.push({ fn, resolve, reject, outcome: null });
    });
  }

  /**
   * Queues an app API call of the current turn; they leave in call order, before the answer.
   * Sends are held back a little: consecutive sends of the same message to several sockets
   * become one broadcast call (per socket, the order is the same).
   */
  socketCall(name, payload, onAnswer) {
    const t = this.liveTurn();
    if (!t) {
      // Between events: in a turn of its own, like storage.
      this.detached(() => this.socketCall(name, payload, onAnswer)).catch((e) =>
        log(`${name.replace("websockets/", "WebSocket ")} between events failed: ${e.message}`),
      );
      return;
    }
    if (name === "websockets/send") {
      t.sends.push({ payload, onAnswer });
      return;
    }
    this.flushSends(t);
    this.chainCall(t, name, payload, onAnswer);
  }

  /** Turns the held-back sends of turn `t` into calls. */
  flushSends(t) {
    const sends = t.sends;
    t.sends = [];
    let i = 0;
    while (i < sends.length) {
      const { payload } = sends[i];
      const same = (p) => p.text === payload.text && p.binary === payload.binary;
      let j = i + 1;
      const ids = new Set([payload.id]);
      while (j < sends.length && same(sends[j].payload) && !ids.has(sends[j].payload.id)) {
        ids.add(sends[j].payload.id);
        j++;
      }
      if (j - i >= 2 && this.socketsLoaded) {
        const except = [...this.sockets.keys()].filter((id) => !ids.has(id));
        const body = payload.text !== undefined ? { text: payload.text } : { binary: payload.binary };
        if (except.length) body.except = except;
        this.chainCall(t, "websockets/broadcast", body);
      } else {
        for (let k = i; k < j; k++) this.chainCall(t, "websockets/send", sends[k].payload, sends[k].onAnswer);
      }
      i = j;
    }
  }

  chainCall(t, name, payload, onAnswer) {
    if (t.carried && name !== "websockets/list") {
      // The sidecar takes the turn's socket operations with its answer (`stead-carry:
      // websockets`): in call order, applied only if the turn commits. No answer comes back.
      t.carried.push({ op: CARRIED_OPS[name], ...payload });
      return;
    }
    t.ops = t.ops.then(async () => {
      try {
        const ans = await call(t.token, name, payload);
        if (onAnswer) onAnswer(ans);
      } catch (e) {
        log(`${name} failed: ${e.message}`);
      }
    });
  }

  bindSocket(ws, tags) {
    const t = this.liveTurn();
    if (!t || !t.connectId) throw new Error("a WebSocket can be accepted only while its upgrade request is handled");
    if (t.accepted && t.accepted !== ws) throw new Error("only one WebSocket can be accepted per upgrade request");
    ws._id = t.connectId;
    ws._owner = this;
    ws._tags = tags;
    ws.readyState = WebSocket.OPEN;
    t.accepted = ws;
    t.acceptTags = tags;
    this.sockets.set(ws._id, ws);
    if (ws._attachmentDirty) {
      ws._attachmentDirty = false;
      this.socketCall("websockets/attachment", { id: ws._id, attachment: ws._attachment });
    }
  }

  forgetSocket(id) {
    this.sockets.delete(id);
  }

  /** Every socket of the object: the sidecar's list, read once per incarnation. */
  allSockets() {
    this.loadSockets();
    return [...this.sockets.values()].filter((s) => s.readyState === WebSocket.OPEN);
  }

  loadSockets() {
    if (this.socketsLoaded) return;
    const t = this.liveTurn();
    if (!t) {
      throw new Error(
        "getWebSockets(): the object's sockets are read in the turn of an event (fetch, alarm, webSocket* handlers); call it there once and keep the list, or send from there",
      );
    }
    const ans = callSync(t.token, "websockets/list", {});
    for (const s of ans.sockets ?? []) {
      if (this.sockets.has(s.id)) continue;
      const ws = new WebSocket();
      ws._id = s.id;
      ws._owner = this;
      ws._tags = s.tags ?? [];
      ws._attachment = s.attachment ?? null;
      ws._hibernatable = true;
      ws.readyState = WebSocket.OPEN;
      this.sockets.set(s.id, ws);
    }
    this.socketsLoaded = true;
  }

  socket(id) {
    this.loadSockets();
    let ws = this.sockets.get(id);
    if (!ws) {
      ws = new WebSocket();
      ws._id = id;
      ws._owner = this;
      ws._hibernatable = true;
      ws.readyState = WebSocket.OPEN;
      this.sockets.set(id, ws);
    }
    return ws;
  }
}

export class Runtime {
  /**
   * @param {object} o
   * @param {Map<string, Function>} o.classes class name -> Durable Object class
   * @param {any} o.front the default export (stateless front), or undefined
   * @param {object} o.env the `env` handed to every class and the front
   * @param {number} [o.protocol] highest app protocol to speak (2)
   */
  constructor({ classes, front, env, protocol = 2 }) {
    this.classes = classes;
    this.front = front;
    this.env = env;
    this.protocol = process.env.STEAD_APP_PROTOCOL === "1" ? 1 : protocol;
    this.instances = new Map();
    /** batch id -> batch of work with no turn, until its turn has run */
    this.batches = new Map();
  }

  /** Runs `batch` in `turn`, an event's turn still in progress (it commits with that event). */
  runBatchIn(inst, batch, turn) {
    batch.ran = true;
    batch.hosted = true;
    currentEvent.run({ token: turn.token, instance: inst, turn }, async () => {
      for (const job of batch.jobs) {
        try {
          job.resolve(await job.fn());
        } catch (e) {
          job.reject(e);
        }
      }
    });
  }

  /** Asks for the turn of `batch`: an object call (with no token) to the batch's own object. */
  sendBatch(inst, batch) {
    this.batches.set(batch.id, batch);
    const path = `/v1/objects/${encodeURIComponent(inst.className)}/id/${inst.objectId.toString()}/`;
    const failAll = (e) => {
      for (const j of batch.jobs) j.reject(e);
    };
    rawRequest("POST", path, { [DETACHED_HEADER]: batch.id, "content-length": "0" }, null).then(
      (res) => {
        this.batches.delete(batch.id);
        if (batch.hosted) return; // an event's turn ran it (runBatchIn) and settles its jobs
        if (res.status >= 300 || !batch.ran) {
          let message = `the turn for work between events failed with status ${res.status}`;
          try {
            const e = JSON.parse(res.body.toString("utf8")).error;
            if (e) message = `${message}: ${e.message} (${e.code})`;
          } catch {
            // not JSON
          }
          const err = new Error(message);
          err.status = res.status;
          return failAll(err);
        }
        for (const j of batch.jobs) {
          if ("error" in j.outcome) j.reject(j.outcome.error);
          else if (batch.rolledBack) j.reject(new Error("rolled back: a transaction() in the same turn (work between events, batched in one microtask) threw"));
          else j.resolve(j.outcome.value);
        }
      },
      (e) => {
        this.batches.delete(batch.id);
        if (!batch.hosted) failAll(e);
      },
    );
  }

  dropInstance(inst) {
    if (this.instances.get(inst.key) === inst) this.instances.delete(inst.key);
  }

  /** Answers one event. `req` = {method, url (path and query), headers (lower-case name -> value), rawHeaders, body}. */
  async handle(req) {
    try {
      return await this.#route(req);
    } catch (e) {
      if (e instanceof Reject) return jsonError(e.status, e.code, e.message);
      return errorAnswer(e, "the runner");
    }
  }

  async #route(req) {
    const h = req.headers;
    const event = h["stead-event"];
    if (!event) {
      throw new Reject(400, "bad_request", "this is a Stead app: it answers events from the Stead sidecar, which carry a stead-event header");
    }
    const className = h["stead-class"];
    if (event === "hibernate") {
      const id = h["stead-object-id"];
      if (className && id) {
        const inst = this.instances.get(`${className}/${id}`);
        if (inst) this.dropInstance(inst);
      }
      return answer(200, [], null);
    }
    if (!className) {
      if (event !== "request") throw new Reject(400, "bad_request", `a ${event} event is for an object and needs a stead-class header`);
      return this.#stateless(req);
    }
    return this.#objectEvent(req, className, event);
  }

  #request(req, path) {
    const headers = new Headers();
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i].toLowerCase();
      if (k.startsWith("stead-") || k === "content-length" || k === "transfer-encoding" || k === "connection" || k === "keep-alive") continue;
      headers.append(k, req.rawHeaders[i + 1]);
    }
    // Cloudflare sets CF-Connecting-IP; Stead's ingress tells the client's address.
    const client = req.headers["stead-client-addr"];
    if (client) headers.set("cf-connecting-ip", client);
    if (req.headers["stead-upgrade"] === "websocket") {
      // A handshake the sidecar holds: put back what Workers code checks.
      headers.set("upgrade", "websocket");
      headers.set("connection", "Upgrade");
    }
    const host = req.headers.host || "localhost";
    const url = `http://${host}${path}`;
    const hasBody = req.method !== "GET" && req.method !== "HEAD";
    return new Request(url, { method: req.method, headers, body: hasBody ? req.body : undefined });
  }

  async #stateless(req) {
    const token = req.headers["stead-turn"];
    const front = this.front;
    if (!front) {
      return jsonError(404, "not_found", "this Worker has no default export with a fetch handler; objects are under /objects/{class}/");
    }
    const request = this.#request(req, req.url);
    const ctx = new ExecutionContext();
    const upgrade = req.headers["stead-upgrade"] === "websocket";
    // `done`: the front has answered; object calls made after that carry no token.
    const ev = { token, instance: null, upgrade, done: false };
    return currentEvent.run(ev, async () => {
      try {
        let res;
        if (typeof front === "function") {
          const entry = new front(ctx, this.env);
          if (typeof entry.fetch !== "function") return jsonError(404, "not_found", "the default export has no fetch handler");
          res = await entry.fetch(request);
        } else if (typeof front.fetch === "function") {
          res = await front.fetch(request, this.env, ctx);
        } else {
          return jsonError(404, "not_found", "the default export has no fetch handler");
        }
        const a = await fromResponse(res);
        if (a.status !== 101) return a;
        // A 101 from the front is the answer of a stub's fetch of the handshake: the sidecar
        // performs it against the object it names.
        const to = a.headers.find(([k]) => k.toLowerCase() === "stead-upgrade-to");
        if (!upgrade || !to) {
          return jsonError(501, "websocket_in_front", "the Worker's fetch answered 101 itself; on Stead the stateless front cannot hold a WebSocket: pass the upgrade request to an object (return env.NS.get(id).fetch(request))");
        }
        return answer(200, [["stead-upgrade-to", to[1]]], null);
      } catch (e) {
        return errorAnswer(e, "the Worker's fetch");
      } finally {
        ev.done = true;
      }
    });
  }

  #instance(className, id, name, incarnation) {
    const key = `${className}/${id}`;
    let inst = this.instances.get(key);
    if (!inst || inst.incarnation !== incarnation) {
      inst = new Instance(this, className, id, name, incarnation);
      this.instances.set(key, inst);
    }
    return inst;
  }

  async #objectEvent(req, className, event) {
    const h = req.headers;
    const Cls = this.classes.get(className);
    if (!Cls) throw new Reject(404, "unknown_class", `this app serves no class ${JSON.stringify(className)}`);
    const id = h["stead-object-id"];
    if (!id || !HEX64.test(id)) throw new Reject(400, "bad_request", "stead-object-id must be 64 lowercase hex characters");
    const token = h["stead-turn"];
    if (!token) throw new Reject(400, "bad_request", "an event needs a stead-turn header");
    const name = h["stead-object-name"] !== undefined ? decodePct(h["stead-object-name"]) : undefined;
    const offered = Number.parseInt(h["stead-protocol"] ?? "1", 10) || 1;
    const v2 = this.protocol >= 2 && offered >= 2;
    const carriesSockets = v2 && (h["stead-carry"] ?? "").split(",").some((t) => t.trim() === "websockets");
    let body = req.body;
    let state = null;
    if (h["stead-state"] !== undefined) {
      const n = Number.parseInt(h["stead-state"], 10);
      if (!(n >= 0 && n <= body.length)) throw new Reject(400, "bad_request", "stead-state is not a byte count within the body");
      try {
        state = JSON.parse(body.subarray(0, n).toString("utf8"));
      } catch {
        throw new Reject(400, "bad_request", "the first bytes of the body (stead-state) are not the object's state");
      }
      body = body.subarray(n);
    }
    const inst = this.#instance(className, id, name, h["stead-object-incarnation"]);
    // Events of one object run one at a time (the sidecar sends them so; this keeps it so).
    const run = inst.chain.then(() => this.#runTurn(inst, Cls, { ...req, body }, event, token, v2, state, carriesSockets));
    inst.chain = run.catch(() => {});
    return run;
  }

  async #runTurn(inst, Cls, req, event, token, v2, state, carriesSockets) {
    if (v2 && state) inst.cache.load(state.entries ?? [], state.alarm);
    if (!v2) inst.cache.forget();
    const turn = new TurnStorage(token, inst.cache, { v2, alarmEvent: event === "alarm" });
    turn.ops = Promise.resolve();
    turn.sends = [];
    // Socket operations that travel with the answer, when the sidecar takes them.
    turn.carried = carriesSockets ? [] : null;
    turn.connectId = null;
    turn.accepted = null;
    inst.turn = turn;
    const head = req.method === "HEAD";
    return currentEvent.run({ token, instance: inst, turn }, async () => {
      let res;
      try {
        if (!inst.obj) {
          inst.ctx = new DurableObjectState(inst);
          inst.blockers = [];
          inst.socketsLoaded = false;
          inst.obj = new Cls(inst.ctx, this.env);
        }
        // A turn of work between events does not wait: a blockConcurrencyWhile() started between
        // events may itself be waiting for it. An event that waits lends its turn to the
        // blockers' storage calls meanwhile.
        const detachedTurn = event === "request" && req.headers[DETACHED_HEADER] !== undefined;
        while (inst.blockers.length && !detachedTurn) {
          const b = inst.blockers;
          inst.blockers = [];
          inst.waitingTurn = turn;
          // Batches already asked for would queue behind this event: run them here too.
          for (const pending of this.batches.values()) {
            if (pending.key === inst.key && !pending.ran) this.runBatchIn(inst, pending, turn);
          }
          try {
            await Promise.all(b);
          } finally {
            if (inst.waitingTurn === turn) inst.waitingTurn = null;
          }
        }
        res = await this.#dispatch(inst, req, event);
      } catch (e) {
        res = errorAnswer(e, `${inst.className}.${event === "request" ? "fetch" : event}`);
      }
      inst.flushSends(turn);
      await turn.ops;
      if (turn.mustRollBack && res.status < 500) res.headers.push(["stead-rollback", "1"]);
      const commits = res.status < 500 && !res.headers.some(([k]) => k === "stead-rollback");
      let writes = turn.finish(commits);
      if (commits && turn.carried?.length) writes = { ...writes, websockets: turn.carried };
      if (inst.turn === turn) inst.turn = null;
      if (!v2) return res;
      res.headers.push(["stead-protocol", "2"]);
      if (!writes) return res;
      const bodiless = head || res.status === 204 || res.status === 304 || res.status < 200;
      if (bodiless || res.body.length > MAX_CARRYING_BODY) {
        try {
          await sendWrites(token, writes);
        } catch (e) {
          return jsonError(e.status >= 400 ? e.status : 500, e.code ?? "storage_error", e.message, [["stead-protocol", "2"]]);
        }
        return res;
      }
      const doc = Buffer.from(JSON.stringify(writes), "utf8");
      res.headers.push(["stead-writes", String(doc.length)]);
      res.body = Buffer.concat([doc, res.body]);
      return res;
    });
  }

  async #dispatch(inst, req, event) {
    const obj = inst.obj;
    const h = req.headers;
    switch (event) {
      case "request": {
        if (h[DETACHED_HEADER] !== undefined) return this.#detachedTurn(inst, h[DETACHED_HEADER]);
        if (h[RPC_HEADER] !== undefined) return this.#rpc(inst, req);
        if (typeof obj.fetch !== "function") return jsonError(501, "no_fetch", `${inst.className} has no fetch() handler`);
        return fromResponse(await obj.fetch(this.#request(req, req.url)));
      }
      case "alarm": {
        const retryCount = Number.parseInt(h["stead-alarm-retry"] ?? "0", 10) || 0;
        if (typeof obj.alarm !== "function") return answer(200, [], null);
        await obj.alarm({ retryCount, isRetry: retryCount > 0 });
        return answer(200, [], null);
      }
      case "websocket-connect": {
        inst.turn.connectId = h["stead-websocket-id"];
        if (typeof obj.fetch !== "function") return jsonError(501, "no_fetch", `${inst.className} has no fetch() handler`);
        // The sidecar answers the handshake itself and passes no hop-by-hop headers: put back
        // what Workers code checks.
        const request = this.#request(req, req.url);
        request.headers.set("upgrade", "websocket");
        request.headers.set("connection", "Upgrade");
        const res = await obj.fetch(request);
        if (res && res.status === 101) {
          const accepted = inst.turn.accepted;
          if (!accepted || (res.webSocket && res.webSocket._peer !== accepted)) {
            throw new Error("a 101 answer must carry the client end of a WebSocketPair whose server end was accepted (ctx.acceptWebSocket(server) or server.accept())");
          }
          const headers = [];
          if (inst.turn.acceptTags?.length) headers.push(["stead-websocket-tags", inst.turn.acceptTags.join(",")]);
          return answer(200, headers, null);
        }
        if (inst.turn.accepted) {
          inst.forgetSocket(inst.turn.accepted._id);
          inst.turn.accepted.readyState = WebSocket.CLOSED;
        }
        return fromResponse(res);
      }
      case "websocket-message": {
        const ws = inst.socket(h["stead-websocket-id"]);
        const data = h["stead-websocket-kind"] === "binary"
          ? req.body.buffer.slice(req.body.byteOffset, req.body.byteOffset + req.body.byteLength)
          : req.body.toString("utf8");
        if (ws._classic) ws._dispatch("message", { data });
        else if (typeof obj.webSocketMessage === "function") await obj.webSocketMessage(ws, data);
        else ws.close(1012, "the object restarted; reconnect");
        return answer(200, [], null);
      }
      case "websocket-close": {
        const ws = inst.socket(h["stead-websocket-id"]);
        const code = Number.parseInt(h["stead-websocket-close-code"] ?? "1005", 10) || 1005;
        const reason = decodePct(h["stead-websocket-close-reason"] ?? "");
        ws.readyState = WebSocket.CLOSED;
        inst.forgetSocket(ws._id);
        if (ws._classic) ws._dispatch("close", { code, reason, wasClean: code !== 1006 });
        else if (typeof obj.webSocketClose === "function") await obj.webSocketClose(ws, code, reason, code !== 1006);
        return answer(200, [], null);
      }
      case "websocket-error": {
        const ws = inst.socket(h["stead-websocket-id"]);
        const error = new Error(decodePct(h["stead-websocket-error"] ?? "WebSocket error"));
        ws.readyState = WebSocket.CLOSED;
        inst.forgetSocket(ws._id);
        if (ws._classic) ws._dispatch("error", { error, message: error.message });
        else if (typeof obj.webSocketError === "function") await obj.webSocketError(ws, error);
        return answer(200, [], null);
      }
      default:
        throw new Reject(501, "unsupported_event", `this app does not handle ${JSON.stringify(event)} events`);
    }
  }

  /** The turn of a batch of work between events (see Instance.detached). */
  async #detachedTurn(inst, id) {
    const batch = this.batches.get(id);
    if (!batch || batch.key !== inst.key || batch.ran) {
      return jsonError(404, "not_found", "no such work between events in this process");
    }
    batch.ran = true;
    for (const job of batch.jobs) {
      try {
        job.outcome = { value: await job.fn() };
      } catch (e) {
        job.outcome = { error: e };
      }
    }
    // A transaction() that threw rolls the whole turn back: nothing of the batch was written.
    batch.rolledBack = Boolean(currentEvent.getStore()?.turn?.mustRollBack);
    return answer(200, [], null);
  }

  async #rpc(inst, req) {
    const secret = process.env.STEAD_RPC_SECRET;
    if (secret && req.headers[RPC_SECRET_HEADER] !== secret) {
      return jsonError(403, "rpc_forbidden", "JS RPC calls are accepted only from this app's own stubs");
    }
    const method = req.headers[RPC_HEADER];
    const obj = inst.obj;
    const rpcAnswer = (status, value) =>
      answer(status, [["content-type", "application/x-stead-rpc"]], v8.serialize(value));
    if (NOT_RPC.has(method) || method.startsWith("_") || typeof obj[method] !== "function" || method in Object.prototype) {
      return rpcAnswer(500, { error: { name: "TypeError", message: `${inst.className} has no RPC method ${JSON.stringify(method)}` } });
    }
    let args;
    try {
      args = v8.deserialize(req.body);
    } catch {
      return jsonError(400, "bad_request", "the body of an RPC call is not its serialized arguments");
    }
    try {
      const value = await obj[method](...(Array.isArray(args) ? args : []));
      try {
        if (value instanceof NodeResponse) {
          const a = await fromResponse(value);
          return rpcAnswer(200, { response: { status: a.status, headers: a.headers, body: a.body } });
        }
        return rpcAnswer(200, { value });
      } catch (e) {
        return rpcAnswer(500, { error: { name: "DataCloneError", message: `${method}() returned a value that cannot be sent back: ${e.message}` } });
      }
    } catch (e) {
      log(`${inst.className}.${method}() threw; the turn rolls back: ${e && e.stack ? e.stack : e}`);
      const err = e instanceof Error ? { name: e.name, message: e.message } : { name: "Error", message: String(e) };
      return rpcAnswer(500, { error: err });
    }
  }
}

export { attachmentToJson };
