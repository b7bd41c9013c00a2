//! The object's alarm: one wake-up time, set inside the turn's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::Deserialize;
use serde_json::json;

use crate::cache::TurnCache;
use crate::client::ApiClient;
use crate::error::{Error, Result};

/// What the `alarm` event tells its handler, [`DurableObject::alarm`](crate::DurableObject::alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AlarmInfo {
    /// How many times this alarm was retried after failed attempts: 0 on the first attempt,
    /// then 1 to 6 (`stead-alarm-retry`).
    pub retry: u32,
}

impl AlarmInfo {
    /// The info of attempt number `retry` (0 is the first attempt).
    pub fn new(retry: u32) -> Self {
        Self { retry }
    }
}

/// The alarm of the turn's object: at most one wake-up time, as Unix epoch milliseconds.
///
/// When it comes due the sidecar sends the object an `alarm` event (waking it if it is
/// hibernated), which the SDK hands to [`DurableObject::alarm`](crate::DurableObject::alarm).
/// Setting and deleting are part of the turn's transaction: an alarm set in a turn that rolls
/// back does not exist. A handler that succeeds clears the alarm unless it set a new one; a
/// handler that fails is retried after 2 s, 4 s, 8 s… at most 6 times.
///
/// ```no_run
/// # async fn f(turn: &stead_sdk::Turn) -> stead_sdk::Result<()> {
/// use std::time::Duration;
/// let alarm = turn.alarm();
/// alarm.set_in(Duration::from_millis(500)).await?;   // half a second from now
/// let due: Option<i64> = alarm.get().await?;          // epoch ms
/// assert!(due.is_some());
/// assert!(alarm.delete().await?);                     // there was one
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Alarm {
    api: ApiClient,
    token: HeaderValue,
    /// Protocol 2: the instance's cache and this turn's buffer.
    cache: Option<TurnCache>,
}

#[derive(Deserialize)]
struct TimeAnswer {
    time_ms: Option<i64>,
}

#[derive(Deserialize)]
struct DeletedAnswer {
    deleted: bool,
}

/// Milliseconds since the Unix epoch of `time` (negative before 1970).
pub(crate) fn epoch_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The current time as Unix epoch milliseconds.
///
/// ```
/// assert!(stead_sdk::now_ms() > 1_700_000_000_000);
/// ```
pub fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

impl Alarm {
    pub(crate) fn new(api: ApiClient, token: HeaderValue, cache: Option<TurnCache>) -> Self {
        Self { api, token, cache }
    }

    /// Sets the alarm to `time_ms` (Unix epoch milliseconds), replacing any alarm. A time in
    /// the past fires at once.
    pub async fn set_ms(&self, time_ms: i64) -> Result<()> {
        if let Some(cache) = &self.cache {
            let _op = cache.op().await;
            cache.lock().set_alarm(cache.id(), Some(time_ms))?;
            return Ok(());
        }
        let _: serde_json::Value = self
            .api
            .call(&self.token, "alarm/set", &json!({ "time_ms": time_ms }))
            .await?;
        Ok(())
    }

    /// Sets the alarm to `time`, replacing any alarm.
    pub async fn set(&self, time: SystemTime) -> Result<()> {
        self.set_ms(epoch_ms(time)).await
    }

    /// Sets the alarm `delay` from now, replacing any alarm. Returns the time it was set to,
    /// in Unix epoch milliseconds.
    pub async fn set_in(&self, delay: Duration) -> Result<i64> {
        let delay = i64::try_from(delay.as_millis())
            .map_err(|_| Error::msg("the alarm delay does not fit in milliseconds"))?;
        let at = now_ms().saturating_add(delay);
        self.set_ms(at).await?;
        Ok(at)
    }

    /// The alarm's time in Unix epoch milliseconds, or `None` if there is no alarm.
    pub async fn get(&self) -> Result<Option<i64>> {
        let Some(cache) = &self.cache else {
            return self.get_call().await;
        };
        let _op = cache.op().await;
        if let Some(known) = cache.lock().alarm(cache.id())? {
            return Ok(known);
        }
        // Not known: neither set nor deleted by this turn (so nothing about it is buffered),
        // nor told by eager state or an earlier call.
        let time_ms = self.get_call().await?;
        cache.lock().fill_alarm(cache.id(), time_ms);
        Ok(time_ms)
    }

    async fn get_call(&self) -> Result<Option<i64>> {
        let answer: TimeAnswer = self.api.call(&self.token, "alarm/get", &json!({})).await?;
        Ok(answer.time_ms)
    }

    /// The alarm's time as a [`SystemTime`], or `None` if there is no alarm.
    pub async fn get_time(&self) -> Result<Option<SystemTime>> {
        Ok(self.get().await?.map(|ms| {
            if ms >= 0 {
                UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
            }
        }))
    }

    /// Deletes the alarm. Returns whether there was one.
    pub async fn delete(&self) -> Result<bool> {
        let Some(cache) = &self.cache else {
            return self.delete_call().await;
        };
        let _op = cache.op().await;
        let known = cache.lock().alarm(cache.id())?;
        if let Some(alarm) = known {
            cache.lock().set_alarm(cache.id(), None)?;
            return Ok(alarm.is_some());
        }
        let deleted = self.delete_call().await?;
        cache.lock().alarm_deleted(cache.id());
        Ok(deleted)
    }

    async fn delete_call(&self) -> Result<bool> {
        let answer: DeletedAnswer = self
            .api
            .call(&self.token, "alarm/delete", &json!({}))
            .await?;
        Ok(answer.deleted)
    }
}
