//! Subscription tree: maps topic filters to subscribers and answers "who receives a PUBLISH on
//! this topic?".
//!
//! Owns the wildcard walk (`+`, `#`, `$`-topics) and shared-subscription groups (one member of
//! each matching group receives each message, in turn). Knows nothing about queues or sockets:
//! a match is a session handle and the options it subscribed with.

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

#[derive(Default)]
struct Group {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: Map<Box<str>, Node>,
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
        self.matches_with(topic, true)
    }

    /// [`SubscriptionTree::matches`], with or without the shared groups' members.
    pub fn matches_with(&self, topic: &str, groups: bool) -> Vec<Subscriber> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        // [MQTT-4.7.2-1] wildcards in the first level do not match `$` topics.
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, groups, &mut out);
        out
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
            }
            removed
        }
    }
}

fn collect(node: &Node, groups: bool, out: &mut Vec<Subscriber>) {
    out.extend(node.subscribers.values().cloned());
    if !groups {
        return;
    }
    for group in node.groups.values() {
        if let Some(member) = pick(group) {
            out.push(member);
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

fn walk(
    node: &Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    groups: bool,
    out: &mut Vec<Subscriber>,
) {
    let wild_ok = !(depth == 0 && dollar);
    if let (true, Some(hash)) = (wild_ok, node.children.get("#")) {
        // `#` matches the parent level and everything under it [4.7.1.2].
        collect(hash, groups, out);
    }
    let Some((level, rest)) = levels.split_first() else {
        collect(node, groups, out);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, rest, depth + 1, dollar, groups, out);
    }
    if let (true, Some(plus)) = (wild_ok, node.children.get("+")) {
        walk(plus, rest, depth + 1, dollar, groups, out);
    }
}
