//! Why the server closes a connection (PROTOCOL.md 1.1, 1.5, 4): each
//! reason with its close code and text. Pure data: who decides a close and
//! how the frame is written live elsewhere (the connection and its outbox).

/// Why a connection is being closed by the server, and so its close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Fell a full queue behind: 4002, resume with `since`.
    SlowConsumer,
    /// Its socket took nothing for the write timeout: dropped without a
    /// close frame, which a full socket could not carry (4002 in the log).
    Stalled,
    /// Server shutting down: 1001.
    GoingAway,
    /// The token's `exp` passed: 4001.
    TokenExpired,
    /// Kept breaking the command rate limit: 1008.
    RateLimited,
    /// Sent nothing, not even a pong, for the idle timeout: 1001.
    IdleTimeout,
    /// A frame over the size limit: 1009.
    TooBig,
    /// A binary frame: 1003.
    Binary,
    /// Invalid UTF-8 in a text frame: 1007.
    BadUtf8,
    /// A WebSocket protocol violation: 1002.
    ProtocolViolation,
}

impl CloseReason {
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::SlowConsumer | CloseReason::Stalled => 4002,
            CloseReason::GoingAway | CloseReason::IdleTimeout => 1001,
            CloseReason::TokenExpired => 4001,
            CloseReason::RateLimited => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Binary => 1003,
            CloseReason::BadUtf8 => 1007,
            CloseReason::ProtocolViolation => 1002,
        }
    }

    pub fn text(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Stalled => "write stalled",
            CloseReason::GoingAway => "going away",
            CloseReason::TokenExpired => "token expired",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::TooBig => "message too big",
            CloseReason::Binary => "binary frames are not accepted",
            CloseReason::BadUtf8 => "invalid UTF-8",
            CloseReason::ProtocolViolation => "protocol error",
        }
    }

    /// Whether frames already queued are still sent before the close:
    /// always, except for a slow consumer, whose backlog is the problem.
    pub fn flushes_queue(&self) -> bool {
        !matches!(self, CloseReason::SlowConsumer | CloseReason::Stalled)
    }
}
