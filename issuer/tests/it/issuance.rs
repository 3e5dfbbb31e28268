//! Bulk issuance: every ticket is a real QR picture that decodes to a code
//! that verifies, seats are sold once, and bad input loses nothing.

use std::path::Path;
use std::process::Command;

use shared::Verifier;

use crate::{Env, decode_png, read_csv};

const DURING_EVENT: u64 = 1_900_003_600;

#[test]
fn issued_pictures_decode_to_codes_that_verify() {
    let env = Env::new();
    env.generate_key();
    let out = env.path("batch");
    let printed = env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "2",
        "--count",
        "12",
        "--valid-from",
        "2030-03-17T15:00:00Z",
        "--valid-until",
        "1900090000",
        "--svg",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("issued 12 tickets for event 1001"),
        "{printed}"
    );
    let rows = read_csv(&out);
    assert_eq!(rows.len(), 12);
    let verifier = Verifier::new(env.keyset(&[1001]));
    let mut ids = std::collections::HashSet::new();
    for (ticket_id, seat, category, code) in &rows {
        assert!(ids.insert(ticket_id.clone()), "ticket ids repeat");
        assert_eq!((seat.as_str(), category.as_str()), ("", "2"));
        let decoded = decode_png(&out.join(format!("{ticket_id}.png")));
        assert_eq!(
            decoded,
            vec![(code.clone(), 0)],
            "the PNG holds the code at level M"
        );
        let svg = std::fs::read_to_string(out.join(format!("{ticket_id}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "an SVG was written");
        let ticket = verifier.verify(code, DURING_EVENT).unwrap();
        let f = ticket.fields();
        assert_eq!(f.ticket_id.to_string(), *ticket_id);
        assert_eq!((f.event_id, f.category_id, f.multi_entry), (1001, 2, false));
        assert_eq!(
            (f.valid_from, f.valid_until),
            (1_899_990_000, 1_900_090_000)
        );
    }
}

#[test]
fn seat_file_gives_one_ticket_a_seat_and_a_seat_is_sold_once() {
    let env = Env::new();
    env.generate_key();
    let seats = env.path("seats.txt");
    std::fs::write(&seats, "# front row\nA-1-1\nA-1-2\nBox \"3\", left\n").unwrap();
    let out = env.path("seated");
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "3",
        "--multi-entry",
        "--seat-file",
        seats.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(out.join("tickets.csv")).unwrap();
    assert!(
        text.contains(",\"Box \"\"3\"\", left\",3,"),
        "seat quoted in the CSV: {text}"
    );
    let verifier = Verifier::new(env.keyset(&[1001]));
    let mut seats_signed: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| {
            let code = l.rsplit(',').next().unwrap();
            let t = verifier.verify(code, DURING_EVENT).unwrap();
            assert!(t.fields().multi_entry);
            t.fields().seat.clone()
        })
        .collect();
    seats_signed.sort();
    assert_eq!(seats_signed, vec!["A-1-1", "A-1-2", "Box \"3\", left"]);

    // Selling A-1-2 again refuses the whole batch and writes nothing.
    std::fs::write(&seats, "A-1-3\nA-1-2\n").unwrap();
    let again = env.path("again");
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "3",
        "--seat-file",
        seats.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(
        err.contains("seat \"A-1-2\" of event 1001 is already issued"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&again).map(|d| d.count()).unwrap_or(0), 0);
    assert!(
        env.ok(&["keys", "list"]).contains("  3\n"),
        "still 3 tickets recorded"
    );
    // The same seat at another event is fine.
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1002",
        "--category",
        "3",
        "--seat-file",
        seats.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let env = Env::new();
    let out = env.path("out");
    let out = out.to_str().unwrap();
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "1",
        "--out",
        out,
    ]);
    assert!(err.contains("no active signing key"), "{err}");
    env.generate_key();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--event", "999", "--count", "1"],
            "event 999 is not known",
        ),
        (
            &["--event", "1001", "--count", "0"],
            "--count must be from 1",
        ),
        (&["--event", "1001"], "give --count"),
        (
            &[
                "--event",
                "1001",
                "--count",
                "1",
                "--valid-from",
                "yesterday",
            ],
            "not a time",
        ),
        (
            &[
                "--event",
                "1001",
                "--count",
                "1",
                "--valid-from",
                "1900000000",
                "--valid-until",
                "1800000000",
            ],
            "before valid-from",
        ),
    ];
    for (args, expect) in cases {
        let mut full = vec!["tickets", "issue", "--category", "1", "--out", out];
        full.extend_from_slice(args);
        let err = env.fails(&full);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let seats = env.path("seats.txt");
    std::fs::write(&seats, "A-1\nA-2\nA-1\n").unwrap();
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--seat-file",
        seats.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert!(
        err.contains("line 3") && err.contains("repeats line 1"),
        "{err}"
    );
    std::fs::write(&seats, "A-1\nA-2\n").unwrap();
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "3",
        "--seat-file",
        seats.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert!(
        err.contains("does not match the seat file's 2 seats"),
        "{err}"
    );
    // Nothing above was issued.
    assert!(env.ok(&["keys", "list"]).contains("  0\n"));

    // A directory that already holds a batch is not overwritten.
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "1",
        "--out",
        out,
    ]);
    let before = std::fs::read_to_string(env.path("out").join("tickets.csv")).unwrap();
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "1",
        "--out",
        out,
    ]);
    assert!(err.contains("already holds a batch"), "{err}");
    assert_eq!(
        std::fs::read_to_string(env.path("out").join("tickets.csv")).unwrap(),
        before
    );
}

#[test]
fn a_recorded_batch_can_be_written_again() {
    let env = Env::new();
    env.generate_key();
    let first = env.path("first");
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1002",
        "--category",
        "1",
        "--count",
        "3",
        "--out",
        first.to_str().unwrap(),
    ]);
    let copy = env.path("copy");
    let printed = env.ok(&[
        "tickets",
        "export",
        "--batch",
        "1",
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert!(printed.contains("wrote 3 tickets"), "{printed}");
    let mut a = read_csv(&first);
    let mut b = read_csv(&copy);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (id, _, _, code) in &b {
        assert_eq!(
            decode_png(&copy.join(format!("{id}.png"))),
            vec![(code.clone(), 0)]
        );
    }
    let err = env.fails(&[
        "tickets",
        "export",
        "--batch",
        "9",
        "--out",
        env.path("none").to_str().unwrap(),
    ]);
    assert!(err.contains("batch 9 does not exist"), "{err}");
}

#[test]
fn demo_issues_the_fixture_venue_and_every_ticket_verifies() {
    let env = Env::new();
    let report = env.ok(&["demo"]);
    assert!(report.contains("check: 500/500"), "{report}");
    assert!(report.contains("check: 200/200"), "{report}");
    let again = env.ok(&["demo"]);
    assert!(again.contains("already issued, kept"), "{again}");
    let listed = env.ok(&["keys", "list"]);
    assert_eq!(listed.lines().count(), 2, "one key, reused: {listed}");
}

#[test]
fn rfc3339_and_unix_times_name_the_same_instant_and_events_list() {
    let env = Env::new();
    env.ok(&[
        "events",
        "add",
        "--id",
        "5",
        "--name",
        "Matinee",
        "--starts",
        "2030-03-17T17:46:40Z",
        "--ends",
        "1900010000",
    ]);
    let listed = env.ok(&["events", "list", "--json"]);
    let events: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let matinee = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == 5)
        .unwrap();
    assert_eq!(matinee["starts_at"], 1_900_000_000);
    let err = env.fails(&[
        "events",
        "add",
        "--id",
        "6",
        "--name",
        "Backwards",
        "--starts",
        "1900010000",
        "--ends",
        "1900000000",
    ]);
    assert!(err.contains("ends before it starts"), "{err}");
    let bad = env.path("bad.json");
    std::fs::write(&bad, "[{\"id\": 1}]").unwrap();
    let err = env.fails(&["events", "import", bad.to_str().unwrap()]);
    assert!(err.contains("not a JSON list"), "{err}");
}

/// The README's walk-through makes an event happening tonight, so its
/// tickets pass a gate that checks at the real clock (`scanner check` and
/// `scanner station` take no time of their own).
#[test]
fn an_event_added_for_tonight_issues_tickets_valid_now() {
    let env = Env::new();
    let before = issuer::time::now();
    env.ok(&[
        "events",
        "add",
        "--id",
        "42",
        "--name",
        "Jazz Night",
        "--starts",
        "+1h",
        "--ends",
        "+5h",
    ]);
    let after = issuer::time::now();
    env.generate_key();
    let out = env.path("tickets-42");
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "42",
        "--category",
        "1",
        "--count",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let listed = env.ok(&["events", "list", "--json"]);
    let events: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let jazz = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == 42)
        .unwrap();
    let starts = jazz["starts_at"].as_u64().unwrap();
    assert!((before + 3600..=after + 3600).contains(&starts), "{jazz}");
    assert_eq!(jazz["ends_at"].as_u64().unwrap() - starts, 4 * 3600);
    let verifier = Verifier::new(env.keyset(&[42])).only_events([42]);
    for (_, _, _, code) in read_csv(&out) {
        let ticket = verifier.verify(&code, issuer::time::now());
        assert!(ticket.is_ok(), "{code} is refused now: {:?}", ticket.err());
    }
    // A time before now, written with a leading `-`, is a value, not a flag.
    env.ok(&[
        "events", "add", "--id", "43", "--name", "Matinee", "--starts", "-2h", "--ends", "now",
    ]);
    let err = env.fails(&[
        "events", "add", "--id", "44", "--name", "Later", "--starts", "in 2h", "--ends", "+3h",
    ]);
    assert!(
        err.contains("give `now`, a time from now such as +2h"),
        "{err}"
    );
}

#[test]
fn ticket_codes_on_disk_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.generate_key();
    let out = env.path("batch");
    env.ok(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.data()), 0o700, "the data directory");
    for file in [env.data().join("issuer.db"), out.join("tickets.csv")] {
        assert_eq!(mode(&file) & 0o077, 0, "{}", file.display());
    }
}

#[test]
fn a_mistyped_data_directory_is_an_error_not_a_new_shop() {
    let env = Env::new();
    let typo = env.path("dta");
    for args in [["events", "list"], ["keys", "list"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_issuer"))
            .arg("--data")
            .arg(&typo)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not an issuer data directory"), "{err}");
        assert!(!typo.exists(), "nothing was created");
    }
}

/// An `issuer.db` that is not SQLite: named once, with what to do, instead
/// of SQLite's words said three times over.
#[test]
fn a_corrupt_issuer_database_is_named_once_with_what_to_do() {
    let env = Env::new();
    let db = env.data().join("issuer.db");
    std::fs::write(&db, b"garbage ".repeat(512)).unwrap();
    for args in [&["events", "list"][..], &["keys", "generate"]] {
        let err = env.fails(args);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(err.matches("is not an issuer database").count(), 1, "{err}");
        assert!(!err.contains("file is not a database"), "{err}");
        assert!(err.contains("restore the file from a backup"), "{err}");
    }
}
