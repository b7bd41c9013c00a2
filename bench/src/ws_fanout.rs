//! `stead-bench ws-fanout`: N WebSocket clients join one room; messages are sent (by client 0,
//! or by each client in turn) with at most `--in-flight` outstanding, and for each message the
//! bench measures the time from its send until ALL N clients received it. Every message carries a
//! unique token (`~{run}.{k}~`), found in what arrives either anywhere in the frame (`raw`) or in
//! one string field of a JSON frame (`json:FIELD`), so that history, other rooms' traffic and
//! the broadcast format do not matter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::{SinkExt, future};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::common::{Latency, Rng, check_fd_budget, new_hist, round1};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// WebSocket URL template; `{room}` and `{i}` (the client's index) are replaced, e.g.
    /// ws://127.0.0.1:8787/objects/ChatRoom/name/{room}/ws?name=u{i}
    #[arg(long)]
    url: String,
    /// Clients in the room; each receives every message.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Room name (default: `fanout-` and a random suffix, so every run starts empty).
    #[arg(long)]
    room: Option<String>,
    /// Who sends: `one` (client 0 sends everything) or `each` (client k mod N sends message k).
    #[arg(long, default_value = "one", value_parser = ["one", "each"])]
    sender: String,
    /// Messages sent and not yet received by all clients; 1 measures latency without queueing.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// How to find the token in a received frame: `raw` (anywhere in the text) or `json:FIELD`
    /// (in the string field FIELD of a JSON object).
    #[arg(long = "match", default_value = "raw")]
    match_rule: String,
    /// Text of each message; `{token}` is replaced by its unique token.
    #[arg(long, default_value = "hello {token}")]
    text: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of messages before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Give up when no message completes for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    #[arg(long, default_value = "")]
    label: String,
}

/// Where the token is looked for in a received text frame.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Raw,
    JsonField(String),
}

impl Rule {
    fn parse(s: &str) -> Result<Rule> {
        match s.split_once(':') {
            None if s == "raw" => Ok(Rule::Raw),
            Some(("json", field)) if !field.is_empty() => Ok(Rule::JsonField(field.to_string())),
            _ => bail!("--match must be `raw` or `json:FIELD`, not {s:?}"),
        }
    }

    /// The message number `k` of this run's token `~{run}.{k}~` in `frame`, if any.
    fn find(&self, frame: &str, prefix: &str) -> Option<u64> {
        match self {
            Rule::Raw => find_token(frame, prefix),
            Rule::JsonField(f) => {
                let v: serde_json::Value = serde_json::from_str(frame).ok()?;
                find_token(v.get(f)?.as_str()?, prefix)
            }
        }
    }
}

/// The token of message `k`: `{prefix}{k}~`, with `prefix` = `~{run}.`.
fn token(prefix: &str, k: u64) -> String {
    format!("{prefix}{k}~")
}

fn find_token(hay: &str, prefix: &str) -> Option<u64> {
    let rest = &hay[hay.find(prefix)? + prefix.len()..];
    let digits = &rest[..rest.find('~')?];
    digits.parse().ok()
}

/// Messages sent and not yet received by every client: `k` → (sent at, receivers so far).
struct Tracker {
    clients: u32,
    pending: Mutex<HashMap<u64, (Instant, u32)>>,
    done: mpsc::UnboundedSender<(u64, Instant, Duration)>,
}

impl Tracker {
    fn arrived(&self, k: u64) {
        let mut pending = self.pending.lock().expect("not poisoned");
        let Some((sent, n)) = pending.get_mut(&k) else {
            return; // not ours, or a duplicate after completion
        };
        *n += 1;
        if *n == self.clients {
            let sent = *sent;
            pending.remove(&k);
            let _ = self.done.send((k, sent, sent.elapsed()));
        }
    }
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// Connects client `i` and spawns its reader, which reports this run's tokens to `tracker`.
async fn join(
    url: &str,
    rule: Rule,
    prefix: Arc<str>,
    tracker: Arc<Tracker>,
) -> Result<(Sink, tokio::task::JoinHandle<()>)> {
    let (ws, _) = connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let (sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg
                && let Some(k) = rule.find(t.as_str(), &prefix)
            {
                tracker.arrived(k);
            }
        }
    });
    Ok((sink, reader))
}

pub async fn run(args: Args) -> Result<()> {
    let rule = Rule::parse(&args.match_rule)?;
    if args.clients == 0 || args.in_flight == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        bail!("--clients, --in-flight and --duration must be positive, --warmup not negative");
    }
    if !args.text.contains("{token}") {
        bail!("--text must contain {{token}}");
    }
    check_fd_budget(args.clients)?;
    let mut rng = Rng::new(0);
    let run_id = format!("{:08x}", rng.next() as u32);
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("fanout-{run_id}"));
    let prefix: Arc<str> = format!("~{run_id}.").into();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tracker = Arc::new(Tracker {
        clients: args.clients as u32,
        pending: Mutex::new(HashMap::new()),
        done: done_tx,
    });

    // Join 50 at a time, in client order.
    let urls: Vec<String> = (0..args.clients)
        .map(|i| {
            args.url
                .replace("{room}", &room)
                .replace("{i}", &i.to_string())
        })
        .collect();
    let mut sinks = Vec::with_capacity(args.clients);
    let mut readers = Vec::with_capacity(args.clients);
    let joined_at = Instant::now();
    for batch in urls.chunks(50) {
        let joins = batch
            .iter()
            .map(|u| join(u, rule.clone(), prefix.clone(), tracker.clone()));
        for r in future::join_all(joins).await {
            let (sink, reader) = r?;
            sinks.push(sink);
            readers.push(reader);
        }
    }
    let join_secs = joined_at.elapsed().as_secs_f64();

    let each = args.sender == "each";
    let from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = from + Duration::from_secs_f64(args.duration);
    let idle = Duration::from_secs_f64(args.timeout);
    let mut hist = new_hist();
    let (mut next, mut outstanding, mut measured) = (0u64, 0usize, 0u64);
    let mut last_done = from;
    let mut timed_out = false;
    loop {
        while outstanding < args.in_flight && Instant::now() < end {
            let sent = Instant::now();
            tracker
                .pending
                .lock()
                .expect("not poisoned")
                .insert(next, (sent, 0));
            let text = args.text.replace("{token}", &token(&prefix, next));
            let who = if each { next as usize % sinks.len() } else { 0 };
            sinks[who]
                .send(Message::text(text))
                .await
                .with_context(|| format!("client {who} could not send"))?;
            next += 1;
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        match timeout_at(Instant::now() + idle, done_rx.recv()).await {
            Ok(Some((_, sent, took))) => {
                outstanding -= 1;
                if sent >= from {
                    measured += 1;
                    hist.saturating_record(took.as_micros().max(1) as u64);
                    last_done = sent + took;
                }
            }
            Ok(None) => unreachable!("the tracker holds a sender"),
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let incomplete: Vec<(u64, u32)> = {
        let pending = tracker.pending.lock().expect("not poisoned");
        let mut v: Vec<_> = pending.iter().map(|(k, (_, n))| (*k, *n)).collect();
        v.sort_unstable();
        v
    };
    for mut s in sinks {
        let _ = s.close().await;
    }
    for r in readers {
        r.abort();
    }

    let secs = (last_done - from).as_secs_f64().max(1e-9);
    let msgs_per_s = measured as f64 / secs;
    let delivered_per_s = msgs_per_s * args.clients as f64;
    let lat = Latency::of(&hist);
    let label = if args.label.is_empty() {
        "stead-bench ws-fanout"
    } else {
        &args.label
    };
    println!(
        "{label}: {} clients in room {room} (joined in {join_secs:.2}s), sender {}, {} in flight, {}s (+{}s warmup)",
        args.clients, args.sender, args.in_flight, args.duration, args.warmup
    );
    println!(
        "  messages {measured} received by all ({next} sent in total); {msgs_per_s:.1} msg/s, {delivered_per_s:.0} deliveries/s"
    );
    println!("  time until all {} received, {}", args.clients, lat.line());
    if timed_out {
        println!(
            "  TIMED OUT after {}s without progress; incomplete (message, receivers): {:?}",
            args.timeout,
            &incomplete[..incomplete.len().min(10)]
        );
    }
    let mut json = serde_json::json!({
        "bench": "ws-fanout", "label": args.label, "url": args.url, "room": room,
        "clients": args.clients, "sender": args.sender, "in_flight": args.in_flight,
        "duration_s": args.duration, "messages": measured, "sent_total": next,
        "msgs_per_s": round1(msgs_per_s), "deliveries_per_s": round1(delivered_per_s),
        "timed_out": timed_out, "incomplete": incomplete.len(),
    });
    json.as_object_mut()
        .expect("object")
        .extend(lat.json().as_object().expect("object").clone());
    println!("{json}");
    if timed_out {
        bail!("messages did not reach every client");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_both_broadcast_formats() {
        let prefix = "~1a2b3c4d.";
        let text = "hello {token}".replace("{token}", &token(prefix, 42));
        // workerd's Room: "{n} {name}: {msg}"
        let workerd = format!("7 u3: {text}");
        assert_eq!(Rule::Raw.find(&workerd, prefix), Some(42));
        // Stead's chat: a JSON object with "seq" and "text"
        let chat =
            serde_json::json!({"seq": 7, "name": "u3", "text": text, "at_ms": 1}).to_string();
        assert_eq!(Rule::Raw.find(&chat, prefix), Some(42));
        let json = Rule::parse("json:text").unwrap();
        assert_eq!(json.find(&chat, prefix), Some(42));
        assert_eq!(json.find(&workerd, prefix), None);
        // another run's token, or none at all
        assert_eq!(Rule::Raw.find("hello ~ffffffff.42~", prefix), None);
        assert_eq!(Rule::Raw.find("hello ~1a2b3c4d.42", prefix), None);
        assert!(Rule::parse("json:").is_err());
        assert!(Rule::parse("regex").is_err());
    }

    #[test]
    fn a_message_completes_when_every_client_has_it() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t = Tracker {
            clients: 3,
            pending: Mutex::new(HashMap::from([(5, (Instant::now(), 0))])),
            done: tx,
        };
        t.arrived(5);
        t.arrived(9); // not pending: ignored
        t.arrived(5);
        assert!(rx.try_recv().is_err());
        t.arrived(5);
        assert_eq!(rx.try_recv().unwrap().0, 5);
        t.arrived(5); // late duplicate: ignored
        assert!(rx.try_recv().is_err());
    }
}
