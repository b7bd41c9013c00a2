// `ctx.storage`: key-value storage with the protocol-2 cache (docs/app-protocol.md#protocol-2),
// SQL through synchronous calls, alarms.

import { call } from "./api.mjs";
import { callSync } from "./sync.mjs";
import { decodeValue, encodeValue } from "./values.mjs";

/** Keys and values larger than these are written with a call, so that a limit fails at the call. */
const MAX_BUFFERED_KEY = 512;
const MAX_BUFFERED_VALUE = 16 << 10;
/** Past this many buffered bytes, the buffer is sent with calls. */
const MAX_PENDING_BYTES = 1 << 20;
/** The committed cache of one object is forgotten (and asks again) past this size. */
const MAX_CACHE_BYTES = 256 << 10;
/** Keys or entries per call (the sidecar's default `--max-batch`). */
const BATCH = 128;

const utf8 = (s) => Buffer.from(s, "utf8");
const compareKeys = (a, b) => Buffer.compare(utf8(a), utf8(b));

/** What one object instance knows of its committed storage (one incarnation). */
export class ObjectCache {
  constructor() {
    this.forget();
  }
  forget() {
    /** key -> Buffer (present) or null (known absent) */
    this.map = new Map();
    /** every key that exists is in `map` */
    this.complete = false;
    /** undefined: unknown; null: no alarm; number: epoch ms */
    this.alarm = undefined;
    this.bytes = 0;
  }
  load(entries, alarm) {
    this.forget();
    for (const { key, value } of entries) this.set(key, Buffer.from(value, "base64"));
    this.complete = true;
    this.alarm = alarm ?? null;
  }
  set(key, value) {
    const old = this.map.get(key);
    if (old) this.bytes -= old.length + key.length;
    this.map.set(key, value);
    if (value) this.bytes += value.length + key.length;
    else this.bytes += key.length;
  }
  trim() {
    if (this.bytes > MAX_CACHE_BYTES) {
      const alarm = this.alarm;
      this.forget();
      this.alarm = alarm;
    }
  }
}

/** The storage state of one turn: its view over the cache and its unsent writes. */
export class TurnStorage {
  constructor(token, cache, { v2, alarmEvent }) {
    this.token = token;
    this.cache = cache;
    this.v2 = v2;
    this.alarmEvent = alarmEvent;
    /** this turn's writes, as the turn sees them: key -> Buffer or null */
    this.overlay = new Map();
    /** the turn deleted everything (before the overlay's writes) */
    this.cleared = false;
    /** writes not yet sent to the sidecar: key -> Buffer or null */
    this.unsent = new Map();
    this.unsentClear = false;
    this.unsentBytes = 0;
    /** the alarm as this turn sees it: undefined = as the cache says */
    this.alarmView = alarmEvent ? null : undefined;
    /** the alarm write to send: undefined = none */
    this.alarmWrite = undefined;
    this.finished = false;
  }

  check() {
    if (this.finished) {
      throw new Error(
        "this storage call comes after its event was answered; Stead binds storage to the event's turn (await every storage call before returning)",
      );
    }
  }

  /** Buffer, null (absent) or undefined (ask the sidecar). */
  lookup(key) {
    if (this.overlay.has(key)) return this.overlay.get(key);
    if (this.cleared) return null;
    if (this.cache.map.has(key)) return this.cache.map.get(key);
    if (this.cache.complete) return null;
    return undefined;
  }

  bufferWrite(key, value) {
    this.overlay.set(key, value);
    this.unsent.set(key, value);
    this.unsentBytes += key.length + (value ? value.length : 0);
  }

  /** Sends the unsent writes with calls (before a list, a direct write, or when the buffer is full). */
  async flush() {
    const w = this.takeWrites(false);
    await sendWrites(this.token, w);
  }

  /** The unsent writes as a `stead-writes` document, and forgets them. */
  takeWrites(withAlarm) {
    const doc = {};
    if (this.unsentClear) doc.delete_all = true;
    const del = [];
    const put = [];
    for (const [key, value] of this.unsent) {
      if (value === null) del.push(key);
      else put.push({ key, value: value.toString("base64") });
    }
    if (del.length) doc.delete = del;
    if (put.length) doc.put = put;
    if (withAlarm && this.alarmWrite !== undefined) doc.alarm = { time_ms: this.alarmWrite };
    this.unsent = new Map();
    this.unsentClear = false;
    this.unsentBytes = 0;
    return doc;
  }

  /** Ends the turn: on commit the turn's view becomes the cache's; returns the writes to carry. */
  finish(commits) {
    this.finished = true;
    if (!commits) return null;
    const cache = this.cache;
    if (this.cleared) {
      cache.map = new Map();
      cache.bytes = 0;
      cache.complete = true;
    }
    for (const [key, value] of this.overlay) cache.set(key, value);
    if (this.alarmWrite !== undefined) cache.alarm = this.alarmWrite;
    else if (this.alarmEvent) cache.alarm = null;
    const doc = this.takeWrites(true);
    cache.trim();
    return Object.keys(doc).length ? doc : null;
  }
}

/** Sends a `stead-writes` document with calls (for answers that cannot carry it). */
export async function sendWrites(token, doc) {
  if (!doc) return;
  if (doc.delete_all) await call(token, "kv/delete-all", {});
  for (let i = 0; doc.delete && i < doc.delete.length; i += BATCH) {
    await call(token, "kv/delete", { keys: doc.delete.slice(i, i + BATCH) });
  }
  for (let i = 0; doc.put && i < doc.put.length; i += BATCH) {
    await call(token, "kv/put", { entries: doc.put.slice(i, i + BATCH) });
  }
  if (doc.alarm) {
    if (doc.alarm.time_ms === null) await call(token, "alarm/delete", {});
    else await call(token, "alarm/set", { time_ms: doc.alarm.time_ms });
  }
  for (const { op, ...body } of doc.websockets ?? []) {
    await call(token, `websockets/${op === "auto_response" ? "auto-response" : op}`, body);
  }
}

function checkKey(key) {
  if (typeof key !== "string") throw new TypeError(`a storage key must be a string, not ${typeof key}`);
  return key;
}

function toTime(t) {
  const ms = t instanceof Date ? t.getTime() : Number(t);
  if (!Number.isFinite(ms)) throw new TypeError("setAlarm() takes a Date or epoch milliseconds");
  return Math.trunc(ms);
}

/** `ctx.storage` of one object instance. `turnOf()` gives the current turn's TurnStorage. */
export class DurableObjectStorage {
  #turnOf;
  #owner;
  constructor(turnOf, owner) {
    this.#turnOf = turnOf;
    this.#owner = owner;
    this.sql = new SqlStorage(() => this.#turn());
  }

  #turn() {
    const t = this.#turnOf();
    if (!t) {
      throw new Error(
        "sql.exec() and transactionSync() are synchronous and run only in the turn of an event (fetch, alarm, webSocket* handlers); between events (timers, promises not awaited) use the asynchronous ctx.storage calls, which run in a turn of their own",
      );
    }
    t.check();
    return t;
  }

  async get(keyOrKeys, _options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.get(keyOrKeys, _options));
    const t = this.#turn();
    if (Array.isArray(keyOrKeys)) return this.#getMany(t, keyOrKeys.map(checkKey));
    const key = checkKey(keyOrKeys);
    if (!t.v2) {
      const ans = await call(t.token, "kv/get", { key });
      return ans.value == null ? undefined : decodeValue(Buffer.from(ans.value, "base64"));
    }
    let found = t.lookup(key);
    if (found === undefined) {
      const ans = await call(t.token, "kv/get", { key });
      found = ans.value == null ? null : Buffer.from(ans.value, "base64");
      if (!t.overlay.has(key) && !t.cleared) t.cache.set(key, found);
    }
    return found === null ? undefined : decodeValue(found);
  }

  async #getMany(t, keys) {
    const known = new Map();
    const ask = [];
    for (const key of keys) {
      const v = t.v2 ? t.lookup(key) : undefined;
      if (v === undefined) ask.push(key);
      else known.set(key, v);
    }
    for (let i = 0; i < ask.length; i += BATCH) {
      const chunk = [...new Set(ask.slice(i, i + BATCH))];
      const ans = await call(t.token, "kv/get", { keys: chunk });
      const got = new Map(ans.entries.map((e) => [e.key, Buffer.from(e.value, "base64")]));
      for (const key of chunk) {
        const v = got.get(key) ?? null;
        known.set(key, v);
        if (t.v2 && !t.overlay.has(key) && !t.cleared) t.cache.set(key, v);
      }
    }
    const out = new Map();
    for (const key of keys) {
      const v = known.get(key);
      if (v) out.set(key, decodeValue(v));
    }
    return out;
  }

  async put(keyOrEntries, value, _options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.put(keyOrEntries, value, _options));
    const t = this.#turn();
    let entries;
    if (typeof keyOrEntries === "object" && keyOrEntries !== null) {
      entries = Object.entries(keyOrEntries);
    } else {
      if (value === undefined) throw new TypeError("put() needs a value (to remove a key use delete())");
      entries = [[checkKey(keyOrEntries), value]];
    }
    const encoded = entries.map(([k, v]) => [checkKey(k), encodeValue(v)]);
    if (encoded.length > BATCH) throw new RangeError(`put() takes at most ${BATCH} entries at once, got ${encoded.length}`);
    const large = encoded.some(([k, v]) => utf8(k).length > MAX_BUFFERED_KEY || v.length > MAX_BUFFERED_VALUE);
    if (!t.v2 || large) {
      if (t.v2) await t.flush();
      const wire = encoded.map(([key, v]) => ({ key, value: v.toString("base64") }));
      await call(t.token, "kv/put", wire.length === 1 ? wire[0] : { entries: wire });
      if (t.v2) for (const [k, v] of encoded) t.overlay.set(k, v);
      return;
    }
    for (const [k, v] of encoded) t.bufferWrite(k, v);
    if (t.unsentBytes > MAX_PENDING_BYTES) await t.flush();
  }

  async delete(keyOrKeys, _options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.delete(keyOrKeys, _options));
    const t = this.#turn();
    const many = Array.isArray(keyOrKeys);
    const keys = (many ? keyOrKeys : [keyOrKeys]).map(checkKey);
    if (keys.length > BATCH) throw new RangeError(`delete() takes at most ${BATCH} keys at once, got ${keys.length}`);
    let count = 0;
    if (!t.v2 || keys.some((k) => t.lookup(k) === undefined)) {
      if (t.v2) await t.flush();
      const ans = await call(t.token, "kv/delete", many ? { keys } : { key: keys[0] });
      count = ans.deleted;
      if (t.v2) for (const k of keys) t.overlay.set(k, null);
    } else {
      const seen = new Set();
      for (const k of keys) {
        if (!seen.has(k) && t.lookup(k)) count++;
        seen.add(k);
        t.bufferWrite(k, null);
      }
    }
    return many ? count : count > 0;
  }

  async deleteAll(_options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.deleteAll(_options));
    const t = this.#turn();
    if (!t.v2) {
      await call(t.token, "kv/delete-all", {});
      return;
    }
    t.overlay = new Map();
    t.unsent = new Map();
    t.unsentBytes = 0;
    t.cleared = true;
    t.unsentClear = true;
  }

  async list(options = {}) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.list(options));
    const t = this.#turn();
    let { start, startAfter, end, prefix, reverse, limit } = options;
    if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new RangeError("list() limit must be a positive integer");
    if (startAfter !== undefined) {
      if (start !== undefined) throw new TypeError("list() takes start or startAfter, not both");
      start = `${startAfter}\0`;
    }
    if (t.v2 && (t.cache.complete || t.cleared)) return this.#listLocal(t, { start, end, prefix, reverse, limit });
    if (t.v2) await t.flush();
    const body = {};
    if (prefix !== undefined) body.prefix = prefix;
    if (start !== undefined) body.start = start;
    if (end !== undefined) body.end = end;
    if (limit !== undefined) body.limit = limit;
    if (reverse) body.reverse = true;
    const ans = await call(t.token, "kv/list", body);
    const out = new Map();
    for (const { key, value } of ans.entries) {
      const bytes = Buffer.from(value, "base64");
      out.set(key, decodeValue(bytes));
      if (t.v2 && !t.overlay.has(key) && !t.cleared) t.cache.set(key, bytes);
    }
    return out;
  }

  #listLocal(t, { start, end, prefix, reverse, limit }) {
    const keys = new Set(t.overlay.keys());
    if (!t.cleared) for (const k of t.cache.map.keys()) keys.add(k);
    const sb = start !== undefined ? utf8(start) : null;
    const eb = end !== undefined ? utf8(end) : null;
    const pb = prefix !== undefined ? utf8(prefix) : null;
    const picked = [];
    for (const k of keys) {
      const v = t.lookup(k);
      if (!v) continue;
      const kb = utf8(k);
      if (sb && Buffer.compare(kb, sb) < 0) continue;
      if (eb && Buffer.compare(kb, eb) >= 0) continue;
      if (pb && !(kb.length >= pb.length && kb.subarray(0, pb.length).equals(pb))) continue;
      picked.push([k, v]);
    }
    picked.sort((a, b) => compareKeys(a[0], b[0]));
    if (reverse) picked.reverse();
    const out = new Map();
    for (const [k, v] of limit !== undefined ? picked.slice(0, limit) : picked) out.set(k, decodeValue(v));
    return out;
  }

  async getAlarm(_options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.getAlarm(_options));
    const t = this.#turn();
    if (t.v2) {
      if (t.alarmView !== undefined) return t.alarmView;
      if (t.cache.alarm !== undefined) return t.cache.alarm;
    }
    const ans = await call(t.token, "alarm/get", {});
    if (t.v2) t.cache.alarm = ans.time_ms;
    return ans.time_ms;
  }

  async setAlarm(time, _options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.setAlarm(time, _options));
    const t = this.#turn();
    const ms = toTime(time);
    if (!t.v2) {
      await call(t.token, "alarm/set", { time_ms: ms });
      return;
    }
    t.alarmView = ms;
    t.alarmWrite = ms;
  }

  async deleteAlarm(_options) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.deleteAlarm(_options));
    const t = this.#turn();
    if (!t.v2) {
      await call(t.token, "alarm/delete", {});
      return;
    }
    t.alarmView = null;
    t.alarmWrite = null;
  }

  /**
   * Runs `fn` synchronously. Stead's turn is the transaction and SQLite savepoints are not
   * offered to apps: if `fn` throws, the whole turn rolls back (not only what `fn` wrote).
   */
  transactionSync(fn) {
    const t = this.#turn();
    try {
      return fn();
    } catch (e) {
      t.mustRollBack = true;
      throw e;
    }
  }

  /** Runs `fn` (async); if it throws, the whole turn rolls back (see transactionSync). */
  async transaction(fn) {
    if (!this.#turnOf()) return this.#owner.detached(() => this.transaction(fn));
    const t = this.#turn();
    try {
      return await fn(this.#owner.txn ?? this);
    } catch (e) {
      t.mustRollBack = true;
      throw e;
    }
  }

  /** Writes are durable when the turn's answer leaves; nothing to wait for here. */
  async sync() {}
}

function toSqlParam(v) {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new TypeError(`a SQL parameter must be a finite number, got ${v}`);
    return v;
  }
  if (typeof v === "bigint") return Number(v);
  if (v instanceof ArrayBuffer) return { base64: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) return { base64: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  throw new TypeError(`a SQL parameter must be null, a number, a string, a boolean or an ArrayBuffer, not ${v === undefined ? "undefined" : typeof v}`);
}

function fromSqlValue(v) {
  if (v !== null && typeof v === "object" && typeof v.base64 === "string") {
    const b = Buffer.from(v.base64, "base64");
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  }
  return v;
}

/** `ctx.storage.sql`: synchronous SQL on the object's own SQLite database. */
export class SqlStorage {
  #turn;
  constructor(turn) {
    this.#turn = turn;
  }
  exec(query, ...bindings) {
    const t = this.#turn();
    const ans = callSync(t.token, "sql/exec", { sql: String(query), params: bindings.map(toSqlParam) });
    return new SqlStorageCursor(ans);
  }
  /** Not tracked per statement on Stead; always 0. */
  get databaseSize() {
    return 0;
  }
}

export class SqlStorageCursor {
  #rows;
  #i = 0;
  constructor(ans) {
    this.columnNames = ans.columns ?? [];
    this.#rows = (ans.rows ?? []).map((r) => r.map(fromSqlValue));
    this.rowsRead = ans.rows_read ?? 0;
    this.rowsWritten = ans.rows_written ?? 0;
  }
  #object(row) {
    const o = {};
    this.columnNames.forEach((c, i) => {
      o[c] = row[i];
    });
    return o;
  }
  next() {
    if (this.#i >= this.#rows.length) return { done: true, value: undefined };
    return { done: false, value: this.#object(this.#rows[this.#i++]) };
  }
  [Symbol.iterator]() {
    return this;
  }
  toArray() {
    const out = [];
    for (const row of this) out.push(row);
    return out;
  }
  one() {
    const rest = this.#rows.length - this.#i;
    if (rest !== 1) {
      throw new Error(rest === 0 ? "Expected exactly one result from SQL query, but got no results." : "Expected exactly one result from SQL query, but got multiple results.");
    }
    return this.next().value;
  }
  raw() {
    const self = this;
    const rows = this.#rows;
    const it = {
      next() {
        if (self.#i >= rows.length) return { done: true, value: undefined };
        return { done: false, value: rows[self.#i++] };
      },
      [Symbol.iterator]() {
        return it;
      },
      toArray() {
        const out = [];
        for (const r of it) out.push(r);
        return out;
      },
    };
    return it;
  }
}
