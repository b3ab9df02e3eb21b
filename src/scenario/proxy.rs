//! A small TCP fault proxy between pipeline processes and Redis, run inside the scenario
//! runner. Every process connects through one (consumers through theirs, listeners and
//! sweepers through theirs, the harness through its own), which gives the harness two things:
//! network faults it can really inject (per-chunk delay; a cut that black-holes traffic and
//! then resets every connection that lived through it), and a stable address for Redis when a
//! restarted container comes back on another port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a proxy actually did, for the report.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    /// Chunks held back by a delay before being forwarded.
    pub chunks_delayed: AtomicU64,
    /// Connections closed by the end of a cut (or a Redis restart).
    pub connections_reset: AtomicU64,
    /// Upstream connects that failed (Redis down).
    pub upstream_failures: AtomicU64,
}

struct State {
    upstream: Mutex<String>,
    delay_ms: AtomicU64,
    cut: AtomicBool,
    /// Bumped to close every connection that exists now.
    generation: watch::Sender<u64>,
    stats: ProxyStats,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Close every connection still open.
        self.state.generation.send_modify(|g| *g += 1);
    }
}

/// `host:port` of a `redis://host:port/db` URL.
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let hp = rest.split('/').next()?;
    let hp = hp.rsplit('@').next()?;
    Some(hp.to_string())
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(name: &'static str, upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: Mutex::new(upstream.to_string()),
            delay_ms: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            stats: ProxyStats::default(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = down.set_nodelay(true);
                st.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(down, st.clone()));
            }
        });
        Ok(Proxy { name, addr, state, accept })
    }

    /// The URL processes should use to reach Redis through this proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn set_upstream(&self, upstream: &str) {
        *self.state.upstream.lock().unwrap() = upstream.to_string();
    }

    /// Every chunk, either way, waits `d` before being forwarded (0: no delay).
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Starts a cut: nothing is forwarded any more, in either direction, on any connection,
    /// old or new (packets are dropped, as in a partition: clients see silence, not errors).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    /// Ends a cut: every connection that lived through it is reset, as a partition's
    /// connections are once it heals; new connections work again.
    pub fn heal(&self) {
        // Reset first: a held chunk must never slip through between the two steps.
        self.reset_all();
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Closes every connection open now.
    pub fn reset_all(&self) {
        self.state.generation.send_modify(|g| *g += 1);
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.state.stats
    }
}

async fn serve(down: TcpStream, st: Arc<State>) {
    let mut gen = st.generation.subscribe();
    let g0 = *gen.borrow_and_update();
    let reset = async move {
        let _ = gen.wait_for(|g| *g != g0).await;
    };
    tokio::pin!(reset);
    let st2 = st.clone();
    let work = async move {
        // During a cut, a new connection is accepted and then hears nothing.
        while st2.cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = st2.upstream.lock().unwrap().clone();
        let up = match TcpStream::connect(&target).await {
            Ok(u) => u,
            Err(_) => {
                st2.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let _ = up.set_nodelay(true);
        let (dr, dw) = down.into_split();
        let (ur, uw) = up.into_split();
        tokio::select! {
            _ = pump(dr, uw, st2.clone()) => {}
            _ = pump(ur, dw, st2.clone()) => {}
        }
    };
    // Biased, reset first: once a reset is due, no held chunk may be forwarded.
    tokio::select! {
        biased;
        _ = &mut reset => {
            st.stats.connections_reset.fetch_add(1, Ordering::Relaxed);
        }
        _ = work => {}
    }
}

async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, st: Arc<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Black-holed: hold the bytes until the cut ends (the connection is reset then).
        while st.cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d = st.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            st.stats.chunks_delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_delays_cuts_and_resets() {
        // An echo server upstream.
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    loop {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&b[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        let p = Proxy::start("t", &up).await.unwrap();
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        let mut b = [0u8; 4];
        c.write_all(b"ping").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        p.set_delay(Duration::from_millis(30));
        c.write_all(b"pong").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        assert!(p.stats().chunks_delayed.load(Ordering::Relaxed) >= 2);
        p.set_delay(Duration::ZERO);
        p.cut();
        c.write_all(b"lost").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(200), c.read(&mut b)).await;
        assert!(silent.is_err(), "nothing may pass during a cut");
        p.heal();
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "a connection that lived through a cut is reset: {r:?}");
        assert_eq!(p.stats().connections_reset.load(Ordering::Relaxed), 1);
        let mut c2 = TcpStream::connect(p.addr).await.unwrap();
        c2.write_all(b"back").await.unwrap();
        c2.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"back");
    }
}
