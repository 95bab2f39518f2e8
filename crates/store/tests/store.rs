//! The store against real files: what is committed is recovered, a torn end is cut off,
//! snapshots replace the log, and the version 1 format reads as it always did.

#![allow(clippy::unwrap_used)]
use std::borrow::Cow;
use std::path::Path;

use tern_store::{
    Durability, EntryData, EntryState, MessageData, Options, Record, RecoveredEntry, SessionData,
    Store, StoreError,
};

fn message(topic: &'static str, payload: &'static [u8]) -> MessageData<'static> {
    MessageData {
        topic,
        payload,
        qos: 1,
        retain: false,
        properties: &[],
        publisher: "pub",
        expires_at: None,
    }
}

/// One of every record kind, in an order that leaves something of each in the state.
fn sample() -> Vec<Record<'static>> {
    vec![
        Record::Retain(MessageData {
            retain: true,
            properties: &[0x03, 0x00, 0x04, b't', b'e', b'x', b't'],
            expires_at: Some(1_900_000_000_000),
            ..message("sensors/1/temp", b"21.5")
        }),
        Record::Retain(message("gone", b"x")),
        Record::RetainClear { topic: "gone" },
        Record::Session(SessionData {
            client: "board-1",
            expiry_interval: 3600,
            version: 5,
            username: Some("alice"),
            disconnected_at: Some(1_800_000_000_000),
            will: Some((message("status/board-1", b"offline"), 10)),
        }),
        Record::Subscribe {
            client: "board-1",
            filter: "cmd/#",
            options: 0b0000_0001,
            id: Some(7),
        },
        Record::Subscribe {
            client: "board-1",
            filter: "old",
            options: 0,
            id: None,
        },
        Record::Unsubscribe {
            client: "board-1",
            filter: "old",
        },
        Record::Message {
            id: 1,
            message: message("cmd/led", b"on"),
        },
        Record::Message {
            id: 2,
            message: message("cmd/led", b"off"),
        },
        Record::Enqueue(EntryData {
            client: "board-1",
            seq: 1,
            message: 1,
            qos: 1,
            retain: false,
            subscription_ids: Cow::Borrowed(&[7]),
            share: None,
        }),
        Record::Enqueue(EntryData {
            client: "board-1",
            seq: 2,
            message: 2,
            qos: 2,
            retain: false,
            subscription_ids: Cow::Borrowed(&[]),
            share: Some("$share/g/cmd/#"),
        }),
        Record::Sent {
            client: "board-1",
            seq: 1,
            packet_id: 10,
        },
        Record::Sent {
            client: "board-1",
            seq: 2,
            packet_id: 11,
        },
        Record::Released {
            client: "board-1",
            seq: 2,
        },
        Record::IncomingQos2 {
            client: "board-1",
            packet_id: 99,
        },
        Record::IncomingQos2 {
            client: "board-1",
            packet_id: 98,
        },
        Record::IncomingReleased {
            client: "board-1",
            packet_id: 98,
        },
        Record::Session(SessionData {
            client: "board-2",
            expiry_interval: u32::MAX,
            version: 4,
            username: None,
            disconnected_at: None,
            will: None,
        }),
        Record::Message {
            id: 3,
            message: message("x", b"done"),
        },
        Record::Enqueue(EntryData {
            client: "board-2",
            seq: 1,
            message: 3,
            qos: 1,
            retain: false,
            subscription_ids: Cow::Borrowed(&[]),
            share: None,
        }),
        Record::Done {
            client: "board-2",
            seq: 1,
        },
        Record::Session(SessionData {
            client: "board-3",
            expiry_interval: 1,
            version: 4,
            username: None,
            disconnected_at: None,
            will: None,
        }),
        Record::SessionDrop { client: "board-3" },
    ]
}

fn options() -> Options {
    Options {
        durability: Durability::Sync,
        ..Options::default()
    }
}

/// Checks the state `sample()` leaves.
fn check_sample_state(r: &tern_store::Recovered) {
    assert_eq!(r.retained.len(), 1);
    assert_eq!(r.retained[0].topic, "sensors/1/temp");
    assert_eq!(r.retained[0].expires_at, Some(1_900_000_000_000));
    // Message 2's entry is released (PUBREC came), message 3's is done: only 1 is needed.
    assert_eq!(r.messages.keys().copied().collect::<Vec<_>>(), vec![1]);
    let mut sessions = r.sessions.clone();
    sessions.sort_by(|a, b| a.client.cmp(&b.client));
    assert_eq!(sessions.len(), 2);
    let s = &sessions[0];
    assert_eq!(s.client, "board-1");
    assert_eq!(s.username.as_deref(), Some("alice"));
    assert_eq!(
        s.will.as_ref().map(|(m, d)| (m.payload.as_slice(), *d)),
        Some((&b"offline"[..], 10))
    );
    assert_eq!(s.subscriptions, vec![("cmd/#".to_owned(), 1, Some(7))]);
    assert_eq!(s.incoming_qos2, vec![99]);
    assert_eq!(
        s.entries,
        vec![
            RecoveredEntry {
                seq: 1,
                message: 1,
                qos: 1,
                retain: false,
                subscription_ids: vec![7],
                share: None,
                state: EntryState::Sent(10),
            },
            RecoveredEntry {
                seq: 2,
                message: 2,
                qos: 2,
                retain: false,
                subscription_ids: vec![],
                share: Some("$share/g/cmd/#".to_owned()),
                state: EntryState::Released(11),
            },
        ]
    );
    assert_eq!(sessions[1].client, "board-2");
    assert!(sessions[1].entries.is_empty());
}

#[test]
fn every_record_decodes_to_itself() {
    for record in sample() {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        let (back, used) = Record::decode(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(used, bytes.len());
        // Any cut of a record is an error, never a panic or a different record.
        for cut in 0..bytes.len() {
            assert!(
                Record::decode(&bytes[..cut]).is_err(),
                "{record:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn committed_records_are_recovered_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, recovered, _) = Store::open(dir.path(), options()).unwrap();
        assert!(recovered.sessions.is_empty());
        for record in sample() {
            store.append(&record);
        }
        store.close();
    }
    let (_store, recovered, report) = Store::open(dir.path(), options()).unwrap();
    assert_eq!(report.records, sample().len() as u64);
    check_sample_state(&recovered);
}

#[test]
fn a_transaction_is_one_frame_and_durable_when_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = Store::open(dir.path(), options()).unwrap();
    let mut txn = store.begin();
    for record in sample() {
        txn.push(&record);
    }
    let lsn = txn.commit();
    assert_eq!(lsn, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(rt.block_on(store.wait_durable(lsn)));
    assert!(store.durable() >= lsn);
    // An empty transaction writes nothing and needs no wait.
    assert_eq!(store.begin().commit(), 0);
}

#[test]
fn a_second_broker_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _, _) = Store::open(dir.path(), options()).unwrap();
    let second = Store::open(dir.path(), options());
    assert!(matches!(second, Err(StoreError::Locked(_))));
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_torn_end_of_the_log_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _, _) = Store::open(dir.path(), options()).unwrap();
        for record in sample() {
            store.append(&record);
        }
        store.close();
    }
    // What a crash in the middle of a write leaves: half a frame at the end.
    let last = segments(dir.path())
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 12)
        .unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let mut frame = Vec::new();
    Record::RetainClear {
        topic: "sensors/1/temp",
    }
    .encode(&mut frame);
    let len = frame.len() as u32;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32fast_hash(&frame).to_le_bytes());
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    std::fs::write(&last, &bytes).unwrap();

    let (store, recovered, report) = Store::open(dir.path(), options()).unwrap();
    assert!(report.torn_bytes > 0);
    check_sample_state(&recovered);
    store.close();
    drop(store);
    // The cut is final: a second start finds a clean log.
    let (_store, recovered, report) = Store::open(dir.path(), options()).unwrap();
    assert_eq!(report.torn_bytes, 0);
    check_sample_state(&recovered);
}

#[test]
fn damage_before_the_last_segment_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (store, _, _) = Store::open(dir.path(), options()).unwrap();
        for record in sample() {
            store.append(&record);
        }
        store.close();
    }
    let first = segments(dir.path())
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 12)
        .unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xFF;
    std::fs::write(&first, &bytes).unwrap();
    let err = Store::open(dir.path(), options())
        .err()
        .expect("damage must be reported");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn snapshots_replace_the_log_and_keep_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let small = Options {
        durability: Durability::Sync,
        segment_size: 4 * 1024,
        snapshot_min: 16 * 1024,
    };
    {
        let (store, _, _) = Store::open(dir.path(), small.clone()).unwrap();
        for record in sample() {
            store.append(&record);
        }
        // Churn: many messages queued and acknowledged, retained values overwritten.
        for i in 0..2_000u64 {
            let mut txn = store.begin();
            txn.push(&Record::Message {
                id: 100 + i,
                message: message("cmd/x", b"payload payload payload"),
            });
            txn.push(&Record::Enqueue(EntryData {
                client: "board-2",
                seq: 10 + i,
                message: 100 + i,
                qos: 1,
                retain: false,
                subscription_ids: Cow::Borrowed(&[]),
                share: None,
            }));
            txn.commit();
            // Every hundredth message stays queued: it must stay readable through snapshots.
            if i % 100 != 0 {
                store.append(&Record::Done {
                    client: "board-2",
                    seq: 10 + i,
                });
            } else {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(store.wait_durable(store.last_commit()));
                // Applied by the writer a moment after it is durable.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !store.has_message(100 + i) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            for kept in (0..=i).step_by(100) {
                if (i + kept) % 97 == 0 {
                    let m = store
                        .read_message(100 + kept)
                        .expect("a queued message reads back");
                    assert_eq!(m.payload, b"payload payload payload");
                }
            }
            store.append(&Record::Retain(MessageData {
                retain: true,
                ..message("churn", b"latest value")
            }));
        }
        store.close();
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".snap")), "{files:?}");
    let total: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // 6,000 commits of ~100 bytes each would be ~600 KB without compaction.
    assert!(total < 200 * 1024, "store holds {total} bytes: {files:?}");
    let (store, mut recovered, _) = Store::open(dir.path(), small).unwrap();
    let churn = recovered
        .retained
        .iter()
        .position(|m| m.topic == "churn")
        .unwrap();
    assert_eq!(recovered.retained.remove(churn).payload, b"latest value");
    let board2 = recovered
        .sessions
        .iter_mut()
        .find(|s| s.client == "board-2")
        .unwrap();
    assert_eq!(board2.entries.len(), 20, "the twenty entries left queued");
    for e in &board2.entries {
        let m = store.read_message(e.message).unwrap();
        assert_eq!(m.payload, b"payload payload payload");
    }
    board2.entries.clear();
    for kept in (0..2_000u64).step_by(100) {
        recovered.messages.remove(&(100 + kept));
    }
    check_sample_state(&recovered);
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v1");

/// The version 1 format, frozen: a store written by the first tern must read the same
/// forever (or through a migration). `TERN_BLESS=1` writes the file again, for a deliberate
/// format change that comes with a new version number.
#[test]
fn golden_v1_store_reads_as_written() {
    let golden = Path::new(GOLDEN);
    if std::env::var_os("TERN_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(golden);
        let (store, _, _) = Store::open(golden, options()).unwrap();
        for record in sample() {
            store.append(&record);
        }
        store.close();
        drop(store);
        for f in std::fs::read_dir(golden).unwrap() {
            let f = f.unwrap();
            if f.metadata().unwrap().len() <= 12 || f.file_name() == "LOCK" {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
    // Opened in a copy: opening cuts and adds files.
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(golden).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    let (_store, recovered, report) = Store::open(copy.path(), options()).unwrap();
    assert_eq!(report.torn_bytes, 0);
    check_sample_state(&recovered);
    // And the bytes this code writes for the same records are the golden bytes.
    let file = std::fs::read(golden.join("wal-00000000000000000001.log")).unwrap();
    assert_eq!(&file[..12], b"TERNWAL\0\x01\0\0\0");
    let mut records = Vec::new();
    let mut at = 12;
    while at < file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        records.push(file[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    let expected: Vec<Vec<u8>> = sample()
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        })
        .collect();
    assert_eq!(records, expected);
}

fn crc32fast_hash(bytes: &[u8]) -> u32 {
    // The IEEE CRC-32, bit by bit: independent of the crate the store uses.
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn of_two_entries_claiming_one_packet_id_the_later_is_live() {
    // A crash lost the Done of entry 1 (its PUBCOMP came, packet id 5 was freed); entry 2 was
    // then sent with id 5. Only entry 2 may be resumed, and entry 1 is reported finished.
    let dir = tempfile::tempdir().unwrap();
    let entry = |seq, message| {
        Record::Enqueue(EntryData {
            client: "c",
            seq,
            message,
            qos: 2,
            retain: false,
            subscription_ids: Cow::Borrowed(&[]),
            share: None,
        })
    };
    {
        let (store, _, _) = Store::open(dir.path(), options()).unwrap();
        for record in [
            Record::Session(SessionData {
                client: "c",
                expiry_interval: u32::MAX,
                version: 4,
                username: None,
                disconnected_at: None,
                will: None,
            }),
            Record::Message {
                id: 1,
                message: message("t", b"first"),
            },
            entry(10, 1),
            Record::Message {
                id: 2,
                message: message("t", b"second"),
            },
            entry(11, 2),
            Record::Sent {
                client: "c",
                seq: 10,
                packet_id: 5,
            },
            Record::Released {
                client: "c",
                seq: 10,
            },
            Record::Sent {
                client: "c",
                seq: 11,
                packet_id: 5,
            },
        ] {
            store.append(&record);
        }
        store.close();
    }
    let (_store, recovered, _) = Store::open(dir.path(), options()).unwrap();
    let s = &recovered.sessions[0];
    assert_eq!(s.finished, vec![10]);
    assert_eq!(s.entries.len(), 1);
    assert_eq!(
        (s.entries[0].seq, s.entries[0].state),
        (11, EntryState::Sent(5))
    );
}

mod damaged {
    //! Whatever a file holds, opening the store answers: a state, or an error naming the
    //! file. Never a panic, never a state with a record the file did not hold whole.

    use super::*;
    use proptest::prelude::*;

    /// The golden store's segment, for mutation.
    fn golden_segment() -> Vec<u8> {
        std::fs::read(Path::new(GOLDEN).join("wal-00000000000000000001.log")).unwrap()
    }

    /// A comparable digest of a recovered state.
    fn summary(r: &tern_store::Recovered) -> String {
        let mut retained: Vec<_> = r.retained.iter().map(|m| (&m.topic, &m.payload)).collect();
        retained.sort();
        let mut sessions: Vec<_> = r.sessions.iter().map(|s| format!("{s:?}")).collect();
        sessions.sort();
        let mut messages: Vec<_> = r.messages.keys().collect();
        messages.sort();
        format!("{retained:?} {messages:?} {sessions:?}")
    }

    /// The state after each whole-frame prefix of the golden segment.
    fn prefix_states() -> &'static [String] {
        static STATES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        STATES.get_or_init(compute_prefix_states)
    }

    fn compute_prefix_states() -> Vec<String> {
        let bytes = golden_segment();
        let mut ends = vec![12];
        let mut at = 12;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += 8 + len;
            ends.push(at);
        }
        ends.iter()
            .map(|end| summary(&open_with(&[bytes[..*end].to_vec()]).unwrap()))
            .collect()
    }

    fn open_with(segments: &[Vec<u8>]) -> Result<tern_store::Recovered, StoreError> {
        let dir = tempfile::tempdir().unwrap();
        for (i, bytes) in segments.iter().enumerate() {
            std::fs::write(dir.path().join(format!("wal-{:020}.log", i + 1)), bytes).unwrap();
        }
        Store::open(dir.path(), options()).map(|(_, r, _)| r)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_after_a_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = b"TERNWAL\0\x01\0\0\0".to_vec();
            bytes.extend_from_slice(&body);
            // As the last segment, damage is a torn end: the store opens.
            prop_assert!(open_with(&[bytes.clone()]).is_ok());
            // Before another segment, it opens only if every frame was whole.
            let _ = open_with(&[bytes, golden_segment()]);
        }

        #[test]
        fn a_mutated_golden_segment_opens_as_a_prefix_of_its_frames(
            flips in proptest::collection::vec((12usize..862, any::<u8>()), 1..4),
            cut in 12usize..2000,
        ) {
            let mut bytes = golden_segment();
            for (at, x) in flips {
                let at = at % bytes.len();
                bytes[at] ^= x | 1;
            }
            bytes.truncate(cut.min(bytes.len()));
            let recovered = open_with(&[bytes]).expect("a damaged last segment is cut, not refused");
            // The state is the state of the first k whole frames, for some k: a damaged frame
            // and everything after it are gone, nothing else.
            prop_assert!(prefix_states().contains(&summary(&recovered)), "{:?}", summary(&recovered));
        }
    }
}
