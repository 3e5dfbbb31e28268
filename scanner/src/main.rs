//! `scanner`: the gate station's command line. Parses arguments and calls the library.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scanner::{decode, report};
use shared::{ResultCode, Verifier};

#[derive(Parser)]
#[command(
    version,
    about = "Gate station: reads ticket codes and verifies them offline"
)]
struct Cli {
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Verify {
            keyset,
            now,
            skew,
            events,
            json,
            codes,
        } => verify(keyset, now, skew, events, json, codes),
        Command::Decode { files } => decode_files(files),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn verify(
    keyset: PathBuf,
    now: Option<u64>,
    skew: u32,
    events: Vec<u64>,
    json: bool,
    codes: Vec<String>,
) -> ExitCode {
    let keyset = match scanner::load_keyset(&keyset) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
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
    let stdout = std::io::stdout();
    let mut answer = |code: &str| {
        let outcome = verifier.verify(code, now.unwrap_or_else(unix_now));
        all_ok &= report::result_code(&outcome) == ResultCode::Ok;
        let line = if json {
            serde_json::Value::Object(report::to_json(&outcome)).to_string()
        } else {
            report::to_line(&outcome)
        };
        // Answer each code at once: a wedge scanner's operator is waiting.
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    for code in &codes {
        if code != "-" {
            answer(code);
            continue;
        }
        let mut input = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    // Bytes that are not UTF-8 become a code that fails to parse.
                    let line = String::from_utf8_lossy(&buf);
                    if !line.trim().is_empty() {
                        answer(&line);
                    }
                }
                Err(e) => {
                    eprintln!("error: reading standard input: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn decode_files(files: Vec<PathBuf>) -> ExitCode {
    let mut all_ok = true;
    for file in &files {
        match decode::decode_file(file) {
            Ok(texts) => texts.iter().for_each(|t| println!("{t}")),
            Err(e) => {
                all_ok = false;
                eprintln!("{}: {e}", file.display());
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
