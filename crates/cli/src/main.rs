//! `tern`: the one binary. Each subcommand is a thin shell over a library crate.

use clap::{Parser, Subcommand};

/// tern: a self-hosted MQTT broker and its tools.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the protocol versions tern speaks.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("tern {} (MQTT 3.1, 3.1.1, 5.0)", env!("CARGO_PKG_VERSION"));
        }
    }
}
