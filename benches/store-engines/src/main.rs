//! tern-store against redb: QoS 1 write path (100 threads, each commits a message and its
//! queue entry and waits until it is durable) and recovery of 1,000,000 retained messages.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};
use tern_store::{Durability, EntryData, MessageData, Options, Record, Store};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
const THREADS: usize = 100;
const SECONDS: u64 = 5;
const RETAINED: u64 = 1_000_000;

fn message(topic: &str) -> MessageData<'_> {
    MessageData {
        topic,
        payload: &[7; 64],
        qos: 1,
        retain: false,
        properties: &[],
        publisher: "publisher-1",
        expires_at: None,
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn tern_qos1() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = Store::open(dir.path(), Options::default()).unwrap();
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let topic = format!("bench/{t}");
                while !stop.load(Ordering::Relaxed) {
                    let id = store.next_id();
                    let mut txn = store.begin();
                    txn.push(&Record::Message { id, message: message(&topic) });
                    txn.push(&Record::Enqueue(EntryData {
                        client: "subscriber-1",
                        seq: store.next_id(),
                        message: id,
                        qos: 1,
                        retain: false,
                        subscription_ids: Cow::Borrowed(&[]),
                        share: None,
                    }));
                    let lsn = txn.commit();
                    rt.block_on(store.wait_durable(lsn));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

/// redb with the same group commit: one writer thread, one write transaction per batch.
fn redb_qos1(group: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(dir.path().join("db")).unwrap());
    {
        let w = db.begin_write().unwrap();
        w.open_table(TABLE).unwrap();
        w.commit().unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let key = Arc::new(AtomicU64::new(0));
    // (pending values, generation committed)
    let shared = Arc::new((Mutex::new((Vec::<(u64, Vec<u8>)>::new(), 0u64, 0u64)), Condvar::new()));
    let writer = if group {
        let (db, shared, stop) = (db.clone(), shared.clone(), stop.clone());
        Some(std::thread::spawn(move || loop {
            let (batch, generation) = {
                let (lock, cv) = &*shared;
                let mut g = lock.lock().unwrap();
                while g.0.is_empty() && !stop.load(Ordering::Relaxed) {
                    g = cv.wait_timeout(g, Duration::from_millis(10)).unwrap().0;
                }
                if g.0.is_empty() {
                    return;
                }
                g.2 += 1;
                (std::mem::take(&mut g.0), g.2)
            };
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for (k, v) in &batch {
                    t.insert(k, v.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
            let (lock, cv) = &*shared;
            lock.lock().unwrap().1 = generation;
            cv.notify_all();
        }))
    } else {
        None
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (db, stop, done, key, shared) =
                (db.clone(), stop.clone(), done.clone(), key.clone(), shared.clone());
            std::thread::spawn(move || {
                let mut value = Vec::new();
                Record::Message { id: 1, message: message("bench/x") }.encode(&mut value);
                while !stop.load(Ordering::Relaxed) {
                    let k = key.fetch_add(1, Ordering::Relaxed);
                    if group {
                        let (lock, cv) = &*shared;
                        let mut g = lock.lock().unwrap();
                        g.0.push((k, value.clone()));
                        let wait_for = g.2 + 1;
                        cv.notify_all();
                        while g.1 < wait_for {
                            g = cv.wait(g).unwrap();
                        }
                    } else {
                        let w = db.begin_write().unwrap();
                        w.open_table(TABLE).unwrap().insert(k, value.as_slice()).unwrap();
                        w.commit().unwrap();
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::Relaxed);
    shared.1.notify_all();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    // Wake anyone left waiting on a generation that will not come.
    {
        let (lock, cv) = &*shared;
        lock.lock().unwrap().1 = u64::MAX;
        cv.notify_all();
    }
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

fn tern_recovery() -> (Duration, Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    {
        let (store, _, _) = Store::open(dir.path(), Options::default()).unwrap();
        for chunk in 0..RETAINED / 1000 {
            let mut txn = store.begin();
            for i in 0..1000 {
                let topic = format!("sensors/{chunk}/{i}");
                txn.push(&Record::Retain(message(&topic)));
            }
            txn.commit();
        }
        store.close();
    }
    let write = started.elapsed();
    let bytes = dir_bytes(dir.path());
    let started = Instant::now();
    let (_store, recovered, _) = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovered.retained.len() as u64, RETAINED);
    (write, started.elapsed(), bytes)
}

fn redb_recovery() -> (Duration, Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let started = Instant::now();
    {
        let db = Database::create(&path).unwrap();
        for chunk in 0..RETAINED / 1000 {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for i in 0..1000u64 {
                    let topic = format!("sensors/{chunk}/{i}");
                    let mut v = Vec::new();
                    Record::Retain(message(&topic)).encode(&mut v);
                    t.insert(chunk * 1000 + i, v.as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
        }
    }
    let write = started.elapsed();
    let bytes = dir_bytes(dir.path());
    let started = Instant::now();
    let db = Database::open(&path).unwrap();
    let r = db.begin_read().unwrap();
    let t = r.open_table(TABLE).unwrap();
    let mut n = 0u64;
    for e in t.iter().unwrap() {
        let (_, v) = e.unwrap();
        let (rec, _) = Record::decode(v.value()).unwrap();
        if let Record::Retain(m) = rec {
            std::hint::black_box(m.payload.to_vec());
            n += 1;
        }
    }
    assert_eq!(n, RETAINED);
    (write, started.elapsed(), bytes)
}

fn main() {
    let _ = Durability::Sync;
    println!("QoS 1 write path: {THREADS} threads, each commits and waits for fsync, {SECONDS} s");
    println!("  tern-store (group commit)   {:>10.0} commits/s", tern_qos1());
    println!("  redb (same group commit)    {:>10.0} commits/s", redb_qos1(true));
    println!("  redb (a transaction each)   {:>10.0} commits/s", redb_qos1(false));
    println!("Recovery of {RETAINED} retained messages (64-byte payloads)");
    let (w, r, b) = tern_recovery();
    println!("  tern-store  write {:>6.2} s  open+load {:>6.2} s  disk {:>5} MB", w.as_secs_f64(), r.as_secs_f64(), b / 1_000_000);
    let (w, r, b) = redb_recovery();
    println!("  redb        write {:>6.2} s  open+load {:>6.2} s  disk {:>5} MB", w.as_secs_f64(), r.as_secs_f64(), b / 1_000_000);
}
