//! Fills a tern data directory's store with RETAINED retained messages and SESSIONS offline
//! persistent sessions (each subscribed to one filter, with one queued QoS 1 message), to time
//! a broker's start on a large state:
//!   cargo run --release --bin fill -- DATA_DIR 1000000 100000
//!   time (tern broker --data-dir DATA_DIR ... until "listening")

use std::borrow::Cow;

use tern_store::{EntryData, MessageData, Options, Record, SessionData, Store};

fn message(topic: &str) -> MessageData<'_> {
    MessageData {
        topic,
        payload: &[b'x'; 64],
        qos: 1,
        retain: false,
        properties: &[],
        publisher: "filler",
        expires_at: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]).join("store");
    let retained: u64 = args[2].parse().unwrap();
    let sessions: u64 = args[3].parse().unwrap();
    let (store, _, _) = Store::open(&dir, Options::default()).unwrap();
    for chunk in 0..retained.div_ceil(1000) {
        let mut txn = store.begin();
        for i in 0..1000.min(retained - chunk * 1000) {
            let topic = format!("sensors/{chunk}/{i}/temp");
            txn.push(&Record::Retain(MessageData {
                retain: true,
                ..message(&topic)
            }));
        }
        txn.commit();
    }
    for chunk in 0..sessions.div_ceil(100) {
        let mut txn = store.begin();
        for i in 0..100.min(sessions - chunk * 100) {
            let client = format!("board-{chunk}-{i}");
            let filter = format!("cmd/{client}/#");
            let topic = format!("cmd/{client}/led");
            txn.push(&Record::Session(SessionData {
                client: &client,
                expiry_interval: u32::MAX,
                version: 4,
                username: None,
                disconnected_at: Some(1_800_000_000_000),
                will: None,
            }));
            txn.push(&Record::Subscribe {
                client: &client,
                filter: &filter,
                options: 1,
                id: None,
            });
            let id = store.next_id();
            txn.push(&Record::Message {
                id,
                message: message(&topic),
            });
            txn.push(&Record::Enqueue(EntryData {
                client: &client,
                seq: store.next_id(),
                message: id,
                qos: 1,
                retain: false,
                subscription_ids: Cow::Borrowed(&[]),
                share: None,
            }));
        }
        txn.commit();
    }
    store.close();
}
