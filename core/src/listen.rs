//! The public listeners, with an accept queue a connect storm fits in.
//!
//! tokio's `TcpListener::bind` listens with std's backlog of 128. When a
//! rebalance, a drain or a restart sends thousands of clients at once, the
//! queue overflows, the kernel drops their SYNs, and each of those clients
//! waits out TCP's one-second initial retransmission timeout: a move that
//! should take milliseconds takes a second.

use clap::Args;
use tokio::net::{TcpListener, TcpSocket};

/// The accept queue of a service's public listener.
#[derive(Debug, Clone, Copy, Args, PartialEq, Eq)]
pub struct ListenArgs {
    /// Connections the kernel queues for accept on the public listener
    /// (it caps this at `net.core.somaxconn`).
    #[arg(long = "listen-backlog", env = "RTC_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
}

/// Binds `addr` (`host:port`, the first address it resolves to that binds)
/// and listens with `backlog`.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted service rebinds at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(backlog),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// Connects `n` clients to a listener that accepts none; how many
    /// complete their handshake within 300 ms (the kernel answers a SYN
    /// only while the accept queue has room).
    async fn handshakes(listener: &TcpListener, n: usize) -> usize {
        let addr = listener.local_addr().unwrap();
        let attempts = (0..n).map(|_| tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)));
        let results = futures_util::future::join_all(attempts).await;
        results.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count()
    }

    #[tokio::test]
    async fn the_accept_queue_is_as_long_as_asked() {
        let short = bind("127.0.0.1:0", 4).await.unwrap();
        let done = handshakes(&short, 20).await;
        // Linux queues backlog + 1.
        assert!((4..=6).contains(&done), "backlog 4: {done} of 20 handshakes");
        let long = bind("127.0.0.1:0", 256).await.unwrap();
        assert_eq!(handshakes(&long, 200).await, 200);
    }

    #[tokio::test]
    async fn an_address_that_does_not_bind_is_an_error() {
        let taken = bind("127.0.0.1:0", 16).await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        assert!(bind(&addr, 16).await.is_err());
        assert!(bind("not an address", 16).await.is_err());
    }
}
