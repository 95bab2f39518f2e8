//! `tern`: the one binary. Each subcommand is a thin shell over a library crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod allocator;
mod pubsub;

use clap::{Parser, Subcommand};
use tern_server::{Config, Server};
use tracing::{error, info};

/// tern: a self-hosted MQTT broker and its tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker (MQTT 3.1, 3.1.1 and 5.0). With no flags it listens on
    /// 127.0.0.1:1883 with its built-in defaults.
    Broker(BrokerArgs),
    /// Create a local certificate authority and a server certificate signed by it (ECDSA
    /// P-256), for TLS on a LAN without a public certificate.
    Cert(CertArgs),
    /// Manage users and their passwords in the users file.
    User(UserArgs),
    /// Manage the web console's administrators.
    Admin(AdminArgs),
    /// Publish a message (flags as mosquitto_pub: -h -p -t -m -q -r -u -P -i -V --cafile -f -l -s -n).
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages (flags as mosquitto_sub: -t -q -v -C -W, and -F json).
    Sub(pubsub::SubArgs),
    /// Load any MQTT broker and count what it delivers: conn, p2p, fanin, fanout.
    Bench(BenchArgs),
    /// Print the version and the protocol versions tern speaks.
    Version,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// conn (open and hold connections), p2p (pairs), fanin (many to one), fanout (one to
    /// many), latency (pairs at a fixed total --rate; percentiles of delivery time).
    scenario: String,
    /// Messages per second in all, for the latency scenario and --open-loop.
    #[arg(short = 'r', long, default_value_t = 1000)]
    rate: u64,
    /// p2p, fanin, fanout: publish --rate messages per second whatever the subscribers
    /// receive (a flood), instead of a closed-loop window.
    #[arg(long)]
    open_loop: bool,
    /// Connect over TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    cafile: Option<std::path::PathBuf>,
    /// With --cafile: the name the broker's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: std::net::SocketAddr,
    /// Subscribers connect here instead of --broker (another node of a cluster).
    #[arg(long)]
    sub_broker: Option<std::net::SocketAddr>,
    /// Pairs, publishers, subscribers or connections, by scenario.
    #[arg(short = 'n', long, default_value_t = 10)]
    clients: usize,
    /// QoS 0, 1 or 2.
    #[arg(short = 'q', long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 16).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Seconds of publishing.
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u64,
    /// Messages a publisher may have undelivered at once (closed loop).
    #[arg(short = 'w', long, default_value_t = 100)]
    window: u64,
    /// Protocol version: 311 or 5.
    #[arg(short = 'V', long, default_value = "311")]
    protocol_version: String,
    /// Every client keeps a persistent session (3.1.1 Clean Session 0, MQTT 5 Session Expiry
    /// 300 s), so a broker that persists must write the messages it queues to disk.
    #[arg(long)]
    persistent: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CertArgs {
    /// Host names and IP addresses clients will connect to (e.g. broker.local 192.168.1.10).
    #[arg(required_unless_present = "client", value_name = "NAME")]
    names: Vec<String>,
    /// Instead: issue a client certificate with this Common Name, signed by the CA in --dir.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// Where to write the files.
    #[arg(long, value_name = "DIR", default_value = "tern-data/certs")]
    dir: PathBuf,
    /// Days the server certificate is valid.
    #[arg(long, default_value_t = 825)]
    days: u32,
}

#[derive(Debug, clap::Args)]
struct UserArgs {
    #[command(subcommand)]
    action: UserAction,
    /// The users file (default: users.toml in the data directory).
    #[arg(long, global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The data directory the broker uses.
    #[arg(long, global = true, value_name = "DIR", default_value = "tern-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a user (asks for the password, or reads one line from stdin with --password-stdin).
    Add {
        /// The user name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Allow publishing and subscribing on this topic filter (repeatable; %u is the user
        /// name, %c the client id).
        #[arg(long, value_name = "FILTER")]
        allow: Vec<String>,
        /// Allow publishing only.
        #[arg(long, value_name = "FILTER")]
        allow_publish: Vec<String>,
        /// Allow subscribing only.
        #[arg(long, value_name = "FILTER")]
        allow_subscribe: Vec<String>,
    },
    /// List users and their rules (never their passwords).
    List,
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
    /// Change a user's password.
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    #[command(subcommand)]
    action: AdminAction,
    /// The administrators file (default: admin.toml in the data directory).
    #[arg(long, global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The data directory the broker uses.
    #[arg(long, global = true, value_name = "DIR", default_value = "tern-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Set an administrator's password, adding the administrator if new (asks for it, or
    /// reads one line from stdin with --password-stdin).
    Passwd {
        /// The administrator's name.
        #[arg(default_value = "admin")]
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the administrators' names.
    List,
}

#[derive(Debug, clap::Args)]
struct BrokerArgs {
    /// Configuration file (TOML); every key is in docs/configuration.md.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for MQTT over TCP, e.g. 0.0.0.0:1883. Repeatable; replaces the
    /// configuration's listeners.
    #[arg(short, long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory for persistent state.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log verbosity: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Address for the web console, admin API and /metrics (default 127.0.0.1:18083), or
    /// `off`.
    #[arg(long, value_name = "ADDR:PORT|off")]
    console: Option<String>,
}

fn main() -> ExitCode {
    allocator::return_large_blocks();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("tern {} (MQTT 3.1, 3.1.1, 5.0)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Broker(args) => broker(args),
        Command::Cert(args) => cert(args),
        Command::User(args) => user(args),
        Command::Admin(args) => admin(args),
        Command::Pub(args) => pubsub::publish(args),
        Command::Bench(args) => bench(args),
        Command::Sub(args) => pubsub::subscribe(args),
    }
}

fn cert(args: CertArgs) -> ExitCode {
    if let Some(name) = &args.client {
        return match tern_server::certs::create_client(&args.dir, name, args.days) {
            Ok((cert, key)) => {
                println!("client certificate: {}", cert.display());
                println!("client key:         {}", key.display());
                println!();
                println!("Clients: --cert {} --key {}", cert.display(), key.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tern cert: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match tern_server::certs::create(&args.dir, &args.names, args.days) {
        Ok(files) => {
            println!("CA certificate:      {}", files.ca_cert.display());
            println!("CA key (keep secret): {}", files.ca_key.display());
            println!("server certificate:  {}", files.server_cert.display());
            println!("server key:          {}", files.server_key.display());
            println!();
            println!("In the broker's configuration:");
            println!("  [[listener]]");
            println!("  kind = \"tls\"");
            println!("  cert = \"{}\"", files.server_cert.display());
            println!("  key = \"{}\"", files.server_key.display());
            println!();
            println!("Clients: --cafile {}", files.ca_cert.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    use tern_bench::{Scenario, Settings};
    let scenario = match args.scenario.as_str() {
        "conn" => Scenario::Conn,
        "p2p" => Scenario::P2p,
        "fanin" => Scenario::Fanin,
        "fanout" => Scenario::Fanout,
        "latency" => Scenario::Latency,
        other => {
            eprintln!(
                "tern bench: unknown scenario {other}: use conn, p2p, fanin, fanout or latency"
            );
            return ExitCode::from(2);
        }
    };
    let (Ok(qos), Some(version)) = (
        tern_proto::QoS::from_u8(args.qos),
        match args.protocol_version.as_str() {
            "311" => Some(tern_proto::ProtocolVersion::V3_1_1),
            "5" => Some(tern_proto::ProtocolVersion::V5),
            _ => None,
        },
    ) else {
        eprintln!("tern bench: QoS is 0, 1 or 2 and the version 311 or 5");
        return ExitCode::from(2);
    };
    let settings = Settings {
        broker: args.broker,
        sub_broker: args.sub_broker,
        scenario,
        clients: args.clients.max(1),
        qos,
        size: args.size.max(16),
        duration: std::time::Duration::from_secs(args.duration),
        window: args.window.max(1),
        version,
        rate: args.rate.max(1),
        persistent: args.persistent,
        open_loop: args.open_loop,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        tls: None,
    };
    let mut settings = settings;
    if let Some(path) = &args.cafile {
        match tern_bench::tls(path, &args.tls_name) {
            Ok(tls) => settings.tls = Some(tls),
            Err(e) => {
                eprintln!("tern bench: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tern_bench::run(settings)) {
        Ok(r) if args.json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            if scenario == Scenario::Latency {
                println!("delivered  lost  p50        p99        p99.9      max");
                println!(
                    "{:>9}  {:>4}  {:.3} ms  {:.3} ms  {:.3} ms  {:.3} ms",
                    r.delivered,
                    r.lost,
                    r.latency_p50_ms,
                    r.latency_p99_ms,
                    r.latency_p999_ms,
                    r.latency_max_ms
                );
            } else if scenario == Scenario::Conn {
                println!("connections  per second  CONNACK p50  p99  alive after hold");
                println!(
                    "{:>11}  {:>10.0}  {:>8.2} ms  {:.2} ms  {:>16}",
                    r.connections,
                    r.connect_rate,
                    r.connack_p50_ms,
                    r.connack_p99_ms,
                    r.alive_after_hold
                );
            } else {
                println!("published  expected  delivered  lost  duplicated  seconds  delivered/s");
                println!(
                    "{:>9}  {:>8}  {:>9}  {:>4}  {:>10}  {:>7.1}  {:>11.0}",
                    r.published,
                    r.expected,
                    r.delivered,
                    r.lost,
                    r.duplicated,
                    r.seconds,
                    r.delivered_per_second
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

fn user(args: UserArgs) -> ExitCode {
    use tern_server::access::{Action, Rule, UsersFile};
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("users.toml"));
    let run = || -> Result<(), String> {
        let mut file = UsersFile::load(&path)?;
        match args.action {
            UserAction::Add {
                name,
                password_stdin,
                allow,
                allow_publish,
                allow_subscribe,
            } => {
                if file.user(&name).is_some() {
                    return Err(format!("user {name} exists; use `tern user passwd {name}`"));
                }
                if name.is_empty() {
                    return Err("the user name is empty".into());
                }
                let password = read_password(password_stdin)?;
                file.set_password(&name, &password)?;
                let rules = allow
                    .into_iter()
                    .map(|t| (Action::Both, t))
                    .chain(allow_publish.into_iter().map(|t| (Action::Publish, t)))
                    .chain(allow_subscribe.into_iter().map(|t| (Action::Subscribe, t)));
                if let Some(user) = file.users.iter_mut().find(|u| u.name == name) {
                    for (action, topic) in rules {
                        tern_proto::TopicFilter::new(&topic)
                            .map_err(|_| format!("`{topic}` is not a topic filter"))?;
                        user.rules.push(Rule {
                            allow: Some(action),
                            deny: None,
                            topic,
                        });
                    }
                }
                file.save(&path)?;
                println!("added {name} to {}", path.display());
            }
            UserAction::List => {
                for u in &file.users {
                    let rules: Vec<String> = u
                        .rules
                        .iter()
                        .map(|r| match (r.allow, r.deny) {
                            (Some(a), _) => format!("allow {a:?} {}", r.topic).to_lowercase(),
                            (_, Some(d)) => format!("deny {d:?} {}", r.topic).to_lowercase(),
                            _ => String::new(),
                        })
                        .collect();
                    println!("{}\t{}", u.name, rules.join(", "));
                }
            }
            UserAction::Remove { name } => {
                let before = file.users.len();
                file.users.retain(|u| u.name != name);
                if file.users.len() == before {
                    return Err(format!("no user {name}"));
                }
                file.save(&path)?;
                println!("removed {name}");
            }
            UserAction::Passwd {
                name,
                password_stdin,
            } => {
                if file.user(&name).is_none() {
                    return Err(format!("no user {name}"));
                }
                let password = read_password(password_stdin)?;
                file.set_password(&name, &password)?;
                file.save(&path)?;
                println!("password changed for {name}");
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern user: {e}");
            ExitCode::FAILURE
        }
    }
}

fn admin(args: AdminArgs) -> ExitCode {
    use tern_server::console::auth::AdminFile;
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.toml"));
    let run = || -> Result<(), String> {
        let mut file = AdminFile::load(&path)?.unwrap_or_default();
        match args.action {
            AdminAction::Passwd {
                name,
                password_stdin,
            } => {
                if name.is_empty() {
                    return Err("the name is empty".into());
                }
                let password = read_password(password_stdin)?;
                if password.len() < 8 {
                    return Err("the password must be at least 8 characters".into());
                }
                file.set_password(&name, &password)?;
                file.save(&path)?;
                println!(
                    "password set for administrator {name} in {}",
                    path.display()
                );
            }
            AdminAction::List => {
                for a in &file.admins {
                    println!("{}", a.name);
                }
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern admin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn broker(args: BrokerArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern: bad configuration: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.listeners = args
            .listen
            .iter()
            .map(|&bind| tern_server::config::ListenerConfig::tcp(bind))
            .collect();
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    match args.console.as_deref() {
        None => {}
        Some("off") => config.console.enabled = false,
        Some(addr) => match addr.parse() {
            Ok(bind) => {
                config.console.enabled = true;
                config.console.bind = bind;
            }
            Err(_) => {
                eprintln!("tern: --console takes ADDR:PORT or off, not {addr:?}");
                return ExitCode::from(2);
            }
        },
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal; logs piped to a file or a test stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match Server::start(&config).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot start the broker");
                return ExitCode::FAILURE;
            }
        };
        info!(version = env!("CARGO_PKG_VERSION"), "tern broker running");
        wait_for_signal(&server).await;
        info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGINT or SIGTERM; on SIGHUP, reloads certificates and users.
async fn wait_for_signal(server: &Server) {
    use tokio::signal::unix::{signal, SignalKind};
    // A file-size limit (`ulimit -f`) reached must fail the store's write (EFBIG), which the
    // store reports and retries, not kill the broker: SIGXFSZ gets a handler.
    let _file_size = signal(SignalKind::from_raw(25));
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading certificates and users");
                server.reload();
            }
        }
    }
}
