//! Puts a node together and runs it: binds the listener, starts the
//! fanout workers, accepts connections (each served as HTTP/1 with
//! upgrades), and on shutdown stops accepting, closes subscribers with
//! 1001 and waits for them up to the drain timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use dashmap::DashMap;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::config::Config;
use crate::fanout::{Fanout, FanoutConfig};
use crate::http::{router, PeerAddr};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::shutdown::Shutdown;
use crate::sweep::Sweeper;

/// Everything a connection or a request handler needs of its node.
pub struct Node {
    pub config: Config,
    pub fanout: Arc<Fanout>,
    pub ingress: Ingress,
    /// Cluster mode's link to Redis; `None` in embedded mode.
    pub replication: Option<Arc<Replication>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<Shutdown>,
    /// Every connection's pings and timeouts.
    pub sweeper: Arc<Sweeper>,
    /// Open WebSocket connections, for `max_connections`.
    open: AtomicUsize,
    /// Open WebSocket connections per client IP; a dashmap because every
    /// handshake and every close touches it from any runtime thread.
    per_ip: DashMap<IpAddr, usize>,
}

/// Holds one place under the connection limits until dropped.
pub struct ConnectionPermit {
    node: Arc<Node>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        // Relaxed: a counter compared against a limit, nothing else ordered by it.
        self.node.open.fetch_sub(1, Ordering::Relaxed);
        if self.node.config.max_connections_per_ip.is_some() {
            self.node.per_ip.remove_if_mut(&self.ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

impl Node {
    pub fn new(config: Config) -> Arc<Node> {
        let metrics = Arc::new(Metrics::new(config.redis_url.is_some()));
        let shutdown = Arc::new(Shutdown::default());
        let fanout = Fanout::start(
            FanoutConfig {
                shards: config.shards.get(),
                ring_capacity: config.ring_capacity.get(),
                history_messages: config.history_messages.get(),
                history_max_age: config.history_max_age,
                max_unread_per_user: config.max_unread_per_user.get(),
            },
            metrics.clone(),
            shutdown.clone(),
        );
        let replication = config.redis_url.as_ref().map(|url| {
            Arc::new(Replication::new(
                url.clone(),
                config.ingest_channel.clone(),
                config.history_messages.get(),
                config.max_unread_per_user.get(),
            ))
        });
        let ingress = Ingress::new(fanout.clone(), replication.clone(), metrics.clone(), &config);
        let sweeper = Arc::new(Sweeper::new(config.idle_timeout, config.ping_interval));
        Arc::new(Node {
            config,
            fanout,
            ingress,
            replication,
            metrics,
            shutdown,
            sweeper,
            open: AtomicUsize::new(0),
            per_ip: DashMap::new(),
        })
    }

    /// Takes a place for a new WebSocket connection, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, (StatusCode, String)> {
        if self.shutdown.is_triggered() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()));
        }
        let max = self.config.max_connections.get();
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this node holds its maximum of {max} connections"),
            ));
        }
        if let Some(per_ip) = self.config.max_connections_per_ip {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= per_ip.get() {
                drop(n);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("at most {per_ip} connections per client address"),
                ));
            }
            *n += 1;
        }
        Ok(ConnectionPermit {
            node: self.clone(),
            ip,
        })
    }

    /// Ready to serve: not shutting down, and Redis up where configured.
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_triggered() && self.replication.as_ref().is_none_or(|r| r.is_up())
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

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
        tokio::spawn(replication.clone().run(node.clone()));
    }
    tokio::spawn(
        node.sweeper
            .clone()
            .run(node.metrics.clone(), node.shutdown.clone()),
    );
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
    let running = start(config)
        .await
        .map_err(|source| RunError::Listen { addr, source })?;
    let node = running.node.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
