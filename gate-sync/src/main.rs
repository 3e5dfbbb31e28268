//! `gate-sync`: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gate_sync::store::{Store, StoreError};

#[derive(Parser)]
#[command(
    version,
    about = "Merges every gate's scan log and flags tickets admitted twice"
)]
struct Cli {
    /// The node's SQLite database.
    #[arg(long, global = true, default_value = "gate-sync.db")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the sync API.
    Serve(Box<ServeArgs>),
    /// Scanners allowed to sync.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// The keyset handed to devices.
    #[command(subcommand)]
    Keyset(ImportCmd),
    /// The revocation list handed to devices.
    #[command(subcommand)]
    Revocations(ImportCmd),
    /// The node's TLS certificate.
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Another gate-sync node to exchange records with (repeatable), as
    /// https://10.0.0.3:8090#FINGERPRINT (`gate-sync tls fingerprint`
    /// on that node prints it; its certificate is pinned).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Serve TLS with the node's own certificate: `auto` does unless
    /// listening on this machine only (127.0.0.1, ::1).
    #[arg(long, default_value = "auto")]
    tls: TlsMode,
    /// Most connections open at once from one address; raise it when
    /// gates reach the node through one NAT.
    #[arg(long, default_value_t = gate_sync::net::PER_ADDR)]
    conns_per_address: usize,
    /// The secret shared by this venue's nodes; without it no peer is
    /// accepted. Prefer --peer-token-file or the environment: a flag's
    /// value shows in the process list.
    #[arg(long, env = "GATE_SYNC_PEER_TOKEN", hide_env_values = true)]
    peer_token: Option<String>,
    /// A file holding the peer token (mode 0600).
    #[arg(long, conflicts_with = "peer_token")]
    peer_token_file: Option<PathBuf>,
    /// The secret organizers enter to see duplicates, stats and the
    /// dashboard; without it they are open to anyone who can reach the
    /// node. Prefer --organizer-token-file or the environment.
    #[arg(long, env = "GATE_SYNC_ORGANIZER_TOKEN", hide_env_values = true)]
    organizer_token: Option<String>,
    /// A file holding the organizer token (mode 0600).
    #[arg(long, conflicts_with = "organizer_token")]
    organizer_token_file: Option<PathBuf>,
    /// Seconds between exchanges with peers.
    #[arg(long, default_value_t = 5)]
    peer_every: u64,
    /// The issuer to take keysets and revoked tickets from, whenever it
    /// can be reached: http://127.0.0.1:PORT, or https://HOST:PORT#FINGERPRINT.
    #[arg(long, env = "GATE_SYNC_ISSUER", requires = "issuer_events")]
    issuer: Option<String>,
    /// The events to follow, comma-separated.
    #[arg(long, env = "GATE_SYNC_ISSUER_EVENTS", value_delimiter = ',')]
    issuer_events: Vec<u64>,
    /// The organizer's API token for the issuer. Prefer
    /// --issuer-token-file or the environment.
    #[arg(long, env = "GATE_SYNC_ISSUER_TOKEN", hide_env_values = true)]
    issuer_token: Option<String>,
    /// A file holding the issuer token (mode 0600).
    #[arg(long, conflicts_with = "issuer_token")]
    issuer_token_file: Option<PathBuf>,
    /// Seconds between visits to the issuer.
    #[arg(long, default_value_t = 30)]
    issuer_every: u64,
}

#[derive(Subcommand)]
enum TlsCmd {
    /// Prints the SHA-256 fingerprint of the node's certificate (made now
    /// if the node has none yet): what gates and peer nodes pin.
    Fingerprint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    Auto,
    On,
    Off,
}

#[derive(Subcommand)]
enum ImportCmd {
    /// Replaces it with FILE, validated first.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Prints a one-time enrollment token (and its QR) for a new device.
    Enroll {
        #[arg(long)]
        name: String,
    },
    /// Lists enrolled devices.
    List,
    /// Refuses a device from now on; its records stay.
    Revoke { device_id: String },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once. A cause whose words
/// the line holds already is left out: an error that quotes its source
/// (thiserror's `"...: {0}"` beside `#[from]`) would otherwise say it twice.
/// (The same in each binary: `shared` knows nothing of anyhow.)
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let store = open_store(&cli.db)?;
    match cli.command {
        Command::Serve(args) => serve(store, *args),
        Command::Keyset(ImportCmd::Import { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            store
                .set_keyset(&text, gate_sync::unix_now_ms())
                .map_err(|e| match e {
                    StoreError::Keyset(k) => {
                        // Some reasons say what to do already ("re-export the keyset").
                        let hint = match k {
                            shared::KeysetError::Json(_)
                            | shared::KeysetError::BadKeyId { .. }
                            | shared::KeysetError::Duplicate { .. } => {
                                "; give the file `issuer keys export-keyset --event ID --out FILE` writes"
                            }
                            _ => "",
                        };
                        anyhow::anyhow!("keyset {} refused: {k}{hint}", file.display())
                    }
                    e => anyhow::Error::new(e).context(format!("importing {}", file.display())),
                })?;
            println!("keyset imported; devices pick it up at their next sync");
            Ok(())
        }
        Command::Revocations(ImportCmd::Import { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let n = store.set_revocations(&text, gate_sync::unix_now_ms())?;
            println!("{n} revoked tickets imported; devices pick them up at their next sync");
            Ok(())
        }
        Command::Tls(TlsCmd::Fingerprint) => {
            println!("{}", store.node_cert()?.fingerprint());
            Ok(())
        }
        Command::Devices(DevicesCmd::Enroll { name }) => {
            // The token carries the node's certificate fingerprint, which
            // the gate pins when it enrolls over https.
            let code = gate_sync::tls::EnrollmentCode {
                token: store.create_enrollment(&name, gate_sync::unix_now_ms())?,
                fingerprint: Some(store.node_cert()?.fingerprint()),
            };
            let token = code.to_string();
            let qr = qrcode::QrCode::new(token.as_bytes())
                .map(|c| {
                    c.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                })
                .unwrap_or_default();
            println!(
                "{qr}\nEnrollment token for {name:?} (shown once, valid for one device):\n{token}"
            );
            println!(
                "On the device: scanner --db FILE enroll --server https://THIS-HOST:PORT --token {token}"
            );
            Ok(())
        }
        Command::Devices(DevicesCmd::List) => {
            for d in store.enrolled()? {
                let state = d
                    .revoked_at_ms
                    .map_or("active".to_owned(), |t| format!("revoked at unix ms {t}"));
                println!(
                    "{}  {:<20}  enrolled at unix ms {}  {state}",
                    d.device_id, d.name, d.enrolled_at_ms
                );
            }
            Ok(())
        }
        Command::Devices(DevicesCmd::Revoke { device_id }) => {
            store.revoke(&device_id, gate_sync::unix_now_ms())?;
            println!("device {device_id} revoked; its records stay");
            Ok(())
        }
    }
}

/// Opens the node's database; a file that is not one is named as such,
/// with what to do, instead of SQLite's words said three times.
fn open_store(path: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(path).map_err(|e| match e {
        StoreError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::NotADatabase =>
        {
            anyhow::anyhow!(
                "{} is not a gate-sync database (the file is not SQLite, or is damaged): \
                 give this node's database with --db, or restore it from a backup",
                path.display()
            )
        }
        e => anyhow::Error::new(e).context(format!("opening {}", path.display())),
    })
}

/// A secret given directly (flag or environment) or in a file.
fn secret(given: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let Some(file) = file else { return Ok(given) };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", file.display());
    }
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        eprintln!(
            "warning: {} is readable by other users: chmod 600 it",
            file.display()
        );
    }
    Ok(Some(token.to_owned()))
}

fn serve(store: Store, args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        peers,
        tls,
        conns_per_address,
        peer_token,
        peer_token_file,
        organizer_token,
        organizer_token_file,
        peer_every,
        issuer,
        issuer_events,
        issuer_token,
        issuer_token_file,
        issuer_every,
    } = args;
    let issuer_token = secret(issuer_token, issuer_token_file.as_deref())?;
    let peer_token = secret(peer_token, peer_token_file.as_deref())?;
    let organizer_token = secret(organizer_token, organizer_token_file.as_deref())?;
    let listen = listen.as_str();
    // A log that cannot be written (stderr closed under a supervisor) is
    // dropped: tracing would otherwise say so on stderr, and panic there.
    tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !peers.is_empty() && peer_token.is_none() {
        anyhow::bail!("--peer needs --peer-token (the secret this venue's nodes share)");
    }
    let peers = peers
        .iter()
        .map(|p| gate_sync::peers::parse_peer(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if organizer_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        anyhow::bail!("--organizer-token is empty");
    }
    if organizer_token.is_none() {
        tracing::warn!(
            "no --organizer-token: duplicates, stats and the dashboard are open to anyone who can reach this node"
        );
    }
    let cert = store.node_cert()?;
    store.checkpoint_in_background()?;
    let (fingerprint, tls_config) = (cert.fingerprint(), cert.server_config());
    let state = gate_sync::AppState::new(store)
        .with_peer_token(peer_token)
        .with_organizer_token(organizer_token);
    gate_sync::peers::spawn(
        state.clone(),
        peers,
        std::time::Duration::from_secs(peer_every.max(1)),
    );
    if let Some(issuer) = issuer {
        let (url, pin) = gate_sync::issuer::parse(&issuer).map_err(anyhow::Error::msg)?;
        let token = issuer_token.context(
            "--issuer needs the organizer's token: --issuer-token-file or GATE_SYNC_ISSUER_TOKEN",
        )?;
        tracing::info!(%url, events = ?issuer_events, "following the issuer");
        gate_sync::issuer::spawn(
            state.clone(),
            gate_sync::issuer::Feed {
                url,
                pin,
                token,
                events: issuer_events,
            },
            std::time::Duration::from_secs(issuer_every.max(1)),
        );
    }
    let runtime = gate_sync::runtime()?;
    runtime.block_on(async move {
        let listener = gate_sync::listen(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr()?;
        let tls = match tls {
            TlsMode::On => true,
            TlsMode::Off => false,
            TlsMode::Auto => !local.ip().is_loopback(),
        };
        let mut guarded =
            gate_sync::net::Guarded::new(listener).with_per_addr(conns_per_address);
        if tls {
            guarded = guarded.with_tls(tls_config.map_err(anyhow::Error::msg)?);
            tracing::info!(fingerprint = %fingerprint, "serving TLS; gates and peers pin this fingerprint");
        } else if !local.ip().is_loopback() {
            tracing::warn!("serving plain HTTP on the network (--tls off): tokens and scans travel in the clear");
        }
        tracing::info!(address = %local, tls, "gate-sync serving");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        gate_sync::run_guarded(guarded, state, shutdown).await?;
        anyhow::Ok(())
    })
}
