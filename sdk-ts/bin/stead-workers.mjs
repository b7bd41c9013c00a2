#!/usr/bin/env node
// The runner of @stead/workers: `describe` a Workers project, or `serve` it as a Stead app.
//
//   stead-workers describe [--config FILE] [--dir DIR]
//   stead-workers serve [--config FILE] [--dir DIR]
//   stead-workers serve --main FILE.js [--binding NAME=Class ...] [--var NAME=VALUE ...]

import path from "node:path";
import { BundleError } from "../src/bundle.mjs";
import { ConfigError, readConfig } from "../src/config.mjs";

const USAGE = `usage: stead-workers describe [--config FILE] [--dir DIR]
       stead-workers serve [--config FILE] [--dir DIR]
       stead-workers serve --main FILE.js [--binding NAME=Class ...] [--var NAME=VALUE ...]`;

function fail(code, message) {
  process.stderr.write(`stead-workers: ${message}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const opts = { bindings: {}, vars: {} };
  const takesValue = new Set(["--config", "--dir", "--main", "--binding", "--var"]);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (!takesValue.has(arg)) fail(2, `unknown argument ${arg}\n${USAGE}`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) fail(2, `${arg} needs a value\n${USAGE}`);
    }
    if (arg === "--binding" || arg === "--var") {
      const j = value.indexOf("=");
      if (j <= 0) fail(2, `${arg} takes NAME=VALUE, not ${value}`);
      opts[arg === "--binding" ? "bindings" : "vars"][value.slice(0, j)] = value.slice(j + 1);
    } else {
      opts[arg.slice(2)] = value;
    }
  }
  return opts;
}

function project(opts) {
  if (opts.main && !opts.config) {
    const classes = [...new Set(Object.values(opts.bindings))];
    return {
      main: path.resolve(opts.main),
      classes: classes.length ? classes : undefined,
      bindings: opts.bindings,
      vars: opts.vars,
      rules: [],
    };
  }
  const p = readConfig({ config: opts.config, dir: opts.dir });
  Object.assign(p.vars, opts.vars);
  return p;
}

async function serve(opts) {
  const { load, listen } = await import("../src/server.mjs");
  const { log } = await import("../src/runtime.mjs");
  const loaded = await load(project(opts));
  process.on("uncaughtException", (e) => log(`uncaught exception: ${e && e.stack ? e.stack : e}`));
  process.on("unhandledRejection", (e) => log(`unhandled rejection: ${e && e.stack ? e.stack : e}`));
  const addr = process.env.STEAD_APP_ADDR || "127.0.0.1:3000";
  const server = await listen(loaded.runtime, addr);
  log(`listening on ${addr} (classes ${loaded.classes.join(", ") || "none"}; app API ${process.env.STEAD_API_URL || "http://127.0.0.1:9787"})`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close(() => {
      loaded.cleanup();
      process.exit(0);
    });
    server.closeIdleConnections?.();
    // Events in flight get a moment to finish; then exit anyway.
    setTimeout(() => {
      loaded.cleanup();
      process.exit(0);
    }, 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  if (command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const opts = parseArgs(rest);
  try {
    if (command === "describe") {
      const { rules: _rules, ...d } = readConfig({ config: opts.config, dir: opts.dir });
      process.stdout.write(`${JSON.stringify(d)}\n`);
    } else if (command === "serve") {
      if (!opts.main && !opts.config && !opts.dir) opts.dir = ".";
      await serve(opts);
    } else {
      fail(2, `unknown command ${command ?? "(none)"}\n${USAGE}`);
    }
  } catch (e) {
    if (e instanceof ConfigError) fail(2, e.message);
    if (e instanceof BundleError) fail(1, `the project cannot be bundled:\n${e.message}`);
    fail(1, e && e.stack ? e.stack : String(e));
  }
}

main();
