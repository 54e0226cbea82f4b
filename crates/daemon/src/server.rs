//! The local API server: accepts sessions on a unix socket or loopback TCP.
//!
//! Each session is a task: hello (with the token on TCP), then requests one at a
//! time. A request runs on a blocking thread; meanwhile the session sends a progress
//! event every [`TICK`] (also a heartbeat) and watches the connection: if the client
//! goes away or the daemon shuts down, the request is cancelled.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use modeld_api::protocol::{
    ApiError, ClientMessage, ErrorKind, MAX_FRAME, PROTOCOL, Reply, Request, ServerMessage,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{
    handlers::{self, SessionState},
    node::{Node, Progress},
};

/// Progress (and heartbeat) interval.
const TICK: Duration = Duration::from_millis(250);
/// Time allowed for the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A session idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most sessions at once.
pub(crate) const MAX_SESSIONS: usize = 128;

/// A listening socket of the API.
pub(crate) trait Acceptor: Send + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        Self::accept(self).await.map(|(s, _)| s)
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        Self::accept(self).await.map(|(s, _)| s)
    }
}

/// Accepts connections until `shutdown` fires, then waits (bounded) for the sessions
/// to end.
pub(crate) async fn serve<A: Acceptor>(
    node: Arc<Node>,
    listener: A,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_SESSIONS));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            conn = listener.accept() => match conn {
                Ok(stream) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!("too many API sessions; refusing a connection");
                        continue;
                    };
                    let node = node.clone();
                    let token = token.clone();
                    let shutdown = shutdown.clone();
                    sessions.spawn(async move {
                        if let Err(e) = session(node, stream, token, shutdown).await {
                            tracing::debug!(error = %e, "API session ended with an error");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Sessions see the shutdown too and cancel their requests; give them time to finish.
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        tracing::warn!("API sessions did not finish in time; abandoning them");
    }
}

async fn read_message<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<ClientMessage>> {
    buf.clear();
    let n = (&mut *reader)
        .take(MAX_FRAME as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message too large or cut off",
        ));
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, msg: &ServerMessage) -> std::io::Result<()> {
    writer.write_all(&modeld_api::frame::encode(msg)).await?;
    writer.flush().await
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    node: Arc<Node>,
    stream: S,
    token: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut rd, &mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello"))??;
    match hello {
        Some(ClientMessage::Hello { token: given, .. }) if token.is_none() || given == token => {
            send(
                &mut wr,
                &ServerMessage::Hello {
                    protocol: PROTOCOL,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                },
            )
            .await?;
        }
        Some(ClientMessage::Hello { .. }) => {
            let e = ApiError::new(
                ErrorKind::Refused,
                "wrong API token (read it from daemon.json)",
            );
            return send(&mut wr, &ServerMessage::Error(e)).await;
        }
        _ => return Ok(()),
    }

    let mut state = SessionState::default();
    loop {
        let msg = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            r = tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut rd, &mut buf)) => match r {
                Err(_) => return Ok(()),
                Ok(r) => r?,
            },
        };
        let request = match msg {
            None => return Ok(()),
            Some(ClientMessage::Request(r)) => r,
            Some(ClientMessage::Hello { .. }) => {
                let e = ApiError::new(ErrorKind::Invalid, "hello sent twice");
                send(&mut wr, &ServerMessage::Error(e)).await?;
                continue;
            }
        };
        let (reply, back) =
            run_request(&node, request, state, &mut rd, &mut wr, &mut shutdown).await;
        state = back;
        let msg = match reply {
            Ok(r) => ServerMessage::Ok(Box::new(r)),
            Err(e) => ServerMessage::Error(e),
        };
        send(&mut wr, &msg).await?;
    }
}

/// Runs `request` on a blocking thread while streaming progress and watching for the
/// client leaving. Returns the reply and the session state.
async fn run_request<R, W>(
    node: &Arc<Node>,
    request: Request,
    mut state: SessionState,
    rd: &mut R,
    wr: &mut W,
    shutdown: &mut watch::Receiver<bool>,
) -> (Result<Reply, ApiError>, SessionState)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let progress = Arc::new(Progress::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let mut job = {
        let (node, progress, cancel) = (node.clone(), progress.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || {
            let reply = handlers::handle(&node, request, &mut state, &progress, &cancel);
            (reply, state)
        })
    };
    let mut tick = tokio::time::interval(TICK);
    let mut client_gone = false;
    let mut stopping = false;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            done = &mut job => {
                return match done {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "request handler panicked");
                        (Err(ApiError::new(ErrorKind::Internal, "internal error (see the daemon log)")), SessionState::default())
                    }
                };
            }
            _ = tick.tick(), if !client_gone => {
                if let Some(event) = progress.event()
                    && send(wr, &ServerMessage::Event(event)).await.is_err()
                {
                    client_gone = true;
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            n = rd.read(&mut probe), if !client_gone => {
                // Clients do not send while a request runs: any read means they left.
                if !matches!(n, Ok(1..)) {
                    client_gone = true;
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
