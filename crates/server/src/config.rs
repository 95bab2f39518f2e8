//! The broker's configuration file (TOML) and its defaults. Every key is documented in
//! `docs/configuration.md`; a test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_broker::Limits;
use tern_proto::QoS;

/// The whole configuration. Every field has a default, so no file is needed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log verbosity: error, warn, info, debug or trace.
    pub log_level: String,
    /// Where persistent state lives.
    pub data_dir: PathBuf,
    /// The users and permissions file; default `users.toml` in `data_dir`.
    pub users_file: Option<PathBuf>,
    /// Whether clients without a user name may connect. Unset: only on loopback listeners,
    /// and only while no user exists.
    pub allow_anonymous: Option<bool>,
    /// TCP listeners.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Protocol and resource limits.
    pub limits: LimitsConfig,
    /// `$SYS` topics.
    pub sys: SysConfig,
    /// What is kept on disk, and when it is durable.
    pub persistence: PersistenceConfig,
    /// The web console, admin API and `/metrics`.
    pub console: ConsoleConfig,
    /// Certificates obtained automatically.
    pub tls: TlsConfig,
    /// Connections to other brokers that topics are forwarded over.
    #[serde(rename = "bridge", skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
    /// Cluster mode: this broker is one node of several sharing messages over NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the NATS servers (with JetStream) the nodes share, and this node's name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (logs, `$SYS`).
    pub node: String,
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); any one of them is enough to
    /// join, the client learns the others and moves between them.
    pub nats_urls: Vec<String>,
    /// User name for NATS (with `password`).
    pub user: Option<String>,
    /// Password for NATS.
    pub password: Option<String>,
    /// Token for NATS, instead of user and password.
    pub token: Option<String>,
    /// PEM CA certificates to trust for NATS over TLS (and require TLS).
    pub ca_file: Option<PathBuf>,
    /// First token of every subject, and the bucket names' prefix; clusters sharing one NATS
    /// system need different prefixes.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// Copies JetStream keeps of the retained bucket (1 to 5, at most the NATS servers).
    #[serde(default = "default_cluster_replicas")]
    pub replicas: usize,
    /// Seconds the cluster's message stream keeps each message (how long a session whose node
    /// died can be rebuilt with what it missed).
    #[serde(default = "default_history_seconds")]
    pub history_seconds: u64,
    /// Bytes the cluster's message stream keeps at most (the oldest go first).
    #[serde(default = "default_history_bytes")]
    pub history_bytes: u64,
    /// Acknowledge QoS 1/2 publications only once the cluster's stream keeps them (a node's
    /// death then loses nothing it acknowledged); off: as soon as this node has them.
    #[serde(default = "default_true")]
    pub wait_for_stream: bool,
}

fn default_history_seconds() -> u64 {
    3600
}

fn default_history_bytes() -> u64 {
    1 << 30
}

fn default_cluster_prefix() -> String {
    "tern".into()
}

fn default_cluster_replicas() -> usize {
    1
}

/// `[tls]`: certificates for every TLS listener that names none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Obtain and renew the certificate from an ACME server (Let's Encrypt by default).
    pub acme: Option<AcmeConfig>,
}

/// How the ACME server checks that the broker answers for its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737) on the TLS listeners' port (443 for public ACME servers).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01 on `http_bind` (port 80 for public ACME servers).
    #[serde(rename = "http-01")]
    Http01,
}

/// `[tls.acme]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names the certificate is for.
    pub domains: Vec<String>,
    /// A contact e-mail address for the ACME account (expiry warnings).
    pub contact: Option<String>,
    /// The ACME server's directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// PEM CA certificates to trust for the ACME server itself (a test server); default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// `tls-alpn-01` or `http-01`.
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Where HTTP-01 is answered.
    #[serde(default = "default_acme_http_bind")]
    pub http_bind: SocketAddr,
    /// Longest wait between two looks at the certificate, in seconds.
    #[serde(default = "default_acme_check")]
    pub check_interval_secs: u64,
}

fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}

fn default_acme_http_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}

fn default_acme_check() -> u64 {
    12 * 3600
}

/// `[[bridge]]`: a connection to another broker and the topics forwarded over it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// A name for logs, metrics and the console (letters, digits, `-`, `_`).
    pub name: String,
    /// The remote broker: `mqtt://host:port`, `mqtts://`, `ws://host:port/path` or `wss://`.
    pub url: String,
    /// User name at the remote broker.
    pub username: Option<String>,
    /// Password at the remote broker.
    pub password: Option<String>,
    /// PEM CA certificates to trust for the remote (default: the usual web roots).
    pub ca_file: Option<PathBuf>,
    /// Client identifier at the remote; default `tern-bridge-<name>`.
    pub client_id: Option<String>,
    /// MQTT version spoken to the remote: 5 (default) or 4 (3.1.1).
    #[serde(default = "default_bridge_protocol")]
    pub protocol: u8,
    /// Keep alive toward the remote, in seconds.
    #[serde(default = "default_bridge_keep_alive")]
    pub keep_alive: u16,
    /// The topics forwarded.
    #[serde(rename = "topic")]
    pub topics: Vec<BridgeTopic>,
}

fn default_bridge_protocol() -> u8 {
    5
}

fn default_bridge_keep_alive() -> u16 {
    60
}

/// Which way a bridge topic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeDirection {
    /// From this broker to the remote.
    Out,
    /// From the remote to this broker.
    In,
    /// Both ways.
    Both,
}

/// `[[bridge.topic]]`: one forwarded pattern.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// `out`, `in` or `both`.
    pub direction: BridgeDirection,
    /// The topic filter on this broker, e.g. `home/#`.
    pub local: String,
    /// The same filter on the remote; its levels before the first wildcard replace those of
    /// `local` (`home/#` -> `site1/home/#`). Default: the same as `local`.
    pub remote: Option<String>,
    /// Highest QoS used for forwarded messages (0, 1 or 2).
    #[serde(default = "default_bridge_qos")]
    pub qos: u8,
    /// Whether forwarded messages keep their RETAIN flag.
    #[serde(default = "default_true")]
    pub retain: bool,
}

fn default_bridge_qos() -> u8 {
    1
}

fn default_true() -> bool {
    true
}

/// `[console]`: the web console, the admin API and `/metrics`, on one HTTP port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Whether the console is served at all.
    pub enabled: bool,
    /// Address and port; loopback only unless changed.
    pub bind: SocketAddr,
    /// PEM certificate chain: serve HTTPS (and mark the login cookie Secure).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// The console's administrators; default `admin.toml` in `data_dir`.
    pub admin_file: Option<PathBuf>,
    /// Most topics the topic tree keeps.
    pub max_topics: usize,
    /// Minutes a console login lasts without use.
    pub session_minutes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 18083)),
            cert: None,
            key: None,
            admin_file: None,
            max_topics: 10_000,
            session_minutes: 720,
        }
    }
}

/// When an acknowledged message is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceMode {
    /// PUBACK / PUBREC / SUBACK only after the change is flushed to disk (group commit).
    #[default]
    Sync,
    /// Written at once, flushed every `flush_interval_ms`.
    Periodic,
    /// Nothing on disk: everything is lost when the broker stops.
    Off,
}

/// `[persistence]`: the store in `<data_dir>/store`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// `sync`, `periodic` or `off`.
    pub mode: PersistenceMode,
    /// With `periodic`: milliseconds between flushes to disk.
    pub flush_interval_ms: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            mode: PersistenceMode::Sync,
            flush_interval_ms: 1000,
        }
    }
}

/// How a listener carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The port a listener of this kind binds when the configuration names none.
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Tls => 8883,
            ListenerKind::Ws => 8080,
            ListenerKind::Wss => 8884,
        }
    }

    /// Whether it needs a certificate.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `tcp` (default), `tls`, `ws` or `wss`.
    #[serde(default)]
    pub kind: ListenerKind,
    /// Address and port to bind, e.g. `0.0.0.0:8883`. Default: all addresses, on the kind's
    /// usual port (1883, 8883, 8080, 8884).
    pub bind: Option<SocketAddr>,
    /// PEM certificate chain (TLS kinds).
    pub cert: Option<PathBuf>,
    /// PEM private key (TLS kinds).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates are checked against; asks clients for one.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Use the client certificate's Common Name as the user name.
    #[serde(default)]
    pub cn_as_username: bool,
    /// WebSocket path (ws, wss).
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Whether anonymous clients may connect here; overrides the top-level setting.
    pub allow_anonymous: Option<bool>,
}

fn default_ws_path() -> String {
    "/mqtt".to_owned()
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(bind: SocketAddr) -> Self {
        ListenerConfig {
            kind: ListenerKind::Tcp,
            bind: Some(bind),
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: false,
            cn_as_username: false,
            path: default_ws_path(),
            allow_anonymous: None,
        }
    }

    /// The address to bind.
    pub fn address(&self) -> SocketAddr {
        self.bind
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.kind.default_port())))
    }
}

/// `[limits]`: see [`Limits`] for what each means.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct LimitsConfig {
    pub max_packet_size: u32,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_keep_alive: u16,
    pub maximum_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_inflight: u16,
    pub max_connections: usize,
    pub max_session_expiry: u32,
    pub max_subscriptions_per_client: usize,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Connections at once from one IP address; 0: no limit.
    pub max_connections_per_address: usize,
    /// PUBLISH packets a client may send per second; 0: no limit. Excess is throttled by
    /// not reading its socket.
    pub max_message_rate: u32,
    /// Bytes a client may send per second; 0: no limit. Throttled the same way.
    pub max_bandwidth: u64,
    /// Seconds publishers wait for a subscriber whose queue is over its limit and who takes
    /// nothing from it; then it is given up on and messages beyond its limit are dropped.
    /// 0: publishers are never held back (QoS 1/2 messages beyond a full queue are dropped).
    pub slow_subscriber_timeout: u64,
}

/// `[sys]`: the `$SYS/broker/...` topics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between updates; 0 turns them off.
    pub interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            data_dir: PathBuf::from("tern-data"),
            users_file: None,
            allow_anonymous: None,
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                1883,
            )))],
            limits: LimitsConfig::default(),
            sys: SysConfig::default(),
            persistence: PersistenceConfig::default(),
            console: ConsoleConfig::default(),
            tls: TlsConfig::default(),
            bridges: Vec::new(),
            cluster: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig::from_broker(&Limits::default())
    }
}

/// The limits the file and the broker keep under the same name and type, listed once: the
/// conversions both ways come from this list.
macro_rules! shared_limits {
    ($($name:ident),* $(,)?) => {
        impl LimitsConfig {
            fn from_broker(l: &Limits) -> Self {
                LimitsConfig {
                    maximum_qos: l.maximum_qos as u8,
                    connect_timeout: 10,
                    max_connections_per_address: 1000,
                    max_message_rate: 0,
                    max_bandwidth: 0,
                    slow_subscriber_timeout: 10,
                    $($name: l.$name,)*
                }
            }

            fn to_broker(&self) -> Limits {
                Limits {
                    maximum_qos: QoS::from_u8(self.maximum_qos).unwrap_or(QoS::ExactlyOnce),
                    $($name: self.$name,)*
                }
            }
        }
    };
}

shared_limits!(
    max_packet_size,
    receive_maximum,
    topic_alias_maximum,
    max_keep_alive,
    retain_available,
    wildcard_subscriptions,
    shared_subscriptions,
    subscription_identifiers,
    max_queued_messages,
    max_queued_bytes,
    max_inflight,
    max_connections,
    max_session_expiry,
    max_subscriptions_per_client,
    max_topic_length,
    max_topic_levels,
);

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval: 10 }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Config::parse(&text)
            .map_err(|ConfigError(e)| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses and checks configuration text. Errors name the line and the key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.check(text)?;
        Ok(config)
    }

    /// Checks values that parse but make no sense, naming the key and its line.
    fn check(&self, text: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(key))
                .map_or(String::new(), |n| format!("line {}: ", n + 1));
            Err(ConfigError(format!("{line}`{key}` {why}")))
        };
        let l = &self.limits;
        if l.maximum_qos > 2 {
            return bad("maximum_qos", "must be 0, 1 or 2");
        }
        if l.max_packet_size < 16 {
            return bad("max_packet_size", "must be at least 16 bytes");
        }
        if l.receive_maximum == 0 {
            return bad("receive_maximum", "must be at least 1");
        }
        if l.max_inflight == 0 {
            return bad("max_inflight", "must be at least 1");
        }
        if self.persistence.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be at least 1");
        }
        if l.max_queued_messages == 0 {
            return bad("max_queued_messages", "must be at least 1");
        }
        if l.connect_timeout == 0 {
            return bad("connect_timeout", "must be at least 1 second");
        }
        for listener in &self.listeners {
            let acme = self.tls.acme.is_some();
            if listener.kind.is_tls() && listener.cert.is_none() != listener.key.is_none() {
                return bad("cert", "and `key` go together");
            }
            if listener.kind.is_tls() && listener.cert.is_none() && !acme {
                return bad(
                    "kind",
                    "a tls or wss listener needs `cert` and `key` files, or [tls.acme]",
                );
            }
            if listener.require_client_cert && listener.client_ca.is_none() {
                return bad("require_client_cert", "needs `client_ca`");
            }
            if !listener.path.starts_with('/') {
                return bad("path", "must start with /");
            }
        }
        if let Some(acme) = &self.tls.acme {
            if acme.domains.is_empty() {
                return bad("domains", "needs at least one name");
            }
            if acme.check_interval_secs == 0 {
                return bad("check_interval_secs", "must be at least 1");
            }
        }
        if self.console.cert.is_some() != self.console.key.is_some() {
            return bad("cert", "and `key` go together in [console]");
        }
        if self.console.session_minutes == 0 {
            return bad("session_minutes", "must be at least 1");
        }
        for bridge in &self.bridges {
            if let Err(why) = crate::bridge::check(bridge) {
                let line = text
                    .lines()
                    .position(|l| {
                        l.trim_start().starts_with("name")
                            && l.contains(&format!("\"{}\"", bridge.name))
                    })
                    .map_or(String::new(), |n| format!("line {}: ", n + 1));
                return Err(ConfigError(format!(
                    "{line}bridge {:?}: {why}",
                    bridge.name
                )));
            }
        }
        if let Some(c) = &self.cluster {
            if c.node.is_empty() {
                return bad("node", "must name this node");
            }
            if c.nats_urls.is_empty() {
                return bad("nats_urls", "needs at least one NATS server URL");
            }
            if c.prefix.is_empty()
                || !c
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("prefix", "must be letters, digits, `-` and `_`");
            }
            if !(1..=5).contains(&c.replicas) {
                return bad("replicas", "must be 1 to 5");
            }
            if c.history_seconds == 0 || c.history_bytes == 0 || c.history_bytes > i64::MAX as u64 {
                return bad(
                    if c.history_seconds == 0 {
                        "history_seconds"
                    } else {
                        "history_bytes"
                    },
                    "must be more than 0",
                );
            }
            if c.user.is_some() != c.password.is_some() {
                return bad("user", "and `password` go together in [cluster]");
            }
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return bad(
                "log_level",
                "must be one of error, warn, info, debug, trace",
            );
        }
        Ok(())
    }

    /// The broker limits this configuration sets.
    pub fn broker_limits(&self) -> Limits {
        self.limits.to_broker()
    }

    /// The store's folder.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Where ACME keeps its account and certificate.
    pub fn acme_dir(&self) -> PathBuf {
        self.data_dir.join("acme")
    }

    /// The console's administrators file.
    pub fn admin_path(&self) -> PathBuf {
        self.console
            .admin_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.toml"))
    }

    /// The users and permissions file.
    pub fn users_path(&self) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("users.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let err =
            Config::parse("log_level = \"info\"\n[limits]\nmax_packet_sise = 10\n").unwrap_err();
        assert!(
            err.0.contains("line 3") && err.0.contains("max_packet_sise"),
            "{err}"
        );
        let err = Config::parse("[limits]\nmaximum_qos = 3\n").unwrap_err();
        assert!(
            err.0.contains("line 2") && err.0.contains("maximum_qos"),
            "{err}"
        );
        let err = Config::parse("[[listener]]\nbind = \"nowhere\"\n").unwrap_err();
        assert!(err.0.contains("line 2") && err.0.contains("bind"), "{err}");
    }

    #[test]
    fn every_key_is_documented() {
        // docs/configuration.md names every key; a new key without a line there fails here.
        let docs = include_str!("../../../docs/configuration.md");
        // The optional sections too, every key set.
        let sample = Config {
            cluster: Some(ClusterConfig {
                node: "a".into(),
                nats_urls: vec!["nats://127.0.0.1:4222".into()],
                user: Some("u".into()),
                password: Some("p".into()),
                token: Some("t".into()),
                ca_file: Some("ca.pem".into()),
                prefix: "tern".into(),
                replicas: 3,
                history_seconds: 600,
                history_bytes: 1 << 20,
                wait_for_stream: false,
            }),
            ..Config::default()
        };
        let defaults = toml::to_string(&sample).unwrap();
        let table: toml::Table = toml::from_str(&defaults).unwrap();
        fn keys(table: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in table {
                out.push(k.clone());
                match v {
                    toml::Value::Table(t) => keys(t, out),
                    toml::Value::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_table())
                        .for_each(|t| keys(t, out)),
                    _ => {}
                }
            }
        }
        let mut all = Vec::new();
        keys(&table, &mut all);
        for key in all {
            let shown = if key == "listener" {
                "[[listener]]".to_owned()
            } else if ["limits", "sys", "persistence", "console", "tls", "cluster"]
                .contains(&key.as_str())
            {
                format!("[{key}]")
            } else {
                format!("`{key}`")
            };
            assert!(
                docs.contains(&shown),
                "docs/configuration.md does not document {shown}"
            );
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        let ok =
            Config::parse("[cluster]\nnode = \"a\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n")
                .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!((c.prefix.as_str(), c.replicas), ("tern", 1));
        let err = Config::parse("[cluster]\nnode = \"a\"\nnats_urls = []\n").unwrap_err();
        assert!(
            err.0.contains("line 3") && err.0.contains("nats_urls"),
            "{err}"
        );
        let err = Config::parse(
            "[cluster]\nnode = \"a\"\nnats_urls = [\"nats://x\"]\nprefix = \"a.b\"\n",
        )
        .unwrap_err();
        assert!(
            err.0.contains("line 4") && err.0.contains("prefix"),
            "{err}"
        );
        let err = Config::parse("[cluster]\nnats_urls = [\"nats://x\"]\n").unwrap_err();
        assert!(err.0.contains("node"), "{err}");
    }

    #[test]
    fn listeners_and_limits_parse() {
        let c =
            Config::parse("[[listener]]\nbind = \"0.0.0.0:1884\"\n[limits]\nmax_inflight = 5\n")
                .unwrap();
        assert_eq!(c.listeners[0].address().port(), 1884);
        assert_eq!(c.broker_limits().max_inflight, 5);
    }
}
