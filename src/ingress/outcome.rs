//! What publishing one body came to, and its one rendering for both
//! publishing routes (PROTOCOL.md 2, error codes of 1.5): `POST
//! /api/publish` answers it as a status and a JSON body, `/ws/ingest` as
//! one `error` message per refused entry and per reason entries were not
//! taken. Both name the same refusals with the same codes and messages.

use serde_json::{json, Value};

use crate::protocol::encode::Frame;
use crate::protocol::ProtocolError;

/// The result of publishing one body.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub accepted: usize,
    /// Refused entries by their index in the body.
    pub errors: Vec<(usize, ProtocolError)>,
    /// Entries not taken because the server stayed saturated.
    pub overloaded: usize,
    /// Entries not taken because Redis is unreachable (cluster mode):
    /// nothing of them was sent.
    pub unavailable: usize,
    /// Entries sent to Redis that it did not answer in time (cluster
    /// mode): they may or may not have been published. A retry with the
    /// same `Idempotency-Key` or `publish_id` settles them once.
    pub unknown: usize,
    /// Named entries not taken because another attempt with the same id
    /// is under way on this node (embedded mode).
    pub in_progress: usize,
    /// Part of this answer is an earlier attempt's: the request's key, or
    /// an entry's `publish_id`, was seen before.
    pub replayed: bool,
    /// The request's `Idempotency-Key` was not used: nothing was done.
    pub key_refused: Option<KeyRefusal>,
}

/// Why a request's `Idempotency-Key` refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The key was first used with another body.
    Reused,
    /// A request with this key is still being published (embedded mode).
    InFlight,
}

/// Why some valid entries were not taken, with the code a publisher sees.
struct Shortfall {
    code: &'static str,
    /// The HTTP status it answers with.
    status: u16,
    /// The count's field in the HTTP body.
    field: &'static str,
    count: usize,
    message: String,
}

impl Outcome {
    /// The refused entries as `{index, code, message}`.
    pub fn entry_errors(&self) -> Vec<Value> {
        self.errors
            .iter()
            .map(|(index, e)| json!({"index": index, "code": e.code.as_str(), "message": e.message}))
            .collect()
    }

    /// Why valid entries were not taken, most telling first. `keyed`: the
    /// request named itself, so that a retry is safe.
    fn shortfalls(&self, keyed: bool) -> Vec<Shortfall> {
        let mut out = Vec::new();
        if self.unavailable > 0 {
            out.push(Shortfall {
                code: "unavailable",
                status: 503,
                field: "unavailable",
                count: self.unavailable,
                message: format!(
                    "Redis is unreachable: nothing of these {} entries was published; retry",
                    self.unavailable
                ),
            });
        }
        if self.unknown > 0 {
            let retry = if keyed {
                "retry with the same Idempotency-Key or publish_id: they will be published once"
            } else {
                "a retry may publish them twice; name them (Idempotency-Key, publish_id) to retry safely"
            };
            out.push(Shortfall {
                code: "outcome_unknown",
                status: 503,
                field: "unknown",
                count: self.unknown,
                message: format!(
                    "Redis did not answer in time: {} entries may or may not have been published; {retry}",
                    self.unknown
                ),
            });
        }
        if self.overloaded > 0 {
            out.push(Shortfall {
                code: "overloaded",
                status: 503,
                field: "overloaded",
                count: self.overloaded,
                message: format!(
                    "{} entries not taken: the server is saturated, retry",
                    self.overloaded
                ),
            });
        }
        if self.in_progress > 0 {
            out.push(Shortfall {
                code: "in_progress",
                status: 409,
                field: "in_progress",
                count: self.in_progress,
                message: format!(
                    "{} entries not taken: entries with the same publish_id are still being published; retry them later",
                    self.in_progress
                ),
            });
        }
        out
    }

    /// The HTTP answer: status and body.
    pub fn http_answer(&self, keyed: bool) -> (u16, Value) {
        match self.key_refused {
            Some(KeyRefusal::Reused) => {
                return (
                    422,
                    json!({"error": "this Idempotency-Key was first used with another body: nothing was published"}),
                )
            }
            Some(KeyRefusal::InFlight) => {
                return (
                    409,
                    json!({"error": "a request with this Idempotency-Key is still being published: retry it later"}),
                )
            }
            None => {}
        }
        let errors = self.entry_errors();
        if let Some(first) = self.shortfalls(keyed).into_iter().next() {
            let mut body = json!({"accepted": self.accepted, "errors": errors, "error": first.message});
            body[first.field] = json!(first.count);
            match first.code {
                "unavailable" => body["outcome"] = json!("not_published"),
                "outcome_unknown" => body["outcome"] = json!("unknown"),
                _ => {}
            }
            return (first.status, body);
        }
        if errors.is_empty() {
            (202, json!({"accepted": self.accepted}))
        } else {
            (400, json!({"accepted": self.accepted, "errors": errors}))
        }
    }

    /// The `/ws/ingest` answer: an `error` message per refused entry (with
    /// its `index`) and per reason entries were not taken; nothing when
    /// everything was published.
    pub fn ws_answers(&self) -> Vec<Frame> {
        let mut out: Vec<Frame> = self
            .entry_errors()
            .into_iter()
            .map(|mut e| {
                e["type"] = json!("error");
                Frame::from(e.to_string())
            })
            .collect();
        for s in self.shortfalls(false) {
            let frame = json!({"type": "error", "code": s.code, "message": s.message});
            out.push(Frame::from(frame.to_string()));
        }
        out
    }
}

/// A body refused whole (not JSON, over its key's rate) on `/ws/ingest`.
pub fn ws_refusal(e: &ProtocolError) -> Frame {
    crate::protocol::encode::error(e, None)
}
