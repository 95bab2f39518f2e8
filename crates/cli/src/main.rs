//! `tern`: the one binary. Each subcommand is a thin shell over a library crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Print the version and the protocol versions tern speaks.
    Version,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("tern {} (MQTT 3.1, 3.1.1, 5.0)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Broker(args) => broker(args),
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
            .map(|&bind| tern_server::config::ListenerConfig { bind })
            .collect();
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
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
        wait_for_signal().await;
        info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
