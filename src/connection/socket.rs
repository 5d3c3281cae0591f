//! A connection's socket after the handshake, and the loop that runs it.
//! Its two halves share it without a lock: tungstenite reads and parses
//! the client's frames through [`Wire`], and the outbox's writer
//! ([`crate::outbox::writer`]) writes the server's frames. Tungstenite
//! never writes to the socket itself: what it sends on its own (the pong
//! to a client's ping, the reply to a client's close) goes through
//! [`Wire`]'s `Write` into the outbox, already framed, so that it takes
//! its turn between whole frames.
//!
//! Tungstenite is driven directly (its blocking-style API over a socket
//! that answers `WouldBlock`), not through tokio-tungstenite's stream:
//! that wrapper costs every connection two more allocations (its wakers)
//! and its own copy of the socket handles, and this loop waits on the
//! socket's readiness itself.
//!
//! The loop only carries bytes: a message read goes to the connection's
//! [`Reader`] (a session, a publisher, the test echo), and whatever is
//! queued goes out when the socket takes it. It has no timers of its own:
//! the sweeper pings, times out and cuts connections through the outbox.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
use tokio_tungstenite::tungstenite::Message;

use super::inflate::Inflating;
use super::sweep::{Sweeper, WRITE_TIMEOUT};
use super::Accepted;
use crate::metrics::Metrics;
use crate::outbox::writer::close_frame;
use crate::outbox::Outbox;
use crate::protocol::close::CloseReason;

/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Unsent bytes the kernel may hold for one socket. Small, so that the
/// socket turns writable again as soon as a slow client reads a little
/// (the default hysteresis waits for a third of a multi-megabyte buffer):
/// a reading client shows progress within milliseconds, which tells it
/// from one that stopped reading (see `sweep::STUCK_AFTER`), and what a
/// lagging client has not taken stays in its outbox, where it can still
/// be conflated, instead of in the kernel.
const NOTSENT_LOWAT_BYTES: u32 = 16 * 1024;

/// What a connection does with the messages it reads.
pub(crate) trait Reader {
    /// Acts on a text message; a close reason cuts the client off.
    async fn on_text(&mut self, text: &str) -> Option<CloseReason>;

    /// A binary message: refused (1003) by every endpoint of the protocol.
    async fn on_binary(&mut self, _data: &[u8]) -> Option<CloseReason> {
        Some(CloseReason::Binary)
    }
}

/// Why a connection ended, for its log line.
pub(crate) enum End {
    ClientClosed,
    Server(CloseReason),
    WriterGone,
    Error(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::Server(r) => write!(f, "{} ({})", r.text(), r.code()),
            End::WriterGone => f.write_str("socket write failed or stalled"),
            End::Error(e) => write!(f, "read error: {e}"),
        }
    }
}

/// The handles the socket loop uses.
pub(crate) struct Loop<'a> {
    pub outbox: &'a Outbox,
    pub sweeper: &'a Sweeper,
    pub metrics: &'a Metrics,
}

/// The reading half of a connection's socket, and its id as the sweeper
/// knows it; the writing half is the outbox's.
pub(crate) struct Link {
    id: u64,
    ws: WebSocket<Wire>,
    /// A read ended the stream (an error, or the client's close): later
    /// reads answer `None`, as a finished stream does.
    ended: bool,
}

impl Link {
    pub(crate) fn new(id: u64, accepted: Accepted, outbox: Arc<Outbox>) -> Link {
        // Best effort: a socket without it is still served, only its stalls
        // are told apart less quickly.
        let _ = socket2::SockRef::from(&*accepted.tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES);
        let inflate = accepted.encoding.deflate.map(|_| {
            let max = accepted.config.max_message_size.unwrap_or(usize::MAX);
            Box::new(Inbound::new(max))
        });
        outbox.set_socket(Some(accepted.tcp.clone()));
        let mut wire = Wire {
            tcp: accepted.tcp,
            outbox,
            inflate,
        };
        // Bytes the HTTP layer read past the handshake start tungstenite's
        // own read buffer (a copy: they are a view of the HTTP layer's
        // 8 KiB buffer, which even an empty view would keep allocated); on
        // a deflate socket they go through the inflater first, like any.
        let prefix = match wire.inflate.as_deref_mut() {
            Some(st) => {
                st.absorb(&accepted.prefix, &wire.outbox);
                Vec::new()
            }
            None => accepted.prefix.to_vec(),
        };
        let ws = WebSocket::from_partially_read(wire, prefix, Role::Server, Some(accepted.config));
        Link { id, ws, ended: false }
    }

    fn tcp(&self) -> &TcpStream {
        &self.ws.get_ref().tcp
    }

    /// The client's message that the socket holds now, if it holds one.
    fn read_now(&mut self) -> Incoming {
        if self.ended {
            return Incoming::Ended;
        }
        match self.ws.read() {
            Ok(msg) => Incoming::Message(msg),
            // A read that found nothing cleared the socket's readiness, so
            // waiting on it now waits for new bytes.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Incoming::Nothing,
            Err(e) => {
                self.ended = true;
                match e {
                    WsError::ConnectionClosed | WsError::AlreadyClosed => Incoming::Ended,
                    e => Incoming::Failed(e),
                }
            }
        }
    }

    /// The client's next message, waiting for the socket as needed; `None`
    /// once the stream ended.
    async fn next(&mut self) -> Option<Result<Message, WsError>> {
        loop {
            match self.read_now() {
                Incoming::Message(msg) => return Some(Ok(msg)),
                Incoming::Nothing => {
                    if let Err(e) = self.tcp().readable().await {
                        self.ended = true;
                        return Some(Err(WsError::Io(e)));
                    }
                }
                Incoming::Ended => return None,
                Incoming::Failed(e) => return Some(Err(e)),
            }
        }
    }

    /// Writes what the outbox holds and the socket takes now. `Ok(true)`:
    /// frames are left for when the socket takes more.
    fn write_out(&self, l: &Loop<'_>) -> io::Result<(bool, Option<CloseReason>)> {
        // With `wait`, the outbox always answers.
        let Some(out) = l.outbox.write_out(true) else {
            return Ok((true, None));
        };
        let wrote = out.wrote?;
        if wrote.messages > 0 {
            l.metrics.wrote(
                wrote.messages,
                wrote.bytes,
                wrote.plain_bytes,
                wrote.binary_messages,
                1,
            );
        }
        if let Some(t) = wrote.oldest {
            l.metrics.publish_to_write.record(t.elapsed());
        }
        l.sweeper.wrote(self.id, wrote.progressed, wrote.done);
        Ok((out.pending, out.close))
    }

    /// Writes everything left, waiting for the socket as needed.
    async fn flush(&self, l: &Loop<'_>) -> io::Result<()> {
        loop {
            if !self.write_out(l)?.0 {
                return Ok(());
            }
            self.tcp().writable().await?;
        }
    }
}

/// What one read of the socket found.
enum Incoming {
    Message(Message),
    /// No whole message yet.
    Nothing,
    /// The client closed, or an earlier read failed.
    Ended,
    Failed(WsError),
}

/// How [`serve`]'s main loop ended.
enum Exit {
    /// A close was decided; queued frames and the close frame are owed.
    Closing(CloseReason),
    /// The client closed or the read side failed; queued frames are owed.
    ClientGone(End),
    /// The socket failed or stalled past the write timeout: just drop it.
    Dropped,
}

/// Runs one connection to its end in a single task: reads and acts on the
/// client's messages, writes the outbox whenever it has frames and the
/// socket takes them, and closes as PROTOCOL.md says.
pub(crate) async fn serve(link: &mut Link, l: &Loop<'_>, reader: &mut impl Reader) -> End {
    let exit = serve_open(link, l, reader).await;
    // Boxed: the closing steps' timers would otherwise sit in every open
    // connection's task for its whole life.
    Box::pin(close(link, l, exit)).await
}

/// Sends what is owed once the connection is ending.
async fn close(link: &mut Link, l: &Loop<'_>, exit: Exit) -> End {
    match exit {
        Exit::Dropped => End::WriterGone,
        Exit::ClientGone(end) => {
            // Refuse new frames; send what is queued (tungstenite's reply to
            // the client's close among them) if the socket still takes it.
            l.outbox.close(CloseReason::GoingAway);
            l.outbox.finish(None);
            let _ = tokio::time::timeout(CLOSE_GRACE, link.flush(l)).await;
            end
        }
        Exit::Closing(reason) => {
            l.outbox.finish(Some(close_frame(&reason)));
            if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, link.flush(l)).await {
                // Wait briefly for the client's close answer.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = link.next().await {}
                })
                .await;
            }
            End::Server(reason)
        }
    }
}

async fn serve_open(link: &mut Link, l: &Loop<'_>, reader: &mut impl Reader) -> Exit {
    // Tungstenite may hold bytes that no readiness will announce: those the
    // client sent with its handshake (the HTTP layer read them, and may
    // have seen the socket empty after), so the loop reads before it waits
    // until a read finds nothing.
    let mut unread = true;
    loop {
        if l.outbox.is_dropped() {
            return Exit::Dropped;
        }
        let stalled = match link.write_out(l) {
            Err(_) => return Exit::Dropped,
            Ok((_, Some(reason))) => return Exit::Closing(reason),
            Ok((pending, None)) => pending,
        };
        // A client whose socket takes nothing is not read from either: its
        // commands and pings would only queue answers it does not take.
        // Shutdown, like every timeout, arrives as a close in the outbox.
        // One wait on the socket, for what it is needed for, and through
        // the socket's own waker slot for that direction (this task is the
        // only one that waits on it): an idle connection's task holds every
        // future of this select, and `ready()` would add a waiter of its own.
        if unread && !stalled {
            // No wait, but a turn of the task's budget, so that a client
            // that keeps sending cannot hold its worker thread.
            tokio::task::coop::consume_budget().await;
        } else {
            let tcp = link.tcp();
            let ready = std::future::poll_fn(|cx| {
                if stalled {
                    tcp.poll_write_ready(cx)
                } else {
                    tcp.poll_read_ready(cx)
                }
            });
            tokio::select! {
                biased;
                _ = l.outbox.notified() => continue,
                ready = ready => {
                    if let Err(e) = ready {
                        return Exit::ClientGone(End::Error(e.to_string()));
                    }
                }
            }
        }
        if stalled {
            continue;
        }
        let incoming = link.read_now();
        unread = !matches!(incoming, Incoming::Nothing);
        if !matches!(incoming, Incoming::Nothing) {
            l.sweeper.heard(link.id);
        }
        match incoming {
            Incoming::Nothing => {}
            Incoming::Ended => return Exit::ClientGone(End::ClientClosed),
            Incoming::Message(Message::Text(text)) => {
                // Boxed: acting on a command is a large future that an
                // idle connection's task need not carry.
                if let Some(reason) = Box::pin(reader.on_text(&text)).await {
                    l.outbox.close(reason);
                }
            }
            Incoming::Message(Message::Binary(data)) => {
                // Boxed like `on_text`: a MessagePack command is acted on
                // like a text one, a future that idle tasks need not carry.
                if let Some(reason) = Box::pin(reader.on_binary(&data)).await {
                    l.outbox.close(reason);
                }
            }
            // Pongs, and pings and closes that tungstenite answers by
            // itself on the next read (see `Wire`).
            Incoming::Message(_) => {}
            Incoming::Failed(e) => match close_reason_for(&e) {
                Some(reason) => {
                    l.outbox.close(reason);
                }
                None => return Exit::ClientGone(End::Error(e.to_string())),
            },
        }
    }
}

/// The close code owed for a read error, if the connection can still be told.
fn close_reason_for(e: &WsError) -> Option<CloseReason> {
    match e {
        WsError::Capacity(_) => Some(CloseReason::TooBig),
        WsError::Utf8(_) => Some(CloseReason::BadUtf8),
        WsError::Protocol(_) => Some(CloseReason::ProtocolViolation),
        _ => None,
    }
}

/// The socket as tungstenite sees it: reads that answer `WouldBlock`
/// when nothing waits, and writes that queue into the outbox.
pub struct Wire {
    tcp: Arc<TcpStream>,
    outbox: Arc<Outbox>,
    /// permessage-deflate's inbound side, where it was agreed (boxed: one
    /// pointer on every other socket).
    inflate: Option<Box<Inbound>>,
}

/// What a deflate socket's reads go through: [`Inflating`] and the bytes
/// it made that tungstenite has not read yet.
pub struct Inbound {
    inflating: Inflating,
    pending: Vec<u8>,
    at: usize,
    /// The client sent what closes the connection: reads end.
    failed: bool,
}

impl Inbound {
    fn new(max_bytes: usize) -> Inbound {
        Inbound {
            inflating: Inflating::new(max_bytes),
            pending: Vec::new(),
            at: 0,
            failed: false,
        }
    }

    /// Takes bytes from the socket. A message [`Inflating`] refuses closes
    /// the connection through the outbox (the close code is its own: 1009
    /// for a bomb), and reads end.
    fn absorb(&mut self, raw: &[u8], outbox: &Outbox) {
        if let Err(reason) = self.inflating.feed(raw, &mut self.pending) {
            outbox.close(reason);
            self.failed = true;
            self.pending = Vec::new();
            self.at = 0;
        }
    }
}

/// Bytes a deflate socket reads from the kernel at a time.
const INFLATE_READ_BYTES: usize = 4096;

impl io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Wire { tcp, outbox, inflate } = self;
        let Some(st) = inflate.as_deref_mut() else {
            // A `WouldBlock` here clears the socket's readiness, so the next
            // `readable()` waits for new bytes.
            return tcp.try_read(buf);
        };
        // Through [`Inflating`]: what it made first, then the socket (whose
        // `WouldBlock` ends the read as above).
        loop {
            if st.at < st.pending.len() {
                let n = (st.pending.len() - st.at).min(buf.len());
                buf[..n].copy_from_slice(&st.pending[st.at..st.at + n]);
                st.at += n;
                if st.at == st.pending.len() {
                    st.at = 0;
                    st.pending.clear();
                    if st.pending.capacity() > INFLATE_READ_BYTES {
                        st.pending = Vec::new();
                    }
                }
                return Ok(n);
            }
            if st.failed {
                return Ok(0);
            }
            let mut raw = [0u8; INFLATE_READ_BYTES];
            match tcp.try_read(&mut raw)? {
                0 => return Ok(0),
                n => st.absorb(&raw[..n], outbox),
            }
        }
    }
}

impl io::Write for Wire {
    /// Tungstenite flushes whole frames in one write: queue them as one.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.outbox.push_raw(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
