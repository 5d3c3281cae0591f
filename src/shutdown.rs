//! The node-wide shutdown signal: set once (SIGTERM, SIGINT, or a test),
//! awaited by the accept loop and by every connection, which then close
//! their subscribers with 1001.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Shutdown {
    started: AtomicBool,
    notify: Notify,
}

impl Shutdown {
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
