//! `gate-sync`: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Merges every gate's scan log and flags tickets admitted twice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the sync API.
    Serve {
        /// The node's SQLite database.
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Another gate-sync node to exchange records with (repeatable), e.g. http://10.0.0.3:8090.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Seconds between exchanges with peers.
        #[arg(long, default_value_t = 5)]
        peer_every: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            db,
            listen,
            peers,
            peer_every,
        } => {
            let store = gate_sync::store::Store::open(&db)
                .with_context(|| format!("opening {}", db.display()))?;
            let state = gate_sync::AppState::new(store);
            gate_sync::peers::spawn(
                state.clone(),
                peers,
                std::time::Duration::from_secs(peer_every.max(1)),
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                tracing::info!(address = %listener.local_addr()?, "gate-sync serving");
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                gate_sync::run(listener, state, shutdown).await?;
                anyhow::Ok(())
            })
        }
    }
}
