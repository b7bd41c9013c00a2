// WebSockets held by the sidecar: `WebSocketPair`, the hibernation API (`ctx.acceptWebSocket`,
// `getWebSockets`, attachments, auto-responses) and the classic `ws.accept()` +
// `addEventListener` style (for as long as the object stays in memory).

import v8 from "node:v8";
import { currentEvent } from "./context.mjs";
import { isPlainJson } from "./values.mjs";

const V8_KEY = "__stead_v8";

/** Attachment as the sidecar keeps it (JSON); non-JSON values are wrapped in V8 bytes. */
export function attachmentToJson(value) {
  if (value === undefined) return null;
  if (isPlainJson(value) && !(value && typeof value === "object" && V8_KEY in value)) return value;
  return { [V8_KEY]: v8.serialize(value).toString("base64") };
}

export function attachmentFromJson(json) {
  if (json && typeof json === "object" && typeof json[V8_KEY] === "string") {
    return v8.deserialize(Buffer.from(json[V8_KEY], "base64"));
  }
  return json === null ? null : json;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** One end of a WebSocketPair, or a socket the sidecar holds. */
export class WebSocket extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  constructor() {
    super();
    /** @internal the sidecar's socket id, once accepted */
    this._id = null;
    /** @internal the object instance that holds it */
    this._owner = null;
    this._tags = [];
    this._attachment = null;
    this._attachmentDirty = false;
    this._peer = null;
    this._classic = false;
    this._hibernatable = false;
    this.readyState = CONNECTING;
    this.url = null;
    this.protocol = "";
    this.extensions = "";
  }

  /** Classic style: start receiving events through addEventListener. */
  accept() {
    if (this._hibernatable) throw new Error("this WebSocket was already accepted with ctx.acceptWebSocket()");
    if (this._classic) return;
    this._classic = true;
    const owner = currentAcceptor();
    owner.bindSocket(this, []);
  }

  send(message) {
    if (this.readyState === CLOSED || this.readyState === CLOSING) {
      throw new Error("WebSocket send() after close()");
    }
    const owner = this.#owner("send");
    let payload;
    if (typeof message === "string") payload = { id: this._id, text: message };
    else if (message instanceof ArrayBuffer) payload = { id: this._id, binary: Buffer.from(message).toString("base64") };
    else if (ArrayBuffer.isView(message)) {
      payload = { id: this._id, binary: Buffer.from(message.buffer, message.byteOffset, message.byteLength).toString("base64") };
    } else payload = { id: this._id, text: String(message) };
    owner.socketCall("websockets/send", payload, (ans) => {
      if (ans && ans.sent === 0) owner.forgetSocket(this._id);
    });
  }

  close(code, reason) {
    if (this.readyState === CLOSED || this.readyState === CLOSING) return;
    const owner = this.#owner("close");
    const valid = code === undefined || (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
    if (!valid) throw new RangeError(`WebSocket close code ${code} is not one an endpoint may send (1000-1003, 1007-1014, 3000-4999)`);
    const body = { id: this._id, code: code ?? 1000 };
    if (reason !== undefined) {
      body.reason = String(reason);
      if (Buffer.byteLength(body.reason) > 123) throw new SyntaxError("a WebSocket close reason is at most 123 bytes (UTF-8)");
    }
    this.readyState = CLOSING;
    owner.socketCall("websockets/close", body);
  }

  serializeAttachment(value) {
    const json = attachmentToJson(value);
    if (JSON.stringify(json).length > 16384) throw new RangeError("a WebSocket attachment is at most 16 KiB serialized");
    this._attachment = json;
    if (this._id && this._owner) this._owner.socketCall("websockets/attachment", { id: this._id, attachment: json });
    else this._attachmentDirty = true;
  }

  deserializeAttachment() {
    return attachmentFromJson(this._attachment);
  }

  #owner(what) {
    if (!this._owner || !this._id) {
      throw new Error(`WebSocket ${what}(): this socket is not accepted (call ctx.acceptWebSocket(ws) or ws.accept() first)`);
    }
    return this._owner;
  }

  /** @internal classic style: hand an event to the listeners */
  _dispatch(type, init) {
    const ev = new Event(type);
    Object.assign(ev, init);
    this.dispatchEvent(ev);
    const handler = this[`on${type}`];
    if (typeof handler === "function") handler.call(this, ev);
  }
}

function currentAcceptor() {
  const ev = currentEvent.getStore();
  if (!ev || !ev.instance) throw new Error("a WebSocket can be accepted only while its upgrade request is handled by a Durable Object");
  return ev.instance;
}

export class WebSocketPair {
  constructor() {
    const client = new WebSocket();
    const server = new WebSocket();
    client._peer = server;
    server._peer = client;
    this[0] = client;
    this[1] = server;
  }
  *[Symbol.iterator]() {
    yield this[0];
    yield this[1];
  }
}

export class WebSocketRequestResponsePair {
  #request;
  #response;
  constructor(request, response) {
    this.#request = String(request);
    this.#response = String(response);
  }
  get request() {
    return this.#request;
  }
  get response() {
    return this.#response;
  }
}
