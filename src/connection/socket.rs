//! A connection's socket after the handshake, and the loop that runs it.
//! Its two halves share it without a lock: tungstenite reads and parses
//! the client's frames through [`Wire`], and the outbox's writer
//! ([`crate::outbox::writer`]) writes the server's frames. Tungstenite
//! never writes to the socket itself: what it sends on its own (the pong
//! to a client's ping, the reply to a client's close) goes through
//! [`Wire`]'s `AsyncWrite` into the outbox, already framed, so that it
//! takes its turn between whole frames.
//!
//! The loop only carries bytes: a message read goes to the connection's
//! [`Reader`] (a session, a publisher, the test echo), and whatever is
//! queued goes out when the socket takes it. It has no timers of its own:
//! the sweeper pings, times out and cuts connections through the outbox.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
    tcp: Arc<TcpStream>,
    ws: WebSocketStream<Wire>,
}

impl Link {
    pub(crate) async fn new(id: u64, accepted: Accepted, outbox: Arc<Outbox>) -> Link {
        // Best effort: a socket without it is still served, only its stalls
        // are told apart less quickly.
        let _ = socket2::SockRef::from(&*accepted.tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES);
        let inflate = accepted.encoding.deflate.map(|_| {
            let max = accepted.config.max_message_size.unwrap_or(usize::MAX);
            Box::new(Inbound::new(max))
        });
        let wire = Wire::new(accepted.tcp.clone(), accepted.prefix, outbox.clone(), inflate);
        outbox.set_socket(Some(accepted.tcp.clone()));
        let ws = WebSocketStream::from_raw_socket(wire, Role::Server, Some(accepted.config)).await;
        Link {
            id,
            tcp: accepted.tcp,
            ws,
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
            self.tcp.writable().await?;
        }
    }
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
                    while let Some(Ok(_)) = link.ws.next().await {}
                })
                .await;
            }
            End::Server(reason)
        }
    }
}

async fn serve_open(link: &mut Link, l: &Loop<'_>, reader: &mut impl Reader) -> Exit {
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
        tokio::select! {
            biased;
            _ = link.tcp.writable(), if stalled => {}
            _ = l.outbox.notified() => {}
            msg = link.ws.next(), if !stalled => {
                l.sweeper.heard(link.id);
                match msg {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        return Exit::ClientGone(End::ClientClosed)
                    }
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: acting on a command is a large future that an
                        // idle connection's task need not carry.
                        if let Some(reason) = Box::pin(reader.on_text(&text)).await {
                            l.outbox.close(reason);
                        }
                    }
                    Some(Ok(Message::Binary(data))) => {
                        // Boxed like `on_text`: a MessagePack command is acted on
                        // like a text one, a future that idle tasks need not carry.
                        if let Some(reason) = Box::pin(reader.on_binary(&data)).await {
                            l.outbox.close(reason);
                        }
                    }
                    // Pongs, and pings and closes that tungstenite answers by
                    // itself on the next read (see `Wire`).
                    Some(Ok(_)) => {}
                    Some(Err(e)) => match close_reason_for(&e) {
                        Some(reason) => {
                            l.outbox.close(reason);
                        }
                        None => return Exit::ClientGone(End::Error(e.to_string())),
                    },
                }
            }
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

/// The socket as tungstenite sees it.
pub struct Wire {
    tcp: Arc<TcpStream>,
    /// Bytes the HTTP layer read past the handshake, served first.
    prefix: Bytes,
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
}

/// Bytes a deflate socket reads from the kernel at a time.
const INFLATE_READ_BYTES: usize = 4096;

impl Wire {
    pub fn new(
        tcp: Arc<TcpStream>,
        prefix: Bytes,
        outbox: Arc<Outbox>,
        inflate: Option<Box<Inbound>>,
    ) -> Wire {
        // A copy: the bytes are a view of the HTTP layer's read buffer
        // (8 KiB), which even an empty view would keep allocated.
        let prefix = Bytes::copy_from_slice(&prefix);
        Wire {
            tcp,
            prefix,
            outbox,
            inflate,
        }
    }

    /// A read through [`Inflating`]: what it made first, then the socket.
    /// A message it refuses closes the connection through the outbox (the
    /// close code is its own: 1009 for a bomb), and reads end.
    fn poll_read_inflating(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Some(st) = self.inflate.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if st.at < st.pending.len() {
                let n = (st.pending.len() - st.at).min(buf.remaining());
                buf.put_slice(&st.pending[st.at..st.at + n]);
                st.at += n;
                if st.at == st.pending.len() {
                    st.at = 0;
                    st.pending.clear();
                    if st.pending.capacity() > INFLATE_READ_BYTES {
                        st.pending = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if st.failed {
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; INFLATE_READ_BYTES];
            let n = if !self.prefix.is_empty() {
                let n = self.prefix.len().min(raw.len());
                raw[..n].copy_from_slice(&self.prefix.split_to(n));
                n
            } else {
                ready!(self.tcp.poll_read_ready(cx))?;
                match self.tcp.try_read(&mut raw) {
                    Ok(0) => return Poll::Ready(Ok(())),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            if let Err(reason) = st.inflating.feed(&raw[..n], &mut st.pending) {
                self.outbox.close(reason);
                st.failed = true;
                st.pending = Vec::new();
                st.at = 0;
            }
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inflate.is_some() {
            return this.poll_read_inflating(cx, buf);
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Wire {
    /// Tungstenite flushes whole frames in one write: queue them as one.
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let _ = self.outbox.push_raw(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
