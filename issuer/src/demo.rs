//! The demo: the fixture venue's events, a signing key, two batches of tickets
//! for the opening night, the keyset for scanners, and a check that every
//! issued ticket verifies. Running it again reuses what is already there.

use std::fmt::Write as _;
use std::path::Path;

use shared::{ResultCode, Verifier};

use crate::{Error, Store, events, issue, keys};

/// The fixture event the demo issues for.
pub const DEMO_EVENT: u64 = 1001;

/// Runs the demo in `store`'s data directory and returns what it did, for a person.
pub fn run(store: &mut Store, now: u64) -> Result<String, Error> {
    let mut report = String::new();
    let n = events::import(store, fixtures::EVENTS_JSON)?;
    let _ = writeln!(report, "events: {n} fixture events loaded");
    if keys::list(store)?.iter().all(|k| k.retired_at.is_some()) {
        let key = keys::generate(store, now)?;
        let _ = writeln!(report, "keys: generated signing key {}", key.key_id);
    }
    let demo_dir = store.dir().join("demo");
    let seated = demo_dir.join("event-1001-hall-a");
    let standing = demo_dir.join("event-1001-standing");
    let batches = [
        (
            seated.as_path(),
            3,
            Some(issue::parse_seats(fixtures::HALL_A_SEATS)?),
            None,
            false,
        ),
        (standing.as_path(), 1, None, Some(200), true),
    ];
    for (out, category_id, seats, count, multi_entry) in batches {
        if out.join("tickets.csv").exists() {
            let _ = writeln!(report, "tickets: {} already issued, kept", out.display());
            continue;
        }
        let req = issue::Request {
            event_id: DEMO_EVENT,
            category_id,
            count,
            seats,
            valid_from: None,
            valid_until: None,
            multi_entry,
            out: out.to_owned(),
            svg: false,
            scale: issue::DEFAULT_SCALE,
            key_id: None,
        };
        let s = issue::issue(store, &req, now, &|_| {})?;
        let _ = writeln!(
            report,
            "tickets: issued {} (batch {}) into {}",
            s.count,
            s.batch_id,
            out.display()
        );
    }
    let all_events: Vec<u64> = events::list(store)?.iter().map(|e| e.id).collect();
    let keyset = keys::export_keyset(store, &all_events, now)?;
    let keyset_path = demo_dir.join("keyset.json");
    std::fs::write(&keyset_path, keyset.to_json() + "\n")
        .map_err(|e| Error::io(&keyset_path, e))?;
    let _ = writeln!(
        report,
        "keyset: {} keys written to {}",
        keyset.len(),
        keyset_path.display()
    );

    // Every issued ticket must verify while its event is on.
    let event = events::get(store, DEMO_EVENT)?;
    let verifier = Verifier::new(keyset).only_events([DEMO_EVENT]);
    for dir in [&seated, &standing] {
        let (ok, total) = verify_csv(&verifier, dir, event.starts_at.into())?;
        let _ = writeln!(
            report,
            "check: {ok}/{total} codes in {} verify as ok",
            dir.display()
        );
        if ok != total {
            return Err(Error::Invalid(format!(
                "{} codes in {} failed to verify",
                total - ok,
                dir.display()
            )));
        }
    }
    let first_png = first_png(&seated)?;
    let _ = write!(
        report,
        "\nTry a gate (the demo event starts at unix {start}):\n  \
         cargo run -p scanner -- decode {png} \\\n    \
         | cargo run -p scanner -- verify --keyset {keyset} --now {start} --json -\n",
        start = event.starts_at,
        png = first_png.display(),
        keyset = keyset_path.display(),
    );
    Ok(report)
}

/// Verifies every code of a batch's `tickets.csv`; returns (ok, total).
fn verify_csv(verifier: &Verifier, dir: &Path, now: u64) -> Result<(usize, usize), Error> {
    let path = dir.join("tickets.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut ok = 0;
    let mut total = 0;
    for line in text.lines().skip(1) {
        // The code is the last field and never holds a comma.
        let code = line.rsplit(',').next().unwrap_or_default();
        total += 1;
        let result = verifier
            .verify(code, now)
            .map_or_else(|r| r.result, |_| ResultCode::Ok);
        ok += usize::from(result == ResultCode::Ok);
    }
    Ok((ok, total))
}

fn first_png(dir: &Path) -> Result<std::path::PathBuf, Error> {
    let mut pngs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    pngs.into_iter()
        .next()
        .ok_or_else(|| Error::Invalid(format!("no pictures in {}", dir.display())))
}
