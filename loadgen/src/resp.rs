//! Just enough of the Redis protocol (RESP2) to `PUBLISH` a message on the
//! server's ingest channel: commands go out as arrays of bulk strings, and
//! the one-line replies (`+OK`, `-ERR ...`, `:N`) come back. No pipelining,
//! no pub/sub, no cluster redirects: `loadgen publish --via redis` sends one
//! command at a time.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::target::Target;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies longer than this are not ones loadgen asked for.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// `*N\r\n` then `$len\r\narg\r\n` for each argument.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&tag, rest)) = buf[..line_end].split_first() else {
        bail!("empty reply line from Redis");
    };
    let line = String::from_utf8_lossy(rest).into_owned();
    let after_line = line_end + 2;
    let reply = match tag {
        b'+' => Reply::Status(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(
            line.parse()
                .with_context(|| format!("bad integer reply {line:?}"))?,
        ),
        b'$' => {
            let len: i64 = line
                .parse()
                .with_context(|| format!("bad bulk length {line:?}"))?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            let len = len as usize;
            if buf.len() < after_line + len + 2 {
                return Ok(None);
            }
            let body = buf[after_line..after_line + len].to_vec();
            return Ok(Some((Reply::Bulk(Some(body)), after_line + len + 2)));
        }
        other => bail!(
            "unexpected Redis reply type {:?} (is this a Redis server?)",
            other as char
        ),
    };
    Ok(Some((reply, after_line)))
}

/// One connection to Redis.
pub struct Redis {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Redis {
    /// Connects, and authenticates when the URL carried a password.
    pub async fn connect(target: &Target) -> anyhow::Result<Redis> {
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .with_context(|| format!("timed out connecting to Redis at {}", target.addr))?
            .with_context(|| format!("cannot connect to Redis at {}", target.addr))?;
        stream.set_nodelay(true)?;
        let mut redis = Redis {
            stream,
            buf: Vec::new(),
        };
        if let Some(password) = &target.password {
            let reply = match &target.username {
                Some(user) => {
                    redis
                        .command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => redis.command(&[b"AUTH", password.as_bytes()]).await?,
            };
            if let Reply::Error(e) = reply {
                bail!("Redis refused AUTH: {e}");
            }
        }
        Ok(redis)
    }

    /// `PUBLISH channel payload`; returns how many subscribers received it.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> anyhow::Result<i64> {
        match self.command(&[b"PUBLISH", channel.as_bytes(), payload]).await? {
            Reply::Integer(n) => Ok(n),
            Reply::Error(e) => bail!("Redis refused PUBLISH: {e}"),
            other => bail!("unexpected reply to PUBLISH: {other:?}"),
        }
    }

    async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        timeout(IO_TIMEOUT, self.stream.write_all(&encode_command(args)))
            .await
            .context("timed out writing to Redis")??;
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                bail!("Redis reply larger than {MAX_REPLY_BYTES} bytes");
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .context("timed out waiting for Redis to answer")??;
            if n == 0 {
                bail!("Redis closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_an_array_of_bulk_strings() {
        let cmd = encode_command(&[b"PUBLISH", b"rt:ingest", br#"{"a":1}"#]);
        assert_eq!(
            cmd,
            b"*3\r\n$7\r\nPUBLISH\r\n$9\r\nrt:ingest\r\n$7\r\n{\"a\":1}\r\n"
        );
    }

    #[test]
    fn parses_one_line_replies() {
        assert_eq!(parse_reply(b":2\r\n").unwrap(), Some((Reply::Integer(2), 4)));
        assert_eq!(
            parse_reply(b"+OK\r\nrest").unwrap(),
            Some((Reply::Status("OK".into()), 5))
        );
        assert_eq!(
            parse_reply(b"-ERR wrong\r\n").unwrap(),
            Some((Reply::Error("ERR wrong".into()), 12))
        );
    }

    #[test]
    fn parses_bulk_replies_and_waits_for_more() {
        assert_eq!(parse_reply(b"$3\r\nab").unwrap(), None);
        assert_eq!(
            parse_reply(b"$3\r\nabc\r\n").unwrap(),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse_reply(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse_reply(b":1").unwrap(), None);
    }

    #[test]
    fn rejects_what_is_not_redis() {
        assert!(parse_reply(b"HTTP/1.1 400 Bad Request\r\n").is_err());
        assert!(parse_reply(b":x\r\n").is_err());
        assert!(parse_reply(b"\r\n").is_err());
    }
}
