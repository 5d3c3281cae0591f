//! A connection for commands, to one Redis or to a Redis Cluster, with
//! every request bounded in time.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;

use super::*;

/// A connection for commands, to one Redis or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Runs a Redis request, failing it as [`ReplicationError::Timeout`] when
/// it takes longer than `limit`.
pub(super) async fn within<T, E: Into<ReplicationError>>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReplicationError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ReplicationError::Timeout(limit))?
        .map_err(Into::into)
}

impl Conn {
    /// Starts (`on`) or stops listening to a stream group's channel:
    /// sharded pub/sub in a Redis Cluster, plain pub/sub otherwise.
    pub(super) async fn listen(&mut self, channel: &str, on: bool) -> Result<(), ReplicationError> {
        let fut = async {
            match (self, on) {
                (Conn::Single(c), true) => c.subscribe(channel).await,
                (Conn::Single(c), false) => c.unsubscribe(channel).await,
                (Conn::Cluster(c), true) => c.ssubscribe(channel).await,
                (Conn::Cluster(c), false) => c.sunsubscribe(channel).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }

    pub(super) async fn run<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> Result<T, ReplicationError> {
        let fut = async {
            match self {
                Conn::Single(c) => cmd.query_async(c).await,
                Conn::Cluster(c) => cmd.query_async(c).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }

    pub(super) async fn script<T: redis::FromRedisValue>(
        &mut self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ReplicationError> {
        let fut = async {
            match self {
                Conn::Single(c) => inv.invoke_async(c).await,
                Conn::Cluster(c) => inv.invoke_async(c).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }
}
