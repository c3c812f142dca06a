//! The `ferrylb` command.
#![forbid(unsafe_code)]

use clap::Parser;

/// Kubernetes LoadBalancer Services on AWS and bare metal.
#[derive(Debug, Parser)]
#[command(name = "ferrylb", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
