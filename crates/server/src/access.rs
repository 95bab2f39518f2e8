//! Users and permissions, from the users file (`users.toml` in the data directory): who may
//! connect (argon2id password hashes, never plaintext), and what each may publish, subscribe
//! to and receive.
//!
//! Owns the file format, the rule language (allow/deny, publish/subscribe/both, topic
//! filters with `%u` and `%c`), failed-login bookkeeping per address, and reloading. The
//! broker asks through [`tern_broker::AccessControl`].

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use tern_broker::{AccessControl, Credentials, Identity};
use tern_proto::ReasonCode;
use tracing::{info, warn};

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH (and wills).
    Publish,
    /// SUBSCRIBE and receiving messages.
    Subscribe,
    /// Both.
    Both,
}

impl Action {
    fn covers(self, other: Action) -> bool {
        self == Action::Both || self == other
    }
}

/// One rule: `{ allow = "both", topic = "sensors/%u/#" }` or `{ deny = "subscribe", topic = "secret/#" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Allows this action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Action>,
    /// Denies this action (deny rules win over allow rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Action>,
    /// A topic filter; `%u` is replaced by the user name and `%c` by the client id.
    pub topic: String,
}

/// A user: name, argon2id hash, rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user name clients present.
    pub name: String,
    /// The password's argon2id hash in PHC form.
    pub password: String,
    /// What the user may do.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Rules for one client identifier, whoever connects with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRules {
    /// The client identifier.
    pub id: String,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// The users file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Rules for everyone (typically deny rules: topics no one may use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Rules for anonymous clients, where anonymous access is allowed while users exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_rules: Vec<Rule>,
    /// Users.
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Per-client-id rules.
    #[serde(default, rename = "client", skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientRules>,
}

impl UsersFile {
    /// No users and no rules: everyone may do everything.
    fn is_unrestricted(&self) -> bool {
        self.users.is_empty()
            && self.rules.is_empty()
            && self.anonymous_rules.is_empty()
            && self.clients.is_empty()
    }

    /// Reads the file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<UsersFile, String> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UsersFile::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let file: UsersFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for rule in file.all_rules() {
            if rule.allow.is_some() == rule.deny.is_some() {
                return Err(format!(
                    "{}: rule on `{}` needs exactly one of `allow` or `deny`",
                    path.display(),
                    rule.topic
                ));
            }
        }
        Ok(file)
    }

    fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .chain(&self.anonymous_rules)
            .chain(self.users.iter().flat_map(|u| &u.rules))
            .chain(self.clients.iter().flat_map(|c| &c.rules))
    }

    /// Writes the file, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        fs::write(
            &tmp,
            format!("# tern users and permissions: see docs/access.md\n{text}"),
        )
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
        }
        fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds a user or replaces its password, keeping its rules.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), String> {
        let hash = hash_password(password)?;
        match self.users.iter_mut().find(|u| u.name == name) {
            Some(u) => u.password = hash,
            None => self.users.push(User {
                name: name.to_owned(),
                password: hash,
                rules: Vec::new(),
            }),
        }
        Ok(())
    }

    /// The rules that apply to a client.
    fn rules_for<'a>(&'a self, client_id: &str, username: Option<&str>) -> Vec<&'a Rule> {
        let mut out: Vec<&Rule> = self.rules.iter().collect();
        match username.and_then(|u| self.user(u)) {
            Some(user) => out.extend(&user.rules),
            None if username.is_none() => out.extend(&self.anonymous_rules),
            None => {}
        }
        out.extend(
            self.clients
                .iter()
                .filter(|c| c.id == client_id)
                .flat_map(|c| &c.rules),
        );
        out
    }

    /// Decides `action` on `topic` (a filter for subscribe). With no users, everything not
    /// denied is allowed; with users, only what a rule allows.
    fn decide(
        &self,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        topic: &str,
        test: Test,
    ) -> bool {
        let rules = self.rules_for(client_id, username);
        let applies = |r: &&Rule, effect: Option<Action>| {
            effect.is_some_and(|a| a.covers(action))
                && substitute(&r.topic, client_id, username).is_some_and(|f| test.check(&f, topic))
        };
        if rules.iter().any(|r| applies(r, r.deny)) {
            return false;
        }
        self.users.is_empty() || rules.iter().any(|r| applies(r, r.allow))
    }
}

/// How a rule's filter is compared with what the client names.
#[derive(Clone, Copy)]
enum Test {
    /// The rule matches this topic name.
    Matches,
    /// The rule matches every topic this filter can match.
    Covers,
}

impl Test {
    fn check(self, rule: &str, what: &str) -> bool {
        match self {
            Test::Matches => matches_topic(rule, what),
            Test::Covers => {
                // A shared subscription is judged by the filter it shares.
                let what = strip_share(what);
                covers(rule, what)
            }
        }
    }
}

fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// `%u` and `%c` replaced; `None` if the value could change the filter's meaning (a wildcard or
/// a level separator in a name) or is missing.
fn substitute(filter: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '/']);
    let mut out = filter.to_owned();
    if out.contains("%u") {
        let u = username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    Some(out)
}

fn matches_topic(filter: &str, topic: &str) -> bool {
    match (
        tern_proto::TopicFilter::new(filter),
        tern_proto::TopicName::new(topic),
    ) {
        (Ok(f), Ok(t)) => f.matches(t),
        _ => false,
    }
}

/// Whether every topic `filter` can match is matched by `rule`.
fn covers(rule: &str, filter: &str) -> bool {
    // [MQTT-4.7.2-1]: a rule starting with a wildcard does not reach `$` topics.
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let r: Vec<&str> = rule.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    let mut i = 0;
    loop {
        match (r.get(i), f.get(i)) {
            (Some(&"#"), _) => return true,
            (None, None) => return true,
            (Some(&"+"), Some(&fl)) if fl != "#" => {}
            (Some(&rl), Some(&fl)) if rl == fl && rl != "+" && rl != "#" => {}
            _ => return false,
        }
        i += 1;
    }
}

/// An argon2id hash of `password` with a fresh salt, in PHC form.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub(crate) fn verify_password(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

/// Failed logins from one address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// How long failures are remembered.
const FAILURE_MEMORY: Duration = Duration::from_secs(300);

/// The users file as the broker uses it: reloadable, with failed-login bookkeeping.
pub struct FileAccess {
    path: PathBuf,
    current: RwLock<(Arc<UsersFile>, Option<SystemTime>)>,
    /// Whether the current file has no users and no rules, so everything is allowed: the
    /// publish path asks for every message and every subscriber, and then need not look.
    unrestricted: AtomicBool,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Held while the file is changed through [`FileAccess::edit`], so two edits do not race.
    editing: Mutex<()>,
    /// A hash to verify against for unknown users, so a wrong name costs as much as a wrong
    /// password and timing does not tell which users exist.
    decoy: String,
}

impl FileAccess {
    /// Loads the users file at `path` (missing: no users).
    pub fn open(path: &Path) -> Result<Arc<FileAccess>, String> {
        let file = UsersFile::load(path)?;
        let stamp = modified(path);
        Ok(Arc::new(FileAccess {
            path: path.to_owned(),
            unrestricted: AtomicBool::new(file.is_unrestricted()),
            current: RwLock::new((Arc::new(file), stamp)),
            failures: Mutex::new(HashMap::new()),
            editing: Mutex::new(()),
            decoy: hash_password("decoy")?,
        }))
    }

    fn file(&self) -> Arc<UsersFile> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The file as loaded now.
    pub fn users(&self) -> Arc<UsersFile> {
        self.file()
    }

    /// Changes the file on disk with `change` (applied to what the disk holds now, so hand
    /// edits are kept), then loads it: new rules apply to connected clients at once.
    pub fn edit<T>(
        &self,
        change: impl FnOnce(&mut UsersFile) -> Result<T, String>,
    ) -> Result<T, String> {
        let _editing = self.editing.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = UsersFile::load(&self.path)?;
        let out = change(&mut file)?;
        file.save(&self.path)?;
        self.reload();
        Ok(out)
    }

    /// Whether any user exists.
    pub fn has_users(&self) -> bool {
        !self.file().users.is_empty()
    }

    /// Reads the file again; existing sessions get the new rules on their next operation. A
    /// file that does not parse leaves the old rules in place.
    pub fn reload(&self) {
        match UsersFile::load(&self.path) {
            Ok(file) => {
                let users = file.users.len();
                let unrestricted = file.is_unrestricted();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (Arc::new(file), modified(&self.path));
                self.unrestricted.store(unrestricted, Ordering::Release);
                info!(file = %self.path.display(), users, "users and permissions reloaded");
            }
            Err(e) => warn!(error = %e, "users file not reloaded; keeping the current rules"),
        }
    }

    /// Reloads if the file changed since the last load.
    pub fn reload_if_changed(&self) {
        let seen = self.current.read().unwrap_or_else(|p| p.into_inner()).1;
        if modified(&self.path) != seen {
            self.reload();
        }
    }

    /// How long to hold a login attempt from `ip` before answering it: nothing for an address
    /// without recent failures, then doubling from 250 ms per failure up to 10 s. The wait is
    /// the attacker's: its connection waits, the broker does not.
    pub fn login_delay(&self, ip: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some(f) if f.last.elapsed() < FAILURE_MEMORY && f.count > 0 => {
                Duration::from_millis(250u64.saturating_mul(1 << f.count.min(6)))
                    .min(Duration::from_secs(10))
            }
            _ => Duration::ZERO,
        }
    }

    /// Records the outcome of a login from `ip`.
    pub fn record_login(&self, ip: IpAddr, ok: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(&ip);
            return;
        }
        let now = Instant::now();
        let entry = failures.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if entry.last.elapsed() >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        // Forget old addresses so the map stays small under a spread-out attack.
        if failures.len() > 10_000 {
            failures.retain(|_, f| f.last.elapsed() < FAILURE_MEMORY);
        }
    }
}

/// The broker's own bridges act as `$bridge:<name>`, a name no client can authenticate as
/// (names starting with `$` are refused); what they forward is the configuration's choice.
fn is_bridge(username: Option<&str>) -> bool {
    username.is_some_and(|u| u.starts_with("$bridge:"))
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl AccessControl for FileAccess {
    fn authenticate(&self, c: &Credentials) -> Result<Identity, ReasonCode> {
        let file = self.file();
        let has_users = !file.users.is_empty();
        if let Some(name) = c.certificate_name.as_ref().filter(|n| n.starts_with('$')) {
            tracing::info!(name = %name, "certificate name starting with $ refused");
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        if let Some(name) = &c.certificate_name {
            // The certificate vouches for the name; with users, it must be one of them.
            return if !has_users || file.user(name).is_some() {
                Ok(Identity {
                    username: Some(Arc::from(name.as_str())),
                })
            } else {
                Err(ReasonCode::NOT_AUTHORIZED)
            };
        }
        match &c.username {
            // Names starting with `$` are the broker's own (its bridges act as `$bridge:...`).
            Some(name) if name.starts_with('$') => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            Some(name) if has_users => {
                let password = c.password.as_deref().unwrap_or_default();
                let hash = file
                    .user(name)
                    .map_or(self.decoy.as_str(), |u| u.password.as_str());
                let ok = verify_password(password, hash) && file.user(name).is_some();
                if ok {
                    Ok(Identity {
                        username: Some(Arc::from(name.as_str())),
                    })
                } else {
                    Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                }
            }
            _ => {
                // Anonymous: off whenever users exist and on non-loopback listeners, unless
                // the configuration says otherwise.
                let allowed = c.allow_anonymous.unwrap_or(c.loopback && !has_users);
                if allowed {
                    Ok(Identity { username: None })
                } else {
                    Err(ReasonCode::NOT_AUTHORIZED)
                }
            }
        }
    }

    fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.unrestricted.load(Ordering::Acquire)
            || is_bridge(username)
            || self
                .file()
                .decide(client_id, username, Action::Publish, topic, Test::Matches)
    }

    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        is_bridge(username)
            || self
                .file()
                .decide(client_id, username, Action::Subscribe, filter, Test::Covers)
    }

    fn may_receive(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.unrestricted.load(Ordering::Acquire)
            || is_bridge(username)
            || self
                .file()
                .decide(client_id, username, Action::Subscribe, topic, Test::Matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: Option<Action>, deny: Option<Action>, topic: &str) -> Rule {
        Rule {
            allow,
            deny,
            topic: topic.into(),
        }
    }

    #[test]
    fn covering() {
        let table = [
            ("#", "a/b", true),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
        ];
        for (r, f, want) in table {
            assert_eq!(covers(r, f), want, "{r} covers {f}");
        }
    }

    #[test]
    fn rules_with_substitution_and_deny() {
        let file = UsersFile {
            rules: vec![rule(None, Some(Action::Subscribe), "secret/#")],
            users: vec![User {
                name: "alice".into(),
                password: String::new(),
                rules: vec![
                    rule(Some(Action::Both), None, "home/%u/#"),
                    rule(Some(Action::Subscribe), None, "#"),
                ],
            }],
            clients: vec![ClientRules {
                id: "pico".into(),
                rules: vec![rule(Some(Action::Publish), None, "dev/%c")],
            }],
            ..UsersFile::default()
        };
        let d = |c: &str, u: Option<&str>, a, t: &str, test| file.decide(c, u, a, t, test);
        assert!(d(
            "x",
            Some("alice"),
            Action::Publish,
            "home/alice/t",
            Test::Matches
        ));
        assert!(!d(
            "x",
            Some("alice"),
            Action::Publish,
            "home/bob/t",
            Test::Matches
        ));
        assert!(d("x", Some("alice"), Action::Subscribe, "#", Test::Covers));
        assert!(!d(
            "x",
            Some("alice"),
            Action::Subscribe,
            "secret/x",
            Test::Covers
        ));
        assert!(!d(
            "x",
            Some("alice"),
            Action::Subscribe,
            "secret/x",
            Test::Matches
        ));
        assert!(d(
            "pico",
            Some("alice"),
            Action::Publish,
            "dev/pico",
            Test::Matches
        ));
        assert!(!d(
            "other",
            Some("alice"),
            Action::Publish,
            "dev/other",
            Test::Matches
        ));
        // Default deny once users exist; %u never matches for a wildcard name.
        assert!(!d(
            "x",
            None,
            Action::Publish,
            "home/alice/t",
            Test::Matches
        ));
        assert!(!d(
            "x",
            Some("a+b"),
            Action::Publish,
            "home/a+b/t",
            Test::Matches
        ));
        // $SYS is not reached by `#`.
        assert!(!d(
            "x",
            Some("alice"),
            Action::Subscribe,
            "$SYS/broker/uptime",
            Test::Matches
        ));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(b"s3cret", &hash));
        assert!(!verify_password(b"wrong", &hash));
    }
}
