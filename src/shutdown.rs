//! The node-wide shutdown signal: set once (SIGTERM, SIGINT, a fatal
//! failure, or a test), awaited by the accept loop and by every
//! connection, which then close their subscribers with 1001. A fatal
//! failure (a fanout worker died) also records why, so that `/health`
//! fails and the process exits non-zero after draining: a node that can no
//! longer deliver must not look alive, and its clients resume elsewhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Shutdown {
    started: AtomicBool,
    notify: Notify,
    /// Why the node failed, when it did; the first failure is kept.
    failure: OnceLock<String>,
}

impl Shutdown {
    /// The node can no longer do its work: record why, and shut down.
    pub fn fail(&self, why: String) {
        let _ = self.failure.set(why);
        self.trigger();
    }

    /// Why the node failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub fn trigger(&self) {
        // Release pairs with the Acquire in `is_triggered`.
        self.started.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_before_and_after_the_trigger_both_return() {
        let s = Arc::new(Shutdown::default());
        let early = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        s.trigger();
        early.await.unwrap();
        s.wait().await;
    }
}
