//! Serving peers: every modeld answers requests for what it has, complete or partial.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections and
//! [`crate::endpoint::MAX_STREAMS_PER_PEER`] concurrent requests per connection; a
//! request must arrive within [`REQUEST_READ_TIMEOUT`] and be at most
//! `MAX_REQUEST_BYTES`; one blob request asks for at most `MAX_BLOB_REQUEST_BYTES`;
//! answers being assembled in memory share a budget of [`ANSWER_BUDGET`] bytes
//! (requests wait for it, the askers that hold least of what they fetch first, and
//! leave the queue if the asker withdraws them: `crates/net/src/budget.rs`); a peer
//! sending requests faster than [`REQUESTS_PER_SEC`] gets `Busy`; the upload cap paces
//! every answer.
//!
//! Only the validated encoder produces blob data: holes are refused (`NotPresent`) and
//! rot found on the way is reported (`Corrupt`) and marked missing, never sent.
//!
//! A node holding a whole blob keeps what its peers say they hold of it (holder
//! notices, `Request::Holds`) and, when a request that had to wait for the answer
//! budget gets its turn, points it elsewhere (`Elsewhere`) if two of its other peers
//! hold all of it (a request served at once, only if eight do): a busy node's upload
//! goes to what the swarm lacks (`modeld_proto::holders`). A peer's claims still count
//! for ten seconds after its connection ends, then are dropped.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use modeld_core::{PublicKey, ranges};
use modeld_proto::wire::{
    self, HaveMap, MAX_BLOB_REQUEST_BYTES, MAX_REQUEST_BYTES, Request, Status,
};
use modeld_store::ReadError;
use tokio::sync::Semaphore;

use crate::{Net, budget::AnswerBudget, identity, lock};

/// Most peer connections at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time allowed for a request to arrive once its stream is open.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per second one connection may send before getting `Busy`.
pub const REQUESTS_PER_SEC: f64 = 2000.0;
/// Bytes of answers being assembled in memory at once, across all peers.
pub const ANSWER_BUDGET: usize = 64 << 20;
/// Slowest reader tolerated when sending an answer (bytes per second).
const SLOWEST_READER: f64 = 128.0 * 1024.0;

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(net: Net) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let budget = Arc::new(AnswerBudget::new(ANSWER_BUDGET as u64));
    while let Some(incoming) = net.inner.endpoint.accept().await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many peer connections; refusing");
            incoming.refuse();
            continue;
        };
        let (net, budget) = (net.clone(), budget.clone());
        tokio::spawn(async move {
            handle_connection(net, incoming, budget).await;
            drop(permit);
        });
    }
}

async fn handle_connection(net: Net, incoming: quinn::Incoming, budget: Arc<AnswerBudget>) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(net.inner.config.connect_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "peer handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "peer handshake timed out");
            return;
        }
    };
    let Some(peer) = identity::peer_id(&conn) else {
        conn.close(quinn::VarInt::from_u32(1), b"no node id");
        return;
    };
    tracing::debug!(%remote, %peer, "peer connected");
    lock(&net.inner.holders).connected(&peer);
    let throttle = Arc::new(Mutex::new((REQUESTS_PER_SEC, Instant::now())));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (net, budget, throttle) = (net.clone(), budget.clone(), throttle.clone());
        let conn = conn.clone();
        tokio::spawn(async move {
            let from = Asker { peer, conn: &conn };
            handle_stream(&net, from, send, recv, &budget, &throttle).await;
        });
    }
    let now = net.inner.started.elapsed();
    lock(&net.inner.holders).disconnected(&peer, now);
    let stats = conn.stats();
    tracing::debug!(
        %remote,
        %peer,
        mtu = stats.path.current_mtu,
        lost = stats.path.lost_packets,
        datagrams_out = stats.udp_tx.datagrams,
        ios_out = stats.udp_tx.ios,
        bytes_out = stats.udp_tx.bytes,
        "peer disconnected"
    );
}

/// Takes one request token; false if the peer is over its rate.
fn allow_request(throttle: &Mutex<(f64, Instant)>) -> bool {
    let mut t = lock(throttle);
    let now = Instant::now();
    t.0 = (t.0 + now.duration_since(t.1).as_secs_f64() * REQUESTS_PER_SEC).min(REQUESTS_PER_SEC);
    t.1 = now;
    if t.0 >= 1.0 {
        t.0 -= 1.0;
        true
    } else {
        false
    }
}

/// Who sent a request: its node id and the connection it came on.
#[derive(Clone, Copy)]
struct Asker<'a> {
    peer: PublicKey,
    conn: &'a quinn::Connection,
}

async fn handle_stream(
    net: &Net,
    asker: Asker<'_>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    budget: &AnswerBudget,
    throttle: &Mutex<(f64, Instant)>,
) {
    let counters = &net.inner.counters;
    let peer = asker.peer;
    let bytes =
        match tokio::time::timeout(REQUEST_READ_TIMEOUT, recv.read_to_end(MAX_REQUEST_BYTES)).await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad request stream");
                let _ = send.reset(quinn::VarInt::from_u32(Status::BadRequest as u32));
                return;
            }
            Err(_) => {
                let _ = send.reset(quinn::VarInt::from_u32(Status::BadRequest as u32));
                return;
            }
        };
    if !allow_request(throttle) {
        counters.requests_throttled.fetch_add(1, Ordering::Relaxed);
        let _ = reply(
            &mut send,
            &wire::encode_error(Status::Busy, "too many requests"),
        )
        .await;
        return;
    }
    let request = match Request::decode(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed request");
            let _ = reply(
                &mut send,
                &wire::encode_error(Status::BadRequest, &e.to_string()),
            )
            .await;
            return;
        }
    };
    let answer = match request {
        Request::Have { hash } => answer_have(net, asker, hash).await,
        Request::Holds { hash, ranges } => record_notice(net, peer, hash, ranges).await,
        Request::GetManifest { id } => answer_manifest(net, id).await,
        Request::GetBlob { hash, ranges, held } => {
            let asked = BlobAsked { hash, ranges, held };
            return serve_blob(net, peer, send, asked, budget).await;
        }
    };
    counters.requests_served.fetch_add(1, Ordering::Relaxed);
    let _ = reply(&mut send, &answer).await;
}

async fn reply(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), ()> {
    let limit = Duration::from_secs_f64(10.0 + bytes.len() as f64 / SLOWEST_READER);
    match tokio::time::timeout(limit, send.write_all(bytes)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
            Ok(())
        }
        _ => {
            let _ = send.reset(quinn::VarInt::from_u32(Status::Internal as u32));
            Err(())
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// What this node has of `hash`. If it is fetching `hash`, the asker is subscribed
/// to what it verifies from now on ([`crate::watch`]).
async fn answer_have(net: &Net, asker: Asker<'_>, hash: modeld_core::Hash) -> Vec<u8> {
    let store = net.inner.store.clone();
    match blocking(move || store.available(hash)).await {
        Some(Ok(Some((size, have)))) => {
            let complete = ranges::is_complete(&have, size);
            if !complete {
                lock(&net.inner.watchers).watch(hash, asker.peer, asker.conn, have.clone());
            }
            HaveMap {
                size,
                complete,
                ranges: have,
            }
            .encode()
        }
        Some(Ok(None)) => wire::encode_error(Status::NotFound, "no such blob"),
        _ => wire::encode_error(Status::Internal, "store failure"),
    }
}

/// A fetching peer says it holds `ranges` of `hash`: kept (clipped to the blob) for
/// [`point_elsewhere`] if this node has any of the blob, ignored otherwise.
async fn record_notice(
    net: &Net,
    peer: PublicKey,
    hash: modeld_core::Hash,
    ranges: ranges::ChunkRanges,
) -> Vec<u8> {
    net.inner
        .counters
        .notices_received
        .fetch_add(1, Ordering::Relaxed);
    let store = net.inner.store.clone();
    if let Some(Ok(Some((size, _)))) = blocking(move || store.available(hash)).await {
        let ranges = ranges::clip(&ranges, size);
        lock(&net.inner.holders).record(peer, hash, &ranges);
    }
    vec![Status::Ok as u8]
}

/// Whether this node, holding all of `hash`, points `peer`'s request for `want`
/// elsewhere: enough of its other peers said they hold it, more if the request did
/// not wait for its turn (`modeld_proto::holders`).
fn point_elsewhere(
    net: &Net,
    peer: PublicKey,
    hash: modeld_core::Hash,
    want: &ranges::ChunkRanges,
    waited: bool,
) -> bool {
    let now = net.inner.started.elapsed();
    lock(&net.inner.holders).should_refuse(peer, hash, want, waited, now)
}

async fn answer_manifest(net: &Net, id: modeld_core::Hash) -> Vec<u8> {
    let store = net.inner.store.clone();
    match blocking(move || store.manifest(id)).await {
        Some(Ok(Some(m))) => wire::encode_manifest(&m.envelope),
        Some(Ok(None)) => wire::encode_error(Status::NotFound, "no such manifest"),
        _ => wire::encode_error(Status::Internal, "store failure"),
    }
}

/// A blob request: what is asked, and what the asker holds (its turn in the queue).
struct BlobAsked {
    hash: modeld_core::Hash,
    ranges: ranges::ChunkRanges,
    held: u64,
}

async fn serve_blob(
    net: &Net,
    peer: PublicKey,
    mut send: quinn::SendStream,
    asked: BlobAsked,
    budget: &AnswerBudget,
) {
    let BlobAsked { hash, ranges, held } = asked;
    let counters = &net.inner.counters;
    let store = net.inner.store.clone();
    let Some(Ok(found)) = blocking(move || store.available(hash)).await else {
        let _ = reply(
            &mut send,
            &wire::encode_error(Status::Internal, "store failure"),
        )
        .await;
        return;
    };
    let Some((size, have)) = found else {
        let _ = reply(
            &mut send,
            &wire::encode_error(Status::NotFound, "no such blob"),
        )
        .await;
        return;
    };
    let want = ranges::clip(&ranges, size);
    let data_bytes = ranges::covered_bytes(&want, size);
    if data_bytes > MAX_BLOB_REQUEST_BYTES {
        counters.requests_throttled.fetch_add(1, Ordering::Relaxed);
        let msg =
            format!("asks for {data_bytes} bytes; at most {MAX_BLOB_REQUEST_BYTES} per request");
        let _ = reply(&mut send, &wire::encode_error(Status::TooLarge, &msg)).await;
        return;
    }
    let encoded_len = wire::encoded_len(size, &want) as usize;
    let asked_at = Instant::now();
    let first_chunk = want.boundaries().first().map_or(0, |c| c.0);
    // Wait for room in the answer budget (in turn: those that hold least first),
    // unless the asker withdraws the request meanwhile: a swamped seed's queue then
    // holds only requests someone still wants from it.
    let (_permit, waited) = match budget.try_acquire(encoded_len as u64) {
        Some(permit) => (permit, false),
        None => {
            let permit = tokio::select! {
                permit = budget.acquire(encoded_len as u64, held) => permit,
                _ = send.stopped() => {
                    counters.requests_withdrawn.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            (permit, true)
        }
    };
    // A request to a complete node for what enough of the node's other peers hold
    // goes to them instead: a node with a queue keeps its upload for what they lack
    // (one with room sends anything but what many hold).
    if ranges::is_complete(&have, size) && point_elsewhere(net, peer, hash, &want, waited) {
        counters.requests_elsewhere.fetch_add(1, Ordering::Relaxed);
        let msg = "other peers of this node hold these ranges; ask them";
        let _ = reply(&mut send, &wire::encode_error(Status::Elsewhere, msg)).await;
        return;
    }
    let admitted = asked_at.elapsed();
    let store = net.inner.store.clone();
    let encoded = blocking(move || {
        let mut out = Vec::with_capacity(encoded_len);
        store.encode_ranges(hash, &want, &mut out).map(|()| out)
    })
    .await;
    let body = match encoded {
        Some(Ok(body)) => body,
        Some(Err(ReadError::NotFound(_))) => {
            let _ = reply(
                &mut send,
                &wire::encode_error(Status::NotFound, "no such blob"),
            )
            .await;
            return;
        }
        Some(Err(e @ ReadError::NotPresent { .. })) => {
            let _ = reply(
                &mut send,
                &wire::encode_error(Status::NotPresent, &e.to_string()),
            )
            .await;
            return;
        }
        Some(Err(e @ ReadError::Corrupt { .. })) => {
            tracing::error!(%peer, blob = %hash, error = %e, "refused to serve corrupt data");
            let _ = reply(
                &mut send,
                &wire::encode_error(Status::Corrupt, &e.to_string()),
            )
            .await;
            return;
        }
        other => {
            tracing::warn!(%peer, blob = %hash, error = ?other.map(|r| r.err()), "serving failed");
            let _ = reply(
                &mut send,
                &wire::encode_error(Status::Internal, "store failure"),
            )
            .await;
            return;
        }
    };
    let encoded_at = asked_at.elapsed();
    let limit = Duration::from_secs_f64(10.0 + body.len() as f64 / SLOWEST_READER);
    // One connection's answers go out in the order they were asked for, each at the
    // connection's whole rate (see [`answer_priority`]).
    let _ = send.set_priority(answer_priority(send.id()));
    // Handed to QUIC by reference count, not copied.
    let body = bytes::Bytes::from(body);
    let sent = tokio::time::timeout(limit, async {
        send.write_all(&wire::encode_blob_header(size)).await?;
        let mut at = 0;
        while at < body.len() {
            let end = (at + (256 << 10)).min(body.len());
            net.inner.upload.acquire((end - at) as u64).await;
            send.write_chunk(body.slice(at..end)).await?;
            at = end;
        }
        send.finish().map_err(|_| quinn::WriteError::ClosedStream)
    })
    .await;
    let ms = |d: Duration| (d.as_secs_f64() * 1e3) as u64;
    tracing::debug!(
        target: "modeld_net::trace",
        %peer,
        blob = %hash.short(),
        chunk = first_chunk,
        bytes = data_bytes,
        waited,
        admitted_ms = ms(admitted),
        encoded_ms = ms(encoded_at),
        sent_ms = ms(asked_at.elapsed()),
        ok = matches!(sent, Ok(Ok(()))),
        "answer"
    );
    match sent {
        Ok(Ok(())) => {
            counters
                .bytes_served
                .fetch_add(data_bytes, Ordering::Relaxed);
            counters.requests_served.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            let _ = send.reset(quinn::VarInt::from_u32(Status::Internal as u32));
        }
    }
}

/// The QUIC send priority of the answer on stream `id`: the earlier the request on
/// its connection, the higher. quinn interleaves streams of equal priority packet by
/// packet, so a peer's four pieces would otherwise arrive together after four piece
/// times, none of them usable (or passed on to others) before the last; in request
/// order the first is whole after one piece time, the next after two. The asker asks
/// for its rarest pieces first, and at the start of a burst, when one seed's link is
/// shared by every fetch, this is what lets the fresh hosts begin trading a second or
/// two sooner. Other answers (have-maps, manifests) keep priority 0 and pass ahead.
fn answer_priority(id: quinn::StreamId) -> i32 {
    let order = i32::try_from(id.index()).unwrap_or(i32::MAX - 1);
    -1 - order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_out_in_request_order_after_other_replies() {
        let stream = |i| quinn::StreamId::new(quinn::Side::Client, quinn::Dir::Bi, i);
        let priorities: Vec<i32> = [0, 1, 2, 1000, u64::MAX >> 2]
            .into_iter()
            .map(|i| answer_priority(stream(i)))
            .collect();
        assert!(priorities.iter().all(|&p| p < 0), "{priorities:?}");
        assert!(
            priorities.windows(2).all(|w| w[0] >= w[1]),
            "{priorities:?}"
        );
        assert!(priorities[0] > priorities[1] && priorities[2] > priorities[3]);
    }

    #[test]
    fn a_peer_over_its_request_rate_is_throttled() {
        // A full bucket: one second's worth of requests pass at once, then no more.
        let throttle = Mutex::new((REQUESTS_PER_SEC, Instant::now()));
        let burst = (0..(REQUESTS_PER_SEC as usize) * 2)
            .filter(|_| allow_request(&throttle))
            .count();
        let max = REQUESTS_PER_SEC as usize + 200; // refill while the loop runs
        assert!(
            burst >= REQUESTS_PER_SEC as usize && burst < max,
            "{burst} requests passed"
        );
    }
}
