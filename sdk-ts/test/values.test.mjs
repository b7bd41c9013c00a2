// The encoding of stored values: JSON as the Rust SDK stores it, structured clone otherwise.

import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeValue, encodeValue } from "../src/values.mjs";

test("plain JSON values are stored as their JSON text, as serde_json writes and reads them", () => {
  assert.equal(encodeValue(3).toString(), "3");
  assert.equal(encodeValue("hi").toString(), '"hi"');
  assert.equal(encodeValue({ a: [1, true, null], b: 1.5 }).toString(), '{"a":[1,true,null],"b":1.5}');
  // What the Rust SDK writes for `storage.put("k", &json!({"n": 1}))`.
  assert.deepEqual(decodeValue(Buffer.from('{"n":1}')), { n: 1 });
});

test("values JSON cannot keep exactly are stored with V8's serializer and come back as they were", () => {
  const values = [
    new Map([["a", 1]]),
    new Set([1]),
    new Date(5),
    10n,
    undefined,
    NaN,
    -0,
    Infinity,
    new Uint8Array([1, 2]),
    new ArrayBuffer(3),
    { nested: { u: undefined } },
    [1, , 3],
    /re/g,
  ];
  for (const v of values) {
    const bytes = encodeValue(v);
    assert.equal(bytes[0], 0xff, `V8 tag for ${String(v)}`);
    assert.deepEqual(decodeValue(bytes), v);
  }
  const cyclic = { name: "c" };
  cyclic.self = cyclic;
  const back = decodeValue(encodeValue(cyclic));
  assert.equal(back.self, back);
});

test("values that cannot be cloned are refused with a DataCloneError", () => {
  assert.throws(() => encodeValue(() => 1), { name: "DataCloneError" });
  assert.throws(() => encodeValue({ f: Symbol("s") }), { name: "DataCloneError" });
});

test("bytes that are neither JSON nor V8 come back as a Uint8Array", () => {
  const raw = Buffer.from([0x00, 0x9f, 0x92, 0x96]);
  assert.deepEqual(decodeValue(raw), new Uint8Array(raw));
});
