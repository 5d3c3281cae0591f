//! The write side of a connection's socket, with one owner: [`Writer`]
//! holds the socket, the batch being written and how much of its first
//! frame is out. Whoever writes (the connection's task, or a fanout worker
//! writing directly when its ring is empty) holds the outbox's writer
//! lock, which no pusher ever takes, so a `writev` never blocks anyone
//! who only queues frames (see [`super::Outbox::write_out`] for the lock
//! order). Frames leave with one system call per batch: up to 4 KiB
//! copied into one buffer and sent with `send`, a larger batch as a
//! `writev` of each 2–10-byte header built on the stack and the shared
//! frame bytes (see [`write_batch`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;

use super::Outgoing;
use crate::protocol::close::CloseReason;

/// At most this many messages go into one `writev`.
const MAX_BATCH: usize = 64;
/// Queue entries a writer keeps allocated between batches.
const KEPT_BATCH_CAPACITY: usize = 64;
/// A batch this small is a quiet connection's: its queue is freed.
const IDLE_BATCH_CAPACITY: usize = 8;

/// The socket's write side.
#[derive(Default)]
pub struct Writer {
    /// `None` before the connection is set up and after it ended (so that
    /// the socket closes with the connection, not with the last handle).
    pub(super) socket: Option<Arc<TcpStream>>,
    /// Frames taken from the queue and not yet written whole.
    pub(super) batch: VecDeque<Outgoing>,
    /// Bytes of the first frame of `batch` already written.
    pub(super) offset: usize,
}

impl Writer {
    /// Writes what the socket takes now, without waiting.
    pub(super) fn write(&mut self) -> io::Result<Wrote> {
        let Some(socket) = &self.socket else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let wrote = write_batch(socket, &mut self.batch, &mut self.offset)?;
        if wrote.done {
            // A burst grew the queue; keep what a usual batch needs, so that
            // thousands of connections do not each hold their largest burst,
            // and nothing for a connection that gets a frame now and then.
            if self.batch.capacity() <= IDLE_BATCH_CAPACITY {
                self.batch = VecDeque::new();
            } else if self.batch.capacity() > KEPT_BATCH_CAPACITY * 4 {
                self.batch.shrink_to(KEPT_BATCH_CAPACITY);
            }
        }
        Ok(wrote)
    }
}

/// The header of an unmasked, final message of `len` bytes whose first
/// byte is `head`: FIN, the opcode, and RSV1 when the payload is
/// compressed (permessage-deflate; see `protocol::frame`).
pub(crate) fn message_header(head: u8, len: usize, out: &mut [u8; 10]) -> usize {
    header(head, len, out)
}

/// A whole unmasked, final binary frame (the test-only echo route sends
/// them; the protocol's endpoints speak text).
pub fn binary_frame(payload: &[u8]) -> Bytes {
    let mut head = [0u8; 10];
    let n = header(0x82, payload.len(), &mut head);
    let mut b = BytesMut::with_capacity(n + payload.len());
    b.put_slice(&head[..n]);
    b.put_slice(payload);
    b.freeze()
}

/// A frame header with `first` (FIN and opcode) and the shortest length.
fn header(first: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = first;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A close frame with the reason's code and text.
pub fn close_frame(reason: &CloseReason) -> Bytes {
    let text = reason.text().as_bytes();
    let mut b = BytesMut::with_capacity(4 + text.len());
    b.put_u8(0x88);
    // Every reason text is short: the payload fits the one-byte length.
    b.put_u8((2 + text.len()) as u8);
    b.put_u16(reason.code());
    b.put_slice(text);
    b.freeze()
}

/// What one [`write_batch`] achieved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wrote {
    /// Text messages written whole.
    pub messages: u64,
    /// Their payload bytes, as written (compressed where they were).
    pub bytes: u64,
    /// The same payloads' bytes before compression.
    pub plain_bytes: u64,
    /// Of the messages, those sent as binary frames (MessagePack).
    pub binary_messages: u64,
    /// Everything was written; `false`: the socket is full for now.
    pub done: bool,
    /// When the first update written whole entered the server.
    pub oldest: Option<Instant>,
    /// Some bytes were written: the client is reading.
    pub progressed: bool,
}

/// Writes `batch` (from `offset` bytes into its first message) until it is
/// empty or the socket would block, removing what was written and leaving
/// `offset` at the part of the first message still owed.
///
/// What fits [`COPY_LIMIT`] (the everyday case: a frame or a few) is copied
/// into one buffer and goes out with one `send`; a larger batch goes as a
/// `writev` of the frames' own bytes. One buffer costs the kernel less than
/// two slices per frame (`benches/write_floor.rs`, `paced_1_frame_per_writev`
/// against `paced_1_frame_per_write`), and a copy of a few KiB is cheaper
/// than either. Both call the socket directly ([`send`]), not through
/// tokio's readiness, whose state is a cache line per socket a fanout
/// worker would otherwise miss on every write.
pub fn write_batch(tcp: &TcpStream, batch: &mut VecDeque<Outgoing>, offset: &mut usize) -> io::Result<Wrote> {
    let mut wrote = Wrote::default();
    while !batch.is_empty() {
        let mut headers = [[0u8; 10]; MAX_BATCH];
        let mut lens = [0usize; MAX_BATCH];
        let n = batch.len().min(MAX_BATCH);
        let mut owed = 0;
        for (i, o) in batch.iter().take(n).enumerate() {
            if !o.raw {
                lens[i] = message_header(o.head, o.bytes.len(), &mut headers[i]);
            }
            owed += lens[i] + o.bytes.len();
        }
        owed -= *offset;
        let parts = batch
            .iter()
            .take(n)
            .enumerate()
            .flat_map(|(i, o)| [&headers[i][..lens[i]], &o.bytes[..]])
            .scan(*offset, |skip, part| {
                let from = (*skip).min(part.len());
                *skip -= from;
                Some(&part[from..])
            })
            .filter(|part| !part.is_empty());
        let sent = if owed <= COPY_LIMIT {
            COPY.with_borrow_mut(|buf| {
                buf.clear();
                parts.for_each(|part| buf.extend_from_slice(part));
                send(tcp, &[IoSlice::new(buf)])
            })
        } else {
            let mut iov = [IoSlice::new(&[]); 2 * MAX_BATCH];
            let mut slices = 0;
            for part in parts {
                iov[slices] = IoSlice::new(part);
                slices += 1;
            }
            send(tcp, &iov[..slices])
        };
        let mut written = match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
            Err(e) => return Err(e),
        };
        wrote.progressed = true;
        for len in lens.iter().take(n) {
            let Some(front) = batch.front() else { break };
            let owed = len + front.bytes.len() - *offset;
            if written < owed {
                *offset += written;
                break;
            }
            written -= owed;
            *offset = 0;
            if let Some(o) = batch.pop_front() {
                if !o.raw {
                    wrote.messages += 1;
                    wrote.bytes += o.bytes.len() as u64;
                    wrote.plain_bytes += u64::from(o.plain_len);
                    wrote.binary_messages += u64::from(o.head & 0x0f == 2);
                }
                wrote.oldest = wrote.oldest.or(o.received_at);
            }
        }
    }
    wrote.done = true;
    Ok(wrote)
}

/// A write of at most this many bytes is copied into one buffer.
const COPY_LIMIT: usize = 4096;

thread_local! {
    /// The buffer small writes are copied into, one per writing thread.
    static COPY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(COPY_LIMIT));
}

/// `slices` sent on the socket without waiting. The socket is the kernel's
/// directly (`send`/`sendmsg`, no SIGPIPE); only when it is full does the
/// write go again through tokio, which then learns that the socket is not
/// writable, so that the connection's task waits for it instead of
/// spinning on a readiness tokio never saw end.
fn send(tcp: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let sock = socket2::SockRef::from(tcp);
    let direct = match slices {
        [one] => sock.send(one),
        _ => sock.send_vectored(slices),
    };
    match direct {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            tcp.try_write_vectored(slices)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outgoing;
    use tokio::io::AsyncReadExt;

    fn text(s: &str) -> Outgoing {
        Outgoing {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            raw: false,
            head: 0x81,
            plain_len: s.len() as u32,
            received_at: None,
            key: None,
        }
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!(message_header(0x81, 125, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 125]);
        assert_eq!(message_header(0x81, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(message_header(0x81, 70_000, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        // A compressed text message carries RSV1.
        assert_eq!(message_header(0xc1, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0xc1, 5]);
    }

    #[test]
    fn a_close_frame_carries_code_and_reason() {
        let f = close_frame(&CloseReason::SlowConsumer);
        assert_eq!(&f[..4], &[0x88, 2 + 13, 0x0f, 0xa2]);
        assert_eq!(&f[4..], b"slow consumer");
    }

    /// A batch over the copy limit goes as `writev`, its tail as one copied
    /// `send`, starting mid-frame: the bytes on the wire are the same frames
    /// in order either way.
    #[tokio::test]
    async fn copied_and_vectored_writes_carry_the_same_frames() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let bodies: Vec<String> = (0..100).map(|i| format!("{i:03}").repeat(33)).collect();
        let mut expected = Vec::new();
        for b in &bodies {
            expected.extend_from_slice(&[0x81, 99]);
            expected.extend_from_slice(b.as_bytes());
        }
        assert!(expected.len() > 2 * COPY_LIMIT);
        let mut batch: VecDeque<Outgoing> = bodies.iter().map(|b| text(b)).collect();
        // The first 50 bytes were written by an earlier turn.
        let mut offset = 50;
        let w = write_batch(&server, &mut batch, &mut offset).unwrap();
        assert!(w.done && batch.is_empty());
        assert_eq!(w.messages, 100);
        let mut got = vec![0u8; expected.len() - 50];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, &expected[50..]);
    }

    /// Frames written through a real socket pair, including one big enough
    /// to fill the socket, come out whole and in order on the other side.
    #[tokio::test]
    async fn batches_survive_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let big = "y".repeat(3 << 20);
        let mut batch: VecDeque<Outgoing> = ["a", big.as_str(), "bc"].into_iter().map(text).collect();
        batch.push_back(Outgoing {
            bytes: Bytes::from_static(&[0x8a, 0x00]),
            raw: true,
            head: 0,
            plain_len: 0,
            received_at: None,
            key: None,
        });
        let expected: usize = 3 + (10 + big.len()) + 4 + 2;
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let mut offset = 0;
        let mut total = Wrote::default();
        loop {
            let w = write_batch(&server, &mut batch, &mut offset).unwrap();
            total.messages += w.messages;
            total.bytes += w.bytes;
            if w.done {
                break;
            }
            server.writable().await.unwrap();
        }
        assert_eq!((total.messages, total.bytes), (3, (1 + big.len() + 2) as u64));
        let got = reader.await.unwrap();
        assert_eq!(&got[..3], b"\x81\x01a");
        assert_eq!(&got[3..5], &[0x81, 127]);
        let tail = &got[13 + big.len()..];
        assert_eq!(tail, b"\x81\x02bc\x8a\x00");
    }
}
