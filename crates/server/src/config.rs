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
    /// TCP listeners.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Protocol and resource limits.
    pub limits: LimitsConfig,
    /// `$SYS` topics.
    pub sys: SysConfig,
}

/// One MQTT-over-TCP listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to bind, e.g. `127.0.0.1:1883`.
    pub bind: SocketAddr,
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
            listeners: vec![ListenerConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            }],
            limits: LimitsConfig::default(),
            sys: SysConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_packet_size: l.max_packet_size,
            receive_maximum: l.receive_maximum,
            topic_alias_maximum: l.topic_alias_maximum,
            max_keep_alive: l.max_keep_alive,
            maximum_qos: l.maximum_qos as u8,
            retain_available: l.retain_available,
            wildcard_subscriptions: l.wildcard_subscriptions,
            shared_subscriptions: l.shared_subscriptions,
            subscription_identifiers: l.subscription_identifiers,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            max_inflight: l.max_inflight,
            max_connections: l.max_connections,
            max_session_expiry: l.max_session_expiry,
        }
    }
}

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
        if l.max_queued_messages == 0 {
            return bad("max_queued_messages", "must be at least 1");
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
        let l = &self.limits;
        Limits {
            max_packet_size: l.max_packet_size,
            receive_maximum: l.receive_maximum,
            topic_alias_maximum: l.topic_alias_maximum,
            max_keep_alive: l.max_keep_alive,
            maximum_qos: QoS::from_u8(l.maximum_qos).unwrap_or(QoS::ExactlyOnce),
            retain_available: l.retain_available,
            wildcard_subscriptions: l.wildcard_subscriptions,
            shared_subscriptions: l.shared_subscriptions,
            subscription_identifiers: l.subscription_identifiers,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            max_inflight: l.max_inflight,
            max_connections: l.max_connections,
            max_session_expiry: l.max_session_expiry,
        }
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
        let defaults = toml::to_string(&Config::default()).unwrap();
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
            } else if key == "limits" || key == "sys" {
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
    fn listeners_and_limits_parse() {
        let c =
            Config::parse("[[listener]]\nbind = \"0.0.0.0:1884\"\n[limits]\nmax_inflight = 5\n")
                .unwrap();
        assert_eq!(c.listeners[0].bind.port(), 1884);
        assert_eq!(c.broker_limits().max_inflight, 5);
    }
}
