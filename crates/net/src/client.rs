//! One connection to a peer and its requests. Every read is bounded in size (computed
//! before reading) and in time.

use std::{net::SocketAddr, time::Duration};

use modeld_core::{
    Hash, PublicKey,
    ranges::{self, ChunkRanges},
};
use modeld_proto::wire::{self, HaveMap, MAX_ERROR_BYTES, Request, Status, WireError};

use tokio::sync::mpsc;

use crate::{Net, PeerAddr, identity};

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer is not who it was expected to be.
    #[error("peer at {addr} is {actual}, not {expected}")]
    WrongPeer {
        /// The address.
        addr: SocketAddr,
        /// Who was expected.
        expected: PublicKey,
        /// Who answered.
        actual: PublicKey,
    },
    /// No (complete) answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or stream broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The peer answered with an error status.
    #[error("peer answered {status:?}: {message}")]
    Status {
        /// The status.
        status: Status,
        /// Its message.
        message: String,
    },
    /// The answer is malformed or does not match the question.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// Time allowed to read one pushed notice once its stream is open.
pub const NOTICE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// News a peer pushed: it now holds `ranges` of blob `hash` too.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Who holds them.
    pub peer: PublicKey,
    /// The blob.
    pub hash: Hash,
    /// The ranges it newly holds (not clipped to the blob: the receiver does that).
    pub ranges: ChunkRanges,
}

/// An authenticated connection to a peer.
#[derive(Debug, Clone)]
pub struct PeerConn {
    conn: quinn::Connection,
    id: PublicKey,
    addr: SocketAddr,
    timeout: Duration,
}

impl PeerConn {
    /// Connects to `peer`, checking its node id if one was given.
    pub async fn connect(net: &Net, peer: PeerAddr) -> Result<Self, PeerError> {
        let connect_err = |reason: String| PeerError::Connect {
            addr: peer.addr,
            reason,
        };
        let connecting = net
            .inner
            .endpoint
            .connect(peer.addr, "modeld")
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::time::timeout(net.inner.config.connect_timeout, connecting)
            .await
            .map_err(|_| connect_err("handshake timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let id =
            identity::peer_id(&conn).ok_or_else(|| connect_err("peer sent no node id".into()))?;
        if let Some(expected) = peer.id
            && expected != id
        {
            conn.close(quinn::VarInt::from_u32(1), b"unexpected node id");
            return Err(PeerError::WrongPeer {
                addr: peer.addr,
                expected,
                actual: id,
            });
        }
        Ok(Self {
            conn,
            id,
            addr: peer.addr,
            timeout: net.inner.config.request_timeout,
        })
    }

    /// The peer's node id.
    pub fn id(&self) -> PublicKey {
        self.id
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the connection.
    pub fn close(&self, reason: &str) {
        let stats = self.conn.stats();
        tracing::debug!(
            peer = %self.id,
            mtu = stats.path.current_mtu,
            rtt_us = stats.path.rtt.as_micros() as u64,
            lost = stats.path.lost_packets,
            datagrams_in = stats.udp_rx.datagrams,
            bytes_in = stats.udp_rx.bytes,
            "closing peer connection"
        );
        self.conn
            .close(quinn::VarInt::from_u32(0), reason.as_bytes());
    }

    /// Sends `request` and reads the whole answer (at most `limit` bytes) within
    /// `timeout`; returns the answer of an `Ok` status (the body starts at byte 1).
    async fn ask(
        &self,
        request: &Request,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let exchange = async {
            let (mut send, mut recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            send.write_all(&request.encode())
                .await
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            send.finish()
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            let answer = recv
                .read_to_end(limit.max(3 + MAX_ERROR_BYTES))
                .await
                .map_err(|e| match e {
                    quinn::ReadToEndError::TooLong => {
                        PeerError::Malformed("answer longer than it can be".into())
                    }
                    quinn::ReadToEndError::Read(e) => PeerError::Connection(e.to_string()),
                })?;
            let (&status, body) = answer
                .split_first()
                .ok_or_else(|| PeerError::Malformed("empty answer".into()))?;
            let status = Status::from_byte(status)?;
            if status != Status::Ok {
                let message = wire::decode_error(body).unwrap_or_default();
                return Err(PeerError::Status { status, message });
            }
            Ok(answer)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(timeout))?
    }

    /// What the peer has of blob `hash`.
    pub async fn have(&self, hash: Hash) -> Result<HaveMap, PeerError> {
        let limit = 1 + 8 + 1 + 4 + wire::MAX_HAVE_BOUNDARIES * 8;
        let answer = self
            .ask(&Request::Have { hash }, limit, self.timeout)
            .await?;
        Ok(HaveMap::decode(&answer[1..])?)
    }

    /// Tells the peer this node now holds `ranges` of blob `hash` (a holder notice;
    /// see `modeld_proto::holders`). `ranges` has at most `MAX_REQUEST_BOUNDARIES`
    /// boundaries.
    pub async fn holds(&self, hash: Hash, ranges: ChunkRanges) -> Result<(), PeerError> {
        self.ask(&Request::Holds { hash, ranges }, 1, self.timeout)
            .await
            .map(drop)
    }

    /// Hands each notice the peer pushes on this connection (what it newly verified of
    /// a blob this node asked it about: [`crate::watch`]) to `notices`, until the
    /// connection closes or `notices` does. A notice is read within
    /// [`NOTICE_READ_TIMEOUT`] and at most `MAX_REQUEST_BYTES` long; one that is
    /// malformed, or finds `notices` full, is dropped (it was only news).
    pub fn forward_notices(&self, notices: mpsc::Sender<Notice>) {
        let (conn, peer) = (self.conn.clone(), self.id);
        tokio::spawn(async move {
            loop {
                let mut recv = tokio::select! {
                    () = notices.closed() => return,
                    s = conn.accept_uni() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                };
                let read = tokio::time::timeout(
                    NOTICE_READ_TIMEOUT,
                    recv.read_to_end(wire::MAX_REQUEST_BYTES),
                );
                let notice = match read.await {
                    Ok(Ok(bytes)) => Request::decode(&bytes).map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".into()),
                };
                match notice {
                    Ok(Request::Holds { hash, ranges }) => {
                        let _ = notices.try_send(Notice { peer, hash, ranges });
                    }
                    Ok(_) => tracing::debug!(%peer, "peer pushed a request, not a notice"),
                    Err(e) => tracing::debug!(%peer, error = %e, "bad pushed notice"),
                }
            }
        });
    }

    /// The signed manifest `id` (its bytes are not yet checked against the id).
    pub async fn manifest(&self, id: Hash) -> Result<Vec<u8>, PeerError> {
        let limit = 1 + 4 + modeld_core::envelope::MAX_ENVELOPE_BYTES;
        let answer = self
            .ask(&Request::GetManifest { id }, limit, self.timeout)
            .await?;
        Ok(wire::decode_manifest(&answer[1..])?)
    }

    /// The bao encoding of `ranges` of blob `hash`, which is `size` bytes long. The read
    /// is bounded by the exact encoded length, and timed by `timeout`. The answer is kept
    /// as the chunks QUIC delivered, never concatenated. `held` is what this node holds
    /// of what it is fetching: a busy server answers those that hold least first
    /// (`modeld_proto::turns`).
    pub async fn blob(
        &self,
        hash: Hash,
        size: u64,
        ranges: &ChunkRanges,
        held: u64,
        timeout: Duration,
    ) -> Result<BlobAnswer, PeerError> {
        self.blob_with_start(hash, size, ranges, held, timeout, || ())
            .await
    }

    /// [`PeerConn::blob`], calling `on_start` when the answer's first bytes arrive: the
    /// peer has taken the request up (a server answers in turn as its answer budget
    /// frees), so the fetch's scheduler can let copies waiting elsewhere go.
    pub async fn blob_with_start(
        &self,
        hash: Hash,
        size: u64,
        ranges: &ChunkRanges,
        held: u64,
        timeout: Duration,
        on_start: impl FnOnce(),
    ) -> Result<BlobAnswer, PeerError> {
        let mut on_start = Some(on_start);
        let ranges = ranges::clip(ranges, size);
        let expected = wire::encoded_len(size, &ranges) as usize;
        let request = Request::GetBlob {
            hash,
            ranges: ranges.clone(),
            held,
        };
        let limit = BlobAnswer::HEADER + expected;
        let exchange = async {
            let (mut send, mut recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            send.write_all(&request.encode())
                .await
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            send.finish()
                .map_err(|e| PeerError::Connection(e.to_string()))?;
            let mut chunks: Vec<bytes::Bytes> = Vec::new();
            let mut len = 0usize;
            while let Some(chunk) = recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| PeerError::Connection(e.to_string()))?
            {
                if let Some(f) = on_start.take() {
                    f();
                }
                len += chunk.bytes.len();
                if len > limit.max(3 + MAX_ERROR_BYTES) {
                    return Err(PeerError::Malformed("answer longer than it can be".into()));
                }
                chunks.push(chunk.bytes);
            }
            Ok(BlobAnswer { chunks, len })
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(timeout))??;
        let mut head = [0u8; BlobAnswer::HEADER];
        let got = answer.copy_prefix(&mut head);
        if got == 0 {
            return Err(PeerError::Malformed("empty answer".into()));
        }
        let status = Status::from_byte(head[0])?;
        if status != Status::Ok {
            let mut body = vec![0u8; answer.len - 1];
            answer.copy_range(1, &mut body);
            let message = wire::decode_error(&body).unwrap_or_default();
            return Err(PeerError::Status { status, message });
        }
        if got < BlobAnswer::HEADER {
            return Err(PeerError::Malformed("blob answer without a size".into()));
        }
        let mut claimed = [0u8; 8];
        claimed.copy_from_slice(&head[1..]);
        let claimed = wire::decode_blob_size(&claimed)?;
        if claimed != size {
            return Err(PeerError::Malformed(format!(
                "peer says the blob is {claimed} bytes, the manifest says {size}"
            )));
        }
        if answer.len - BlobAnswer::HEADER != expected {
            return Err(PeerError::Malformed(format!(
                "answer has {} bytes of encoding, expected {expected}",
                answer.len - BlobAnswer::HEADER
            )));
        }
        Ok(answer)
    }
}

/// A blob answer as received: status, size, then the bao encoding, in the chunks QUIC
/// delivered (no copy to make it contiguous).
#[derive(Debug)]
pub struct BlobAnswer {
    chunks: Vec<bytes::Bytes>,
    len: usize,
}

impl BlobAnswer {
    /// Status byte and size.
    const HEADER: usize = 9;

    fn copy_range(&self, mut skip: usize, out: &mut [u8]) -> usize {
        let mut filled = 0;
        for c in &self.chunks {
            if filled == out.len() {
                break;
            }
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            let take = (c.len() - skip).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&c[skip..skip + take]);
            filled += take;
            skip = 0;
        }
        filled
    }

    fn copy_prefix(&self, out: &mut [u8]) -> usize {
        self.copy_range(0, out)
    }

    /// The bao encoding of the requested ranges (not yet verified), as a reader.
    pub fn encoding(&self) -> impl std::io::Read + '_ {
        ChunkReader {
            chunks: &self.chunks,
            index: 0,
            offset: 0,
        }
        .skipping(Self::HEADER)
    }
}

/// Reads a list of chunks as one stream.
struct ChunkReader<'a> {
    chunks: &'a [bytes::Bytes],
    index: usize,
    offset: usize,
}

impl ChunkReader<'_> {
    fn skipping(mut self, mut n: usize) -> Self {
        while n > 0 && self.index < self.chunks.len() {
            let left = self.chunks[self.index].len() - self.offset;
            if n < left {
                self.offset += n;
                n = 0;
            } else {
                n -= left;
                self.index += 1;
                self.offset = 0;
            }
        }
        self
    }
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() && self.index < self.chunks.len() {
            let c = &self.chunks[self.index];
            let take = (c.len() - self.offset).min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&c[self.offset..self.offset + take]);
            filled += take;
            self.offset += take;
            if self.offset == c.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        Ok(filled)
    }
}
