//! Watches: the gateway's `/v3/watch` answers with a chunked stream of JSON messages, one
//! per batch of events. [`Mirror`] keeps a local copy of the keys under some prefixes: a
//! watch stream wakes it at the revision that changed them, and a plain range read (now
//! and then while the stream is up, every `poll` while it is down) keeps it right when a
//! stream is lost.

use super::{b64, conn, error_text, kv_of, num, prefix_end, Etcd, Kv};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`Mirror`] waits for its streams to open before it reads anyway.
const OPENING: Duration = Duration::from_millis(500);

/// A watch stream with no message for this long is reopened (from the last revision seen),
/// so that a connection that died silently is not trusted for long.
const IDLE: Duration = Duration::from_secs(15);

/// While the stream is up, the copy is still re-read this often, in case the stream died
/// without a word. Not more often: each read is a linearizable range through the leader,
/// and at 50 members a read a second each was half of what an idle group cost etcd (about
/// 90 of 200 ms of CPU a second), taken from the operations that run meanwhile.
const REFRESH: Duration = Duration::from_secs(5);

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kv: Kv,
    pub deleted: bool,
}

/// One message of a watch stream.
#[derive(Debug, Default)]
pub struct WatchMessage {
    pub revision: i64,
    pub created: bool,
    /// Why etcd ended the watch (compaction, permission), when it did.
    pub canceled: Option<String>,
    pub events: Vec<Event>,
}

fn parse_message(v: &Value) -> Result<WatchMessage, String> {
    if !v["error"].is_null() {
        return Err(error_text(v));
    }
    let r = &v["result"];
    let canceled = r["canceled"].as_bool().unwrap_or(false).then(|| {
        let reason = r["cancel_reason"].as_str().unwrap_or("");
        if num(&r["compact_revision"]) > 0 {
            format!("revisions compacted {reason}")
        } else {
            format!("etcd ended the watch {reason}")
        }
    });
    Ok(WatchMessage {
        revision: num(&r["header"]["revision"]),
        created: r["created"].as_bool().unwrap_or(false),
        canceled,
        events: r["events"]
            .as_array()
            .map(|evs| {
                evs.iter()
                    .map(|e| Event {
                        kv: kv_of(&e["kv"]),
                        deleted: e["type"] == "DELETE",
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// An open watch stream.
pub struct WatchStream {
    conn: conn::Conn,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The socket, to end a blocked [`WatchStream::next_message`] from another thread.
    pub fn socket(&self) -> Option<TcpStream> {
        self.conn.socket.try_clone().ok()
    }

    /// The next message (blocks until one arrives, the stream ends, or [`IDLE`]).
    pub fn next_message(&mut self) -> Result<WatchMessage, String> {
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    return parse_message(&v);
                }
                Some(Err(e)) if !e.is_eof() => return Err(format!("bad watch message: {e}")),
                _ => {}
            }
            match conn::read_chunk(&mut self.conn.io) {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Err("etcd closed the watch stream".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Etcd {
    /// Watch keys from `key` to `range_end` (exclusive), from `start_revision` (0: from now).
    pub fn watch(
        &self,
        key: &str,
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<WatchStream, String> {
        let mut create = json!({ "key": b64(key), "range_end": super::B64.encode(range_end) });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": create }).to_string();
        let n = self.endpoints.len();
        let start = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.endpoints[idx];
            let mut c = match conn::connect(ep, idx, self.tls.as_ref(), self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let opened = conn::send(
                &mut c,
                &ep.addr,
                "/v3/watch",
                self.token_for("/v3/watch").as_deref(),
                &body,
            )
            .and_then(|()| conn::read_head(&mut c.io));
            match opened {
                Ok(head) if head.status == 200 && head.chunked => {
                    c.socket.set_read_timeout(Some(IDLE)).ok();
                    return Ok(WatchStream {
                        conn: c,
                        buf: Vec::new(),
                    });
                }
                Ok(head) => {
                    let msg = conn::read_body(&mut c.io, &head)
                        .map(|(v, _)| error_text(&v))
                        .unwrap_or_default();
                    return Err(self.refusal(idx, head.status, &msg));
                }
                Err(e) => errors.push(conn::io_words(ep, &e, self.has_client_cert())),
            }
        }
        Err(format!("could not reach etcd ({})", errors.join("; ")))
    }
}

/// What a watch thread tells its [`Mirror`].
enum Note {
    /// The stream is (again) open.
    Live,
    /// Changes, and when the stream thread read them (milliseconds since the epoch).
    Events(Vec<Event>, u64),
    /// The stream is gone; the thread keeps trying to reopen it.
    Lost(String),
}

/// Ends a watch thread: a flag, and the socket it may be blocked on.
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    socket: Mutex<Option<TcpStream>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.socket.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Keep one watch open on `[key, end)` from `next_rev`, reopening it from the last revision
/// seen whenever it is lost, until stopped or nobody listens.
fn watch_thread(
    etcd: Arc<Etcd>,
    key: String,
    end: Vec<u8>,
    mut next_rev: i64,
    tx: Sender<Note>,
    stop: Arc<Stop>,
) {
    let mut reported_lost = false;
    // Reopening waits longer after each failure (50 ms up to 2 s), so that a refused watch
    // (permission denied) does not hammer etcd.
    let mut backoff = Duration::from_millis(50);
    while !stop.stopped() {
        let why = match etcd.watch(&key, &end, next_rev) {
            Ok(mut stream) => {
                *stop.socket.lock().unwrap_or_else(|e| e.into_inner()) = stream.socket();
                if stop.stopped() {
                    return;
                }
                loop {
                    let msg = match stream.next_message() {
                        Ok(m) => m,
                        Err(e) => break e,
                    };
                    // etcd answers a refused watch as created and canceled at once.
                    if msg.created && msg.canceled.is_none() {
                        reported_lost = false;
                        backoff = Duration::from_millis(50);
                        if next_rev == 0 {
                            next_rev = msg.revision + 1;
                        }
                        if tx.send(Note::Live).is_err() {
                            return;
                        }
                    }
                    if let Some(last) = msg.events.last() {
                        next_rev = last.kv.mod_revision + 1;
                        let read_at = crate::group::now_ms();
                        if tx.send(Note::Events(msg.events, read_at)).is_err() {
                            return;
                        }
                    }
                    if let Some(why) = msg.canceled {
                        // Compacted past what we saw: start from now; the Mirror re-reads.
                        next_rev = 0;
                        break why;
                    }
                }
            }
            Err(e) => {
                if e.contains("token") {
                    let _ = etcd.authenticate();
                }
                e
            }
        };
        if stop.stopped() {
            return;
        }
        if !reported_lost {
            reported_lost = true;
            if tx.send(Note::Lost(why)).is_err() {
                return;
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.stopped() {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A local copy of some keys (or every key under some prefixes), kept current by watch
/// streams.
pub struct Mirror {
    etcd: Arc<Etcd>,
    /// `(key, range_end)`; an empty end is the key alone.
    ranges: Vec<(String, Vec<u8>)>,
    kvs: BTreeMap<String, Kv>,
    rx: Receiver<Note>,
    /// Every stream is open.
    live: bool,
    /// The keys have been read at least once (until then, an absent key says nothing).
    known: bool,
    lost: usize,
    poll: Duration,
    next_read: Instant,
    stops: Vec<Arc<Stop>>,
    /// The revision of the last read: events up to it are already in the copy.
    read_rev: i64,
    /// When the stream thread read the last change that [`Mirror::wait`] woke for
    /// (milliseconds since the epoch; None when a plain read found it).
    changed_read_at_ms: Option<u64>,
}

impl Mirror {
    /// Read every key under `prefixes` and watch them from that revision on. `poll` is how
    /// often the keys are re-read while a stream is lost. When etcd cannot be reached now,
    /// the copy starts empty and fills once it can.
    pub fn prefixes(etcd: &Arc<Etcd>, prefixes: &[String], poll: Duration) -> Mirror {
        let ranges = prefixes
            .iter()
            .map(|p| (p.clone(), prefix_end(p)))
            .collect();
        Mirror::new(etcd, ranges, poll)
    }

    /// Like [`Mirror::prefixes`], for single keys.
    pub fn keys(etcd: &Arc<Etcd>, keys: &[String], poll: Duration) -> Mirror {
        let ranges = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        Mirror::new(etcd, ranges, poll)
    }

    /// Open the streams from now, then read. In this order because etcd delivers at once
    /// only to a watch that starts at its current revision: a watch opened from an older one
    /// (read, then watch from the revision read, while others write) is caught up by etcd's
    /// background sync, every 100 ms, and this copy would hear changes that late. What the
    /// streams carry from before the read is older than the read and is dropped.
    fn new(etcd: &Arc<Etcd>, ranges: Vec<(String, Vec<u8>)>, poll: Duration) -> Mirror {
        let (tx, rx) = channel();
        let mut m = Mirror {
            etcd: Arc::clone(etcd),
            lost: ranges.len(),
            ranges,
            kvs: BTreeMap::new(),
            rx,
            live: false,
            known: false,
            poll,
            next_read: Instant::now(),
            stops: Vec::new(),
            read_rev: 0,
            changed_read_at_ms: None,
        };
        for (key, end) in m.ranges.clone() {
            let stop = Arc::new(Stop::default());
            m.stops.push(Arc::clone(&stop));
            let (etcd, tx) = (Arc::clone(etcd), tx.clone());
            std::thread::spawn(move || watch_thread(etcd, key, end, 0, tx, stop));
        }
        // Until every stream is open, one is lost, or a short while passes (etcd
        // unreachable: the copy is read, or starts empty, and the streams come later).
        let until = Instant::now() + OPENING;
        let mut early = Vec::new();
        while m.lost > 0 {
            match m
                .rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Note::Live) => m.lost -= 1,
                Ok(Note::Events(evs, _)) => early.extend(evs),
                Ok(Note::Lost(why)) => {
                    tracing::debug!(error = %why, "etcd watch not open; reading instead until it is");
                    break;
                }
                Err(_) => break,
            }
        }
        m.live = m.lost == 0;
        let _ = m.read();
        m.apply(early);
        m
    }

    /// The keys now, by full key.
    pub fn kvs(&self) -> &BTreeMap<String, Kv> {
        &self.kvs
    }

    /// One key's value now.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kvs.get(key).map(|kv| kv.value.as_str())
    }

    /// The keys have been read from etcd at least once: an absent key is really absent
    /// (as of the last change seen).
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// When the stream thread read the change the last [`Mirror::wait`] woke for
    /// (milliseconds since the epoch), or None when a plain read found it.
    pub fn changed_read_at_ms(&self) -> Option<u64> {
        self.changed_read_at_ms
    }

    /// Every stream is open (false while one is being reopened).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Re-read every prefix; the lowest revision read at. Leaves the copy as it was when
    /// etcd cannot be read.
    fn read(&mut self) -> Result<i64, String> {
        let mut fresh = BTreeMap::new();
        let mut rev = i64::MAX;
        for (key, end) in &self.ranges {
            let (kvs, r) = self.etcd.range_at(key, end)?;
            rev = rev.min(r);
            fresh.extend(kvs.into_iter().map(|kv| (kv.key.clone(), kv)));
        }
        self.kvs = fresh;
        self.read_rev = rev;
        self.known = true;
        self.next_read = Instant::now() + if self.live { REFRESH } else { self.poll };
        Ok(rev)
    }

    fn apply(&mut self, events: Vec<Event>) -> bool {
        let mut changed = false;
        for e in events {
            if e.kv.mod_revision <= self.read_rev {
                continue;
            }
            if e.deleted {
                changed |= self.kvs.remove(&e.kv.key).is_some();
            } else if self
                .kvs
                .get(&e.kv.key)
                .is_none_or(|old| old.mod_revision < e.kv.mod_revision)
            {
                self.kvs.insert(e.kv.key.clone(), e.kv);
                changed = true;
            }
        }
        changed
    }

    /// Wait until the copy changes (true) or `until` passes (false).
    pub fn wait(&mut self, until: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let wake = until.min(self.next_read);
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Note::Events(evs, read_at)) => {
                    if self.apply(evs) {
                        self.changed_read_at_ms = Some(read_at);
                        return true;
                    }
                }
                Ok(Note::Live) => {
                    self.lost = self.lost.saturating_sub(1);
                    self.live = self.lost == 0;
                    // A stream that etcd could not resume (it compacted past the last
                    // revision seen) starts from now: what changed in between is only in a
                    // read, so read at once rather than at the next poll.
                    if self.live {
                        self.next_read = Instant::now();
                    }
                }
                Ok(Note::Lost(why)) => {
                    tracing::debug!(error = %why, "etcd watch lost; reading instead until it is back");
                    self.lost += 1;
                    self.live = false;
                    self.next_read = self.next_read.min(Instant::now() + self.poll);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    if Instant::now() < self.next_read {
                        if Instant::now() >= until {
                            return false;
                        }
                        // Disconnected: no stream thread left; fall back to reading.
                        std::thread::sleep(
                            self.poll
                                .min(until.saturating_duration_since(Instant::now())),
                        );
                    }
                    let before = self.kvs.clone();
                    if self.read().is_err() {
                        self.next_read = Instant::now() + self.poll;
                    }
                    if self.kvs != before {
                        self.changed_read_at_ms = None;
                        return true;
                    }
                }
            }
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        for s in &self.stops {
            s.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_messages() {
        let put = json!({"result":{"header":{"revision":"7"},"events":[
            {"kv":{"key":b64("a"),"value":b64("1"),"mod_revision":"7"}},
            {"type":"DELETE","kv":{"key":b64("b"),"mod_revision":"7"}}]}});
        let m = parse_message(&put).unwrap();
        assert_eq!(m.revision, 7);
        assert_eq!(
            m.events
                .iter()
                .map(|e| (e.kv.key.as_str(), e.kv.value.as_str(), e.deleted))
                .collect::<Vec<_>>(),
            [("a", "1", false), ("b", "", true)]
        );
        let created = json!({"result":{"header":{"revision":"3"},"created":true}});
        assert!(parse_message(&created).unwrap().created);
        let compacted = json!({"result":{"canceled":true,"compact_revision":"5"}});
        assert!(parse_message(&compacted)
            .unwrap()
            .canceled
            .unwrap()
            .contains("compacted"));
        let refused = json!({"error":{"message":"etcdserver: permission denied"}});
        assert!(parse_message(&refused)
            .unwrap_err()
            .contains("permission denied"));
    }
}
