//! Topic Names, Topic Filters, and which names a filter matches (section 4.7).
//!
//! Owns the wildcard rules (`+`, `#`), the `$`-topic rule and the `$share/` form of shared
//! subscriptions. Both types are checked once, at construction; holders need not check again.

use crate::error::DecodeError;

/// A Topic Name: the topic a PUBLISH is sent to. Non-empty, no wildcards, no U+0000, at most
/// 65,535 bytes.
///
/// The one exception, [`TopicName::EMPTY`], appears only in an MQTT 5 PUBLISH that names its
/// topic with a Topic Alias instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName<'a>(&'a str);

impl<'a> TopicName<'a> {
    /// The empty name of a PUBLISH that carries a Topic Alias [MQTT-3.3.2-1].
    pub const EMPTY: TopicName<'static> = TopicName("");

    /// Checks `s` is a Topic Name: non-empty [MQTT-4.7.3-1], free of wildcards [MQTT-3.3.2-2],
    /// free of U+0000 [MQTT-4.7.3-2] and short enough for its length prefix [MQTT-4.7.3-3].
    pub fn new(s: &'a str) -> Result<Self, DecodeError> {
        if s.is_empty()
            || s.len() > usize::from(u16::MAX)
            || s.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
        {
            return Err(DecodeError::InvalidTopicName);
        }
        Ok(TopicName(s))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether this is the empty name of an aliased PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with `$` (server-specific topics such as `$SYS/`),
    /// which filters starting with a wildcard do not match [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl core::fmt::Display for TopicName<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

/// A Topic Filter: what a SUBSCRIBE or UNSUBSCRIBE names. Non-empty, `#` only as a whole last
/// level, `+` only as a whole level, no U+0000. `$share/{ShareName}/{filter}` is a shared
/// subscription whose ShareName is non-empty and wildcard-free and whose filter is itself valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter<'a>(&'a str);

impl<'a> TopicFilter<'a> {
    /// Checks `s` is a Topic Filter [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1]
    /// [MQTT-4.7.3-2], and a well-formed shared subscription if it starts `$share/`
    /// [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    pub fn new(s: &'a str) -> Result<Self, DecodeError> {
        if s.len() > usize::from(u16::MAX) {
            return Err(DecodeError::InvalidTopicFilter);
        }
        let filter = match s.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest
                    .split_once('/')
                    .ok_or(DecodeError::InvalidTopicFilter)?;
                if group.is_empty() || group.bytes().any(|b| matches!(b, b'+' | b'#' | 0)) {
                    return Err(DecodeError::InvalidTopicFilter);
                }
                filter
            }
            None => s,
        };
        check_filter(filter)?;
        Ok(TopicFilter(s))
    }

    /// The filter as a string, `$share/` prefix included.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// For a shared subscription, its ShareName and the filter it shares.
    pub fn shared(&self) -> Option<(&'a str, TopicFilter<'a>)> {
        let rest = self.0.strip_prefix("$share/")?;
        let (group, filter) = rest.split_once('/')?;
        Some((group, TopicFilter(filter)))
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| matches!(b, b'+' | b'#'))
    }

    /// Whether this filter matches `topic` (section 4.7). A shared filter matches as the filter
    /// it shares.
    pub fn matches(&self, topic: TopicName<'_>) -> bool {
        match self.shared() {
            Some((_, inner)) => matches(inner.0, topic.0),
            None => matches(self.0, topic.0),
        }
    }
}

impl core::fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

fn check_filter(s: &str) -> Result<(), DecodeError> {
    if s.is_empty() || s.as_bytes().contains(&0) {
        return Err(DecodeError::InvalidTopicFilter);
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return Err(DecodeError::InvalidTopicFilter);
        }
    }
    Ok(())
}

/// Whether the (valid, unshared) filter `filter` matches the topic name `topic`.
fn matches(filter: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1] a leading wildcard does not match a topic starting with `$`.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches its parent level and any number of children [4.7.1.2].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName<'_> {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn topic_names() {
        // [MQTT-4.7.3-1] non-empty; [MQTT-3.3.2-2] no wildcards; [MQTT-4.7.3-2] no U+0000.
        for bad in ["", "a/+", "#", "a/#/b", "a\0b", "sport+"] {
            assert_eq!(
                TopicName::new(bad),
                Err(DecodeError::InvalidTopicName),
                "{bad:?}"
            );
        }
        for good in ["/", "a", "a/b", "$SYS/x", " ", "//", "caf\u{e9}"] {
            assert!(TopicName::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn topic_filters() {
        // [MQTT-4.7.1-2] `#` last and alone; [MQTT-4.7.1-3] `+` alone in its level.
        for bad in [
            "",
            "a/#/b",
            "a#",
            "sport/tennis#",
            "a+",
            "+a/b",
            "a/b\0",
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g#/a",
            "$share/g/",
            "$share/g/a/#/b",
        ] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(DecodeError::InvalidTopicFilter),
                "{bad:?}"
            );
        }
        for good in [
            "#",
            "+",
            "+/+",
            "a/+/b",
            "a/#",
            "/",
            "$share/g/a/#",
            "$share/g/+",
        ] {
            assert!(TopicFilter::new(good).is_ok(), "{good:?}");
        }
        let shared = TopicFilter::new("$share/grp/a/+").unwrap();
        assert_eq!(shared.shared(), Some(("grp", TopicFilter("a/+"))));
        assert!(shared.matches(name("a/b")));
    }

    #[test]
    fn matching() {
        // The examples of section 4.7.1.
        let table = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b/c", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            // [MQTT-4.7.2-1] `$` topics and leading wildcards.
            ("#", "$SYS/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ];
        for (filter, topic, expected) in table {
            let f = TopicFilter::new(filter).unwrap();
            assert_eq!(f.matches(name(topic)), expected, "{filter} vs {topic}");
        }
    }
}
