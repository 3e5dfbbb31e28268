//! `scanner`: the gate station's command line. Parses arguments and calls the library.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scanner::gate::{Gate, Provision};
use scanner::{decode, report};
use shared::{Direction, ResultCode, Verifier};

#[derive(Parser)]
#[command(
    version,
    about = "Gate station: reads ticket codes, verifies them offline, records every scan"
)]
struct Cli {
    /// The gate's local database (device identity, keyset, redemption log).
    #[arg(long, global = true, default_value = "scanner.db")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verifies codes against a keyset, recording nothing.
    Verify {
        /// The keyset JSON exported by the issuer.
        #[arg(long)]
        keyset: PathBuf,
        /// Unix seconds to verify at; defaults to the clock.
        #[arg(long)]
        now: Option<u64>,
        /// Seconds of clock drift tolerated at each end of a ticket's validity.
        #[arg(long, default_value_t = shared::DEFAULT_SKEW_SECS)]
        skew: u32,
        /// Admit only this event (repeatable); by default every event the keyset covers.
        #[arg(long = "event")]
        events: Vec<u64>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// Codes, or `-` to read one a line from standard input.
        #[arg(required = true)]
        codes: Vec<String>,
    },
    /// Prints the text of every QR code in the pictures, one a line.
    Decode {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Provisions (or re-provisions) this device's database.
    Init {
        /// The keyset JSON exported by the issuer.
        #[arg(long)]
        keyset: PathBuf,
        #[arg(long)]
        device_name: String,
        /// The gate this device stands at, shown to other gates.
        #[arg(long, default_value = "")]
        gate: String,
        /// Admit only this event (repeatable); by default every event the keyset covers.
        #[arg(long = "event")]
        events: Vec<u64>,
        #[arg(long, default_value_t = shared::DEFAULT_SKEW_SECS)]
        skew: u32,
    },
    /// The revocation list.
    #[command(subcommand)]
    Revocations(RevocationsCmd),
    /// Checks codes, admits or refuses, and records every scan.
    Check {
        /// Unix seconds to check at; defaults to the clock.
        #[arg(long)]
        now: Option<u64>,
        #[arg(long, default_value = "entry")]
        direction: Direction,
        #[arg(long)]
        json: bool,
        /// Codes, or `-` to read one a line from standard input.
        #[arg(required = true)]
        codes: Vec<String>,
    },
    /// Decodes pictures and checks every code found, as `check` does.
    Scan {
        #[arg(long = "image", required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        now: Option<u64>,
        #[arg(long, default_value = "entry")]
        direction: Direction,
        #[arg(long)]
        json: bool,
    },
    /// Serves the gate tablet's page; with --stdin also reads a wedge scanner's lines.
    Station {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Check every line typed on standard input (a keyboard-wedge scanner on a console).
        #[arg(long)]
        stdin: bool,
        /// Seconds between background syncs with the node set by `scanner enroll --server`.
        #[arg(long, default_value_t = 5)]
        sync_every: u64,
        /// Seconds a scan's result stays on screen before the page shows
        /// "Ready" for the next holder.
        #[arg(long, default_value_t = scanner::station::RESULT_SHOWN_FOR.as_secs())]
        result_secs: u64,
    },
    /// Reads codes from a camera, checks and records each (built with `--features camera`).
    Camera {
        /// The camera's index (0 is /dev/video0).
        #[arg(long, default_value_t = 0)]
        device: u32,
        #[arg(long, default_value = "entry")]
        direction: Direction,
        #[arg(long)]
        json: bool,
    },
    /// Registers this device with gate-sync, using a token from `gate-sync devices enroll`.
    Enroll {
        /// The gate-sync node, e.g. http://10.0.0.2:8090; remembered.
        #[arg(long)]
        server: String,
        /// The one-time enrollment token (tokens made before `gs_` prefixes
        /// may start with `-`, which is taken as the token here too).
        #[arg(
            long,
            allow_hyphen_values = true,
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// A file holding the enrollment token, kept out of the process list.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
    },
    /// Pushes this device's scans to gate-sync and pulls the other gates' (enroll first).
    Sync,
    /// Scans by result, admitted, inside now, last scan.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RevocationsCmd {
    /// Replaces the revocation list: one `EVENT_ID TICKET_ID` (or `TICKET_ID`) a line.
    Import { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify {
            keyset,
            now,
            skew,
            events,
            json,
            codes,
        } => verify(&keyset, now, skew, events, json, &codes),
        Command::Decode { files } => Ok(decode_files(&files)),
        Command::Init {
            keyset,
            device_name,
            gate,
            events,
            skew,
        } => init(&cli.db, &keyset, device_name, gate, events, skew),
        Command::Revocations(RevocationsCmd::Import { file }) => import_revocations(&cli.db, &file),
        Command::Check {
            now,
            direction,
            json,
            codes,
        } => check(&cli.db, now, direction, json, &codes),
        Command::Scan {
            images,
            now,
            direction,
            json,
        } => scan(&cli.db, &images, now, direction, json),
        Command::Stats { json } => stats(&cli.db, json),
        Command::Sync => sync(&cli.db),
        Command::Enroll {
            server,
            token,
            token_file,
        } => enroll(&cli.db, &server, token, token_file.as_deref()),
        Command::Station {
            listen,
            stdin,
            sync_every,
            result_secs,
        } => station(&cli.db, &listen, stdin, sync_every, result_secs),
        Command::Camera {
            device,
            direction,
            json,
        } => camera(&cli.db, device, direction, json),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", error_line(&e));
        ExitCode::from(2)
    })
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

use scanner::unix_now_ms;

/// Exit status 0 when every code was admitted, 1 when any was refused.
fn status(all_ok: bool) -> ExitCode {
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Calls `each` on every code: the arguments, and for `-` every non-blank
/// line of standard input as soon as it arrives (bytes that are not UTF-8
/// become a code that fails to parse).
fn for_each_code(codes: &[String], mut each: impl FnMut(&str)) -> anyhow::Result<()> {
    for code in codes {
        if code != "-" {
            each(code);
            continue;
        }
        let mut input = std::io::stdin().lock();
        let mut buf = Vec::new();
        while input
            .read_until(b'\n', &mut buf)
            .context("reading standard input")?
            > 0
        {
            let line = String::from_utf8_lossy(&buf);
            if !line.trim().is_empty() {
                each(&line);
            }
            buf.clear();
        }
    }
    Ok(())
}

/// Prints one answer line and flushes it: an operator is waiting.
fn answer_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn verify(
    keyset: &Path,
    now: Option<u64>,
    skew: u32,
    events: Vec<u64>,
    json: bool,
    codes: &[String],
) -> anyhow::Result<ExitCode> {
    let keyset = scanner::load_keyset(keyset)?;
    if let Some(missing) = events
        .iter()
        .find(|e| !keyset.entries().any(|k| k.event_ids.contains(e)))
    {
        eprintln!(
            "warning: no key in the keyset vouches for event {missing}; its tickets will be refused"
        );
    }
    let verifier = Verifier::new(keyset).with_skew(skew).only_events(events);
    let mut all_ok = true;
    for_each_code(codes, |code| {
        let outcome = verifier.verify(code, now.unwrap_or_else(|| unix_now_ms() / 1000));
        all_ok &= report::result_code(&outcome) == ResultCode::Ok;
        answer_line(&if json {
            serde_json::Value::Object(report::to_json(&outcome)).to_string()
        } else {
            report::to_line(&outcome)
        });
    })?;
    Ok(status(all_ok))
}

fn decode_files(files: &[PathBuf]) -> ExitCode {
    let mut all_ok = true;
    for file in files {
        match decode::decode_file(file) {
            Ok(texts) => texts.iter().for_each(|t| println!("{t}")),
            Err(e) => {
                all_ok = false;
                eprintln!("{}: {e}", file.display());
            }
        }
    }
    status(all_ok)
}

fn init(
    db: &Path,
    keyset: &Path,
    device_name: String,
    gate: String,
    events: Vec<u64>,
    skew_secs: u32,
) -> anyhow::Result<ExitCode> {
    let (keyset_json, _) = scanner::read_keyset(keyset)?;
    let p = Provision {
        keyset_json,
        device_name,
        gate,
        events,
        skew_secs,
    };
    let g = Gate::init(db, &p, unix_now_ms())?;
    println!(
        "device {} ({}) at gate {:?} provisioned in {}: {} keys",
        g.device().id,
        g.device().name,
        g.device().gate,
        db.display(),
        g.verifier().keyset().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn import_revocations(db: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let n = Gate::open(db)?.import_revocations(&text)?;
    println!("{n} revoked tickets loaded");
    Ok(ExitCode::SUCCESS)
}

/// Checks one code and prints the answer; returns whether it was admitted.
/// A failure to record is shown as an error, never as an admission.
fn check_one(
    gate: &mut Gate,
    code: &str,
    direction: Direction,
    now: Option<u64>,
    json: bool,
    image: Option<&Path>,
) -> bool {
    let now_ms = now.map_or_else(unix_now_ms, |s| s * 1000);
    match gate.check(code, direction, now_ms) {
        Ok(c) => {
            answer_line(&if json {
                let mut obj = report::checked_json(&c);
                if let Some(image) = image {
                    obj.insert("image".into(), image.display().to_string().into());
                }
                serde_json::Value::Object(obj).to_string()
            } else {
                let mut line = report::to_line(&c.outcome);
                if direction == Direction::Exit {
                    line.push_str("  (exit)");
                }
                image.map_or(line.clone(), |i| format!("{}  {line}", i.display()))
            });
            c.record.result == ResultCode::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            answer_line(&if json {
                serde_json::json!({"result": "error", "reason": e.to_string()}).to_string()
            } else {
                format!("ERROR  {e}")
            });
            false
        }
    }
}

fn check(
    db: &Path,
    now: Option<u64>,
    direction: Direction,
    json: bool,
    codes: &[String],
) -> anyhow::Result<ExitCode> {
    let mut gate = Gate::open(db)?;
    let mut all_ok = true;
    for_each_code(codes, |code| {
        all_ok &= check_one(&mut gate, code, direction, now, json, None);
    })?;
    Ok(status(all_ok))
}

fn scan(
    db: &Path,
    images: &[PathBuf],
    now: Option<u64>,
    direction: Direction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut gate = Gate::open(db)?;
    let mut all_ok = true;
    for image in images {
        match decode::decode_file(image) {
            Ok(texts) => {
                for text in texts {
                    all_ok &= check_one(&mut gate, &text, direction, now, json, Some(image));
                }
            }
            Err(e) => {
                all_ok = false;
                eprintln!("{}: {e}", image.display());
            }
        }
    }
    Ok(status(all_ok))
}

fn stats(db: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let stats = Gate::open(db)?.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("scans     {}", stats.scans);
    for (result, n) in &stats.by_result {
        println!("  {result:<17}{n}");
    }
    println!("admitted  {}", stats.admitted);
    println!("inside    {}", stats.inside);
    for (device, n) in &stats.flagged {
        println!(
            "FLAGGED   device {device} wrote {n} record(s) twice: faulty or hostile; ask the organizer to revoke it"
        );
    }
    if let Some(s) = &stats.last_scan {
        println!(
            "last scan {}  {}  gate {:?}  device {:?}",
            scanner::gate::format_ms(s.wall_ms),
            s.result,
            s.gate,
            s.device_name
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn station(
    db: &Path,
    listen: &str,
    stdin: bool,
    sync_every: u64,
    result_secs: u64,
) -> anyhow::Result<ExitCode> {
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
    let gate = Gate::open(db)?;
    let state = scanner::station::AppState::new(gate)
        .with_result_shown_for(std::time::Duration::from_secs(result_secs.max(1)));
    let every = std::time::Duration::from_secs(sync_every.max(1));
    scanner::station::spawn_sync_loop(db.to_owned(), every, Some(state.clone()));
    if stdin {
        let wedge = state.clone();
        std::thread::spawn(move || {
            let codes = ["-".to_owned()];
            let result = for_each_code(&codes, |code| {
                if let Err(e) = wedge.check_blocking(code, Direction::Entry, unix_now_ms()) {
                    tracing::error!(error = %e, "wedge scan not recorded");
                }
            });
            if let Err(e) = result {
                tracing::error!(error = %e, "wedge input closed");
            }
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        tracing::info!(address = %listener.local_addr()?, db = %db.display(), "station serving");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        scanner::station::run(listener, state, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "camera")]
fn camera(db: &Path, device: u32, direction: Direction, json: bool) -> anyhow::Result<ExitCode> {
    let mut gate = Gate::open(db)?;
    scanner::camera::run(device, |code| {
        check_one(&mut gate, code, direction, None, json, None);
        true
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "camera"))]
fn camera(
    _db: &Path,
    _device: u32,
    _direction: Direction,
    _json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this scanner was built without camera support: build it with `cargo build -p scanner --features camera`"
    )
}

fn sync(db: &Path) -> anyhow::Result<ExitCode> {
    let mut gate = Gate::open(db)?;
    let report = scanner::sync::sync_once(&mut gate, unix_now_ms())?;
    println!(
        "pushed {} records, pulled {} from other gates",
        report.pushed, report.pulled
    );
    if let Some(n) = report.revocations {
        println!("revocation list: {n} tickets");
    }
    if report.keyset_updated {
        println!("keyset updated");
    }
    Ok(ExitCode::SUCCESS)
}

fn enroll(
    db: &Path,
    server: &str,
    token: Option<String>,
    token_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let token = match (token, token_file) {
        (Some(t), _) => t,
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?,
        (None, None) => anyhow::bail!("give --token or --token-file"),
    };
    let mut gate = Gate::open(db)?;
    scanner::sync::enroll(&mut gate, server, token.trim())?;
    println!("device {} enrolled with {server}", gate.device().id);
    Ok(ExitCode::SUCCESS)
}
