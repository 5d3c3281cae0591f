//! The server's own account of how it treated lagging subscribers during a
//! bench run: back-pressure pauses, conflated frames and slow-consumer
//! cuts, read from each node's `GET /api/stats` before publishing and
//! after the drain. Reading them is best effort: a node that does not
//! answer leaves the run without these counters, never fails it.

use std::time::Duration;

use serde::Serialize;

use crate::target::Target;

/// The counters, summed over the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounters {
    /// Times a fanout worker paused because the node counted itself
    /// saturated (`backpressure_pauses`).
    pub backpressure_pauses: u64,
    /// Frames lagging conflating subscribers never got (`conflated_frames`).
    pub conflated_frames: u64,
    /// Subscribers the server closed as slow consumers (`slow_consumer_cuts`).
    pub slow_consumer_cuts: u64,
    /// Frames written to subscribers (`messages_out`).
    pub messages_out: u64,
    /// Times subscribers' waiting frames were written out (`write_turns`;
    /// 0 from a server that does not count them): frames per write is
    /// `messages_out / write_turns`.
    pub write_turns: u64,
    /// Payload bytes written to subscribers, compressed where they were
    /// (`bytes_out`; 0 from a server before protocol 1.1).
    pub bytes_out: u64,
    /// The same payloads before compression (`bytes_out_uncompressed`).
    pub bytes_out_uncompressed: u64,
    /// Frames compressed, once per frame (`frames_compressed`).
    pub frames_compressed: u64,
}

impl ServerCounters {
    /// Reads and sums the counters of every node; `None` if any node does
    /// not answer with all three.
    pub async fn read(http: &reqwest::Client, targets: &[Target]) -> Option<ServerCounters> {
        let mut sum = ServerCounters::default();
        for target in targets {
            let one = read_one(http, target).await?;
            sum.backpressure_pauses += one.backpressure_pauses;
            sum.conflated_frames += one.conflated_frames;
            sum.slow_consumer_cuts += one.slow_consumer_cuts;
            sum.messages_out += one.messages_out;
            sum.write_turns += one.write_turns;
            sum.bytes_out += one.bytes_out;
            sum.bytes_out_uncompressed += one.bytes_out_uncompressed;
            sum.frames_compressed += one.frames_compressed;
        }
        Some(sum)
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &ServerCounters) -> ServerCounters {
        ServerCounters {
            backpressure_pauses: self
                .backpressure_pauses
                .saturating_sub(before.backpressure_pauses),
            conflated_frames: self.conflated_frames.saturating_sub(before.conflated_frames),
            slow_consumer_cuts: self.slow_consumer_cuts.saturating_sub(before.slow_consumer_cuts),
            messages_out: self.messages_out.saturating_sub(before.messages_out),
            write_turns: self.write_turns.saturating_sub(before.write_turns),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            bytes_out_uncompressed: self
                .bytes_out_uncompressed
                .saturating_sub(before.bytes_out_uncompressed),
            frames_compressed: self.frames_compressed.saturating_sub(before.frames_compressed),
        }
    }
}

async fn read_one(http: &reqwest::Client, target: &Target) -> Option<ServerCounters> {
    let response = http
        .get(target.http_url("/api/stats"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    parse(&response.bytes().await.ok()?)
}

/// The three counters of an `/api/stats` body.
fn parse(body: &[u8]) -> Option<ServerCounters> {
    let stats: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = |name: &str| stats.get(name).and_then(serde_json::Value::as_u64);
    Some(ServerCounters {
        backpressure_pauses: field("backpressure_pauses")?,
        conflated_frames: field("conflated_frames")?,
        slow_consumer_cuts: field("slow_consumer_cuts")?,
        messages_out: field("messages_out").unwrap_or(0),
        write_turns: field("write_turns").unwrap_or(0),
        bytes_out: field("bytes_out").unwrap_or(0),
        bytes_out_uncompressed: field("bytes_out_uncompressed").unwrap_or(0),
        frames_compressed: field("frames_compressed").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_from_the_stats_body_and_subtract() {
        let body = br#"{"uptime_s":1.5,"slow_consumer_cuts":3,"conflated_frames":120,
            "backpressure_pauses":7,"messages_out":900,"write_turns":300,"latency_us":{}}"#;
        let after = parse(body).unwrap();
        assert_eq!(
            after,
            ServerCounters {
                backpressure_pauses: 7,
                conflated_frames: 120,
                slow_consumer_cuts: 3,
                messages_out: 900,
                write_turns: 300,
                ..Default::default()
            }
        );
        let before = ServerCounters {
            backpressure_pauses: 2,
            conflated_frames: 20,
            slow_consumer_cuts: 3,
            messages_out: 100,
            write_turns: 100,
            ..Default::default()
        };
        assert_eq!(
            after.since(&before),
            ServerCounters {
                backpressure_pauses: 5,
                conflated_frames: 100,
                slow_consumer_cuts: 0,
                messages_out: 800,
                write_turns: 200,
                ..Default::default()
            }
        );
        assert_eq!(parse(br#"{"conflated_frames":1}"#), None);
        assert_eq!(parse(b"not json"), None);
    }
}
