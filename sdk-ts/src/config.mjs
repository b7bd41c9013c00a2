// Reading a Workers project's config (wrangler.toml, wrangler.json, wrangler.jsonc).

import fs from "node:fs";
import path from "node:path";
import { parse as parseToml } from "smol-toml";

export const CONFIG_NAMES = ["wrangler.toml", "wrangler.json", "wrangler.jsonc"];

/** A config problem the user must fix: the CLI prints its message and exits 2. */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConfigError";
  }
}

/** JSON with comments and trailing commas (wrangler.jsonc). */
export function parseJsonc(text) {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      i = end < 0 ? text.length : end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return JSON.parse(out.replace(/,(\s*[}\]])/g, "$1"));
}

/** Finds the config: `configPath` if given, else the first of CONFIG_NAMES in `dir`. */
export function findConfig({ config, dir }) {
  if (config) {
    const p = path.resolve(config);
    if (!fs.existsSync(p)) throw new ConfigError(`config file ${config} does not exist`);
    return p;
  }
  const d = path.resolve(dir ?? ".");
  for (const name of CONFIG_NAMES) {
    const p = path.join(d, name);
    if (fs.existsSync(p)) return p;
  }
  throw new ConfigError(`no wrangler.toml, wrangler.json or wrangler.jsonc in ${dir ?? "the current folder"}; pass --config FILE`);
}

/** Reads and checks the config; returns what `describe` prints, plus `rules` for bundling. */
export function readConfig(opts) {
  const file = findConfig(opts);
  const text = fs.readFileSync(file, "utf8");
  let raw;
  try {
    raw = file.endsWith(".toml") ? parseToml(text) : parseJsonc(text);
  } catch (e) {
    throw new ConfigError(`${path.basename(file)} cannot be parsed: ${e.message.split("\n")[0]}`);
  }
  if (!raw.main || typeof raw.main !== "string") {
    throw new ConfigError(`${path.basename(file)} has no "main" (the Worker's entry module, e.g. main = "src/index.ts")`);
  }
  const main = path.resolve(path.dirname(file), raw.main);
  if (!fs.existsSync(main)) throw new ConfigError(`main ${raw.main} (in ${path.basename(file)}) does not exist`);
  const list = raw.durable_objects?.bindings;
  if (!Array.isArray(list) || list.length === 0) {
    throw new ConfigError(`${path.basename(file)} has no durable_objects.bindings (each { name = "COUNTER", class_name = "Counter" })`);
  }
  const bindings = {};
  const classes = [];
  for (const b of list) {
    if (!b || typeof b.name !== "string" || typeof b.class_name !== "string") {
      throw new ConfigError(`every durable_objects.bindings entry needs a name and a class_name`);
    }
    if (!/^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(b.class_name)) {
      throw new ConfigError(`class_name ${JSON.stringify(b.class_name)} must start with a letter and hold only letters, digits and '_' (at most 64)`);
    }
    if (b.script_name) continue;
    bindings[b.name] = b.class_name;
    if (!classes.includes(b.class_name)) classes.push(b.class_name);
  }
  if (classes.length === 0) {
    throw new ConfigError(`every durable_objects.bindings entry names another script (script_name); Stead serves only this Worker's own classes`);
  }
  const vars = raw.vars && typeof raw.vars === "object" ? raw.vars : {};
  const watch = [path.dirname(main), file];
  return { config: file, main, classes, bindings, vars, watch, rules: Array.isArray(raw.rules) ? raw.rules : [] };
}
