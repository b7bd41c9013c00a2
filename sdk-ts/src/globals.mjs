// Globals that Workers code expects and Node does not have: `WebSocketPair`,
// `WebSocketRequestResponsePair`, and a `Response` that accepts `status: 101` with a
// `webSocket`. Installed once, before any user module runs.

import { WebSocketPair, WebSocketRequestResponsePair } from "./websocket.mjs";

/** Node's own Response (`Response.json()` and `fetch()` give these; ours extends it). */
export const NodeResponse = globalThis.Response;

/** Upgrade answers: Response -> {webSocket}. A WeakMap, not private fields: undici's
 * constructor reads `status` before a subclass's fields exist. */
const upgrades = new WeakMap();
const sockets = new WeakMap();

export class Response extends NodeResponse {
  constructor(body, init) {
    if (init && init.status === 101) {
      const { webSocket, status: _status, ...rest } = init;
      super(null, { ...rest, status: 200 });
      upgrades.set(this, true);
      if (webSocket) sockets.set(this, webSocket);
    } else {
      super(body, init);
      if (init?.webSocket) sockets.set(this, init.webSocket);
    }
  }
  get status() {
    return upgrades.has(this) ? 101 : super.status;
  }
  get ok() {
    return !upgrades.has(this) && super.ok;
  }
  get webSocket() {
    return sockets.get(this) ?? null;
  }
}

const NodeRequest = globalThis.Request;

/** A Request that takes another Request (or a streamed body) as its init without `duplex`. */
export class Request extends NodeRequest {
  constructor(input, init) {
    if (init instanceof NodeRequest) {
      init = { method: init.method, headers: init.headers, body: init.body, redirect: init.redirect, signal: init.signal };
    }
    if (init && init.body != null && init.duplex === undefined && typeof init.body.getReader === "function") {
      init = { ...init, duplex: "half" };
    }
    super(input, init);
  }
}

if (!globalThis.__steadGlobals) {
  globalThis.Request = Request;
  globalThis.__steadGlobals = true;
  globalThis.Response = Response;
  globalThis.WebSocketPair = WebSocketPair;
  globalThis.WebSocketRequestResponsePair = WebSocketRequestResponsePair;
}
