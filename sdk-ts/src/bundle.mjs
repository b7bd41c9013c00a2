// Bundling a user's entry with esbuild, as wrangler does: TypeScript, module rules (Text, Data,
// CompiledWasm), and `cloudflare:workers` resolved to this SDK (kept external, so that user
// code and the runner share one copy of its classes).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

const SDK_INDEX = fileURLToPath(new URL("./index.mjs", import.meta.url));

/** wrangler's default module rules. */
const DEFAULT_RULES = [
  { type: "Text", globs: ["**/*.txt", "**/*.html", "**/*.sql"] },
  { type: "Data", globs: ["**/*.bin"] },
  { type: "CompiledWasm", globs: ["**/*.wasm", "**/*.wasm?module"] },
];

/** A bundling failure: esbuild's formatted messages. */
export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

/** Extension -> rule type, from the config's `rules` (first match wins) then the defaults. */
function loadersOf(rules) {
  const byExt = new Map();
  for (const rule of [...(rules ?? []), ...DEFAULT_RULES]) {
    for (const glob of rule.globs ?? []) {
      const m = /\*(\.[A-Za-z0-9_.-]+)(\?module)?$/.exec(glob);
      if (m && !byExt.has(m[1])) byExt.set(m[1], rule.type);
    }
  }
  return byExt;
}

const steadPlugin = (byExt) => ({
  name: "stead",
  setup(build) {
    build.onResolve({ filter: /^cloudflare:workers$/ }, () => ({ path: pathToFileURL(SDK_INDEX).href, external: true }));
    build.onResolve({ filter: /^cloudflare:/ }, (args) => ({
      errors: [{ text: `${args.path} is not offered on Stead (only cloudflare:workers is)` }],
    }));
    const exts = [...byExt.keys()].map((e) => e.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    if (exts.length === 0) return;
    const filter = new RegExp(`(${exts.join("|")})$`);
    build.onLoad({ filter }, async (args) => {
      const ext = Object.keys(Object.fromEntries(byExt)).find((e) => args.path.endsWith(e));
      const type = byExt.get(ext);
      const bytes = await fs.promises.readFile(args.path);
      switch (type) {
        case "Text":
          return { contents: bytes.toString("utf8"), loader: "text" };
        case "Data":
          return {
            contents: `const b = Buffer.from(${JSON.stringify(bytes.toString("base64"))}, "base64"); export default b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);`,
            loader: "js",
          };
        case "CompiledWasm":
          return {
            contents: `export default new WebAssembly.Module(Buffer.from(${JSON.stringify(bytes.toString("base64"))}, "base64"));`,
            loader: "js",
          };
        default:
          return undefined;
      }
    });
  },
});

/**
 * Bundles `main` into a fresh temporary folder; returns `{file, dir}` (the caller removes `dir`).
 * Throws BundleError with esbuild's messages.
 */
export async function bundle(main, rules, root) {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), "stead-workers-"));
  const outfile = path.join(dir, "worker.mjs");
  try {
    await esbuild.build({
      entryPoints: [main],
      absWorkingDir: root ?? path.dirname(main),
      bundle: true,
      format: "esm",
      platform: "node",
      target: "node20",
      outfile,
      sourcemap: "inline",
      logLevel: "silent",
      conditions: ["workerd", "worker"],
      banner: { js: 'import { createRequire as __steadCreateRequire } from "node:module"; const require = __steadCreateRequire(import.meta.url);' },
      plugins: [steadPlugin(loadersOf(rules))],
    });
  } catch (e) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    if (e.errors) {
      const text = await esbuild.formatMessages(e.errors, { kind: "error", color: false });
      throw new BundleError(text.join("").trimEnd());
    }
    throw e;
  }
  return { file: outfile, dir };
}
