//! `issuer`: the organizer's command line. Parses arguments and calls the library.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use issuer::{Store, events, issue, keys, time};
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(
    version,
    about = "Venue ticketing: events, signing keys and ticket issuance"
)]
struct Cli {
    /// The data directory: issuer.db and the signing keys.
    #[arg(long, global = true, default_value = "./data")]
    data: PathBuf,
    /// The shop's database, for `serve` and `organizers`: a PostgreSQL
    /// address (`postgres://user@host/shop`, `host=/run/postgresql
    /// dbname=shop`) that any number of issuer processes share. Without it,
    /// the data directory's embedded SQLite. Keys stay in the data
    /// directory either way. No password in it: see
    /// --database-password-file.
    #[arg(long, global = true, env = "ISSUER_DATABASE_URL")]
    database: Option<String>,
    /// A file holding the database user's password, readable by its owner
    /// only.
    #[arg(long, global = true, env = "ISSUER_DATABASE_PASSWORD_FILE")]
    database_password_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Events tickets are sold for.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Ed25519 signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Signed tickets.
    #[command(subcommand)]
    Tickets(TicketsCmd),
    /// Sets up the fixture venue in the data directory, issues its tickets,
    /// exports the keyset and checks every ticket.
    Demo,
    /// Organizers who sell through the API.
    #[command(subcommand)]
    Organizers(OrganizersCmd),
    /// Moves an embedded shop up to PostgreSQL: its organizers, venues,
    /// events, places, holds, orders, tickets, revocations and messages,
    /// ids kept, checked table by table (nothing is kept unless every
    /// count matches). Stop the shop's server first. Signing keys stay in
    /// the data directory: serve with `--data` naming it (or a copy).
    Migrate {
        /// The embedded shop's data directory.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database to move into, empty (no password in
        /// it: see --database-password-file).
        #[arg(long)]
        to: String,
    },
    /// Serves the booking API (JSON under /api/v1) until interrupted.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// How long a hold keeps its places, in seconds.
        #[arg(long, default_value_t = issuer::http::HOLD_TTL_MS / 1000)]
        hold_seconds: u64,
        /// Holds and orders a second from one address (20 at once); 0: no
        /// limit (a load test from one machine).
        #[arg(long, default_value_t = 5.0)]
        buyer_rate: f64,
        /// Most places one address may hold of an event at once (orders
        /// paid aside); 0: no limit.
        #[arg(long, default_value_t = 40)]
        max_held: u32,
        /// Seconds after which a connection that sends nothing is closed.
        #[arg(long, default_value_t = 20)]
        idle_seconds: u64,
        /// Most connections open at once from one address (buyers behind
        /// one NAT share an address).
        #[arg(long, default_value_t = 64)]
        conns_per_address: usize,
        /// Most connections open at once (live watchers each keep one).
        #[arg(long, default_value_t = 10_000)]
        max_conns: usize,
        /// A payment provider speaking Stripe's protocol
        /// (`https://api.stripe.com`); without it, a sandbox gateway with
        /// Stripe's test cards runs on 127.0.0.1.
        #[arg(long, env = "ISSUER_PAYMENTS_URL")]
        payments_url: Option<String>,
        /// A file holding the provider's secret key (`sk_...`), readable by
        /// its owner only.
        #[arg(long, env = "ISSUER_PAYMENTS_KEY_FILE")]
        payments_key_file: Option<PathBuf>,
        /// A file holding the provider's webhook signing secret (`whsec_...`).
        #[arg(long, env = "ISSUER_WEBHOOK_SECRET_FILE")]
        webhook_secret_file: Option<PathBuf>,
        /// How long to wait for the payment provider's answer, in seconds
        /// (an order whose answer does not come stays pending until the
        /// provider is asked again).
        #[arg(long, default_value_t = 10)]
        payment_timeout_seconds: u64,
        /// Asks the provider about orders pending this long, in seconds.
        #[arg(long, default_value_t = issuer::http::orders::RECONCILE_AFTER_MS / 1000)]
        reconcile_after_seconds: u64,
        /// Sends buyers' messages by SMTP (`smtp://host:25`,
        /// `smtp://user@host:587?tls=required`, `smtps://user@host`);
        /// without it they are written as `.eml` files to the data
        /// directory's `mail/`.
        #[arg(long, env = "ISSUER_SMTP_URL")]
        smtp_url: Option<String>,
        /// A file holding the SMTP user's password, readable by its owner only.
        #[arg(long, env = "ISSUER_SMTP_PASSWORD_FILE")]
        smtp_password_file: Option<PathBuf>,
        /// Who buyers' messages are from.
        #[arg(long, default_value = "Tickets <tickets@localhost>")]
        mail_from: String,
        /// The address buyers reach this API at, for the links in their
        /// messages (default: the address it listens on).
        #[arg(long)]
        public_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum OrganizersCmd {
    /// Adds an organizer and makes its API token, shown once (only its
    /// hash is kept).
    Add {
        #[arg(long)]
        name: String,
        /// Write the token to this file (readable by its owner only)
        /// instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Adds an event, or updates the one with this id.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// When doors open: `now`, a time from now (`+2h`, `-30m`), unix
        /// seconds, or RFC 3339 (`2030-03-17T19:00:00Z`).
        #[arg(long, allow_hyphen_values = true)]
        starts: String,
        /// When it ends, in the same forms (`+5h` is five hours from now).
        #[arg(long, allow_hyphen_values = true)]
        ends: String,
    },
    /// Adds or updates the events of a JSON file: [{id, name, starts_at, ends_at}].
    Import { file: PathBuf },
    /// Lists events.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Makes a new signing key (stored with mode 0600, never printed).
    Generate,
    /// Lists keys: id, state, when made, tickets signed.
    List,
    /// Stops a key from signing new tickets; it stays in keysets for tickets it signed.
    Retire { key_id: String },
    /// Prints the keyset JSON that scanners for these events need.
    ExportKeyset {
        #[arg(long = "event", required = true)]
        events: Vec<u64>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TicketsCmd {
    /// Signs a batch of tickets and writes a QR picture of each, and tickets.csv.
    Issue {
        #[arg(long)]
        event: u64,
        #[arg(long)]
        category: u16,
        /// Number of tickets; with --seat-file, defaults to its number of seats.
        #[arg(long)]
        count: Option<usize>,
        /// One seat label a line; one ticket a seat.
        #[arg(long)]
        seat_file: Option<PathBuf>,
        /// `now`, a time from now (`+2h`, `-30m`), unix seconds or RFC 3339;
        /// defaults to 3 hours before the event starts.
        #[arg(long, allow_hyphen_values = true)]
        valid_from: Option<String>,
        /// In the same forms; defaults to the event's end.
        #[arg(long, allow_hyphen_values = true)]
        valid_until: Option<String>,
        /// Holders may leave and come back in.
        #[arg(long)]
        multi_entry: bool,
        #[arg(long)]
        out: PathBuf,
        /// Also write an SVG of each code.
        #[arg(long)]
        svg: bool,
        /// Pixels a QR module in the PNGs.
        #[arg(long, default_value_t = issue::DEFAULT_SCALE)]
        scale: usize,
        /// Signing key; defaults to the newest active key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Writes an issued batch's pictures and tickets.csv again.
    Export {
        #[arg(long)]
        batch: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        svg: bool,
        #[arg(long, default_value_t = issue::DEFAULT_SCALE)]
        scale: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
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

/// The PostgreSQL settings `--database` names, with the password from
/// its file, or `None` for the embedded database.
fn database(cli: &Cli) -> Result<Option<tokio_postgres::Config>> {
    let Some(url) = &cli.database else {
        if cli.database_password_file.is_some() {
            anyhow::bail!("--database-password-file is for --database");
        }
        return Ok(None);
    };
    postgres_config(url, "--database", cli.database_password_file.as_deref()).map(Some)
}

/// The PostgreSQL settings of address `url` (given as `flag`), with the
/// password from `password_file`: never one in the address, which the
/// process list and logs would show.
fn postgres_config(
    url: &str,
    flag: &str,
    password_file: Option<&std::path::Path>,
) -> Result<tokio_postgres::Config> {
    let mut config = issuer::storage::postgres::config(url)?;
    if config.get_password().is_some() {
        anyhow::bail!(
            "{flag} holds a password, which the process list and logs would show: \
             put it in a file readable by its owner only and give --database-password-file"
        );
    }
    if let Some(path) = password_file {
        config.password(secret_of(Some(path), "--database-password-file")?);
    }
    Ok(config)
}

fn run(cli: Cli) -> Result<()> {
    // Commands that only read refuse a data directory that does not exist.
    let reads_only = matches!(
        cli.command,
        Command::Events(EventsCmd::List { .. })
            | Command::Keys(KeysCmd::List | KeysCmd::ExportKeyset { .. } | KeysCmd::Retire { .. })
            | Command::Tickets(TicketsCmd::Export { .. })
    );
    let database = match cli.command {
        Command::Organizers(_)
        | Command::Serve { .. }
        | Command::Keys(KeysCmd::ExportKeyset { .. }) => database(&cli)?,
        _ => None,
    };
    if let Command::Migrate { from, to } = &cli.command {
        return migrate(from, to, cli.database_password_file.as_deref());
    }
    match cli.command {
        // A shop on PostgreSQL: its events and tickets are there, its keys
        // in the data directory, as are the events of `events add` and
        // their batches.
        Command::Keys(KeysCmd::ExportKeyset { events, out }) if database.is_some() => {
            let config = database.context("a database")?;
            let store = Store::open_existing(&cli.data)?;
            let shop = issuer::storage::postgres::PgStorage::open_blocking_with(config, &cli.data)
                .context("opening the database")?;
            let mut facts = Vec::with_capacity(events.len());
            for id in events {
                facts.push(match shop.event_keys_any(id)? {
                    Some(f) => f,
                    None => keys::event_keys(&store, id)?,
                });
            }
            let keyset = keys::keyset_of(&keys::list(&store)?, &facts, time::now())?;
            return write_keyset(&keyset.to_json(), out);
        }
        Command::Organizers(cmd) => return organizers_cmd(&cli.data, database, cmd),
        Command::Serve {
            listen,
            hold_seconds,
            buyer_rate,
            max_held,
            idle_seconds,
            conns_per_address,
            max_conns,
            payments_url,
            payments_key_file,
            webhook_secret_file,
            payment_timeout_seconds,
            reconcile_after_seconds,
            smtp_url,
            smtp_password_file,
            mail_from,
            public_url,
        } => {
            let mail = MailConfig {
                transport: match smtp_url {
                    Some(url) => {
                        let password = match smtp_password_file {
                            Some(path) => Some(secret_of(Some(&path), "--smtp-password-file")?),
                            None => None,
                        };
                        Some(
                            issuer::mail::Transport::smtp(&url, password)
                                .map_err(anyhow::Error::msg)?,
                        )
                    }
                    None => None,
                },
                from: mail_from
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--mail-from {mail_from:?}: {e}"))?,
                public_url,
            };
            if !(1..=120).contains(&payment_timeout_seconds) {
                anyhow::bail!("--payment-timeout-seconds is 1 to 120");
            }
            if reconcile_after_seconds == 0 {
                anyhow::bail!("--reconcile-after-seconds is at least 1");
            }
            let payment_timing = (
                std::time::Duration::from_secs(payment_timeout_seconds),
                reconcile_after_seconds * 1000,
            );
            let provider = match payments_url {
                Some(url) => Some(Payments {
                    url,
                    key: secret_of(payments_key_file.as_deref(), "--payments-key-file")?,
                    webhook: secret_of(webhook_secret_file.as_deref(), "--webhook-secret-file")?,
                }),
                None => None,
            };
            let limits = issuer::http::Limits {
                idle: std::time::Duration::from_secs(idle_seconds.max(1)),
                per_address: conns_per_address,
                total: max_conns,
            };
            let buyers = (buyer_rate, max_held);
            return serve(
                (&cli.data, database),
                &listen,
                hold_seconds,
                buyers,
                limits,
                (provider, payment_timing),
                mail,
            );
        }
        _ => {}
    }
    let mut store = if reads_only {
        Store::open_existing(&cli.data)?
    } else {
        Store::open(&cli.data)
            .with_context(|| format!("opening data directory {}", cli.data.display()))?
    };
    match cli.command {
        Command::Events(cmd) => events_cmd(&mut store, cmd),
        Command::Keys(cmd) => keys_cmd(&store, cmd),
        Command::Tickets(cmd) => tickets_cmd(&mut store, cmd),
        Command::Demo => demo(&mut store),
        Command::Organizers(_) | Command::Serve { .. } | Command::Migrate { .. } => {
            unreachable!("handled above")
        }
    }
}

fn migrate(
    from: &std::path::Path,
    to: &str,
    password_file: Option<&std::path::Path>,
) -> Result<()> {
    let config = postgres_config(to, "--to", password_file)?;
    let shop = issuer::storage::postgres::PgStorage::open_blocking_with(config, from)
        .context("opening the database")?;
    let report = shop
        .move_up(from)
        .with_context(|| format!("moving the shop of {} up", from.display()))?;
    for (table, n) in &report.tables {
        println!("{n:>10}  {table}");
    }
    println!(
        "moved and checked: {} paid orders ({} in minor units), {} places sold",
        report.paid_orders, report.paid_amount, report.sold_places
    );
    println!(
        "the signing keys stay in {}: serve with --data {} --database ...",
        from.display(),
        from.display()
    );
    Ok(())
}

fn organizers_cmd(
    data: &std::path::Path,
    database: Option<tokio_postgres::Config>,
    cmd: OrganizersCmd,
) -> Result<()> {
    let OrganizersCmd::Add { name, token_file } = cmd;
    let storage: Box<dyn issuer::storage::Storage> = match database {
        Some(config) => Box::new(
            issuer::storage::postgres::PgStorage::open_blocking_with(config, data)
                .context("opening the database")?,
        ),
        None => Box::new(
            issuer::storage::sqlite::SqliteStorage::open(data)
                .with_context(|| format!("opening data directory {}", data.display()))?,
        ),
    };
    let (token, hash) = issuer::http::auth::new_token();
    let id = storage.add_organizer(&name, &hash, time::now())?;
    match token_file {
        Some(path) => {
            issuer::store::write_private(&path, format!("{token}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            println!("organizer {id} added; its token is in {}", path.display());
        }
        None => {
            println!("organizer {id} added; its API token (shown once, keep it secret):");
            println!("{token}");
        }
    }
    Ok(())
}

/// Where buyers' messages go.
struct MailConfig {
    /// `None`: files in the data directory's `mail/`.
    transport: Option<issuer::mail::Transport>,
    from: lettre::message::Mailbox,
    public_url: Option<String>,
}

/// A real payment provider's address and secrets.
struct Payments {
    url: String,
    key: String,
    webhook: String,
}

/// A secret from a file that only its owner can read.
fn secret_of(path: Option<&std::path::Path>, flag: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.with_context(|| format!("with --payments-url, give {flag}"))?;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} can be read by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let secret = std::fs::read_to_string(path)?.trim().to_owned();
    if secret.is_empty() {
        anyhow::bail!("{} is empty", path.display());
    }
    Ok(secret)
}

fn serve(
    (data, database): (&std::path::Path, Option<tokio_postgres::Config>),
    listen: &str,
    hold_seconds: u64,
    (buyer_rate, max_held): (f64, u32),
    limits: issuer::http::Limits,
    (provider, (payment_timeout, reconcile_after_ms)): (
        Option<Payments>,
        (std::time::Duration, u64),
    ),
    mail: MailConfig,
) -> Result<()> {
    if !(buyer_rate >= 0.0 && buyer_rate.is_finite()) {
        anyhow::bail!("--buyer-rate is a number of requests a second, 0 for no limit");
    }
    if !(1..=24 * 3600).contains(&hold_seconds) {
        anyhow::bail!("--hold-seconds is 1 to 86400");
    }
    // A log that cannot be written (stderr closed under a supervisor) is
    // dropped: tracing would otherwise say so on stderr, and panic there.
    tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The data directory (keys, order links' key, mail) is made first,
    // whichever database holds the shop.
    let store =
        Store::open(data).with_context(|| format!("opening data directory {}", data.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (storage, postgres): (std::sync::Arc<dyn issuer::storage::Storage>, _) = match database {
        Some(config) => {
            let pg = runtime
                .block_on(issuer::storage::postgres::PgStorage::open_with(
                    config, data,
                ))
                .context("opening the database")?;
            (std::sync::Arc::new(pg.clone()), Some(pg))
        }
        None => (
            std::sync::Arc::new(
                issuer::storage::sqlite::SqliteStorage::open(data)
                    .with_context(|| format!("opening data directory {}", data.display()))?,
            ),
            None,
        ),
    };
    // A new shop (no organizer sells here yet) opens with the fixture
    // venues and events, on sale: set up by one process of those starting
    // at once on one database.
    let set_up = || -> Result<()> {
        if storage.has_organizers()? {
            return Ok(());
        }
        let (token, hash) = issuer::http::auth::new_token();
        let (_, n) = issuer::shop::open_demo_shop(&*storage, &hash, time::now())?;
        let file = data.join("demo-organizer.token");
        issuer::store::write_private(&file, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        println!(
            "a new shop: {n} demo events on sale; the demo organizer's API token is in {}",
            file.display()
        );
        Ok(())
    };
    let links = data.join("order-links.key");
    match &postgres {
        // Processes sharing a database must share keys: the first one's
        // are recorded (by fingerprint), and a process whose data
        // directory lacks them refuses to start, rather than sign tickets
        // and links the others cannot read.
        Some(pg) => pg.exclusively("set up a new shop", || -> Result<()> {
            set_up()?;
            let (their_links, their_keys) = pg.shop_keys()?;
            let active = match keys::signer(&store, None) {
                Ok(signer) => Some(signer.key_id().to_string()),
                Err(issuer::Error::NoActiveKey) => None,
                Err(e) => return Err(e.into()),
            };
            let copy = "copy keys/, issuer.db and order-links.key from the data directory of \
                        the shop's first process";
            if their_links.is_some() && !links.exists() {
                anyhow::bail!(
                    "{} lacks the shop's order-links.key: {copy}",
                    data.display()
                );
            }
            // Every key the shop signed with must be here: keysets are
            // made from the data directory.
            let mine: Vec<String> = keys::list(&store)?
                .iter()
                .map(|k| k.key_id.to_string())
                .collect();
            if their_keys.iter().any(|k| !mine.contains(k)) {
                anyhow::bail!("{} lacks the shop's signing keys: {copy}", data.display());
            }
            let link_key = issuer::store::secret_key_file(&links)?;
            let fingerprint = shared::hex::encode(&Sha256::digest(link_key)[..8]);
            if their_links.as_ref().is_some_and(|f| *f != fingerprint) {
                anyhow::bail!(
                    "{} holds another order-links.key than the shop's: {copy}",
                    data.display()
                );
            }
            let active = match active {
                Some(id) => id,
                None => keys::generate(&store, time::now())?.key_id.to_string(),
            };
            pg.record_keys(&fingerprint, &active)?;
            Ok(())
        })??,
        None => set_up()?,
    }
    let link_key = issuer::store::secret_key_file(&links)
        .with_context(|| format!("the order links' key in {}", data.display()))?;
    // Paid orders' tickets are signed with the active key; a new shop
    // makes its first.
    let signer = match keys::signer(&store, None) {
        Err(issuer::Error::NoActiveKey) => {
            let key = keys::generate(&store, time::now())?;
            tracing::info!(key = %key.key_id, "made a signing key for tickets");
            keys::signer(&store, None)?
        }
        other => other?,
    };
    drop(store);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let (payments, webhook): (std::sync::Arc<dyn issuer::payments::Provider>, String) =
            match provider {
                Some(p) => (
                    std::sync::Arc::new(issuer::payments::stripe::Stripe::with_timeout(
                        &p.url,
                        &p.key,
                        payment_timeout,
                    )),
                    p.webhook,
                ),
                None => {
                    let own = std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port());
                    let sandbox = issuer::payments::sandbox::start(issuer::payments::sandbox::Config {
                        // Its card that answers too late does so past our wait.
                        hang: payment_timeout + std::time::Duration::from_secs(5),
                        webhook_url: Some(format!("http://{own}/api/v1/payments/webhook")),
                        ..Default::default()
                    })
                    .await?;
                    tracing::info!(sandbox = %sandbox.base_url(), "payments go to the sandbox gateway");
                    (
                        std::sync::Arc::new(issuer::payments::stripe::Stripe::with_timeout(
                            &sandbox.base_url(),
                            &sandbox.secret_key,
                            payment_timeout,
                        )),
                        sandbox.webhook_secret,
                    )
                }
            };
        let mut state = issuer::http::AppState::new(
            storage,
            payments,
            Some(webhook),
            link_key,
        );
        state.hold_ttl_ms = hold_seconds * 1000;
        let signer = std::sync::Arc::new(keys::ActiveSigner::new(data, signer));
        state.signer = Some(signer.clone());
        let transport = match mail.transport {
            Some(t) => t,
            None => {
                let dir = data.join("mail");
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                issuer::mail::Transport::Files(dir)
            }
        };
        let mailer = issuer::mail::Mailer {
            transport,
            from: mail.from,
            public_url: mail.public_url.unwrap_or_else(|| format!("http://{addr}")),
            link_key,
            signer: Some(signer),
        };
        tokio::spawn(std::sync::Arc::new(mailer).run(state.storage.clone()));
        state.max_held = (max_held > 0).then_some(max_held);
        state.buyer_rate = (buyer_rate > 0.0)
            .then(|| std::sync::Arc::new(issuer::http::limit::RateLimit::new(buyer_rate, 20.0)));
        tracing::info!(%addr, data = %data.display(), "serving the booking API");
        println!("issuer serving http://{addr}/api/v1 (Ctrl-C stops)");
        // Pinged within the idle limit, a quiet live watcher stays.
        state.live = std::sync::Arc::new(issuer::http::live::Live::pinging_every(limits.idle / 2));
        tokio::spawn(issuer::http::orders::reconcile(state.clone(), reconcile_after_ms));
        issuer::http::serve(listener, state, limits, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    })
}

fn events_cmd(store: &mut Store, cmd: EventsCmd) -> Result<()> {
    match cmd {
        EventsCmd::Add {
            id,
            name,
            starts,
            ends,
        } => {
            let now = time::now();
            let event = events::Event {
                id,
                name,
                starts_at: time::parse(&starts, now)?,
                ends_at: time::parse(&ends, now)?,
            };
            events::upsert(store, &event)?;
            println!("event {id} saved");
        }
        EventsCmd::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let n = events::import(store, &text)
                .with_context(|| format!("importing {}", file.display()))?;
            println!("{n} events imported");
        }
        EventsCmd::List { json } => {
            let list = events::list(store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            }
            for e in list.iter().filter(|_| !json) {
                println!(
                    "{:>8}  {}  {}  {}",
                    e.id,
                    time::format(e.starts_at.into()),
                    time::format(e.ends_at.into()),
                    e.name
                );
            }
        }
    }
    Ok(())
}

fn keys_cmd(store: &Store, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Generate => {
            let key = keys::generate(store, time::now())?;
            println!(
                "key {} generated (secret in {})",
                key.key_id,
                store.keys_dir().display()
            );
        }
        KeysCmd::List => {
            println!(
                "{:<8}  {:<30}  {:<20}  TICKETS",
                "KEY_ID", "STATE", "CREATED"
            );
            for k in keys::list(store)? {
                let state = match k.retired_at {
                    None => "active".to_owned(),
                    Some(t) => format!("retired {}", time::format(t)),
                };
                println!(
                    "{:<8}  {state:<30}  {:<20}  {}",
                    k.key_id,
                    time::format(k.created_at),
                    k.tickets
                );
            }
        }
        KeysCmd::Retire { key_id } => {
            let key = keys::retire(store, &key_id, time::now())?;
            println!(
                "key {} retired at {}",
                key.key_id,
                time::format(key.retired_at.unwrap_or_default())
            );
        }
        KeysCmd::ExportKeyset { events, out } => {
            write_keyset(
                &keys::export_keyset(store, &events, time::now())?.to_json(),
                out,
            )?;
        }
    }
    Ok(())
}

fn write_keyset(json: &str, out: Option<PathBuf>) -> Result<()> {
    match out {
        Some(path) => std::fs::write(&path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

/// A progress bar on standard error when it is a terminal and the batch is large.
fn progress_bar(len: usize) -> ProgressBar {
    if len < 1000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} tickets  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn tickets_cmd(store: &mut Store, cmd: TicketsCmd) -> Result<()> {
    match cmd {
        TicketsCmd::Issue {
            event,
            category,
            count,
            seat_file,
            valid_from,
            valid_until,
            multi_entry,
            out,
            svg,
            scale,
            key,
        } => {
            let seats = match seat_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(
                        issue::parse_seats(&text)
                            .with_context(|| format!("in {}", path.display()))?,
                    )
                }
                None => None,
            };
            let now = time::now();
            let req = issue::Request {
                event_id: event,
                category_id: category,
                count,
                valid_from: valid_from
                    .as_deref()
                    .map(|t| time::parse(t, now))
                    .transpose()?,
                valid_until: valid_until
                    .as_deref()
                    .map(|t| time::parse(t, now))
                    .transpose()?,
                multi_entry,
                out,
                svg,
                scale,
                key_id: key,
                seats,
            };
            let bar = progress_bar(req.seats.as_ref().map_or(req.count.unwrap_or(0), Vec::len));
            let started = std::time::Instant::now();
            let summary = issue::issue(store, &req, now, &|n| bar.inc(n as u64))?;
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "issued {} tickets for event {} (batch {}, key {}) into {} in {secs:.1} s ({:.0}/s)",
                summary.count,
                summary.event_id,
                summary.batch_id,
                summary.key_id,
                summary.out.display(),
                summary.count as f64 / secs.max(1e-9)
            );
        }
        TicketsCmd::Export {
            batch,
            out,
            svg,
            scale,
        } => {
            let bar = ProgressBar::hidden();
            let n = issue::export(store, batch, &out, svg, scale, &|n| bar.inc(n as u64))?;
            println!("wrote {n} tickets of batch {batch} into {}", out.display());
        }
    }
    Ok(())
}

fn demo(store: &mut Store) -> Result<()> {
    let report = issuer::demo::run(store, time::now())?;
    print!("{report}");
    Ok(())
}
