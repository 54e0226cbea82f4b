//! Misbehaving peers for tests: they speak the real protocol over real QUIC with a
//! real node identity, and then do the wrong thing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use modeld_core::{Hash, SecretKey, ranges};
use modeld_net::{AllowList, NodeKey};
use modeld_proto::wire::{self, HaveMap, Request, Status};

/// What the peer does wrong.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Accepts connections and requests, never answers.
    Silent,
    /// Claims to have every listed blob (hash -> size) and answers blob requests with
    /// a correct header followed by garbage of exactly the right length.
    Lying(HashMap<Hash, u64>),
}

/// A misbehaving peer on loopback, stopped when dropped.
#[derive(Debug)]
pub struct FakePeer {
    runtime: Option<tokio::runtime::Runtime>,
    addr: String,
}

impl FakePeer {
    /// Starts the peer on 127.0.0.1 with a fresh node key.
    pub fn start(behaviour: Behaviour) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let key = NodeKey::from_secret(SecretKey::generate());
        let endpoint = {
            let _guard = runtime.enter();
            modeld_net::endpoint::bind(
                &key,
                "127.0.0.1:0".parse().expect("addr"),
                AllowList::anyone(),
            )
            .expect("bind fake peer")
        };
        let addr = format!(
            "{}@{}",
            key.id(),
            endpoint.local_addr().expect("local addr")
        );
        runtime.spawn(serve(endpoint, Arc::new(behaviour)));
        Self {
            runtime: Some(runtime),
            addr,
        }
    }

    /// `NODE_ID@IP:PORT`, for `--peer`.
    pub fn peer_addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(endpoint: quinn::Endpoint, behaviour: Arc<Behaviour>) {
    while let Some(incoming) = endpoint.accept().await {
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(answer(send, recv, behaviour.clone()));
            }
        });
    }
}

async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    behaviour: Arc<Behaviour>,
) {
    let Ok(bytes) = recv.read_to_end(wire::MAX_REQUEST_BYTES).await else {
        return;
    };
    match &*behaviour {
        Behaviour::Silent => {
            // Hold the stream open and say nothing.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(send);
        }
        Behaviour::Lying(sizes) => {
            let answer = match Request::decode(&bytes) {
                Ok(Request::Have { hash }) => match sizes.get(&hash) {
                    Some(&size) => HaveMap {
                        size,
                        complete: true,
                        ranges: ranges::all(size),
                    }
                    .encode(),
                    None => wire::encode_error(Status::NotFound, "no"),
                },
                Ok(Request::GetBlob {
                    hash, ranges: want, ..
                }) => match sizes.get(&hash) {
                    Some(&size) => {
                        let len = wire::encoded_len(size, &ranges::clip(&want, size)) as usize;
                        let mut a = wire::encode_blob_header(size).to_vec();
                        a.extend((0..len).map(|i| (i * 7 + 3) as u8));
                        a
                    }
                    None => wire::encode_error(Status::NotFound, "no"),
                },
                _ => wire::encode_error(Status::NotFound, "no"),
            };
            let _ = send.write_all(&answer).await;
            let _ = send.finish();
            // Keep the stream alive until the reader is done.
            let _ = send.stopped().await;
        }
    }
}
