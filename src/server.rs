//! Runs a node: binds the listener, starts the node's background tasks
//! (the Redis link, the sweeper), accepts connections (each served as
//! HTTP/1 with upgrades), and on shutdown stops accepting, closes
//! subscribers with 1001 and waits for them up to the drain timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::config::Config;
use crate::http::{router, PeerAddr};
use crate::node::Node;
use crate::replication::Handles;

/// Ingest-channel messages waiting for ingress; past it the link drops
/// them (and logs it) rather than stall fanout.
const INGEST_CHANNEL_BACKLOG: usize = 4096;

/// A started node: its address, and the task that runs it to the end.
pub struct Running {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds and starts serving; returns once the listener is bound.
pub async fn start(config: Config) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let node = Node::new(config);
    for warning in node.config.warnings() {
        tracing::warn!("{warning}");
    }
    let mode = if node.config.redis_url.is_some() {
        "cluster"
    } else {
        "embedded"
    };
    tracing::info!(mode, shards = node.config.shards.get(), "listening on {addr}");
    if let Some(replication) = &node.replication {
        // Messages of the Redis ingest channel, from the link to ingress.
        let (ingest, ingest_rx) = tokio::sync::mpsc::channel(INGEST_CHANNEL_BACKLOG);
        tokio::spawn(crate::ingress::redis::run(node.ingress.clone(), ingest_rx));
        tokio::spawn(replication.clone().run(Handles {
            fanout: node.fanout.clone(),
            metrics: node.metrics.clone(),
            shutdown: node.shutdown.clone(),
            ingest,
        }));
    }
    tokio::spawn(node.sweeper.clone().run(
        node.metrics.clone(),
        node.fanout.backlog().clone(),
        node.shutdown.clone(),
    ));
    let task = tokio::spawn(serve(listener, node.clone()));
    Ok(Running { addr, node, task })
}

/// Why a node stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// Runs a node until SIGTERM or SIGINT, then drains. A node that failed
/// (a fanout worker died) drains too, then returns the failure, so that
/// the process exits non-zero and a supervisor restarts it.
pub async fn run(config: Config) -> Result<(), RunError> {
    let addr = config.listen;
    // Before the node listens: a signal that comes once it does (a
    // supervisor's SIGTERM right after start) must find the handler in
    // place, not the default action, which kills the process undrained.
    let signals = Signals::install();
    let running = start(config)
        .await
        .map_err(|source| RunError::Listen { addr, source })?;
    let node = running.node.clone();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown signal received: draining");
        node.shutdown.trigger();
    });
    running.finished().await
}

impl Running {
    /// Waits until the node has stopped and drained; its failure, if it
    /// stopped because of one.
    pub async fn finished(self) -> Result<(), RunError> {
        let _ = self.task.await;
        match self.node.shutdown.failure() {
            Some(why) => Err(RunError::Failed(why.to_string())),
            None => Ok(()),
        }
    }
}

/// The next signal of `s`; never, for one that could not be installed.
#[cfg(unix)]
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT, listened to from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves at the first SIGTERM or SIGINT.
    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            if term.is_none() && int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                _ = recv(&mut term) => {}
                _ = recv(&mut int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(listener: TcpListener, node: Arc<Node>) {
    let app = router(node.clone());
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.wait() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(stream, peer, app.clone(), node.clone()));
    }
    drop(listener);
    drain(&node).await;
    node.fanout.stop();
    tracing::info!("stopped");
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: axum::Router, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let service = app.map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        req
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.handshake_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = node.shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(node.config.drain_timeout, conn).await;
        }
    }
}

/// Waits for open connections to close, up to the drain timeout.
async fn drain(node: &Node) {
    let deadline = tokio::time::Instant::now() + node.config.drain_timeout;
    while node.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = node.open_connections();
    if left > 0 {
        tracing::warn!(left, "drain timeout: dropping connections that did not close");
    }
}
