//! `tern pub` and `tern sub`: command-line MQTT clients with the flags Mosquitto's users know.
//!
//! Exit codes: 0 done; 1 could not connect or the broker refused something; 2 bad usage;
//! 27 `tern sub -W` timed out (as `mosquitto_sub`). Output to a closed pipe ends quietly.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tern_client::tokio::{connect, Client, Config, Event, Events, Message, Transport};
use tern_client::{ProtocolVersion, QoS};
use tern_proto::PropertyContext;

/// Connection flags shared by `tern pub` and `tern sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    host: String,
    /// Broker port (default 1883, or 8883 with TLS).
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// URL instead of host/port/topic: mqtt(s)://[user[:password]@]host[:port]/topic (also ws, wss).
    #[arg(short = 'L', long)]
    url: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long)]
    pw: Option<String>,
    /// Client identifier (default: the broker assigns one).
    #[arg(short = 'i', long)]
    id: Option<String>,
    /// Protocol version: 311 (default) or 5.
    #[arg(short = 'V', long, default_value = "311")]
    protocol_version: String,
    /// CA certificates (PEM) for TLS; turns TLS on.
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// Use TLS with the system's roots (implied by --cafile and mqtts:// URLs).
    #[arg(long)]
    tls: bool,
    /// Keep alive in seconds.
    #[arg(short = 'k', long, default_value_t = 60)]
    keepalive: u16,
    /// Keep the session (clean session / clean start off).
    #[arg(short = 'c', long)]
    disable_clean_session: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    topic: Option<String>,
    /// The message.
    #[arg(short = 'm', long, group = "source")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, group = "source")]
    file: Option<PathBuf>,
    /// Send each line of standard input as a message.
    #[arg(short = 'l', long, group = "source")]
    stdin_line: bool,
    /// Send all of standard input as one message.
    #[arg(short = 's', long, group = "source")]
    stdin_file: bool,
    /// Send an empty message (clears a retained message with -r).
    #[arg(short = 'n', long, group = "source")]
    null_message: bool,
    /// QoS 0, 1 or 2.
    #[arg(short = 'q', long, default_value_t = 0)]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long)]
    retain: bool,
}

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Topic filter (repeatable).
    #[arg(short = 't', long)]
    topic: Vec<String>,
    /// QoS 0, 1 or 2.
    #[arg(short = 'q', long, default_value_t = 0)]
    qos: u8,
    /// Print the topic before each message.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    /// Exit after this many seconds without finishing (exit code 27).
    #[arg(short = 'W', long)]
    timeout: Option<u64>,
    /// Output: plain (payload, with -v the topic first) or json (one object per line with topic,
    /// qos, retain, payload and MQTT 5 properties).
    #[arg(short = 'F', long, default_value = "plain")]
    format: String,
}

fn config(args: &ConnectArgs) -> Result<(Config, Option<String>), String> {
    let (mut config, url_topic) = match &args.url {
        Some(url) => {
            let c = Config::parse(url).map_err(|e| e.0)?;
            let topic = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, t)| t.to_owned());
            let topic = topic.filter(|t| {
                !t.is_empty() && !matches!(c.transport, Transport::Ws | Transport::Wss)
            });
            (c, topic)
        }
        None => {
            let tls = args.tls || args.cafile.is_some();
            let mut c = Config::host(
                &args.host,
                args.port.unwrap_or(if tls { 8883 } else { 1883 }),
            );
            if tls {
                c.transport = Transport::Tls;
            }
            (c, None)
        }
    };
    if let Some(port) = args.port {
        config.port = port;
    }
    if args.cafile.is_some() && config.transport == Transport::Tcp {
        config.transport = Transport::Tls;
    }
    config.ca_file = args.cafile.clone();
    config.version = match args.protocol_version.as_str() {
        "311" | "mqttv311" | "4" => ProtocolVersion::V3_1_1,
        "5" | "mqttv5" => ProtocolVersion::V5,
        "31" | "mqttv31" => ProtocolVersion::V3_1,
        other => return Err(format!("unknown protocol version {other}: use 311 or 5")),
    };
    if let Some(u) = &args.username {
        config.username = Some(u.clone());
    }
    if let Some(p) = &args.pw {
        config.password = Some(p.clone().into_bytes());
    }
    config.client_id = args.id.clone().unwrap_or_default();
    config.keep_alive = args.keepalive;
    config.clean_start = !args.disable_clean_session;
    if !config.clean_start && config.version.is_v5() {
        config.session_expiry = Some(u32::MAX);
    }
    Ok((config, url_topic))
}

fn qos(q: u8) -> Result<QoS, String> {
    QoS::from_u8(q).map_err(|_| format!("QoS {q}: use 0, 1 or 2"))
}

fn fail(e: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("tern: {e}");
    ExitCode::from(code)
}

pub(crate) fn publish(args: PubArgs) -> ExitCode {
    let (config, url_topic) = match config(&args.connect) {
        Ok(c) => c,
        Err(e) => return fail(e, 2),
    };
    let Some(topic) = args.topic.clone().or(url_topic) else {
        return fail("no topic: give -t TOPIC or a URL with a path", 2);
    };
    let qos = match qos(args.qos) {
        Ok(q) => q,
        Err(e) => return fail(e, 2),
    };
    let messages: Vec<Vec<u8>> = if let Some(m) = &args.message {
        vec![m.clone().into_bytes()]
    } else if let Some(f) = &args.file {
        match std::fs::read(f) {
            Ok(data) => vec![data],
            Err(e) => return fail(format!("{}: {e}", f.display()), 1),
        }
    } else if args.null_message {
        vec![Vec::new()]
    } else if args.stdin_file {
        let mut data = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut data) {
            return fail(e, 1);
        }
        vec![data]
    } else if args.stdin_line {
        // Lines are sent as they come, below.
        Vec::new()
    } else {
        return fail("no message: give -m, -f, -l, -s or -n", 2);
    };
    run(config, |client, _events| async move {
        let send = |payload: Vec<u8>| {
            let client = client.clone();
            let topic = topic.clone();
            async move { client.publish(&topic, payload, qos, args.retain).await }
        };
        for payload in messages {
            if let Err(e) = send(payload).await {
                return fail(e, 1);
            }
        }
        if args.stdin_line {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().split(b'\n') {
                    let Ok(mut line) = line else { break };
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
            while let Some(line) = rx.recv().await {
                if let Err(e) = send(line).await {
                    return fail(e, 1);
                }
            }
        }
        let _ = client.disconnect().await;
        ExitCode::SUCCESS
    })
}

pub(crate) fn subscribe(args: SubArgs) -> ExitCode {
    let (config, url_topic) = match config(&args.connect) {
        Ok(c) => c,
        Err(e) => return fail(e, 2),
    };
    let mut filters = args.topic.clone();
    filters.extend(url_topic);
    if filters.is_empty() {
        return fail("no topic: give -t FILTER or a URL with a path", 2);
    }
    let qos = match qos(args.qos) {
        Ok(q) => q,
        Err(e) => return fail(e, 2),
    };
    let json = match args.format.as_str() {
        "plain" => false,
        "json" => true,
        other => return fail(format!("unknown format {other}: use plain or json"), 2),
    };
    run(config, |client, mut events| async move {
        for filter in &filters {
            match client.subscribe(filter, qos).await {
                Ok(code) if code.is_success() => {}
                Ok(code) => {
                    return fail(
                        format!("subscription to {filter} refused: {}", code.name()),
                        1,
                    )
                }
                Err(e) => return fail(e, 1),
            }
        }
        let timeout = args
            .timeout
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let mut seen = 0u64;
        let stdout = std::io::stdout();
        loop {
            if args.count.is_some_and(|c| seen >= c) {
                let _ = client.disconnect().await;
                return ExitCode::SUCCESS;
            }
            let event = match timeout {
                Some(at) => match tokio::time::timeout_at(at, events.recv()).await {
                    Ok(e) => e,
                    Err(_) => {
                        eprintln!("tern: timed out");
                        return ExitCode::from(27);
                    }
                },
                None => events.recv().await,
            };
            match event {
                Some(Event::Message(m)) => {
                    seen += 1;
                    let line = if json {
                        json_line(&m)
                    } else {
                        plain_line(&m, args.verbose)
                    };
                    let mut out = stdout.lock();
                    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                        // The reader went away (`| head`): stop quietly.
                        return ExitCode::SUCCESS;
                    }
                }
                Some(Event::Disconnected(why)) => return fail(format!("disconnected: {why}"), 1),
                Some(_) => {}
                None => return ExitCode::from(1),
            }
        }
    })
}

/// Connects on a single-threaded runtime and runs `body` with the connection; a failure to
/// connect is exit code 1.
fn run<F, Fut>(config: Config, body: F) -> ExitCode
where
    F: FnOnce(Client, Events) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e, 1),
    };
    runtime.block_on(async move {
        match connect(config).await {
            Ok((client, events)) => body(client, events).await,
            Err(e) => fail(e, 1),
        }
    })
}

fn plain_line(m: &Message, verbose: bool) -> Vec<u8> {
    let mut line = Vec::new();
    if verbose {
        line.extend_from_slice(m.topic.as_bytes());
        line.push(b' ');
    }
    line.extend_from_slice(&m.payload);
    line.push(b'\n');
    line
}

fn json_line(m: &Message) -> Vec<u8> {
    use serde_json::{json, Map, Value};
    let p = m.properties.get(PropertyContext::Publish);
    let mut props = Map::new();
    if let Some(v) = p.payload_format_indicator {
        props.insert("payload_format_indicator".into(), json!(u8::from(v)));
    }
    if let Some(v) = p.message_expiry_interval {
        props.insert("message_expiry_interval".into(), json!(v));
    }
    if let Some(v) = p.content_type {
        props.insert("content_type".into(), json!(v));
    }
    if let Some(v) = p.response_topic {
        props.insert("response_topic".into(), json!(v.as_str()));
    }
    if let Some(v) = p.correlation_data {
        props.insert("correlation_data".into(), json!(hex(v)));
    }
    let users: Vec<Value> = p
        .user_properties
        .iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    if !users.is_empty() {
        props.insert("user_properties".into(), Value::Array(users));
    }
    let mut obj = Map::new();
    obj.insert("topic".into(), json!(m.topic));
    obj.insert("qos".into(), json!(m.qos as u8));
    obj.insert("retain".into(), json!(m.retain));
    match std::str::from_utf8(&m.payload) {
        Ok(text) => obj.insert("payload".into(), json!(text)),
        Err(_) => obj.insert("payload_hex".into(), json!(hex(&m.payload))),
    };
    if !props.is_empty() {
        obj.insert("properties".into(), Value::Object(props));
    }
    let mut line = Value::Object(obj).to_string().into_bytes();
    line.push(b'\n');
    line
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
