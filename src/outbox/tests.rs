//! The outbox's queue, bounds, conflation, back-pressure counts and writer.

use super::*;

fn f(s: &'static str) -> Frame {
    Frame::from_static(s)
}

#[tokio::test]
async fn frames_come_out_in_order_in_one_batch() {
    let o = Outbox::new(8, Overflow::Close);
    assert_eq!(o.push(f("1"), None), Push::Queued);
    assert_eq!(o.push(f("2"), None), Push::Queued);
    let mut batch = VecDeque::new();
    assert_eq!(o.next_batch(&mut batch).await, None);
    let got: Vec<&str> = batch.iter().filter_map(|g| g.text()).collect();
    assert_eq!(got, ["1", "2"]);
}

#[tokio::test]
async fn a_full_queue_closes_as_slow_consumer_and_frees_its_frames() {
    let o = Outbox::new(2, Overflow::Close);
    o.push(f("1"), None);
    o.push(f("2"), None);
    assert_eq!(o.push(f("3"), None), Push::Overflowed);
    assert_eq!(o.push(f("4"), None), Push::Closed);
    assert_eq!(o.len(), 0);
    let mut batch = VecDeque::new();
    assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::SlowConsumer));
    assert!(batch.is_empty());
}

#[tokio::test]
async fn a_full_conflating_queue_keeps_the_newest_of_each_symbol() {
    let o = Outbox::new(4, Overflow::Conflate);
    let (a, b) = (Some(1), Some(2));
    o.push(f("answer"), None);
    o.push_keyed(f("a1"), None, a);
    o.push_keyed(f("b1"), None, b);
    o.push_keyed(f("a2"), None, a);
    assert_eq!(o.push_keyed(f("b2"), None, b), Push::Conflated(1));
    let mut batch = VecDeque::new();
    assert_eq!(o.next_batch(&mut batch).await, None);
    let got: Vec<&str> = batch.iter().filter_map(|g| g.text()).collect();
    assert_eq!(got, ["answer", "b1", "a2", "b2"]);
}

#[tokio::test]
async fn a_conflating_queue_still_closes_when_nothing_can_be_dropped() {
    let o = Outbox::new(2, Overflow::Conflate);
    o.push(f("1"), None);
    o.push(f("2"), None);
    assert_eq!(o.push(f("3"), None), Push::Overflowed);
}

#[tokio::test]
async fn going_away_still_sends_what_was_queued() {
    let o = Outbox::new(4, Overflow::Close);
    o.push(f("1"), None);
    o.close(CloseReason::GoingAway);
    o.close(CloseReason::SlowConsumer);
    let mut batch = VecDeque::new();
    assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::GoingAway));
    assert_eq!(batch.len(), 1);
}

#[tokio::test]
async fn a_pending_pong_is_replaced_and_control_frames_count_against_the_queue() {
    let o = Outbox::new(4, Overflow::Close);
    for payload in [b'a', b'b', b'c'] {
        assert_eq!(o.push_raw(Bytes::from(vec![0x8a, 1, payload])), Push::Queued);
    }
    assert_eq!(o.len(), 1, "one pong waits, the latest");
    let mut batch = VecDeque::new();
    o.take(&mut batch);
    assert_eq!(&batch[0].bytes[..], &[0x8a, 1, b'c']);
    // Pings the server sends are control frames too, and count.
    let o = Outbox::new(2, Overflow::Close);
    o.push_raw(Bytes::from_static(&[0x89, 0]));
    o.push_raw(Bytes::from_static(&[0x89, 0]));
    assert_eq!(o.push_raw(Bytes::from_static(&[0x89, 0])), Push::Overflowed);
    assert!(o.is_closing());
}

#[tokio::test]
async fn the_queue_is_bounded_in_bytes_answers_included() {
    let o = Outbox::new(1000, Overflow::Close).with_max_bytes(10_000);
    let answer = Frame::from("e".repeat(3_000));
    for _ in 0..3 {
        assert_eq!(o.push(answer.clone(), None), Push::Queued);
    }
    assert_eq!(o.queued_bytes(), 9_000);
    assert_eq!(o.push(answer, None), Push::Overflowed);
    assert_eq!(o.queued_bytes(), 0);
    // Conflation makes room by bytes too.
    let o = Outbox::new(1000, Overflow::Conflate).with_max_bytes(10_000);
    let big = Frame::from("p".repeat(4_000));
    o.push_keyed(big.clone(), None, Some(1));
    o.push_keyed(big.clone(), None, Some(1));
    assert_eq!(o.push_keyed(big, None, Some(1)), Push::Conflated(1));
    assert_eq!(o.queued_bytes(), 8_000);
}

#[tokio::test]
async fn the_writer_owns_the_socket_and_takes_late_frames_after_a_stuck_batch() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let o = Outbox::new(16, Overflow::Close).with_max_bytes(64 << 20);
    o.set_socket(Some(Arc::new(server)));
    let big = "b".repeat(8 << 20);
    o.push(Frame::from(big.clone()), None);
    let out = o.write_out(true).unwrap();
    assert!(out.pending, "8 MiB do not fit a socket nobody reads");
    assert!(
        o.write_out(false).is_none(),
        "a fanout worker leaves a stuck batch to its task"
    );
    o.push(f("late"), None);
    assert_eq!(o.len(), 1, "new frames wait in the queue, within its bounds");
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 10 + big.len() + 2 + 4];
        client.read_exact(&mut got).await.unwrap();
        got
    });
    loop {
        let out = o.write_out(true).unwrap();
        assert!(out.wrote.is_ok());
        if !out.pending {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(o.len(), 0, "the late frame went out in the same call");
    let got = reader.await.unwrap();
    assert_eq!(&got[got.len() - 6..], b"\x81\x04late");
}
