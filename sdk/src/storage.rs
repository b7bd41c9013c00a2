//! Storage of one object: key-value and SQL, bound to the turn.

use std::collections::HashMap;

use base64::prelude::*;
use bytes::Bytes;
use http::HeaderValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::cache::{
    Lookup, MAX_BUFFERED_BATCH, MAX_BUFFERED_KEY, MAX_BUFFERED_VALUE, MAX_CARRIED_SQL, TurnCache,
    Writes,
};
use crate::client::ApiClient;
use crate::error::{Error, Result};

/// The storage of the object a turn belongs to.
///
/// Every operation is part of the turn's transaction: reads see the turn's own writes, and every
/// write commits or rolls back with the turn. A `Storage` is cheap to clone; once the turn has
/// ended, operations fail with [`ApiError`](crate::ApiError) `410 turn_finished`.
///
/// With a sidecar that offers protocol 2 (and unless the app forces protocol 1, see
/// [`App::protocol`](crate::App::protocol)), reads of keys the object instance already knows make
/// no call, and small writes are buffered and travel with the turn's answer; writes that could
/// break a limit (a key over 512 bytes, a value over 16 KiB, a batch over 128) are still calls,
/// so their refusals come back here. Otherwise every operation is a call of the sidecar's app
/// API under the turn's token. See `docs/sdk.md`, "Protocol 2: the storage cache".
///
/// Key-value values are stored as the bytes of their `serde_json` encoding, so any
/// `Serialize`/`Deserialize` type works, and apps in other languages read them as JSON.
///
/// ```no_run
/// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
/// let storage = turn.storage();
/// storage.put("visits", &41u64).await?;
/// let visits: Option<u64> = storage.get("visits").await?;
/// assert_eq!(visits, Some(41));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Storage {
    api: ApiClient,
    token: HeaderValue,
    /// Protocol 2: the instance's cache and this turn's buffer.
    cache: Option<TurnCache>,
}

/// Options of [`Storage::list`]. All are optional; `start` is inclusive, `end` exclusive, keys
/// sort by their UTF-8 bytes.
///
/// ```
/// use stead_sdk::ListOptions;
/// let opts = ListOptions::prefix("user:").limit(10).reverse();
/// assert_eq!(opts.limit, Some(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListOptions {
    /// Only keys starting with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only keys `>=` this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Only keys `<` this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// At most this many entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Descending key order.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reverse: bool,
}

impl ListOptions {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: Some(prefix.into()),
            ..Self::default()
        }
    }

    /// Keys from `start` (inclusive).
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }

    /// Keys before `end` (exclusive).
    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
    }

    /// At most `limit` entries.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Descending key order.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Deserialize)]
struct WireEntry {
    key: String,
    value: Option<String>,
}

#[derive(Deserialize)]
struct ValueAnswer {
    value: Option<String>,
}

#[derive(Deserialize)]
struct EntriesAnswer {
    entries: Vec<WireEntry>,
}

#[derive(Deserialize)]
struct WrittenAnswer {
    written: u64,
}

#[derive(Deserialize)]
struct DeletedAnswer {
    deleted: u64,
}

fn decode(b64: &str) -> Result<Vec<u8>> {
    BASE64_STANDARD
        .decode(b64)
        .map_err(|e| Error::Protocol(format!("a value is not valid base64: {e}")))
}

fn decode_json<T: DeserializeOwned>(b64: &str) -> Result<T> {
    Ok(serde_json::from_slice(&decode(b64)?)?)
}

fn decode_entries<T: DeserializeOwned>(entries: Vec<WireEntry>) -> Result<Vec<(String, T)>> {
    entries
        .into_iter()
        .filter_map(|e| Some((e.key, e.value?)))
        .map(|(k, v)| Ok((k, decode_json(&v)?)))
        .collect()
}

impl Storage {
    /// A handle that calls the app API for everything (protocol 1).
    #[cfg(test)]
    pub(crate) fn new(api: ApiClient, token: HeaderValue) -> Self {
        Self {
            api,
            token,
            cache: None,
        }
    }

    /// A handle that answers from `cache` and buffers writes in it (protocol 2).
    pub(crate) fn with_cache(api: ApiClient, token: HeaderValue, cache: Option<TurnCache>) -> Self {
        Self { api, token, cache }
    }

    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R> {
        self.api.call(&self.token, path, body).await
    }

    /// The value under `key`, or `None` if there is none.
    ///
    /// Fails with [`Error::Json`] if the stored bytes are not the JSON of a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_shared(key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The raw bytes under `key`, whatever wrote them.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_shared(key).await?.map(|b| b.to_vec()))
    }

    async fn get_shared(&self, key: &str) -> Result<Option<Bytes>> {
        let Some(cache) = &self.cache else {
            return self.fetch(key).await;
        };
        let _op = cache.op().await;
        let fill = match cache.lock().get(cache.id(), key)? {
            Lookup::Known(value) => return Ok(value),
            Lookup::Ask { fill } => fill,
        };
        let value = self.fetch(key).await?;
        if fill {
            cache.lock().fill(cache.id(), key, value.clone());
        }
        Ok(value)
    }

    async fn fetch(&self, key: &str) -> Result<Option<Bytes>> {
        let answer: ValueAnswer = self
            .call("kv/get", &serde_json::json!({ "key": key }))
            .await?;
        Ok(answer
            .value
            .as_deref()
            .map(decode)
            .transpose()?
            .map(Bytes::from))
    }

    /// The values under `keys` (at most 128), for the keys that have one, in request order.
    pub async fn get_many<K, T>(&self, keys: &[K]) -> Result<Vec<(String, T)>>
    where
        K: AsRef<str>,
        T: DeserializeOwned,
    {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let Some(cache) = &self.cache else {
            return self.get_many_call(&keys).await;
        };
        let _op = cache.op().await;
        if keys.is_empty() || keys.len() > MAX_BUFFERED_BATCH {
            // The sidecar says what is wrong with the batch (and it must see this turn's writes
            // if it takes it).
            self.send_pending(cache).await?;
            return self.get_many_call(&keys).await;
        }
        let mut known: HashMap<&str, Option<Bytes>> = HashMap::new();
        let mut ask: Vec<(&str, bool)> = vec![];
        {
            let c = cache.lock();
            for &k in &keys {
                match c.get(cache.id(), k)? {
                    Lookup::Known(v) => {
                        known.insert(k, v);
                    }
                    Lookup::Ask { fill } if !ask.iter().any(|(a, _)| *a == k) => {
                        ask.push((k, fill));
                    }
                    Lookup::Ask { .. } => {}
                }
            }
        }
        if !ask.is_empty() {
            let asked: Vec<&str> = ask.iter().map(|(k, _)| *k).collect();
            let answer: EntriesAnswer = self
                .call("kv/get", &serde_json::json!({ "keys": asked }))
                .await?;
            let mut found: HashMap<String, Bytes> = HashMap::new();
            for e in answer.entries {
                if let Some(v) = e.value {
                    found.insert(e.key, Bytes::from(decode(&v)?));
                }
            }
            let mut c = cache.lock();
            for (k, fill) in ask {
                let v = found.get(k).cloned();
                if fill {
                    c.fill(cache.id(), k, v.clone());
                }
                known.insert(k, v);
            }
        }
        keys.iter()
            .filter_map(|k| Some((*k, known.get(k)?.as_ref()?)))
            .map(|(k, v)| Ok((k.to_owned(), serde_json::from_slice(v)?)))
            .collect()
    }

    async fn get_many_call<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<(String, T)>> {
        let answer: EntriesAnswer = self
            .call("kv/get", &serde_json::json!({ "keys": keys }))
            .await?;
        decode_entries(answer.entries)
    }

    /// Stores the JSON of `value` under `key`.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.put_bytes(key, &serde_json::to_vec(value)?).await
    }

    /// Stores raw bytes under `key`.
    pub async fn put_bytes(&self, key: &str, value: &[u8]) -> Result<()> {
        let Some(cache) = &self.cache else {
            self.put_call(&[(key, value)], true).await?;
            return Ok(());
        };
        let _op = cache.op().await;
        if key.len() > MAX_BUFFERED_KEY || value.len() > MAX_BUFFERED_VALUE {
            self.send_pending(cache).await?;
            cache.lock().direct_write(cache.id(), key)?;
            self.put_call(&[(key, value)], true).await?;
            return Ok(());
        }
        let full = (cache.lock()).put(cache.id(), key, Bytes::copy_from_slice(value))?;
        if full {
            self.send_pending(cache).await?;
        }
        Ok(())
    }

    /// `kv/put` in its single form (`{"key", "value"}`) when `single`, else its batch form.
    async fn put_call(&self, entries: &[(&str, &[u8])], single: bool) -> Result<u64> {
        let encoded: Vec<String> = entries
            .iter()
            .map(|(_, v)| BASE64_STANDARD.encode(v))
            .collect();
        let answer: WrittenAnswer =
            if let ([(key, _)], [value], true) = (entries, &encoded[..], single) {
                self.call("kv/put", &Entry { key, value }).await?
            } else {
                let wire: Vec<Entry<'_>> = (entries.iter().zip(&encoded))
                    .map(|((key, _), value)| Entry { key, value })
                    .collect();
                self.call("kv/put", &serde_json::json!({ "entries": wire }))
                    .await?
            };
        Ok(answer.written)
    }

    /// Stores several entries (at most 128) at once, all or nothing. Returns how many were
    /// written.
    ///
    /// ```no_run
    /// # async fn f(storage: stead_sdk::Storage) -> stead_sdk::Result<()> {
    /// storage.put_many([("a", 1), ("b", 2)]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_many<K, T, I>(&self, entries: I) -> Result<u64>
    where
        I: IntoIterator<Item = (K, T)>,
        K: AsRef<str>,
        T: Serialize,
    {
        let entries: Vec<(K, Vec<u8>)> = entries
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::to_vec(&v)?)))
            .collect::<Result<_>>()?;
        let entries: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_slice()))
            .collect();
        let Some(cache) = &self.cache else {
            return self.put_call(&entries, false).await;
        };
        let _op = cache.op().await;
        let direct = entries.is_empty()
            || entries.len() > MAX_BUFFERED_BATCH
            || (entries.iter())
                .any(|(k, v)| k.len() > MAX_BUFFERED_KEY || v.len() > MAX_BUFFERED_VALUE);
        if direct {
            self.send_pending(cache).await?;
            {
                let mut c = cache.lock();
                for (k, _) in &entries {
                    c.direct_write(cache.id(), k)?;
                }
            }
            return self.put_call(&entries, false).await;
        }
        let mut full = false;
        {
            let mut c = cache.lock();
            for (k, v) in &entries {
                full |= c.put(cache.id(), k, Bytes::copy_from_slice(v))?;
            }
        }
        if full {
            self.send_pending(cache).await?;
        }
        Ok(entries.len() as u64)
    }

    /// Deletes `key`. Returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.delete_keys(&[key], true).await? > 0)
    }

    /// Deletes `keys` (at most 128). Returns how many existed.
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<u64> {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        self.delete_keys(&keys, false).await
    }

    async fn delete_keys(&self, keys: &[&str], single: bool) -> Result<u64> {
        let Some(cache) = &self.cache else {
            return self.delete_call(keys, single).await;
        };
        let _op = cache.op().await;
        if keys.is_empty()
            || keys.len() > MAX_BUFFERED_BATCH
            || keys.iter().any(|k| k.len() > MAX_BUFFERED_KEY)
        {
            self.send_pending(cache).await?;
            return self.delete_direct(cache, keys, single).await;
        }
        // Keys whose existence is known are buffered; the others are deleted with a call,
        // which answers whether they existed. None of those is buffered (it would be known),
        // so the call needs nothing sent before it.
        let mut existed = 0;
        let mut ask = vec![];
        {
            let mut c = cache.lock();
            for &k in keys {
                match c.delete(cache.id(), k)? {
                    Some(e) => existed += u64::from(e),
                    None => ask.push(k),
                }
            }
        }
        if !ask.is_empty() {
            existed += self.delete_direct(cache, &ask, single).await?;
        }
        Ok(existed)
    }

    async fn delete_direct(&self, cache: &TurnCache, keys: &[&str], single: bool) -> Result<u64> {
        {
            let mut c = cache.lock();
            for k in keys {
                c.direct_write(cache.id(), k)?;
            }
        }
        let deleted = self.delete_call(keys, single).await?;
        let mut c = cache.lock();
        for k in keys {
            c.deleted(cache.id(), k);
        }
        Ok(deleted)
    }

    /// `kv/delete` in its single form (`{"key"}`) when `single`, else its batch form.
    async fn delete_call(&self, keys: &[&str], single: bool) -> Result<u64> {
        let answer: DeletedAnswer = if let ([key], true) = (keys, single) {
            self.call("kv/delete", &serde_json::json!({ "key": key }))
                .await?
        } else {
            self.call("kv/delete", &serde_json::json!({ "keys": keys }))
                .await?
        };
        Ok(answer.deleted)
    }

    /// Entries in key order (or reverse), decoded as `T`.
    ///
    /// ```no_run
    /// # async fn f(storage: stead_sdk::Storage) -> stead_sdk::Result<()> {
    /// use stead_sdk::ListOptions;
    /// let last_ten: Vec<(String, String)> =
    ///     storage.list(ListOptions::prefix("msg:").reverse().limit(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn list<T: DeserializeOwned>(
        &self,
        options: ListOptions,
    ) -> Result<Vec<(String, T)>> {
        let Some(cache) = &self.cache else {
            let answer: EntriesAnswer = self.call("kv/list", &options).await?;
            return decode_entries(answer.entries);
        };
        let _op = cache.op().await;
        // The sidecar lists what it holds: send it the turn's writes first.
        self.send_pending(cache).await?;
        let answer: EntriesAnswer = self.call("kv/list", &options).await?;
        let mut found = Vec::with_capacity(answer.entries.len());
        for e in answer.entries {
            if let Some(v) = e.value {
                found.push((e.key, Bytes::from(decode(&v)?)));
            }
        }
        {
            let mut c = cache.lock();
            for (k, v) in &found {
                c.fill(cache.id(), k, Some(v.clone()));
            }
        }
        found
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_slice(&v)?)))
            .collect()
    }

    /// Deletes every key-value entry of the object (SQL tables are left alone). Returns how
    /// many there were.
    pub async fn delete_all(&self) -> Result<u64> {
        let Some(cache) = &self.cache else {
            let answer: DeletedAnswer = self.call("kv/delete-all", &serde_json::json!({})).await?;
            return Ok(answer.deleted);
        };
        let _op = cache.op().await;
        if let Some(n) = cache.lock().delete_all(cache.id())? {
            return Ok(n);
        }
        // Not every key is known: the sidecar counts them.
        self.send_pending(cache).await?;
        cache.lock().direct_delete_all(cache.id())?;
        let answer: DeletedAnswer = self.call("kv/delete-all", &serde_json::json!({})).await?;
        cache.lock().deleted_all(cache.id());
        Ok(answer.deleted)
    }

    /// Sends the turn's buffered writes with calls (the caller holds the turn's operation lock).
    async fn send_pending(&self, cache: &TurnCache) -> Result<()> {
        let writes = cache.lock().pending(cache.id())?;
        if writes.is_empty() {
            return Ok(());
        }
        send_writes(&self.api, &self.token, &writes).await?;
        cache.lock().sent(cache.id());
        Ok(())
    }

    /// Runs SQL on the object's own SQLite database.
    ///
    /// With parameters (`?1`, `?2`… or `?`), `sql` must be a single statement; without, it may
    /// be several separated by `;`. The result describes the last statement that returned
    /// columns. Transaction control, `ATTACH`, `PRAGMA` and names starting with `_stead_` are
    /// refused: the turn is the transaction.
    ///
    /// ```no_run
    /// # async fn f(storage: stead_sdk::Storage) -> stead_sdk::Result<()> {
    /// use stead_sdk::SqlValue;
    /// storage.sql("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)", &[]).await?;
    /// storage
    ///     .sql("INSERT INTO t (k, v) VALUES (?, ?)", &[1.into(), "one".into()])
    ///     .await?;
    /// let r = storage.sql("SELECT v FROM t WHERE k = ?", &[SqlValue::from(1)]).await?;
    /// assert_eq!(r.scalar().and_then(|v| v.as_str()), Some("one"));
    /// # Ok(()) }
    /// ```
    ///
    /// Statements buffered by [`Storage::queue_sql`] are sent first, in order, so that this one
    /// sees them.
    pub async fn sql(&self, sql: &str, params: &[SqlValue]) -> Result<SqlResult> {
        if let Some(cache) = self.carrying_sql() {
            let _op = cache.op().await;
            self.flush_sql(cache).await?;
            return self.exec(sql, params).await;
        }
        self.exec(sql, params).await
    }

    async fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<SqlResult> {
        self.call("sql/exec", &Exec { sql, params }).await
    }

    /// Runs an SQL statement whose result the turn does not need, as part of the turn.
    ///
    /// When the sidecar lets SQL travel with the answer (protocol 2 and `stead-carry: sql`, see
    /// `docs/sdk.md`, "Operations that travel with the answer"), the statement is buffered and
    /// this returns at once: it runs when the answer arrives, after the turn's key-value writes,
    /// in the order it was queued, and only if the turn commits. An error of the statement
    /// (syntax, a constraint, a refused name, the database full…) then fails the whole turn:
    /// it rolls back and the client gets that error instead of the answer. Otherwise (protocol
    /// 1, an older sidecar) it is an `sql/exec` call made now, its result discarded, and its
    /// error comes back here.
    ///
    /// A later [`Storage::sql`] in the same turn sends the buffered statements first, so reads
    /// see them. At most 128 statements travel with one answer; before a 129th is buffered the
    /// others are sent with calls.
    ///
    /// ```no_run
    /// # async fn f(storage: stead_sdk::Storage) -> stead_sdk::Result<()> {
    /// storage
    ///     .queue_sql("INSERT INTO log (at, what) VALUES (?, ?)", &[1.into(), "started".into()])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_sql(&self, sql: &str, params: &[SqlValue]) -> Result<()> {
        let Some(cache) = self.carrying_sql() else {
            self.exec(sql, params).await?;
            return Ok(());
        };
        let statement = if params.is_empty() {
            serde_json::json!({ "sql": sql })
        } else {
            serde_json::to_value(Exec { sql, params })?
        };
        let _op = cache.op().await;
        if cache.lock().sql_count(cache.id())? >= MAX_CARRIED_SQL {
            self.flush_sql(cache).await?;
        }
        let full = cache.lock().queue_sql(cache.id(), statement)?;
        if full {
            self.flush_sql(cache).await?;
        }
        Ok(())
    }

    /// The turn's cache when the answer may carry SQL.
    fn carrying_sql(&self) -> Option<&TurnCache> {
        self.cache.as_ref().filter(|c| c.carry().sql)
    }

    /// Sends the turn's buffered SQL statements with calls (the caller holds the turn's
    /// operation lock). On an error, the statements after the failed one stay buffered.
    async fn flush_sql(&self, cache: &TurnCache) -> Result<()> {
        let statements = cache.lock().take_sql(cache.id())?;
        if let Err((e, unsent)) = exec_all(&self.api, &self.token, statements).await {
            cache.lock().restore_sql(cache.id(), unsent);
            return Err(e);
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Exec<'a> {
    sql: &'a str,
    params: &'a [SqlValue],
}

/// Runs buffered SQL statements (bodies of `/v1/sql/exec`) with calls, in order. On an error,
/// returns it with the statements after the failed one, unsent.
pub(crate) async fn exec_all(
    api: &ApiClient,
    token: &HeaderValue,
    statements: Vec<Value>,
) -> std::result::Result<(), (Error, Vec<Value>)> {
    let mut statements = statements.into_iter();
    while let Some(statement) = statements.next() {
        if let Err(e) = api.call::<_, Value>(token, "sql/exec", &statement).await {
            return Err((e, statements.collect()));
        }
    }
    Ok(())
}

/// Applies `writes` with the protocol-1 calls, in the order the sidecar applies `stead-writes`:
/// delete-all, deletes, puts, alarm, SQL statements, then socket operations.
pub(crate) async fn send_writes(
    api: &ApiClient,
    token: &HeaderValue,
    writes: &Writes,
) -> Result<()> {
    if writes.delete_all {
        let _: DeletedAnswer = api
            .call(token, "kv/delete-all", &serde_json::json!({}))
            .await?;
    }
    for keys in writes.deletes().chunks(MAX_BUFFERED_BATCH) {
        let _: DeletedAnswer = api
            .call(token, "kv/delete", &serde_json::json!({ "keys": keys }))
            .await?;
    }
    for entries in writes.puts().chunks(MAX_BUFFERED_BATCH) {
        let encoded: Vec<String> = entries
            .iter()
            .map(|(_, v)| BASE64_STANDARD.encode(v))
            .collect();
        let wire: Vec<Entry<'_>> = (entries.iter().zip(&encoded))
            .map(|((key, _), value)| Entry { key, value })
            .collect();
        let _: WrittenAnswer = api
            .call(token, "kv/put", &serde_json::json!({ "entries": wire }))
            .await?;
    }
    match writes.alarm {
        Some(Some(time_ms)) => {
            let _: serde_json::Value = api
                .call(
                    token,
                    "alarm/set",
                    &serde_json::json!({ "time_ms": time_ms }),
                )
                .await?;
        }
        Some(None) => {
            let _: serde_json::Value = api
                .call(token, "alarm/delete", &serde_json::json!({}))
                .await?;
        }
        None => {}
    }
    exec_all(api, token, writes.sql.clone())
        .await
        .map_err(|(e, _)| e)?;
    crate::websocket::apply_all(api, token, writes.websockets.clone())
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// A value bound to an SQL parameter: what SQLite stores.
///
/// On the wire: JSON `null`, a number, a string, or `{"base64": "…"}` for a BLOB. `bool`
/// converts to the integers 1 and 0, `Option::None` to `NULL`.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// `INTEGER`.
    Integer(i64),
    /// `REAL`.
    Real(f64),
    /// `TEXT`.
    Text(String),
    /// `BLOB`.
    Blob(Vec<u8>),
}

impl SqlValue {
    /// Reads a value in the wire form of `params` and `rows`: `null`, booleans, numbers,
    /// strings and `{"base64": "…"}`. `None` for anything else (arrays, other objects, bad
    /// base64).
    ///
    /// ```
    /// use stead_sdk::SqlValue;
    /// let v = SqlValue::from_json(&serde_json::json!({"base64": "AAE="}));
    /// assert_eq!(v, Some(SqlValue::Blob(vec![0, 1])));
    /// ```
    pub fn from_json(value: &Value) -> Option<Self> {
        Some(match value {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => SqlValue::Real(n.as_f64()?),
            },
            Value::String(s) => SqlValue::Text(s.clone()),
            Value::Object(o) if o.len() == 1 => {
                SqlValue::Blob(BASE64_STANDARD.decode(o.get("base64")?.as_str()?).ok()?)
            }
            _ => return None,
        })
    }

    /// The value in its wire form.
    pub fn to_json(&self) -> Value {
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::from(*i),
            // Non-finite floats have no JSON form; SQLite would store NULL for NaN anyway.
            SqlValue::Real(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            SqlValue::Text(s) => Value::String(s.clone()),
            SqlValue::Blob(b) => {
                let mut m = Map::new();
                m.insert("base64".into(), Value::String(BASE64_STANDARD.encode(b)));
                Value::Object(m)
            }
        }
    }
}

impl Serialize for SqlValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SqlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        SqlValue::from_json(&v).ok_or_else(|| {
            serde::de::Error::custom(
                "an SQL value must be null, a boolean, a number, a string or {\"base64\": \"...\"}",
            )
        })
    }
}

macro_rules! sql_from {
    ($($t:ty => $variant:ident as $conv:ty),* $(,)?) => {
        $(impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                SqlValue::$variant(<$conv>::from(v))
            }
        })*
    };
}

sql_from!(
    i64 => Integer as i64,
    i32 => Integer as i64,
    i16 => Integer as i64,
    i8 => Integer as i64,
    u32 => Integer as i64,
    u16 => Integer as i64,
    u8 => Integer as i64,
    bool => Integer as i64,
    f64 => Real as f64,
    f32 => Real as f64,
    String => Text as String,
    &str => Text as String,
    Vec<u8> => Blob as Vec<u8>,
    &[u8] => Blob as Vec<u8>,
);

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// What [`Storage::sql`] answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlResult {
    /// Column names of the statement described.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Rows, each value in the wire form of [`SqlValue`] (BLOBs are `{"base64": "…"}`; see
    /// [`SqlValue::from_json`]).
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// Rows returned plus rows visited by full table scans.
    #[serde(default)]
    pub rows_read: u64,
    /// Rows changed by `INSERT`, `UPDATE` and `DELETE`.
    #[serde(default)]
    pub rows_written: u64,
}

impl SqlResult {
    /// The first column of the first row, e.g. the answer to `SELECT count(*) …`.
    pub fn scalar(&self) -> Option<&Value> {
        self.rows.first()?.first()
    }

    /// Each row as a JSON object keyed by column name, deserialized as `T`.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Row { k: i64, v: String }
    /// let r = stead_sdk::SqlResult {
    ///     columns: vec!["k".into(), "v".into()],
    ///     rows: vec![vec![1.into(), "one".into()]],
    ///     ..Default::default()
    /// };
    /// let rows: Vec<Row> = r.rows_as().unwrap();
    /// assert_eq!((rows[0].k, rows[0].v.as_str()), (1, "one"));
    /// ```
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.rows
            .iter()
            .map(|row| {
                let obj: Map<String, Value> = self
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect();
                Ok(serde_json::from_value(Value::Object(obj))?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sql_values_have_the_wire_form() {
        let params: Vec<SqlValue> = vec![
            SqlValue::Null,
            7.into(),
            1.5.into(),
            "s".into(),
            vec![0u8, 255].into(),
            true.into(),
            Option::<i64>::None.into(),
        ];
        assert_eq!(
            serde_json::to_value(&params).unwrap(),
            json!([null, 7, 1.5, "s", {"base64": "AP8="}, 1, null])
        );
    }

    #[test]
    fn sql_values_round_trip_through_json() {
        for v in [
            SqlValue::Null,
            SqlValue::Integer(-3),
            SqlValue::Real(0.25),
            SqlValue::Text("x".into()),
            SqlValue::Blob(vec![1, 2, 3]),
        ] {
            let back: SqlValue = serde_json::from_value(v.to_json()).unwrap();
            assert_eq!(back, v);
        }
        assert!(serde_json::from_value::<SqlValue>(json!([1])).is_err());
        assert!(serde_json::from_value::<SqlValue>(json!({"base64": "!!"})).is_err());
        assert!(serde_json::from_value::<SqlValue>(json!({"other": "AA=="})).is_err());
    }

    #[test]
    fn list_options_leave_out_what_is_unset() {
        assert_eq!(serde_json::to_value(ListOptions::all()).unwrap(), json!({}));
        assert_eq!(
            serde_json::to_value(
                ListOptions::prefix("p")
                    .start("a")
                    .end("z")
                    .limit(3)
                    .reverse()
            )
            .unwrap(),
            json!({"prefix": "p", "start": "a", "end": "z", "limit": 3, "reverse": true})
        );
    }
}
