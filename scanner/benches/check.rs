//! Durable checks per second and their latency: verify, revocation look-up,
//! redemption state, append to the log, commit with `synchronous=FULL`, one
//! code after another as a gate does. Measured in the same run: the floor
//! under it (a bare one-row durable SQLite commit on the same disk) and
//! verification alone.
//!
//!     cargo bench -p scanner --bench check [-- COUNT]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use scanner::gate::{Gate, Provision};
use shared::code::Signer;
use shared::{Direction, Keyset, TicketFields, TicketId};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    println!(
        "{name:<44} {:>7.0}/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        lat.len() as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
}

fn main() {
    let count: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000);
    let signer = Signer::new(SigningKey::from_bytes(&[9; 32]));
    let mut keyset = Keyset::new();
    keyset.insert(signer.verifying_key(), [1001]);
    let codes: Vec<String> = (0..count)
        .map(|n| {
            let mut id = [0u8; 16];
            id[12..].copy_from_slice(&n.to_be_bytes());
            signer
                .encode(&TicketFields {
                    event_id: 1001,
                    ticket_id: TicketId(id),
                    category_id: 1,
                    multi_entry: false,
                    valid_from: 1_900_000_000,
                    valid_until: 1_900_086_400,
                    seat: String::new(),
                })
                .unwrap()
        })
        .collect();
    // On the project's own disk, like a gate's database, not a RAM-backed /tmp.
    let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let provision = Provision {
        keyset_json: keyset.to_json(),
        device_name: "bench".into(),
        gate: "Main".into(),
        events: vec![],
        skew_secs: 300,
    };
    let mut gate = Gate::init(&tmp.path().join("gate.db"), &provision, 0).unwrap();
    let now_ms = 1_900_003_600_000;

    // The floor: one durable one-row commit at a time, same settings.
    let conn = rusqlite::Connection::open(tmp.path().join("floor.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v TEXT)", [])
        .unwrap();
    let mut lat = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        conn.execute("INSERT INTO t (i, v) VALUES (?1, 'x')", [i])
            .unwrap();
        lat.push(t.elapsed());
    }
    report(
        "SQLite one-row durable commit (floor)",
        lat,
        start.elapsed(),
    );

    let mut lat = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for code in &codes {
        let t = Instant::now();
        assert!(gate.verifier().verify(code, now_ms / 1000).is_ok());
        lat.push(t.elapsed());
    }
    report("verify only (no state, no log)", lat, start.elapsed());

    for (label, direction) in [
        ("durable check, every code admitted", Direction::Entry),
        (
            "durable check, every code refused (again)",
            Direction::Entry,
        ),
    ] {
        let mut lat = Vec::with_capacity(count as usize);
        let start = Instant::now();
        for code in &codes {
            let t = Instant::now();
            gate.check(code, direction, now_ms).unwrap();
            lat.push(t.elapsed());
        }
        report(label, lat, start.elapsed());
    }
}
