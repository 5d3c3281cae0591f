//! tickwire: a real-time market-data server. Publishers push market ticks,
//! trading signals and user notifications in; browsers receive them over
//! WebSockets, in order, resumable without loss. See `DESIGN.md` for the
//! flow: ingress → sequencer → ring → fanout → registry → connection.

pub mod auth;
pub mod config;
pub mod connection;
#[cfg(feature = "test-echo")]
pub mod echo;
pub mod fanout;
pub mod history;
pub mod http;
pub mod ingress;
pub mod limit;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod replication;
pub mod ring;
pub mod sequencer;
pub mod server;
pub mod shutdown;
