//! The image: what the log adds up to, kept by the writer thread so that it can write a
//! snapshot without asking the broker.
//!
//! Small records (sessions, subscriptions, queue entries) are kept as their bytes; messages
//! and retained messages only as the place their record sits in a file, so the image costs
//! an index, not a second copy of every payload.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::{EntryData, MessageData, Record, SessionData};

/// A file of the store: a log segment or a snapshot, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId {
    pub(crate) snapshot: bool,
    pub(crate) number: u64,
}

/// Where a record's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) file: FileId,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// How far a queued message has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Not sent yet.
    Queued,
    /// Sent with this packet id; no PUBACK / PUBREC yet.
    Sent(u16),
    /// PUBREC received for this packet id; PUBREL sent, no PUBCOMP yet.
    Released(u16),
}

#[derive(Clone)]
struct StoredMessage {
    loc: Loc,
    /// Queue entries that need it.
    refs: u32,
}

#[derive(Clone)]
struct EntryImage {
    /// Where its Enqueue record is (entries are many: no copy of their bytes in memory).
    loc: Loc,
    message: u64,
    state: EntryState,
    /// When its state last changed, in replay order: of two entries that claim one packet id
    /// (the first one's Done record was lost in a crash), the later one is the live one.
    stamp: u64,
}

#[derive(Default, Clone)]
struct SessionImage {
    record: Box<[u8]>,
    subscriptions: BTreeMap<Box<str>, Box<[u8]>>,
    entries: BTreeMap<u64, EntryImage>,
    incoming: BTreeSet<u16>,
}

/// New places of the retained and stored messages after a snapshot, in map order.
#[derive(Default)]
pub(crate) struct Relocation {
    retained: Vec<Loc>,
    messages: Vec<Loc>,
    entries: Vec<Loc>,
}

/// A session's entries in the order their states changed.
fn by_stamp(s: &SessionImage) -> Vec<u64> {
    let mut seqs: Vec<(u64, u64)> = s.entries.iter().map(|(q, e)| (e.stamp, *q)).collect();
    seqs.sort_unstable();
    seqs.into_iter().map(|(_, q)| q).collect()
}

/// The durable state, as the log describes it. A clone (for a snapshot written on another
/// thread) shares the message index with the original and must not change it.
#[derive(Default, Clone)]
pub(crate) struct Image {
    retained: HashMap<Box<str>, Loc>,
    messages: HashMap<u64, StoredMessage>,
    sessions: HashMap<Box<str>, SessionImage>,
    /// The highest message id or entry number seen.
    pub(crate) max_id: u64,
    /// Records applied, for entry stamps.
    clock: u64,
    /// Where each stored message is, shared with readers (`Store::read_message`).
    pub(crate) index: MessageIndex,
}

/// Message id to the place of its record, for reading a message back while the broker runs.
#[derive(Default, Clone)]
pub(crate) struct MessageIndex(Arc<Mutex<HashMap<u64, Loc>>>);

impl MessageIndex {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<u64, Loc>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Image {
    fn unref(&mut self, message: u64) {
        if let Some(m) = self.messages.get_mut(&message) {
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                self.messages.remove(&message);
                self.index.lock().remove(&message);
            }
        }
    }

    /// Applies one record, whose bytes are `raw` and sit at `loc`. Records about a session the
    /// image does not hold are ignored: it was dropped, and they came after.
    pub(crate) fn apply(&mut self, record: &Record<'_>, raw: &[u8], loc: Loc) {
        self.clock += 1;
        let stamp = self.clock;
        match record {
            Record::Retain(m) => {
                self.retained.insert(m.topic.into(), loc);
            }
            Record::RetainClear { topic } => {
                self.retained.remove(*topic);
            }
            Record::Message { id, .. } => {
                self.max_id = self.max_id.max(*id);
                self.messages
                    .entry(*id)
                    .and_modify(|m| m.loc = loc)
                    .or_insert(StoredMessage { loc, refs: 0 });
                self.index.lock().insert(*id, loc);
            }
            Record::Session(s) => {
                self.sessions.entry(s.client.into()).or_default().record = raw.into();
            }
            Record::SessionDrop { client } => {
                if let Some(s) = self.sessions.remove(*client) {
                    for e in s.entries.values() {
                        if !matches!(e.state, EntryState::Released(_)) {
                            self.unref(e.message);
                        }
                    }
                }
            }
            Record::Subscribe { client, filter, .. } => {
                if let Some(s) = self.sessions.get_mut(*client) {
                    s.subscriptions.insert((*filter).into(), raw.into());
                }
            }
            Record::Unsubscribe { client, filter } => {
                if let Some(s) = self.sessions.get_mut(*client) {
                    s.subscriptions.remove(*filter);
                }
            }
            Record::Enqueue(e) => {
                self.max_id = self.max_id.max(e.seq);
                let Some(s) = self.sessions.get_mut(e.client) else {
                    return;
                };
                let old = s.entries.insert(
                    e.seq,
                    EntryImage {
                        loc,
                        message: e.message,
                        state: EntryState::Queued,
                        stamp,
                    },
                );
                if let Some(m) = self.messages.get_mut(&e.message) {
                    m.refs += 1;
                }
                if let Some(old) = old.filter(|o| !matches!(o.state, EntryState::Released(_))) {
                    self.unref(old.message);
                }
            }
            Record::Sent {
                client,
                seq,
                packet_id,
            } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(*client)
                    .and_then(|s| s.entries.get_mut(seq))
                {
                    if !matches!(e.state, EntryState::Released(_)) {
                        e.state = EntryState::Sent(*packet_id);
                        e.stamp = stamp;
                    }
                }
            }
            Record::Released { client, seq } => {
                let Some(e) = self
                    .sessions
                    .get_mut(*client)
                    .and_then(|s| s.entries.get_mut(seq))
                else {
                    return;
                };
                let EntryState::Sent(packet_id) = e.state else {
                    return;
                };
                e.state = EntryState::Released(packet_id);
                e.stamp = stamp;
                let message = e.message;
                self.unref(message);
            }
            Record::Done { client, seq } => {
                let Some(e) = self
                    .sessions
                    .get_mut(*client)
                    .and_then(|s| s.entries.remove(seq))
                else {
                    return;
                };
                if !matches!(e.state, EntryState::Released(_)) {
                    self.unref(e.message);
                }
            }
            Record::IncomingQos2 { client, packet_id } => {
                if let Some(s) = self.sessions.get_mut(*client) {
                    s.incoming.insert(*packet_id);
                }
            }
            Record::IncomingReleased { client, packet_id } => {
                if let Some(s) = self.sessions.get_mut(*client) {
                    s.incoming.remove(packet_id);
                }
            }
            Record::SnapshotEnd { .. } => {}
        }
    }

    /// Forgets messages no queue entry needs (a message record whose entries never came).
    pub(crate) fn prune(&mut self) {
        self.messages.retain(|_, m| m.refs > 0);
        let mut index = self.index.lock();
        index.retain(|id, _| self.messages.contains_key(id));
    }

    /// Counts, for logs and tests: retained messages, stored messages, sessions, queue entries.
    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        let entries = self.sessions.values().map(|s| s.entries.len()).sum();
        (
            self.retained.len(),
            self.messages.len(),
            self.sessions.len(),
            entries,
        )
    }

    /// Writes the image as a snapshot's records: `emit` gets each record's bytes in an order
    /// that replays correctly (messages before the entries that need them, a session before
    /// its subscriptions and entries) and returns where it put them. `read` fetches a record's
    /// bytes from where they are now. Returns how many records were written and the new
    /// places of the messages, for [`Image::relocate`] once the snapshot is safely on disk.
    pub(crate) fn write_snapshot(
        &self,
        mut read: impl FnMut(Loc) -> std::io::Result<Vec<u8>>,
        mut emit: impl FnMut(&[u8]) -> std::io::Result<Loc>,
    ) -> std::io::Result<(u64, Relocation)> {
        let mut records = 0u64;
        let mut moved = Relocation::default();
        for loc in self.retained.values() {
            moved.retained.push(emit(&read(*loc)?)?);
            records += 1;
        }
        for m in self.messages.values() {
            moved.messages.push(emit(&read(m.loc)?)?);
            records += 1;
        }
        let mut scratch = Vec::new();
        for (client, s) in &self.sessions {
            emit(&s.record)?;
            records += 1;
            for sub in s.subscriptions.values() {
                emit(sub)?;
                records += 1;
            }
            // In the order their states changed, so stamps compare the same after a replay.
            for seq in &by_stamp(s) {
                let Some(e) = s.entries.get(seq) else {
                    continue;
                };
                moved.entries.push(emit(&read(e.loc)?)?);
                records += 1;
                let (packet_id, released) = match e.state {
                    EntryState::Queued => continue,
                    EntryState::Sent(id) => (id, false),
                    EntryState::Released(id) => (id, true),
                };
                scratch.clear();
                Record::Sent {
                    client,
                    seq: *seq,
                    packet_id,
                }
                .encode(&mut scratch);
                emit(&scratch)?;
                records += 1;
                if released {
                    scratch.clear();
                    Record::Released { client, seq: *seq }.encode(&mut scratch);
                    emit(&scratch)?;
                    records += 1;
                }
            }
            for packet_id in &s.incoming {
                scratch.clear();
                Record::IncomingQos2 {
                    client,
                    packet_id: *packet_id,
                }
                .encode(&mut scratch);
                emit(&scratch)?;
                records += 1;
            }
        }
        Ok((records, moved))
    }

    /// Where each record [`Image::write_snapshot`] copied went, for an image that has changed
    /// since (see [`Image::relocate_by`]). `self` is the image the snapshot was written from.
    pub(crate) fn relocation_map(&self, moved: Relocation) -> HashMap<(FileId, u64), Loc> {
        let mut map = HashMap::new();
        for (old, new) in self.retained.values().zip(moved.retained) {
            map.insert((old.file, old.offset), new);
        }
        for (old, new) in self.messages.values().zip(moved.messages) {
            map.insert((old.loc.file, old.loc.offset), new);
        }
        let mut entries = moved.entries.into_iter();
        for s in self.sessions.values() {
            for seq in by_stamp(s) {
                if let (Some(e), Some(new)) = (s.entries.get(&seq), entries.next()) {
                    map.insert((e.loc.file, e.loc.offset), new);
                }
            }
        }
        map
    }

    /// Points every record that sat in a file numbered below `before` at its copy in the
    /// snapshot, by `map`. Records written since sit in later files and keep their places.
    pub(crate) fn relocate_by(&mut self, map: &HashMap<(FileId, u64), Loc>, before: u64) {
        let moved = |loc: &mut Loc| {
            if loc.file.number < before {
                if let Some(new) = map.get(&(loc.file, loc.offset)) {
                    *loc = *new;
                }
            }
        };
        for loc in self.retained.values_mut() {
            moved(loc);
        }
        let mut index = self.index.lock();
        for (id, m) in self.messages.iter_mut() {
            moved(&mut m.loc);
            index.insert(*id, m.loc);
        }
        drop(index);
        for s in self.sessions.values_mut() {
            for e in s.entries.values_mut() {
                moved(&mut e.loc);
            }
        }
    }

    /// Decodes the image into what the broker rebuilds itself from. `bytes` gives a record's
    /// bytes by location (the files read at startup).
    pub(crate) fn recovered<'f>(&self, bytes: impl Fn(Loc) -> Option<&'f [u8]>) -> Recovered {
        let message = |loc: Loc| -> Option<OwnedMessage> {
            match Record::decode(bytes(loc)?).ok()?.0 {
                Record::Retain(m) | Record::Message { message: m, .. } => Some(m.into()),
                _ => None,
            }
        };
        let mut out = Recovered {
            retained: self.retained.values().filter_map(|l| message(*l)).collect(),
            messages: self
                .messages
                .iter()
                .filter_map(|(id, m)| Some((*id, message(m.loc)?)))
                .collect(),
            sessions: Vec::with_capacity(self.sessions.len()),
        };
        for s in self.sessions.values() {
            let Ok((Record::Session(data), _)) = Record::decode(&s.record) else {
                continue;
            };
            let mut session = RecoveredSession::from(&data);
            for raw in s.subscriptions.values() {
                if let Ok((
                    Record::Subscribe {
                        filter,
                        options,
                        id,
                        ..
                    },
                    _,
                )) = Record::decode(raw)
                {
                    session.subscriptions.push((filter.to_owned(), options, id));
                }
            }
            // The live claim on each packet id: the entry whose state changed last.
            let mut claims: HashMap<u16, (u64, u64)> = HashMap::new();
            for (seq, e) in &s.entries {
                if let EntryState::Sent(id) | EntryState::Released(id) = e.state {
                    let claim = claims.entry(id).or_insert((*seq, e.stamp));
                    if e.stamp > claim.1 {
                        *claim = (*seq, e.stamp);
                    }
                }
            }
            for (seq, e) in &s.entries {
                if let EntryState::Sent(id) | EntryState::Released(id) = e.state {
                    if claims.get(&id).is_some_and(|(live, _)| live != seq) {
                        session.finished.push(*seq);
                        continue;
                    }
                }
                let Some(raw) = bytes(e.loc) else {
                    continue;
                };
                if let Ok((Record::Enqueue(data), _)) = Record::decode(raw) {
                    session.entries.push(RecoveredEntry::new(&data, e.state));
                }
            }
            session.incoming_qos2 = s.incoming.iter().copied().collect();
            out.sessions.push(session);
        }
        out
    }
}

/// A stored message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// The topic name.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS it was published with.
    pub qos: u8,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// MQTT 5 properties, encoded.
    pub properties: Vec<u8>,
    /// The publishing client.
    pub publisher: String,
    /// Expiry, ms since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl From<MessageData<'_>> for OwnedMessage {
    fn from(m: MessageData<'_>) -> Self {
        OwnedMessage {
            topic: m.topic.to_owned(),
            payload: m.payload.to_vec(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.to_vec(),
            publisher: m.publisher.to_owned(),
            expires_at: m.expires_at,
        }
    }
}

/// A queue entry of a recovered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredEntry {
    /// Its number in the session.
    pub seq: u64,
    /// The message id (a key of [`Recovered::messages`]).
    pub message: u64,
    /// QoS for this subscriber.
    pub qos: u8,
    /// RETAIN of this copy.
    pub retain: bool,
    /// Subscription Identifiers.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription it came through.
    pub share: Option<String>,
    /// How far it went.
    pub state: EntryState,
}

impl RecoveredEntry {
    fn new(e: &EntryData<'_>, state: EntryState) -> Self {
        RecoveredEntry {
            seq: e.seq,
            message: e.message,
            qos: e.qos,
            retain: e.retain,
            subscription_ids: e.subscription_ids.to_vec(),
            share: e.share.map(str::to_owned),
            state,
        }
    }
}

/// A recovered persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// The Client Identifier.
    pub client: String,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// Protocol level of the last connection.
    pub version: u8,
    /// User name of the last connection.
    pub username: Option<String>,
    /// When the last connection ended (ms since the epoch); `None`: it was connected.
    pub disconnected_at: Option<u64>,
    /// The will still to be published and its delay in seconds.
    pub will: Option<(OwnedMessage, u32)>,
    /// Filter, SUBSCRIBE options byte, Subscription Identifier.
    pub subscriptions: Vec<(String, u8, Option<u32>)>,
    /// Queued and in-flight messages, in order.
    pub entries: Vec<RecoveredEntry>,
    /// QoS 2 packet ids received and not released.
    pub incoming_qos2: Vec<u16>,
    /// Entries whose packet id a later entry took: they were finished and their Done record
    /// lost in a crash. The broker records them as done.
    pub finished: Vec<u64>,
}

impl From<&SessionData<'_>> for RecoveredSession {
    fn from(s: &SessionData<'_>) -> Self {
        RecoveredSession {
            client: s.client.to_owned(),
            expiry_interval: s.expiry_interval,
            version: s.version,
            username: s.username.map(str::to_owned),
            disconnected_at: s.disconnected_at,
            will: s.will.clone().map(|(m, d)| (m.into(), d)),
            subscriptions: Vec::new(),
            entries: Vec::new(),
            incoming_qos2: Vec::new(),
            finished: Vec::new(),
        }
    }
}

/// Everything the store held at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages.
    pub retained: Vec<OwnedMessage>,
    /// Messages queue entries refer to, by id.
    pub messages: HashMap<u64, OwnedMessage>,
    /// Persistent sessions.
    pub sessions: Vec<RecoveredSession>,
}
