//! A publisher's `/ws/ingest` connection: each text frame is a message or
//! an array of them, published through ingress; only errors are answered,
//! each as one `error` message, in the order of the frames (PROTOCOL.md 2).
//!
//! In cluster mode a frame does not wait for Redis before the next one is
//! read ([`crate::ingress::Submission`]): up to [`IN_FLIGHT`] frames are on
//! their way at once, and a task of the connection's own writes their
//! answers as they come, in order.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::socket::Reader;
use crate::ingress::{Answers, Ingress, Submission};
use crate::outbox::Outbox;
use crate::protocol::close::CloseReason;

/// Frames of one publisher on their way to Redis at most; the next frame
/// is read only when there is room, so a publisher faster than Redis is
/// slowed down rather than buffered.
pub const IN_FLIGHT: usize = 256;

pub(crate) struct Publisher {
    ingress: Arc<Ingress>,
    /// The index of the API key it connected with, for its rate limit.
    key: Option<usize>,
    /// Answers to come, in frame order, to the task that writes them.
    answers: mpsc::Sender<Answers>,
}

impl Publisher {
    pub(crate) fn new(ingress: Arc<Ingress>, outbox: Arc<Outbox>, key: Option<usize>) -> Publisher {
        let (answers, mut queue) = mpsc::channel::<Answers>(IN_FLIGHT);
        // Ends when the connection's reader is dropped and every answer is out.
        tokio::spawn(async move {
            while let Some(answers) = queue.recv().await {
                for frame in answers.await {
                    outbox.push(frame, None);
                }
            }
        });
        Publisher {
            ingress,
            key,
            answers,
        }
    }

    async fn answer(&self, answers: Answers) {
        // The writing task lives as long as this sender.
        let _ = self.answers.send(answers).await;
    }
}

impl Reader for Publisher {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        // Boxed: publishing is a deep future that this connection's task
        // should not carry inline while it waits for the next message.
        let submission = Box::pin(self.ingress.submit_frame(text.as_bytes(), self.key)).await;
        match submission {
            Submission::Done(frames) if frames.is_empty() => {}
            Submission::Done(frames) => self.answer(Box::pin(std::future::ready(frames))).await,
            Submission::Queued(answers) => self.answer(answers).await,
            Submission::Alone(deferred) => {
                // Its turn comes when everything before it is answered.
                let (turn, reached) = oneshot::channel();
                self.answer(Box::pin(async move {
                    let _ = turn.send(());
                    Vec::new()
                }))
                .await;
                let _ = reached.await;
                let frames = Box::pin(self.ingress.publish_alone(*deferred)).await;
                self.answer(Box::pin(std::future::ready(frames))).await;
            }
        }
        None
    }
}
