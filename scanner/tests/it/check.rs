//! `scanner check`: every result code, redemption, re-entry, revocation, the
//! log, and bad input, through the real binary on a real SQLite file.

use std::path::{Path, PathBuf};

use serde_json::Value;
use shared::code::Signer;
use shared::{TicketFields, TicketId};

use crate::{json_lines, scanner, vector_keyset};

pub const NOW: u64 = 1_900_003_600;

/// The spec vectors' signing key: tests make their own codes with it.
pub fn signer() -> Signer {
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let seed = shared::hex::decode::<32>(v["signing_seed_hex"].as_str().unwrap()).unwrap();
    Signer::new(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A signed code for event 1001 with ticket id `n`.
pub fn code(n: u32, multi_entry: bool) -> String {
    let mut id = [0u8; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    signer()
        .encode(&TicketFields {
            event_id: 1001,
            ticket_id: TicketId(id),
            category_id: 1,
            multi_entry,
            valid_from: 1_900_000_000,
            valid_until: 1_900_086_400,
            seat: String::new(),
        })
        .unwrap()
}

/// A provisioned gate database in a temporary directory.
pub struct Station {
    pub tmp: tempfile::TempDir,
    pub db: PathBuf,
}

impl Station {
    pub fn new(name: &str, gate: &str, extra: &[&str]) -> Station {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("gate.db");
        let keyset = vector_keyset(tmp.path());
        let mut args = vec![
            "--db",
            db.to_str().unwrap(),
            "init",
            "--keyset",
            &keyset,
            "--device-name",
            name,
            "--gate",
            gate,
        ];
        args.extend_from_slice(extra);
        let out = scanner(&args, b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Station { tmp, db }
    }

    pub fn db(&self) -> &str {
        self.db.to_str().unwrap()
    }

    /// `check --json` of each code at `now`, with extra flags.
    pub fn check(&self, now: u64, extra: &[&str], codes: &[&str]) -> Vec<Value> {
        let now = now.to_string();
        let mut args = vec!["--db", self.db(), "check", "--now", &now, "--json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(codes);
        json_lines(&scanner(&args, b""))
    }

    pub fn result(&self, now: u64, extra: &[&str], code: &str) -> String {
        self.check(now, extra, &[code])[0]["result"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn log(&self) -> Vec<shared::ScanRecord> {
        scanner::gate::Gate::open(Path::new(&self.db))
            .unwrap()
            .log()
            .unwrap()
    }
}

fn vector(name: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let case = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    (
        case["code"].as_str().unwrap().to_owned(),
        case["now"].as_u64().unwrap(),
    )
}

#[test]
fn every_result_code_is_reached_through_check() {
    let st = Station::new("tablet-1", "North", &[]);
    let cases = [
        ("not a ticket", "invalid"),
        ("signature byte flipped", "invalid"),
        ("unknown key", "unknown_key"),
        ("event not covered by key", "wrong_event"),
        ("before valid_from beyond skew", "not_yet_valid"),
        ("after valid_until beyond skew", "expired"),
        ("valid reserved seat", "ok"),
    ];
    for (name, want) in cases {
        let (code, now) = vector(name);
        assert_eq!(st.result(now, &[], &code), want, "{name}");
    }
    let (seat, now) = vector("valid reserved seat");
    assert_eq!(st.result(now, &[], &seat), "already_redeemed");
    let revoked = code(77, false);
    let list = st.tmp.path().join("revoked.txt");
    let ticket_77 = format!("{:032x}", 77);
    std::fs::write(&list, format!("# refunds\n1001 {ticket_77}\n")).unwrap();
    let out = scanner(
        &[
            "--db",
            st.db(),
            "revocations",
            "import",
            list.to_str().unwrap(),
        ],
        b"",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 revoked"));
    assert_eq!(st.result(NOW, &[], &revoked), "revoked");
    // A gate set to another event refuses with wrong_event too.
    let other = Station::new("tablet-2", "South", &["--event", "1002"]);
    assert_eq!(other.result(NOW, &[], &code(1, false)), "wrong_event");
    // Every attempt is in the log, refused ones too, numbered without gaps.
    let log = st.log();
    assert_eq!(log.len(), cases.len() + 2);
    assert!(log.iter().enumerate().all(|(i, r)| r.idx == i as u64 + 1));
}

#[test]
fn a_second_entry_of_a_single_entry_ticket_names_the_first_admission() {
    let st = Station::new("tablet-7", "East 3", &[]);
    let c = code(1, false);
    let first = st.check(NOW, &[], &[&c]);
    assert_eq!(first[0]["result"], "ok");
    let again = st.check(NOW + 60, &[], &[&c, &format!("  {c}\r\n")]);
    for answer in &again {
        assert_eq!(answer["result"], "already_redeemed");
        let fa = &answer["first_admission"];
        assert_eq!(fa["gate"], "East 3");
        assert_eq!(fa["device_name"], "tablet-7");
        assert_eq!(fa["at_ms"], NOW * 1000);
        assert_eq!(fa["at"], "2030-03-17T18:46:40Z");
        assert_eq!(fa["device_id"], first[0]["device_id"]);
    }
    // Leaving and coming back does not help a single-entry ticket.
    assert_eq!(st.result(NOW + 120, &["--direction", "exit"], &c), "ok");
    assert_eq!(st.result(NOW + 180, &[], &c), "already_redeemed");
}

#[test]
fn multi_entry_tickets_re_enter_after_an_exit() {
    let st = Station::new("t", "Main", &[]);
    let c = code(2, true);
    let flow = [
        ("entry", "ok"),
        ("entry", "already_redeemed"),
        ("exit", "ok"),
        ("entry", "ok"),
        ("exit", "ok"),
        ("entry", "ok"),
    ];
    for (i, (direction, want)) in flow.iter().enumerate() {
        assert_eq!(
            st.result(NOW + i as u64, &["--direction", direction], &c),
            *want,
            "step {i}"
        );
    }
    let stats = scanner(&["--db", st.db(), "stats", "--json"], b"");
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["admitted"], 3);
    assert_eq!(stats["inside"], 1);
    assert_eq!(stats["scans"], 6);
    assert_eq!(stats["by_result"]["already_redeemed"], 1);
    assert_eq!(stats["last_scan"]["direction"], "entry");
}

#[test]
fn stats_count_inside_as_entries_minus_exits() {
    let st = Station::new("t", "Main", &[]);
    let codes: Vec<String> = (10..15).map(|n| code(n, true)).collect();
    let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
    st.check(NOW, &[], &refs);
    st.check(NOW + 1, &["--direction", "exit"], &refs[..2]);
    st.check(NOW + 2, &[], &["garbage"]);
    let out = scanner(&["--db", st.db(), "stats"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("admitted  5"), "{text}");
    assert!(text.contains("inside    3"), "{text}");
    assert!(text.contains("invalid          1"), "{text}");
}

#[test]
fn wedge_garbage_is_answered_and_recorded_and_the_stream_goes_on() {
    let st = Station::new("t", "Main", &[]);
    let good = code(3, false);
    let mut input = b"\x1b[A\x00\xff\xfe junk\r\n".to_vec();
    input.extend_from_slice(format!("{good}\r\nVT1:AAAA\n{good}\n").as_bytes());
    let now = NOW.to_string();
    let out = scanner(
        &["--db", st.db(), "check", "--now", &now, "--json", "-"],
        &input,
    );
    let results: Vec<String> = json_lines(&out)
        .iter()
        .map(|l| l["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results, ["invalid", "ok", "invalid", "already_redeemed"]);
    assert_eq!(st.log().len(), 4);
}

#[test]
fn re_provisioning_keeps_the_device_id_and_a_bad_keyset_changes_nothing() {
    let st = Station::new("t", "Main", &[]);
    let before = scanner::gate::Gate::open(&st.db).unwrap().device().clone();
    let keyset = vector_keyset(st.tmp.path());
    let out = scanner(
        &[
            "--db",
            st.db(),
            "init",
            "--keyset",
            &keyset,
            "--device-name",
            "renamed",
            "--gate",
            "West",
        ],
        b"",
    );
    assert!(out.status.success());
    let after = scanner::gate::Gate::open(&st.db).unwrap().device().clone();
    assert_eq!(after.id, before.id);
    assert_eq!(
        (after.name.as_str(), after.gate.as_str()),
        ("renamed", "West")
    );

    let bad = st.tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&keyset)
            .unwrap()
            .replace("21fe31df", "21fe31d0"),
    )
    .unwrap();
    let out = scanner(
        &[
            "--db",
            st.db(),
            "init",
            "--keyset",
            bad.to_str().unwrap(),
            "--device-name",
            "x",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its public key"));
    let kept = scanner::gate::Gate::open(&st.db).unwrap().device().clone();
    assert_eq!(kept, after);
    // A gate name is a label: one too long for gate-sync to take is refused here.
    let long = "G".repeat(scanner::gate::MAX_NAME + 1);
    let out = scanner(
        &[
            "--db",
            st.db(),
            "init",
            "--keyset",
            &keyset,
            "--device-name",
            "x",
            "--gate",
            &long,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 128"));
    assert_eq!(scanner::gate::Gate::open(&st.db).unwrap().device(), &after);

    let list = st.tmp.path().join("revoked.txt");
    std::fs::write(&list, format!("{:032x}\nnot-an-id\n", 5)).unwrap();
    let out = scanner(
        &[
            "--db",
            st.db(),
            "revocations",
            "import",
            list.to_str().unwrap(),
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("previous list is kept"),
        "{err}"
    );
}

#[test]
fn foreign_and_corrupt_databases_are_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.db");
    let bytes = b"this is not a database, just text that someone saved here".repeat(100);
    std::fs::write(&junk, &bytes).unwrap();
    let out = scanner(
        &["--db", junk.to_str().unwrap(), "check", "--now", "1", "x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a scanner database"));
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        bytes,
        "the file is untouched"
    );

    let foreign = tmp.path().join("other.db");
    issuer_database(&foreign);
    let out = scanner(&["--db", foreign.to_str().unwrap(), "stats"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another program"));

    let missing = tmp.path().join("missing.db");
    let out = scanner(&["--db", missing.to_str().unwrap(), "check", "x"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not provisioned"));
    assert!(!missing.exists(), "checking does not create a database");
}

/// Makes a SQLite file of another program (an issuer's data directory).
fn issuer_database(path: &Path) {
    let dir = path.parent().unwrap().join("issuer-data");
    drop(issuer::Store::open(&dir).unwrap());
    std::fs::copy(dir.join("issuer.db"), path).unwrap();
}
