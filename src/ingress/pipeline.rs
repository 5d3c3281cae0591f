//! `/ws/ingest` frames in cluster mode without a round trip each: a frame
//! whose entries are all unnamed is queued for Redis behind the frames
//! before it and answered once Redis has it, while the publisher's next
//! frames are read and queued meanwhile. Batches then grow with the load
//! (everything queued during one round trip goes in the next script calls)
//! instead of one batch per round trip.
//!
//! What never changes: a publisher's order (frames are queued in the order
//! they are read, and the batcher keeps it), answers in frame order, and
//! each frame's outcome as [`Ingress::publish_as`] would give it. A frame
//! with named entries (`publish_id`) is recorded by another script, so it
//! goes alone: after everything before it is answered ([`Submission::Alone`]).

use std::future::Future;
use std::pin::Pin;

use super::{count_answer, outcome, settled, Ingress, Validated};
use crate::protocol::encode::Frame;
use crate::protocol::UpdateKind;

/// The answers to one frame, once Redis has its entries.
pub type Answers = Pin<Box<dyn Future<Output = Vec<Frame>> + Send>>;

/// A frame of `/ws/ingest`, submitted.
pub enum Submission {
    /// Answered already: refused whole, nothing valid, or embedded mode
    /// (where the shard's ring took it).
    Done(Vec<Frame>),
    /// Queued for Redis behind every frame submitted before it.
    Queued(Answers),
    /// To be published once every frame submitted before it is answered,
    /// with [`Ingress::publish_alone`].
    Alone(Box<Deferred>),
}

/// A frame with named entries, waiting for its turn (its rate budget is
/// spent already).
pub struct Deferred {
    body: Vec<u8>,
}

impl Ingress {
    /// Submits one `/ws/ingest` frame sent with the API key of index
    /// `publisher`: only errors are answered (see [`super::Outcome::ws_answers`]).
    pub async fn submit_frame(&self, body: &[u8], publisher: Option<usize>) -> Submission {
        let Some(replication) = &self.replication else {
            return Submission::Done(self.frame_answers(body, publisher).await);
        };
        if let Err(e) = self.within_budget(body, publisher) {
            return Submission::Done(vec![outcome::ws_refusal(&e)]);
        }
        let Validated {
            mut outcome,
            valid,
            received_micros,
            ..
        } = match self.validate(body, None) {
            Ok(v) => v,
            Err(e) => return Submission::Done(vec![outcome::ws_refusal(&e)]),
        };
        if valid.iter().any(|n| n.id.is_some()) {
            return Submission::Alone(Box::new(Deferred { body: body.to_vec() }));
        }
        let places: Vec<(usize, UpdateKind)> = valid.iter().map(|n| (n.index, n.update.kind)).collect();
        if places.is_empty() {
            return Submission::Done(settled(outcome, &self.metrics).ws_answers());
        }
        let updates = valid.into_iter().map(|n| n.update).collect();
        let answer = match replication.enqueue(updates, None, received_micros).await {
            Ok(answer) => answer,
            Err(e) => {
                count_answer(&self.metrics, &mut outcome, places, Err(e));
                return Submission::Done(settled(outcome, &self.metrics).ws_answers());
            }
        };
        let metrics = self.metrics.clone();
        Submission::Queued(Box::pin(async move {
            count_answer(&metrics, &mut outcome, places, answer.await);
            settled(outcome, &metrics).ws_answers()
        }))
    }

    /// Publishes a frame that had to wait for its turn.
    pub async fn publish_alone(&self, deferred: Deferred) -> Vec<Frame> {
        // No key: its budget was taken when it was submitted.
        self.frame_answers(&deferred.body, None).await
    }

    async fn frame_answers(&self, body: &[u8], publisher: Option<usize>) -> Vec<Frame> {
        match self.publish_as(body, publisher).await {
            Ok(outcome) => outcome.ws_answers(),
            Err(e) => vec![outcome::ws_refusal(&e)],
        }
    }
}
