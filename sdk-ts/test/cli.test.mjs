// The runner's command line: describe (what `stead dev` reads) and serve's failures.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { RUNNER, project } from "./helpers.mjs";

function run(args, opts = {}) {
  const r = spawnSync(process.execPath, [RUNNER, ...args], { encoding: "utf8", timeout: 30_000, ...opts });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const TOML = `name = "demo"
main = "src/index.ts"
[vars]
API_HOST = "example.com"
LIMIT = 3
[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"
[[durable_objects.bindings]]
name = "ROOM"
class_name = "Room"
[[durable_objects.bindings]]
name = "ROOM2"
class_name = "Room"
[[durable_objects.bindings]]
name = "EXTERNAL"
class_name = "Other"
script_name = "other-worker"
`;

test("describe prints one line of JSON with absolute paths, classes, bindings, vars and watch", () => {
  const dir = project({ "wrangler.toml": TOML, "src/index.ts": "export default {}" });
  try {
    const r = run(["describe", "--dir", dir]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.equal(lines.length, 1);
    const d = JSON.parse(lines[0]);
    assert.deepEqual(d, {
      config: path.join(dir, "wrangler.toml"),
      main: path.join(dir, "src", "index.ts"),
      classes: ["Counter", "Room"],
      bindings: { COUNTER: "Counter", ROOM: "Room", ROOM2: "Room" },
      vars: { API_HOST: "example.com", LIMIT: 3 },
      watch: [path.join(dir, "src"), path.join(dir, "wrangler.toml")],
    });
    const byConfig = run(["describe", "--config", path.join(dir, "wrangler.toml")], { cwd: "/" });
    assert.deepEqual(JSON.parse(byConfig.stdout), d);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("describe reads wrangler.jsonc with comments and trailing commas, after wrangler.json", () => {
  const jsonc = `{
    // the entry
    "main": "worker.js", /* block comment */
    "durable_objects": { "bindings": [ { "name": "C", "class_name": "Counter", }, ], },
    "vars": { "URL": "http://a//b" },
  }`;
  const dir = project({ "wrangler.jsonc": jsonc, "worker.js": "" });
  try {
    const d = JSON.parse(run(["describe", "--dir", dir]).stdout);
    assert.equal(d.main, path.join(dir, "worker.js"));
    assert.deepEqual(d.vars, { URL: "http://a//b" });
    assert.deepEqual(d.classes, ["Counter"]);
    fs.writeFileSync(path.join(dir, "wrangler.json"), JSON.stringify({ main: "worker.js", durable_objects: { bindings: [{ name: "X", class_name: "Other" }] } }));
    assert.deepEqual(JSON.parse(run(["describe", "--dir", dir]).stdout).classes, ["Other"]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("describe exits 2 with one clear line when the config, main or bindings are missing", () => {
  const cases = [
    [{ "x.txt": "" }, /no wrangler\.toml, wrangler\.json or wrangler\.jsonc/],
    [{ "wrangler.toml": 'name = "x"\n' }, /has no "main"/],
    [{ "wrangler.toml": 'main = "gone.js"\n' }, /main gone\.js .* does not exist/],
    [{ "wrangler.toml": 'main = "w.js"\n', "w.js": "" }, /no durable_objects\.bindings/],
    [{ "wrangler.toml": "main = = 1\n" }, /cannot be parsed/],
  ];
  for (const [files, message] of cases) {
    const dir = project(files);
    try {
      const r = run(["describe", "--dir", dir]);
      assert.equal(r.code, 2, `${JSON.stringify(files)}: ${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test("serve exits 1 with esbuild's message when the project does not bundle", () => {
  const dir = project({
    "wrangler.toml": 'main = "src/index.ts"\n[[durable_objects.bindings]]\nname = "C"\nclass_name = "Counter"\n',
    "src/index.ts": "export class Counter {\n  fetch( {\n}\n",
  });
  try {
    const r = run(["serve", "--dir", dir], { env: { ...process.env, STEAD_APP_ADDR: "127.0.0.1:1" } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot be bundled/);
    assert.match(r.stderr, /ERROR\] Expected "\)"/);
    assert.match(r.stderr, /^ {4}src\/index\.ts:4:0:$/m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("serve exits 1 when a bound class is not exported", () => {
  const dir = project({
    "wrangler.toml": 'main = "w.js"\n[[durable_objects.bindings]]\nname = "C"\nclass_name = "Counter"\n',
    "w.js": "export class Other {}\n",
  });
  try {
    const r = run(["serve", "--dir", dir], { env: { ...process.env, STEAD_APP_ADDR: "127.0.0.1:1" } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /does not export a class Counter/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
