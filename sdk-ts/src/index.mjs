// `cloudflare:workers` on Stead: the module user code imports. The runner aliases
// `cloudflare:workers` to this file when it bundles a project.

import "./globals.mjs";

export { Response } from "./globals.mjs";
export { WebSocket, WebSocketPair, WebSocketRequestResponsePair } from "./websocket.mjs";
export { DurableObjectId, DurableObjectNamespace } from "./namespace.mjs";
export { SqlStorage, SqlStorageCursor } from "./storage.mjs";
export { encodeValue, decodeValue } from "./values.mjs";

/** Base class of a Durable Object: `this.ctx` (the state) and `this.env`. */
export class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

/** Base class of a stateless entry point (`export default class extends WorkerEntrypoint`). */
export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

/** Workflows and RPC targets are not offered on Stead; the names exist so that imports resolve. */
export class RpcTarget {}
export class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

/** The Worker's `env`, also importable (`import { env } from "cloudflare:workers"`). Filled by the runner. */
export const env = {};

/** Runs `fn` with `env` replaced by `newEnv` (as Cloudflare's `withEnv`). */
export function withEnv(newEnv, fn) {
  const saved = { ...env };
  for (const k of Object.keys(env)) delete env[k];
  Object.assign(env, newEnv);
  try {
    return fn();
  } finally {
    for (const k of Object.keys(env)) delete env[k];
    Object.assign(env, saved);
  }
}
