//! A `redis-server` of a test's own, for faults that would disturb other
//! tests on the shared one: `FLUSHALL`, `DEBUG SLEEP`, a restart that loses
//! every key (no persistence).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A `redis-server` on a free loopback port, killed when dropped.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts one with extra `redis-server` arguments (e.g. ACL users:
    /// `--user rtc on >secret ~* &* +@all --user default off`). With the
    /// default user off, readiness is when it answers at all.
    pub async fn start_with(extra: &[&str]) -> std::io::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let mut server = Self { port, extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills it (SIGKILL) and starts it again on the same port: every key
    /// is gone, as after a restart without persistence.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// Kills it (SIGKILL); connections to it are refused until `restart`.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if ping(self.addr()).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(std::io::Error::other(format!("redis-server on port {} did not answer PING", self.port)))
    }
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH …` when the default user is off: either way up.
    let mut reply = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await, Ok(Ok(_)))
        && (reply[0] == b'+' || reply[0] == b'-')
}
