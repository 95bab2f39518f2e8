//! The topics seen since the start, for the console's topic tree: each with its last message
//! (the first bytes of it), how many messages it carried and its recent rate.
//!
//! Sits on the message path, so it costs one hash and one short lock of one of several
//! shards per message; the number of topics kept is capped, and topics past the cap are only
//! counted.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tern_broker::Message;

/// How many bytes of a message's payload are kept.
pub const PREVIEW_BYTES: usize = 1024;

const SHARDS: usize = 16;

/// One topic's figures.
#[derive(Debug, Clone)]
pub struct TopicSeen {
    /// The first [`PREVIEW_BYTES`] of the last payload.
    pub last_payload: Vec<u8>,
    /// The last payload's whole size.
    pub last_size: usize,
    /// Whether the last message was retained.
    pub last_retain: bool,
    /// When the last message arrived.
    pub last_at: SystemTime,
    /// Messages since the start.
    pub count: u64,
    /// Messages per second over the last rate period.
    pub rate: f64,
    counted_at_tick: u64,
}

/// The tracker.
pub struct Topics {
    shards: Vec<Mutex<HashMap<Arc<str>, TopicSeen>>>,
    hasher: RandomState,
    max: usize,
    kept: AtomicU64,
    /// Messages on topics past the cap.
    pub untracked: AtomicU64,
}

impl Topics {
    /// A tracker keeping at most `max` topics.
    pub fn new(max: usize) -> Topics {
        Topics {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max,
            kept: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    fn shard(&self, topic: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TopicSeen>> {
        let i = (self.hasher.hash_one(topic) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `message` (the broker's own `$` topics are left out).
    pub fn observe(&self, message: &Message) {
        if message.topic.starts_with('$') {
            return;
        }
        let preview = &message.payload[..message.payload.len().min(PREVIEW_BYTES)];
        let mut shard = self.shard(&message.topic);
        if let Some(seen) = shard.get_mut(&*message.topic) {
            seen.last_payload.clear();
            seen.last_payload.extend_from_slice(preview);
            seen.last_size = message.payload.len();
            seen.last_retain = message.retain;
            seen.last_at = SystemTime::now();
            seen.count += 1;
            return;
        }
        if self.kept.load(Ordering::Relaxed) >= self.max as u64 {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.kept.fetch_add(1, Ordering::Relaxed);
        shard.insert(
            message.topic.clone(),
            TopicSeen {
                last_payload: preview.to_vec(),
                last_size: message.payload.len(),
                last_retain: message.retain,
                last_at: SystemTime::now(),
                count: 1,
                rate: 0.0,
                counted_at_tick: 0,
            },
        );
    }

    /// Updates every topic's rate from what it carried in the last `secs` seconds.
    pub fn tick(&self, secs: f64) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for seen in shard.values_mut() {
                seen.rate = (seen.count - seen.counted_at_tick) as f64 / secs;
                seen.counted_at_tick = seen.count;
            }
        }
    }

    /// Topics starting with `prefix`, sorted, at most `limit`; and how many matched in all.
    pub fn list(&self, prefix: &str, limit: usize) -> (Vec<(Arc<str>, TopicSeen)>, usize) {
        let mut all: Vec<(Arc<str>, TopicSeen)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(
                shard
                    .iter()
                    .filter(|(t, _)| t.starts_with(prefix))
                    .map(|(t, s)| (t.clone(), s.clone())),
            );
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let total = all.len();
        all.truncate(limit);
        (all, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &[u8]) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos: tern_proto::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            publisher: Arc::from("p"),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
            expires_at: None,
        }
    }

    #[test]
    fn keeps_last_message_count_and_rate_up_to_the_cap() {
        let topics = Topics::new(2);
        topics.observe(&message("a/b", b"1"));
        topics.observe(&message("a/b", b"2"));
        topics.observe(&message("a/c", &[7; 5000]));
        topics.observe(&message("z", b"over the cap"));
        topics.observe(&message("$SYS/x", b"own"));
        topics.tick(2.0);
        let (list, total) = topics.list("", 10);
        assert_eq!(total, 2);
        assert_eq!(&*list[0].0, "a/b");
        assert_eq!(list[0].1.last_payload, b"2");
        assert_eq!(list[0].1.count, 2);
        assert_eq!(list[0].1.rate, 1.0);
        assert_eq!(list[1].1.last_payload.len(), PREVIEW_BYTES);
        assert_eq!(list[1].1.last_size, 5000);
        assert_eq!(topics.untracked.load(Ordering::Relaxed), 1);
        topics.tick(2.0);
        assert_eq!(topics.list("a/", 1).0[0].1.rate, 0.0);
    }
}
