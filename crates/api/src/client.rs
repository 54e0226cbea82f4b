//! A blocking client for the local API, found through the data dir.

use std::{
    io::{self, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    frame,
    paths::{ApiAddr, RunInfo},
    protocol::{ApiError, ClientMessage, Event, PROTOCOL, Reply, Request, ServerMessage},
};

/// How long to wait for any message from the daemon. Long requests send progress
/// at least every second, so silence this long means the daemon is stuck.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No daemon is running on this data dir.
    #[error("no modeld is running with data dir {dir} (start one with `modeld --data-dir {dir}`, or point --data-dir / MODELD_DATA_DIR at the right one)", dir = .0.display())]
    NotRunning(PathBuf),
    /// A run-info file exists but nothing answers.
    #[error("modeld (pid {pid}) of data dir {dir} does not answer at {api}: {source}; if it crashed, start it again", dir = .data_dir.display())]
    NotAnswering {
        /// The data dir.
        data_dir: PathBuf,
        /// The pid on record.
        pid: u32,
        /// The address on record.
        api: String,
        /// The connection error.
        #[source]
        source: io::Error,
    },
    /// The daemon speaks another protocol version.
    #[error(
        "modeld {version} speaks API protocol {theirs}, this modelctl speaks {ours}: use matching versions"
    )]
    Protocol {
        /// Daemon version.
        version: String,
        /// Daemon protocol.
        theirs: u32,
        /// Our protocol.
        ours: u32,
    },
    /// Reading the run-info file or the handshake failed.
    #[error("talking to modeld: {0}")]
    Io(#[from] io::Error),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The daemon refused or failed the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The connection broke.
    #[error("lost the connection to modeld: {0}")]
    Io(#[from] io::Error),
    /// The daemon sent something unexpected.
    #[error("unexpected answer from modeld: {0}")]
    Protocol(String),
}

/// A session with a running daemon.
pub struct Client {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    version: String,
    line: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &self.version)
            .finish()
    }
}

impl Client {
    /// Connects to the daemon of `data_dir` and says hello.
    pub fn connect(data_dir: &Path) -> Result<Self, ConnectError> {
        let info = match RunInfo::read(data_dir) {
            Ok(info) => info,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConnectError::NotRunning(data_dir.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        let not_answering = |source| ConnectError::NotAnswering {
            data_dir: data_dir.to_owned(),
            pid: info.pid,
            api: info.api.to_string(),
            source,
        };
        let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &info.api {
            ApiAddr::Unix(path) => {
                let s = UnixStream::connect(path).map_err(not_answering)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
            ApiAddr::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, Duration::from_secs(5))
                    .map_err(not_answering)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                s.set_nodelay(true)?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
        };
        let mut client = Self {
            reader: BufReader::new(reader),
            writer,
            version: String::new(),
            line: Vec::new(),
        };
        frame::write_message(
            &mut client.writer,
            &ClientMessage::Hello {
                protocol: PROTOCOL,
                token: info.token.clone(),
            },
        )?;
        match client.next()? {
            ServerMessage::Hello { protocol, version } if protocol == PROTOCOL => {
                client.version = version;
                Ok(client)
            }
            ServerMessage::Hello { protocol, version } => Err(ConnectError::Protocol {
                version,
                theirs: protocol,
                ours: PROTOCOL,
            }),
            ServerMessage::Error(e) => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, e.message).into())
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected hello, got {other:?}"),
            )
            .into()),
        }
    }

    /// The daemon's version.
    pub fn daemon_version(&self) -> &str {
        &self.version
    }

    fn next(&mut self) -> io::Result<ServerMessage> {
        if !frame::read_line(&mut self.reader, &mut self.line)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "modeld closed the connection",
            ));
        }
        frame::decode(&self.line)
    }

    /// Sends `request`, passing progress events to `on_event`, and returns the reply.
    pub fn call(
        &mut self,
        request: Request,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Reply, CallError> {
        frame::write_message(&mut self.writer, &ClientMessage::Request(request))?;
        loop {
            match self.next()? {
                ServerMessage::Event(e) => on_event(&e),
                ServerMessage::Ok(reply) => return Ok(*reply),
                ServerMessage::Error(e) => return Err(e.into()),
                ServerMessage::Hello { .. } => {
                    return Err(CallError::Protocol("hello mid-session".into()));
                }
            }
        }
    }
}
