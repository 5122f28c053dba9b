//! 200 clients in 20 rooms, 10 chats each: every member receives every chat of its room exactly
//! once, in per-sender order, and nothing leaks across rooms.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use serde_json::json;
use tokio::sync::Barrier;

const ROOMS: usize = 20;
const PER_ROOM: usize = 10;
const CHATS_EACH: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_chat_in_twenty_rooms() {
    let server = Arc::new(TestServer::start().await);
    let joined = Arc::new(Barrier::new(ROOMS * PER_ROOM));
    let mut tasks = Vec::new();
    for r in 0..ROOMS {
        for m in 0..PER_ROOM {
            let server = server.clone();
            let joined = joined.clone();
            tasks.push(tokio::spawn(async move {
                let room = format!("room-{r:02}");
                let name = format!("r{r}m{m}");
                let mut c = server.member(&room, &name).await;
                joined.wait().await;
                for seq in 0..CHATS_EACH {
                    c.send(json!({"type":"chat","text":format!("{room}|{name}|{seq}")}))
                        .await;
                }
                // Next expected sequence number per sender in this room.
                let mut next: HashMap<String, usize> = HashMap::new();
                let mut received = 0;
                while received < PER_ROOM * CHATS_EACH {
                    let msg = c.recv_type("chat").await;
                    let text = msg["text"].as_str().unwrap().to_owned();
                    let mut parts = text.split('|');
                    let (from_room, sender, seq) = (
                        parts.next().unwrap().to_owned(),
                        parts.next().unwrap().to_owned(),
                        parts.next().unwrap().parse::<usize>().unwrap(),
                    );
                    assert_eq!(from_room, room, "chat leaked across rooms");
                    assert_eq!(msg["from"]["name"], sender.as_str());
                    let expected = next.entry(sender.clone()).or_insert(0);
                    assert_eq!(
                        seq, *expected,
                        "{name} got {sender}'s chats out of order or twice"
                    );
                    *expected += 1;
                    received += 1;
                }
                assert_eq!(next.len(), PER_ROOM);
                assert!(next.values().all(|&n| n == CHATS_EACH));
                // Nothing more may arrive: no duplicates, no strays from other rooms.
                c.expect_quiet(Duration::from_millis(500)).await;
                c
            }));
        }
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("load test finishes")
                .expect("client task succeeded"),
        );
    }
    assert_eq!(
        server.metric("yoom_chat_messages_total").await,
        (ROOMS * PER_ROOM * CHATS_EACH) as f64
    );
    assert_eq!(server.metric("yoom_participant_total").await, 200.0);
    drop(clients);
}
