//! Subscription tree: maps topic filters to subscribers and answers "who receives a PUBLISH on
//! this topic?".
//!
//! Owns the wildcard walk (`+`, `#`, `$`-topics) and shared-subscription groups (one member of
//! each matching group receives each message, in turn). Knows nothing about queues or sockets:
//! a match is a session handle and the options it subscribed with.

use std::cell::Cell;
use std::collections::HashMap;

/// The tree's maps: every PUBLISH hashes each level of its topic here, so the hasher is
/// foldhash (several times faster than std's SipHash on short keys) with a random seed per
/// map, which keeps clients from choosing topics that collide.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tern_proto::{SubscriptionOptions, TopicFilter};

use crate::session::Session;

/// One subscription as the tree keeps it.
#[derive(Clone)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// The options it subscribed with.
    pub options: SubscriptionOptions,
    /// Its Subscription Identifier (MQTT 5).
    pub id: Option<u32>,
    /// For a member of a shared subscription, the whole `$share/...` filter.
    pub share: Option<Arc<str>>,
    /// The user name the subscriber authenticated with, for per-message access checks.
    pub username: Option<Arc<str>>,
}

/// The subscribers a topic reaches.
pub struct Matches {
    /// One entry per matching subscription (one member per matching shared group).
    pub subscribers: Vec<Subscriber>,
    /// Whether no session can be named twice: every subscriber came from one filter's
    /// subscribers (one entry per client), so delivery need not merge overlapping
    /// subscriptions. True for most publications, and for every 1-to-n fan-out.
    pub distinct: bool,
}

#[derive(Default)]
struct Group {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: Map<Box<str>, Node>,
    /// Whether `children` has a `+` and a `#` child: most nodes have neither, and the walk
    /// then spares hashing both at every level of every PUBLISH.
    plus: bool,
    hash: bool,
    subscribers: Map<Arc<str>, Subscriber>,
    groups: Map<Box<str>, Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

/// Every subscription of every session.
#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
    /// How many sessions subscribe with each filter (shared ones whole, `$share/g/f`).
    filters: Map<Box<str>, usize>,
    /// Told when a filter gains its first or loses its last subscription (cluster mode).
    pub(crate) interest: Option<crate::broker::InterestHook>,
}

impl SubscriptionTree {
    /// Adds or replaces `client`'s subscription to `filter`; true if it is new.
    pub fn insert(&mut self, filter: TopicFilter<'_>, sub: Subscriber) -> bool {
        let (group, inner) = match filter.shared() {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let mut node = &mut self.root;
        for level in inner.as_str().split('/') {
            node.plus |= level == "+";
            node.hash |= level == "#";
            node = node.children.entry(level.into()).or_default();
        }
        let client = sub.session.client_id.clone();
        let new = match group {
            None => node.subscribers.insert(client, sub).is_none(),
            Some(g) => {
                let group = node.groups.entry(g.into()).or_default();
                match group
                    .members
                    .iter_mut()
                    .find(|m| m.session.client_id == client)
                {
                    Some(m) => {
                        *m = sub;
                        false
                    }
                    None => {
                        group.members.push(sub);
                        true
                    }
                }
            }
        };
        if new {
            self.count += 1;
            let n = self.filters.entry(filter.as_str().into()).or_default();
            *n += 1;
            if let (1, Some(hook)) = (*n, &self.interest) {
                hook(filter.as_str(), true);
            }
        }
        new
    }

    /// Removes `client`'s subscription to `filter`; true if there was one.
    pub fn remove(&mut self, filter: &str, client: &str) -> bool {
        let Ok(filter) = TopicFilter::new(filter) else {
            return false;
        };
        let (group, inner) = match filter.shared() {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let levels: Vec<&str> = inner.as_str().split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, client);
        if removed {
            self.count -= 1;
            if let Some(n) = self.filters.get_mut(filter.as_str()) {
                *n -= 1;
                if *n == 0 {
                    self.filters.remove(filter.as_str());
                    if let Some(hook) = &self.interest {
                        hook(filter.as_str(), false);
                    }
                }
            }
        }
        removed
    }

    /// Every filter subscribed now, once each.
    pub fn filters(&self) -> Vec<String> {
        self.filters.keys().map(|f| f.to_string()).collect()
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Another connected member of the shared subscription `filter` than `except`, in turn.
    pub fn shared_member(&self, filter: &str, except: &str) -> Option<Subscriber> {
        let filter = TopicFilter::new(filter).ok()?;
        let (group, inner) = filter.shared()?;
        let mut node = &self.root;
        for level in inner.as_str().split('/') {
            node = node.children.get(level)?;
        }
        let group = node.groups.get(group)?;
        let n = group.members.len();
        let start = group.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &group.members[(start + i) % n])
            .find(|m| &*m.session.client_id != except && m.session.is_connected())
            .cloned()
    }

    /// The subscribers `topic` reaches: every plain match, and one member of each matching
    /// shared group (in turn, preferring connected members).
    pub fn matches(&self, topic: &str) -> Vec<Subscriber> {
        self.matches_with(topic, true).subscribers
    }

    /// [`SubscriptionTree::matches`], with or without the shared groups' members.
    pub fn matches_with(&self, topic: &str, groups: bool) -> Matches {
        let mut found = Found {
            subscribers: MATCHES.take(),
            sources: 0,
        };
        // [MQTT-4.7.2-1] wildcards in the first level do not match `$` topics.
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), 0, dollar, groups, &mut found);
        Matches {
            subscribers: found.subscribers,
            distinct: found.sources <= 1,
        }
    }

    /// The next member of the shared subscription `filter` (`$share/<group>/<filter>`) in
    /// turn, preferring connected members.
    pub fn group_member(&self, filter: &str) -> Option<Subscriber> {
        let filter = TopicFilter::new(filter).ok()?;
        let (group, inner) = filter.shared()?;
        let mut node = &self.root;
        for level in inner.as_str().split('/') {
            node = node.children.get(level)?;
        }
        pick(node.groups.get(group)?)
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, client: &str) -> bool {
    match levels.split_first() {
        None => match group {
            None => node.subscribers.remove(client).is_some(),
            Some(g) => {
                let Some(grp) = node.groups.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|m| &*m.session.client_id != client);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    node.groups.remove(g);
                }
                removed
            }
        },
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove_at(child, rest, group, client);
            if child.is_empty() {
                node.children.remove(*first);
                node.plus &= *first != "+";
                node.hash &= *first != "#";
            }
            removed
        }
    }
}

thread_local! {
    /// The matches of a walk (see `scratch`; given back by [`Matches::recycle`]).
    static MATCHES: Cell<Vec<Subscriber>> = const { Cell::new(Vec::new()) };
}

impl Matches {
    /// Gives the list's room back for the next walk on this thread.
    pub(crate) fn recycle(subscribers: Vec<Subscriber>) {
        crate::scratch::give_back(&MATCHES, subscribers);
    }
}

/// What a walk found so far.
struct Found {
    subscribers: Vec<Subscriber>,
    /// How many filters (and shared groups) gave subscribers.
    sources: usize,
}

fn collect(node: &Node, groups: bool, found: &mut Found) {
    if !node.subscribers.is_empty() {
        found.sources += 1;
        found.subscribers.extend(node.subscribers.values().cloned());
    }
    if !groups {
        return;
    }
    for group in node.groups.values() {
        if let Some(member) = pick(group) {
            found.sources += 1;
            found.subscribers.push(member);
        }
    }
}

/// The next member of a shared group in turn, skipping members that are offline while any
/// member is online.
fn pick(group: &Group) -> Option<Subscriber> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &group.members[(start + i) % n])
        .find(|m| m.session.is_connected())
        .or_else(|| group.members.get(start % n))
        .cloned()
}

/// Collects the subscribers under `node` that match `levels`, the rest of the topic from
/// this node down (`None` once every level is matched), split as the walk goes rather than
/// into a list per PUBLISH.
fn walk(
    node: &Node,
    levels: Option<&str>,
    depth: usize,
    dollar: bool,
    groups: bool,
    out: &mut Found,
) {
    let wild_ok = !(depth == 0 && dollar);
    if wild_ok && node.hash {
        if let Some(hash) = node.children.get("#") {
            // `#` matches the parent level and everything under it [4.7.1.2].
            collect(hash, groups, out);
        }
    }
    let Some(levels) = levels else {
        collect(node, groups, out);
        return;
    };
    if node.children.is_empty() {
        return;
    }
    // A byte search: `/` is ASCII, never part of another UTF-8 character, and topics are
    // short, where `split_once`'s general searcher costs several times more.
    let (level, rest) = match levels.bytes().position(|b| b == b'/') {
        Some(at) => (&levels[..at], Some(&levels[at + 1..])),
        None => (levels, None),
    };
    if let Some(child) = node.children.get(level) {
        walk(child, rest, depth + 1, dollar, groups, out);
    }
    if wild_ok && node.plus {
        if let Some(plus) = node.children.get("+") {
            walk(plus, rest, depth + 1, dollar, groups, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tern_proto::{ProtocolVersion, QoS, TopicName};

    fn subscriber(client: &str) -> Subscriber {
        Subscriber {
            session: Arc::new(Session::new(Arc::from(client), ProtocolVersion::V5)),
            options: SubscriptionOptions::new(QoS::AtMostOnce),
            id: None,
            share: None,
            username: None,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$s"]).prop_map(String::from)
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "+", "$s"]).prop_map(String::from);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".into());
            }
            levels.join("/")
        })
    }

    proptest! {
        /// The walk agrees with the filter-by-filter definition of matching (section 4.7,
        /// [MQTT-4.7.2-1] for `$` topics), also after subscriptions are removed, which
        /// exercises the `+`/`#` child flags.
        #[test]
        fn the_walk_finds_exactly_the_matching_filters(
            filters in prop::collection::vec(filter(), 1..12),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            topics in prop::collection::vec(prop::collection::vec(level(), 1..5), 1..8),
        ) {
            let mut tree = SubscriptionTree::default();
            let mut live: Vec<(String, String)> = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                let Ok(filter) = TopicFilter::new(f) else {
                    continue;
                };
                let client = format!("c{i}");
                tree.insert(filter, subscriber(&client));
                live.push((f.clone(), client));
            }
            for r in removed {
                if live.is_empty() {
                    break;
                }
                let (f, client) = live.remove(r.index(live.len()));
                prop_assert!(tree.remove(&f, &client));
            }
            for topic in topics {
                let topic = topic.join("/");
                let Ok(name) = TopicName::new(&topic) else {
                    continue;
                };
                let mut expected: Vec<String> = live
                    .iter()
                    .filter(|(f, _)| TopicFilter::new(f).unwrap().matches(name))
                    .map(|(_, c)| c.clone())
                    .collect();
                let matches = tree.matches_with(&topic, true);
                let mut found: Vec<String> = matches
                    .subscribers
                    .iter()
                    .map(|s| s.session.client_id.to_string())
                    .collect();
                expected.sort();
                found.sort();
                prop_assert_eq!(&found, &expected, "topic {:?}", topic);
                // Clients here subscribe once each, so a match set from several filters has
                // distinct sessions too; what must hold is that `distinct` is never claimed
                // for several filters' subscribers.
                let filters_matched = live
                    .iter()
                    .filter(|(f, _)| TopicFilter::new(f).unwrap().matches(name))
                    .map(|(f, _)| f.as_str())
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                prop_assert_eq!(matches.distinct, filters_matched <= 1);
            }
        }
    }
}
