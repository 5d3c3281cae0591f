//! A node: the handles of every part, made once at start (`Node::new`)
//! and shared by the HTTP handlers, plus the connection limits that every
//! handshake passes through. A part is handed the handles it uses, never
//! the node: this module imports the parts, none of them imports it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use dashmap::DashMap;

use crate::config::Config;
use crate::connection::sweep::Sweeper;
use crate::connection::Context;
use crate::fanout::{Fanout, FanoutConfig};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::shutdown::Shutdown;

/// Everything a request handler needs of its node.
pub struct Node {
    pub config: Arc<Config>,
    pub fanout: Arc<Fanout>,
    pub ingress: Arc<Ingress>,
    /// Cluster mode's link to Redis; `None` in embedded mode.
    pub replication: Option<Arc<Replication>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<Shutdown>,
    /// Every connection's pings and timeouts.
    pub sweeper: Arc<Sweeper>,
    /// What connections are handed: the same handles, not the node.
    pub connections: Arc<Context>,
    /// Open WebSocket connections, for `max_connections`.
    open: AtomicUsize,
    /// Open WebSocket connections per client IP; a dashmap because every
    /// handshake and every close touches it from any runtime thread.
    per_ip: DashMap<IpAddr, usize>,
}

/// Why a new WebSocket connection is refused before its upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("shutting down")]
    ShuttingDown,
    #[error("not ready: this node cannot reach Redis")]
    NotReady,
    #[error("this node holds its maximum of {max} connections")]
    NodeFull { max: usize },
    #[error("at most {max} connections per client address")]
    AddressFull { max: usize },
}

impl AdmitError {
    /// The HTTP status of the refusal: the one place admission maps to HTTP.
    pub fn status(&self) -> StatusCode {
        match self {
            AdmitError::AddressFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
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
        let ingress = Arc::new(Ingress::new(
            fanout.clone(),
            replication.clone(),
            metrics.clone(),
            &config,
        ));
        let sweeper = Arc::new(Sweeper::new(config.idle_timeout, config.ping_interval));
        let config = Arc::new(config);
        let connections = Arc::new(Context::new(
            config.clone(),
            fanout.clone(),
            ingress.clone(),
            replication.clone(),
            metrics.clone(),
            fanout.backlog().clone(),
            sweeper.clone(),
            shutdown.clone(),
        ));
        Arc::new(Node {
            config,
            fanout,
            ingress,
            replication,
            metrics,
            shutdown,
            sweeper,
            connections,
            open: AtomicUsize::new(0),
            per_ip: DashMap::new(),
        })
    }

    /// Takes a place for a new WebSocket connection, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, AdmitError> {
        if self.shutdown.is_triggered() {
            return Err(AdmitError::ShuttingDown);
        }
        let max = self.config.max_connections.get();
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(AdmitError::NodeFull { max });
        }
        if let Some(per_ip) = self.config.max_connections_per_ip {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= per_ip.get() {
                drop(n);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(AdmitError::AddressFull { max: per_ip.get() });
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
