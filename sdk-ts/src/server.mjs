// `serve`: bundle the project, load it, and serve the app protocol on STEAD_APP_ADDR.

import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { bundle } from "./bundle.mjs";
import * as sdk from "./index.mjs";
import { DurableObjectNamespace } from "./namespace.mjs";
import { Runtime, log } from "./runtime.mjs";

/** The classes a module exports: those extending DurableObject or having a fetch method. */
export function exportedClasses(mod) {
  const out = new Map();
  for (const [name, value] of Object.entries(mod)) {
    if (name === "default" || typeof value !== "function" || !value.prototype) continue;
    if (value.prototype instanceof sdk.DurableObject || typeof value.prototype.fetch === "function") out.set(name, value);
  }
  return out;
}

/**
 * Loads the project and builds its runtime. `project` = {main, classes?, bindings, vars, rules}.
 * Returns {runtime, cleanup}.
 */
export async function load(project) {
  const built = await bundle(project.main, project.rules, project.config ? path.dirname(project.config) : undefined);
  let mod;
  try {
    mod = await import(pathToFileURL(built.file).href);
  } catch (e) {
    await fs.promises.rm(built.dir, { recursive: true, force: true });
    throw e;
  }
  const exported = exportedClasses(mod);
  const classes = new Map();
  for (const name of project.classes ?? [...exported.keys()]) {
    const Cls = mod[name];
    if (typeof Cls !== "function") {
      await fs.promises.rm(built.dir, { recursive: true, force: true });
      throw new Error(`the entry does not export a class ${name} (named in durable_objects.bindings)`);
    }
    classes.set(name, Cls);
  }
  const env = { ...(project.vars ?? {}) };
  for (const [binding, className] of Object.entries(project.bindings ?? {})) {
    env[binding] = new DurableObjectNamespace(className);
  }
  Object.assign(sdk.env, env);
  const runtime = new Runtime({ classes, front: mod.default, env });
  return { runtime, classes: [...classes.keys()], cleanup: () => fs.rmSync(built.dir, { recursive: true, force: true }) };
}

/** Serves `runtime` on `addr` (`host:port` or `unix:/path`); resolves to the listening server. */
export function listen(runtime, addr) {
  const server = http.createServer({ keepAliveTimeout: 120_000, requestTimeout: 0 }, (req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const ans = await runtime.handle({
        method: req.method,
        url: req.url,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks),
      });
      const flat = [];
      for (const [k, v] of ans.headers) flat.push(k, v);
      flat.push("content-length", String(ans.body.length));
      try {
        res.writeHead(ans.status, flat);
        res.end(req.method === "HEAD" ? undefined : ans.body);
      } catch (e) {
        log(`cannot write the answer: ${e.message}`);
        res.destroy();
      }
    });
  });
  server.on("connection", (s) => s.setNoDelay?.(true));
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    if (addr.startsWith("unix:")) {
      const p = addr.slice(5);
      try {
        if (fs.lstatSync(p).isSocket()) fs.unlinkSync(p);
      } catch {
        // nothing there
      }
      server.listen(p, () => resolve(server));
    } else {
      const i = addr.lastIndexOf(":");
      if (i < 0) return reject(new Error(`STEAD_APP_ADDR must be host:port or unix:/path, not ${addr}`));
      const host = addr.slice(0, i).replace(/^\[|\]$/g, "");
      server.listen(Number(addr.slice(i + 1)), host, () => resolve(server));
    }
  });
}
