//! A publisher's `/ws/ingest` connection: each text frame is a message or
//! an array of them, published through ingress; only errors are answered,
//! each as one `error` message (PROTOCOL.md 2).

use std::sync::Arc;

use super::socket::Reader;
use crate::ingress::Ingress;
use crate::outbox::Outbox;
use crate::protocol::close::CloseReason;

pub(crate) struct Publisher {
    pub ingress: Arc<Ingress>,
    pub outbox: Arc<Outbox>,
    /// The index of the API key it connected with, for its rate limit.
    pub key: Option<usize>,
}

impl Reader for Publisher {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        // Boxed: publishing is a deep future that this connection's task
        // should not carry inline while it waits for the next message.
        let answers = Box::pin(self.ingress.publish_frame(text.as_bytes(), self.key)).await;
        for frame in answers {
            self.outbox.push(frame, None);
        }
        None
    }
}
