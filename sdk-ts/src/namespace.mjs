// Durable Object namespaces in `env`: ids, stubs, `fetch` and JS RPC over Stead's object calls.

import crypto from "node:crypto";
import v8 from "node:v8";
import { rawRequest } from "./api.mjs";
import { currentEvent } from "./context.mjs";
import { Response as SteadResponse } from "./globals.mjs";

const HEX64 = /^[0-9a-f]{64}$/;
const MAX_NAME_BYTES = 512;

/** Header that marks an object call as a JS RPC call (`stub.method(...args)`). */
export const RPC_HEADER = "x-stead-rpc";
/** Header carrying `STEAD_RPC_SECRET`, when set, on RPC calls. */
export const RPC_SECRET_HEADER = "x-stead-rpc-secret";

export class DurableObjectId {
  #hex;
  #name;
  constructor(hex, name) {
    this.#hex = hex;
    this.#name = name;
  }
  /** The name given to `idFromName`, else undefined. */
  get name() {
    return this.#name;
  }
  toString() {
    return this.#hex;
  }
  toJSON() {
    return this.#hex;
  }
  equals(other) {
    return other instanceof DurableObjectId && other.toString() === this.#hex;
  }
  [Symbol.for("nodejs.util.inspect.custom")]() {
    return `DurableObjectId(${this.#hex}${this.#name !== undefined ? ` ${JSON.stringify(this.#name)}` : ""})`;
  }
}

/** The id Stead gives the object `name` of `className`: SHA-256("stead.v1" 0 class 0 name). */
export function namedId(className, name) {
  const h = crypto.createHash("sha256");
  h.update("stead.v1\0");
  h.update(className, "utf8");
  h.update("\0");
  h.update(name, "utf8");
  return h.digest("hex");
}

/** Percent-encodes a name for a route segment (RFC 3986 unreserved characters stay). */
function encodeName(name) {
  return encodeURIComponent(name).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export class DurableObjectNamespace {
  #className;
  constructor(className) {
    this.#className = className;
  }
  get className() {
    return this.#className;
  }
  idFromName(name) {
    name = String(name);
    const len = Buffer.byteLength(name, "utf8");
    if (len === 0 || len > MAX_NAME_BYTES) {
      throw new TypeError(`an object name must be 1 to ${MAX_NAME_BYTES} bytes of UTF-8, got ${len} bytes`);
    }
    return new DurableObjectId(namedId(this.#className, name), name);
  }
  idFromString(hex) {
    if (typeof hex !== "string" || !HEX64.test(hex)) {
      throw new TypeError("an object id string must be 64 lowercase hex characters");
    }
    return new DurableObjectId(hex, undefined);
  }
  newUniqueId(_options) {
    return new DurableObjectId(crypto.randomBytes(32).toString("hex"), undefined);
  }
  get(id, _options) {
    if (!(id instanceof DurableObjectId)) throw new TypeError("get() takes an id from idFromName, idFromString or newUniqueId");
    return makeStub(this.#className, id);
  }
  getByName(name, options) {
    return this.get(this.idFromName(name), options);
  }
  jurisdiction(_name) {
    return this;
  }
}

/** The app API path of object `id` of `className`, up to (not including) the rest. */
function objectPath(className, id) {
  return id.name !== undefined
    ? `/v1/objects/${className}/name/${encodeName(id.name)}`
    : `/v1/objects/${className}/id/${id.toString()}`;
}

/**
 * The token of the event the calling code runs for, while that event is in progress. Calls made
 * after it answered (timers, promises not awaited, `waitUntil`) or outside any event carry none:
 * the sidecar then treats them as calls from outside any turn, each with a call chain of its own.
 */
function liveToken() {
  const ev = currentEvent.getStore();
  if (!ev) return null;
  if (ev.instance) return ev.turn && !ev.turn.finished ? ev.token : null;
  return ev.done ? null : ev.token;
}

/** Whether the calling code is the front door handling a client's WebSocket handshake. */
function frontUpgrade(req) {
  const ev = currentEvent.getStore();
  return Boolean(ev && !ev.instance && ev.upgrade && !ev.done && req.headers.get("upgrade")?.toLowerCase() === "websocket");
}

/** Sends `request` to the object; resolves to its Response. */
async function objectFetch(className, id, input, init) {
  const token = liveToken();
  const req = input instanceof Request && init === undefined ? input : new Request(input, init);
  const url = new URL(req.url);
  if (frontUpgrade(req)) {
    // The sidecar holds the client's handshake: the front's answer names the object and the
    // path, and the sidecar performs the handshake against it (docs/app-protocol.md).
    const to = `${objectPath(className, id).slice("/v1".length)}${url.pathname}${url.search}`;
    return new SteadResponse(null, { status: 101, headers: { "stead-upgrade-to": to } });
  }
  const headers = [];
  for (const [k, v] of req.headers) {
    if (k.startsWith("stead-") || k === "host" || k === "content-length" || k === "transfer-encoding" || k === "connection") continue;
    headers.push(k, v);
  }
  if (url.host) headers.push("host", url.host);
  if (token) headers.push("stead-turn", token);
  const body = req.method === "GET" || req.method === "HEAD" || req.body === null ? null : Buffer.from(await req.arrayBuffer());
  if (body) headers.push("content-length", String(body.length));
  const res = await rawRequest(req.method, `${objectPath(className, id)}${url.pathname}${url.search}`, headers, body);
  return toResponse(res);
}

const NULL_BODY = new Set([101, 204, 205, 304]);

/** A Response from an answer of the app API. */
export function toResponse(res) {
  const headers = new Headers();
  for (let i = 0; i < res.headers.length; i += 2) {
    const k = res.headers[i].toLowerCase();
    if (k === "content-length" || k === "transfer-encoding" || k === "connection" || k === "keep-alive") continue;
    headers.append(res.headers[i], res.headers[i + 1]);
  }
  const body = NULL_BODY.has(res.status) ? null : res.body;
  return new Response(body, { status: res.status, headers });
}

/** An error thrown by a remote method, rebuilt on the caller's side. */
function rebuildError(e) {
  if (e instanceof Error) return e;
  const err = new Error(e?.message ?? "the remote method failed");
  if (e?.name) err.name = e.name;
  if (e?.stack) err.remoteStack = e.stack;
  return err;
}

async function rpcCall(className, id, method, args) {
  const token = liveToken();
  let body;
  try {
    body = v8.serialize(args);
  } catch (e) {
    throw new TypeError(`the arguments of ${method}() cannot be sent: ${e.message} (RPC arguments are structured-clone values)`);
  }
  const headers = {
    [RPC_HEADER]: method,
    "content-type": "application/x-stead-rpc",
    "content-length": body.length,
  };
  if (token) headers["stead-turn"] = token;
  if (process.env.STEAD_RPC_SECRET) headers[RPC_SECRET_HEADER] = process.env.STEAD_RPC_SECRET;
  const res = await rawRequest("POST", `${objectPath(className, id)}/`, headers, body);
  const ct = headerOf(res.headers, "content-type");
  if (ct === "application/x-stead-rpc") {
    const answer = v8.deserialize(res.body);
    if ("error" in answer) throw rebuildError(answer.error);
    if ("response" in answer) {
      const r = answer.response;
      return new Response(NULL_BODY.has(r.status) ? null : r.body, { status: r.status, headers: r.headers });
    }
    return answer.value;
  }
  // The sidecar answered itself (cycle 508, unknown class 404, ...), or the object answered
  // without going through RPC.
  let message = `${method}() failed with status ${res.status}`;
  let code;
  try {
    const json = JSON.parse(res.body.toString("utf8"));
    if (json?.error) {
      code = json.error.code;
      message = `${method}() failed: ${json.error.message} (${res.status} ${code})`;
    }
  } catch {
    // not JSON: keep the plain message
  }
  const err = new Error(message);
  err.status = res.status;
  if (code) err.code = code;
  throw err;
}

function headerOf(raw, name) {
  for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === name) return raw[i + 1];
  return undefined;
}

function makeStub(className, id) {
  const target = {
    id,
    name: id.name,
    fetch: (input, init) => objectFetch(className, id, input, init),
  };
  return new Proxy(target, {
    get(t, prop) {
      if (prop in t) return t[prop];
      if (typeof prop === "symbol" || prop === "then") return undefined;
      return (...args) => rpcCall(className, id, prop, args);
    },
  });
}
