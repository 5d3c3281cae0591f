//! Notifications (PROTOCOL.md 1.2, 1.3): only the target user's
//! connections receive them, `user_id` never reaches a browser, unread
//! ones arrive right after connecting, and `mark_read` is stored and
//! echoed to every connection of the user.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reaches_only_its_user_without_user_id() {
    let s = start().await;
    let (mut alice, unread) = s.notifications("alice").await;
    assert_eq!(
        unread,
        json!({"type": "unread_notifications", "notifications": []})
    );
    let (mut bob, _) = s.notifications("bob").await;
    s.publish_ok(notification("alice", "n1")).await;
    let n = alice.recv().await;
    assert_eq!(n["type"], "new_notification");
    assert_eq!(n["notification_id"], "n1");
    assert_eq!(n["title"], "Trade Executed");
    assert_eq!(n["priority"], "high");
    assert_eq!(n["seq"], 1);
    assert!(n.get("user_id").is_none(), "user_id leaked: {n}");
    bob.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_of_the_user_receives_it() {
    let s = start().await;
    let (mut tab1, _) = s.notifications("alice").await;
    let (mut tab2, _) = s.notifications("alice").await;
    s.publish_ok(notification("alice", "n1")).await;
    assert_eq!(tab1.recv().await["notification_id"], "n1");
    assert_eq!(tab2.recv().await["notification_id"], "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_notifications_published_while_away_arrive_on_connect() {
    let s = start().await;
    s.publish_ok(json!([
        notification("alice", "n1"),
        notification("alice", "n2"),
        notification("bob", "x")
    ]))
    .await;
    // The publish is asynchronous to fanout: wait until both are stored.
    let mut unread;
    let mut tries = 0;
    loop {
        let (c, u) = s.notifications("alice").await;
        unread = u;
        drop(c);
        if unread["notifications"].as_array().unwrap().len() == 2 {
            break;
        }
        tries += 1;
        assert!(tries < 100, "unread never reached 2: {unread}");
    }
    let list = unread["notifications"].as_array().unwrap();
    assert_eq!(list[0]["notification_id"], "n1");
    assert_eq!(list[1]["notification_id"], "n2");
    assert_eq!(list[0]["type"], "new_notification");
    assert!(list.iter().all(|n| n.get("user_id").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_is_echoed_to_all_tabs_and_survives_reconnect() {
    let s = start().await;
    let (mut tab1, _) = s.notifications("alice").await;
    let (mut tab2, _) = s.notifications("alice").await;
    s.publish_ok(json!([notification("alice", "n1"), notification("alice", "n2")]))
        .await;
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(seqs(tab, "new_notification", 2).await, [1, 2]);
    }
    tab1.send(json!({"type": "mark_read", "notification_id": "n1", "id": 5}))
        .await;
    assert_eq!(
        tab1.recv().await,
        json!({"type": "notification_read", "notification_id": "n1", "id": 5})
    );
    assert_eq!(
        tab2.recv().await,
        json!({"type": "notification_read", "notification_id": "n1"})
    );
    drop(tab1);
    drop(tab2);
    let (_again, unread) = s.notifications("alice").await;
    let ids: Vec<&str> = unread["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["notification_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_an_unknown_notification_is_an_error_and_the_socket_stays() {
    let s = start().await;
    let (mut c, _) = s.notifications("alice").await;
    s.publish_ok(notification("bob", "bobs")).await;
    c.send(json!({"type": "mark_read", "notification_id": "bobs", "id": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_i64()),
        (Some("error"), Some("invalid_field"), Some(1))
    );
    c.send(json!({"type": "mark_read"})).await;
    assert_eq!(c.recv().await["code"], "missing_field");
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_without_an_id_get_a_unique_one() {
    let s = start().await;
    let (mut c, _) = s.notifications("alice").await;
    s.publish_ok(json!([
        {"type": "new_notification", "user_id": "alice", "title": "a"},
        {"type": "new_notification", "user_id": "alice", "title": "b"},
    ]))
    .await;
    let a = c.recv().await;
    let b = c.recv().await;
    let (ia, ib) = (
        a["notification_id"].as_str().unwrap(),
        b["notification_id"].as_str().unwrap(),
    );
    assert_ne!(ia, ib);
    c.send(json!({"type": "mark_read", "notification_id": ia})).await;
    assert_eq!(c.recv().await["type"], "notification_read");
}
