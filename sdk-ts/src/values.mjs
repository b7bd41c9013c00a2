// The encoding of stored values.
//
// A value that JSON represents exactly (null, booleans, finite numbers other than -0, strings,
// arrays and plain objects of those) is stored as its JSON text in UTF-8, exactly as the Rust
// SDK stores it (`serde_json`), so both SDKs read each other's values. Any other value of the
// structured-clone algorithm (Map, Set, Date, RegExp, BigInt, ArrayBuffer and typed arrays,
// undefined, NaN, cycles, Error, ...) is stored with V8's serializer (`node:v8`), whose output
// always starts with the byte 0xFF, which JSON text in UTF-8 never does.

import v8 from "node:v8";

const V8_TAG = 0xff;

/** True when `JSON.parse(JSON.stringify(value))` gives `value` back exactly. */
export function isPlainJson(value, seen = new Set()) {
  switch (typeof value) {
    case "string":
    case "boolean":
      return true;
    case "number":
      return Number.isFinite(value) && !Object.is(value, -0);
    case "object": {
      if (value === null) return true;
      if (seen.has(value)) return false;
      const proto = Object.getPrototypeOf(value);
      if (Array.isArray(value)) {
        if (proto !== Array.prototype) return false;
        seen.add(value);
        for (let i = 0; i < value.length; i++) {
          if (!(i in value) || !isPlainJson(value[i], seen)) return false;
        }
        if (Object.keys(value).length !== value.length) return false;
        seen.delete(value);
        return true;
      }
      if (proto !== Object.prototype && proto !== null) return false;
      if (Object.getOwnPropertySymbols(value).length > 0) return false;
      seen.add(value);
      for (const key of Object.keys(value)) {
        if (!isPlainJson(value[key], seen)) return false;
      }
      seen.delete(value);
      return true;
    }
    default:
      return false;
  }
}

/** The bytes stored for `value`. Throws a DataCloneError-like TypeError for values that cannot be cloned. */
export function encodeValue(value) {
  if (isPlainJson(value)) return Buffer.from(JSON.stringify(value), "utf8");
  try {
    return v8.serialize(value);
  } catch (e) {
    const err = new TypeError(`the value cannot be stored: ${e.message} (storage keeps structured-clone values)`);
    err.name = "DataCloneError";
    throw err;
  }
}

/**
 * The value stored as `bytes`. JSON text is parsed; V8-serialized bytes are deserialized; other
 * bytes (written raw by another SDK) come back as a Uint8Array.
 */
export function decodeValue(bytes) {
  if (bytes.length > 0 && bytes[0] === V8_TAG) return v8.deserialize(bytes);
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8"));
  } catch {
    return new Uint8Array(bytes);
  }
}
