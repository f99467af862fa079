//! A TCP proxy on loopback that passes, black-holes or cuts connections.
//!
//! - **Pass**: bytes flow both ways.
//! - **Black hole**: bytes from either side are read and dropped. Writes on
//!   both ends still succeed, as they do into a half-open mobile connection
//!   whose peer vanished: the sender cannot tell that nothing arrives.
//! - **Partition**: nothing flows, and nothing is lost: bytes wait (in the
//!   proxy and the kernel's buffers) until the mode is pass again, as when
//!   a network partition heals and TCP retransmits. New connections are
//!   accepted and wait too.
//! - **Cut** ([`FaultProxy::cut`]): every open connection is closed with a
//!   reset, as when a NAT forgets the flow; new ones are still accepted.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    BlackHole,
    Partition,
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    /// Bumped by [`FaultProxy::cut`]; every connection ends when it changes.
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = watch::Sender::new(ProxyMode::Pass);
        let cuts = watch::Sender::new(0);
        let (mode_rx, cuts_rx) = (mode.subscribe(), cuts.subscribe());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mode, cuts) = (mode_rx.clone(), cuts_rx.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, mode, cuts).await;
                    }
                });
            }
        });
        Ok(Self { addr, mode, cuts, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Resets every open connection.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, server: TcpStream, mode: watch::Receiver<ProxyMode>, mut cuts: watch::Receiver<u64>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode);
    cuts.mark_unchanged();
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cuts.changed() => {}
    }
}

/// Copies `from` to `to` while the mode is pass; drops what it reads in a
/// black hole. When `from` ends, `to` is closed too, except in a black hole:
/// there the close is lost like everything else, until the proxy cuts.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m != ProxyMode::Partition).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read during a pass, then the partition began: hold it until it
        // heals.
        if mode.wait_for(|m| *m != ProxyMode::Partition).await.is_err() {
            break;
        }
        if *mode.borrow() == ProxyMode::BlackHole {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if *mode.borrow() == ProxyMode::BlackHole {
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}
