//! A TCP fault proxy for partition tests: every byte between nodes can be made to pass,
//! stall (a partition or a hung link: connections stay open, nothing arrives), be refused
//! (connections reset), or be delayed by a seeded random jitter. The mode applies to new and
//! to live connections, so flipping it mid-stream behaves like a network that just broke.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Accept and keep connections, forward nothing (a partition).
    Blackhole,
    /// Close every connection at once and refuse new ones.
    Refuse,
    /// Forward, delaying each chunk by a random 0..=max milliseconds (seeded).
    Jitter { max_ms: u64 },
}

/// A running proxy in front of one target address.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub seed: u64,
    mode: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `target`.
    pub async fn start(target: SocketAddr, seed: u64) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watcher) = watch::channel(Fault::Pass);
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watcher.borrow() == Fault::Refuse {
                    drop(client);
                    continue;
                }
                let watcher = watcher.clone();
                let rng = rng.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, watcher.clone(), rng.clone());
                    let down = pump(server_read, client_write, watcher, rng);
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            seed,
            mode,
            task,
        })
    }

    /// Changes what happens to traffic, for live connections too.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Fault>,
    rng: Arc<Mutex<rand::rngs::StdRng>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Hold here while blackholed; leave when refused.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Fault::Refuse => return,
                Fault::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // A chunk read just before a partition is held, not delivered.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Fault::Refuse => return,
                Fault::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Jitter { max_ms } => {
                    let delay = rng
                        .lock()
                        .map(|mut r| r.random_range(0..=max_ms))
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    break;
                }
                Fault::Pass => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn traffic_passes_stalls_in_a_partition_and_resumes_after_the_heal() {
        let proxy = FaultProxy::start(echo_server().await, 7)
            .await
            .expect("proxy");
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut buf = [0u8; 5];
        client.write_all(b"hello").await.expect("write");
        client.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"hello");

        proxy.set(Fault::Blackhole);
        client.write_all(b"again").await.expect("write");
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "nothing crosses a partition");
        proxy.set(Fault::Pass);
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut buf))
            .await
            .expect("delivered after the heal")
            .expect("read");
        assert_eq!(&buf, b"again");

        proxy.set(Fault::Jitter { max_ms: 5 });
        client.write_all(b"slow!").await.expect("write");
        client.read_exact(&mut buf).await.expect("jittered echo");
        assert_eq!(&buf, b"slow!");

        proxy.set(Fault::Refuse);
        let mut one = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read(&mut one))
            .await
            .expect("closed promptly");
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "refused connections are closed"
        );
    }
}
