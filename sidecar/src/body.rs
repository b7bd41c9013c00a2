//! Client bodies: read whole, within the size limit and without long pauses, and within a
//! memory budget for everything clients sent that waits in the sidecar.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The budget is counted in KiB, rounded up per body; an empty body takes none, so requests
/// without a body (reads) go through whatever uploads hold.
const UNIT: usize = 1024;
/// A body of unknown length takes the budget in steps of this many units as it arrives.
const STEP_UNITS: usize = 64;

/// What clients sent that waits in the sidecar's memory, bounded in total. Two budgets use it:
///
/// - request bodies, read whole before their request is handled (object requests, object calls,
///   the app's front door): `--max-buffered-request-bytes`, through [`BodyBudget::read`]. The
///   per-request limit alone did not bound the sum: a hundred concurrent 32 MiB uploads to one
///   object peaked at 3.1 GiB in the sidecar, since each body is read before its turn waits in
///   the object's mailbox. A body that cannot get its share at once is refused with 503 and
///   `Retry-After` before more of it is read; nothing waits for this budget, so turns that call
///   other objects cannot deadlock on it;
/// - WebSocket messages waiting for their turns (`--max-buffered-socket-bytes`), through
///   [`BodyBudget::wait`]: a socket's reader waits, and the client is slowed down by TCP.
#[derive(Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total_units: usize,
    bytes: usize,
    buffered: Gauge,
}

/// A body's share of the budget, given back when dropped: keep it until the request is done.
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    buffered: Gauge,
}

impl Held {
    fn units(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.buffered
            .dec_by(i64::try_from(self.units() * UNIT).unwrap_or(i64::MAX));
    }
}

impl BodyBudget {
    /// A budget of `bytes` (at least one unit); `buffered` is the gauge of what is held.
    pub fn new(bytes: usize, buffered: Gauge) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(units)),
            total_units: units,
            bytes,
            buffered,
        }
    }

    /// Waits until `len` bytes fit (the whole budget, for input larger than all of it) and
    /// takes them: for input whose reading can pause instead of being refused (WebSocket
    /// messages; the reader stops, and TCP slows the client down). Waiters are served in turn.
    pub async fn wait(&self, len: usize) -> Held {
        let units = units_for(len).min(self.total_units);
        let permit = match u32::try_from(units) {
            Ok(0) => None,
            Ok(n) => self.units.clone().acquire_many_owned(n).await.ok(),
            Err(_) => self.units.clone().acquire_many_owned(u32::MAX).await.ok(),
        };
        let held = Held {
            permit,
            buffered: self.buffered.clone(),
        };
        self.buffered
            .inc_by(i64::try_from(held.units() * UNIT).unwrap_or(i64::MAX));
        held
    }

    /// Reads a whole client body as [`read_body`] does, taking its share of the budget first
    /// (its declared length) and as it grows.
    pub async fn read(
        &self,
        body: Body,
        limit: usize,
        timeout: Duration,
    ) -> Result<(Bytes, Held), ApiError> {
        let mut held = Held {
            permit: None,
            buffered: self.buffered.clone(),
        };
        refuse_declared_length(&body, limit)?;
        let declared =
            usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(limit);
        self.grow(&mut held, units_for(declared), limit)?;
        let bytes = read_with(body, limit, timeout, |len| {
            let (need, have) = (units_for(len), held.units());
            if need > have {
                self.grow(&mut held, need.max(have + STEP_UNITS), limit)?;
            }
            Ok(())
        })
        .await?;
        Ok((bytes, held))
    }

    /// Raises `held` to `units` (at most the limit's), without waiting.
    fn grow(&self, held: &mut Held, units: usize, limit: usize) -> Result<(), ApiError> {
        let more = units.min(units_for(limit)).saturating_sub(held.units());
        if more == 0 {
            return Ok(());
        }
        let permit = u32::try_from(more)
            .ok()
            .and_then(|n| self.units.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_bodies_over_budget",
                    format!(
                        "the sidecar already holds its budget of request bodies ({} bytes, --max-buffered-request-bytes); retry shortly",
                        self.bytes
                    ),
                )
            })?;
        self.buffered
            .inc_by(i64::try_from(more * UNIT).unwrap_or(i64::MAX));
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }
}

/// The units a body of `len` bytes takes: its KiB, rounded up.
fn units_for(len: usize) -> usize {
    len.div_ceil(UNIT)
}

/// Reads a whole client body. A declared length over `limit` is refused with 413 before a
/// byte is read, and so is a body that grows past it; a body that stops arriving for
/// `timeout` gets 408; a malformed one (a bad chunk size) gets 400.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    refuse_declared_length(&body, limit)?;
    read_with(body, limit, timeout, |_| Ok(())).await
}

/// The reading loop: `grown` hears the length the body will have once a piece arrived, before
/// the piece is kept, and may refuse it.
async fn read_with(
    body: Body,
    limit: usize,
    timeout: Duration,
    mut grown: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    };
    let mut body = body;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body stopped arriving ({} s without data); send it whole and without pauses",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::bad_request(
                    "malformed_body",
                    "the request body is malformed (bad chunked encoding) or ended early",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            grown(buf.len() + data.len())?;
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Refuses (413) a body whose declared `Content-Length` is over `limit`, without reading it.
pub fn refuse_declared_length(body: &Body, limit: usize) -> Result<(), ApiError> {
    let declared = hyper::body::Body::size_hint(body).lower();
    if declared > limit as u64 {
        return Err(ApiError::too_large(
            "body_too_large",
            format!(
                "the request body is {declared} bytes; request bodies are limited to {limit} bytes"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn budget(kib: usize) -> (BodyBudget, Gauge) {
        let gauge = Gauge::default();
        (BodyBudget::new(kib * UNIT, gauge.clone()), gauge)
    }

    /// A body of unknown length, arriving in `pieces` of `size` bytes.
    fn chunked(pieces: usize, size: usize) -> Body {
        let chunks =
            (0..pieces).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size])));
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_declared_body_takes_its_share_until_dropped() {
        let (b, gauge) = budget(8);
        let (bytes, held) = b
            .read(Body::from(vec![b'x'; 5000]), 1 << 20, LONG)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 5000);
        assert_eq!(gauge.get(), 5 * 1024);
        // 3 KiB are left: a 4 KiB body does not fit, a 3 KiB one does.
        let refused = b
            .read(Body::from(vec![b'y'; 4096]), 1 << 20, LONG)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "request_bodies_over_budget");
        let (_, three) = b
            .read(Body::from(vec![b'z'; 3072]), 1 << 20, LONG)
            .await
            .unwrap();
        assert_eq!(gauge.get(), 8 * 1024);
        drop((held, three));
        assert_eq!(gauge.get(), 0);
        // An empty body takes nothing, even from a full budget.
        let (_, full) = b
            .read(Body::from(vec![b'x'; 8192]), 1 << 20, LONG)
            .await
            .unwrap();
        let (empty, _) = b.read(Body::empty(), 1 << 20, LONG).await.unwrap();
        assert!(empty.is_empty());
        drop(full);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_takes_its_share_as_it_grows_and_gives_it_back_when_refused() {
        let (b, gauge) = budget(256);
        // 100 KiB in 1 KiB pieces: taken in steps of 64 KiB, so 128 at the end.
        let (bytes, held) = b.read(chunked(100, 1024), 1 << 20, LONG).await.unwrap();
        assert_eq!(bytes.len(), 100 * 1024);
        assert_eq!(gauge.get(), 128 * 1024);
        // 128 KiB left; a body that grows to 200 KiB is refused once it passes them, and what
        // it had taken comes back.
        let refused = b
            .read(chunked(200, 1024), 1 << 20, LONG)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code, "request_bodies_over_budget");
        assert_eq!(gauge.get(), 128 * 1024);
        drop(held);
        assert_eq!(gauge.get(), 0);
        let (bytes, _) = b.read(chunked(200, 1024), 1 << 20, LONG).await.unwrap();
        assert_eq!(bytes.len(), 200 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_input_takes_its_share_in_turn() {
        let (b, gauge) = budget(8);
        let first = b.wait(6 * 1024).await;
        assert_eq!(gauge.get(), 6 * 1024);
        // 4 KiB do not fit beside the first 6: the second waits until the first is handled.
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.wait(4 * 1024).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(gauge.get(), 4 * 1024);
        drop(second);
        // Input larger than the whole budget takes all of it, and so never waits forever.
        let huge = b.wait(1 << 20).await;
        assert_eq!(gauge.get(), 8 * 1024);
        drop(huge);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn the_size_limit_still_answers_413_first() {
        let (b, gauge) = budget(1024);
        let e = b
            .read(Body::from(vec![b'x'; 5000]), 4096, LONG)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = b.read(chunked(10, 1024), 4096, LONG).await.err().unwrap();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(gauge.get(), 0);
    }
}
