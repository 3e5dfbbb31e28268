//! What an attacker tried against the gates, each as a regression test
//! named after what it guards, through the real `scanner` binary.

use std::path::Path;

use shared::{Direction, Hlc, ResultCode, ScanRecord};

use crate::check::{NOW, Station, code};
use crate::scanner;

/// A record of another gate (a device whose key is made from `[7; 32]`)
/// about `ticket` (a code from [`code`]), at `wall_ms` with stamp `hlc`,
/// signed by that device.
fn remote(idx: u64, ticket: &str, direction: Direction, wall_ms: u64, hlc: u64) -> ScanRecord {
    let t = shared::parse(ticket).unwrap();
    let f = t.claimed();
    let signer = shared::device::DeviceSigner::from_seed(&[7; 32]);
    let mut r = ScanRecord {
        device_id: signer.id(),
        idx,
        ticket: Some((f.event_id, f.ticket_id)),
        multi_entry: f.multi_entry,
        category_id: f.category_id,
        seat: f.seat.clone(),
        direction,
        result: ResultCode::Ok,
        reason: String::new(),
        wall_ms,
        hlc: Hlc(hlc),
        gate: "Far".into(),
        device_name: "far".into(),
        proof: Some(t.signature()),
        prev: shared::RecordHash::FIRST,
        device_key: None,
        sig: shared::DeviceSig::NONE,
    };
    signer.sign(&mut r);
    r
}

fn gate(st: &Station) -> scanner::gate::Gate {
    scanner::gate::Gate::open(&st.db).unwrap()
}

#[test]
fn a_clock_at_the_end_of_the_year_9999_does_not_crash_check() {
    let st = Station::new("t", "Main", &[]);
    let ticket = code(41, false);
    let end = shared::time::MAX_MS;
    gate(&st)
        .merge_remote(&[remote(1, &ticket, Direction::Entry, end, 1 << 20)], &[])
        .unwrap();
    let now = NOW.to_string();
    let out = scanner(&["--db", st.db(), "check", "--now", &now, &ticket], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "refused, not crashed: {out:?}");
    assert!(
        text.contains("ALREADY_REDEEMED") && text.contains("9999-12-31T23:59:59Z"),
        "{text}"
    );
    // Beyond that, the record never gets in.
    let beyond = remote(2, &ticket, Direction::Entry, end + 1, 1 << 20);
    let err = gate(&st).merge_remote(&[beyond], &[]).unwrap_err();
    assert!(err.to_string().contains("year 9999"), "{err}");
}

#[test]
fn a_stamp_far_ahead_does_not_drag_the_gates_clocks() {
    // Two real gates, each poisoned by a record stamped near i64::MAX.
    let (a, b) = (
        Station::new("a", "North", &[]),
        Station::new("b", "South", &[]),
    );
    let poison = remote(
        1,
        &code(42, false),
        Direction::Entry,
        NOW * 1000,
        i64::MAX as u64,
    );
    for st in [&a, &b] {
        gate(st)
            .merge_remote(std::slice::from_ref(&poison), &[])
            .unwrap();
    }
    let holder = code(43, true);
    let hop = |from: &Station, to: &Station| {
        let own = gate(from).device().id;
        let log: Vec<ScanRecord> = from
            .log()
            .into_iter()
            .filter(|r| r.device_id == own)
            .collect();
        gate(to).merge_remote(&log, &[]).unwrap();
    };
    // In at North, out at South, in again at North: a multi-entry holder.
    assert_eq!(a.result(NOW, &[], &holder), "ok");
    hop(&a, &b);
    assert_eq!(b.result(NOW + 60, &["--direction", "exit"], &holder), "ok");
    hop(&b, &a);
    assert_eq!(
        a.result(NOW + 120, &[], &holder),
        "ok",
        "back in after leaving"
    );
    for st in [&a, &b] {
        let own = gate(st).device().id;
        for r in st.log().iter().filter(|r| r.device_id == own) {
            assert!(
                r.hlc.millis() <= (NOW + 3600) * 1000 + Hlc::MAX_ADOPT_AHEAD_MS,
                "own stamp {} follows the poison",
                r.hlc.0
            );
        }
    }
}

/// A PNG of `width` x `height` pixels whose pixel data is cut short: the
/// header alone claims the size, as an attacker's file would.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn a_small_picture_claiming_a_huge_size_is_refused_at_once() {
    let st = Station::new("t", "Main", &[]);
    let path = st.tmp.path().join("huge.png");
    std::fs::write(&path, png_claiming(20_000, 20_000)).unwrap();
    let file = path.to_str().unwrap();
    for args in [
        vec!["decode", file],
        vec!["--db", st.db(), "scan", "--image", file],
    ] {
        let started = std::time::Instant::now();
        let out = scanner(&args, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("20000x20000") && err.contains("scale it down"),
            "{err}"
        );
        // Read from the header: no time spent, nothing allocated.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}

#[test]
fn the_gate_database_holding_the_device_token_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let st = Station::new("t", "Main", &[]);
    assert_eq!(st.result(NOW, &[], &code(44, false)), "ok");
    for file in [st.db.clone(), st.db.with_extension("db-wal")] {
        if let Ok(meta) = std::fs::metadata(&file) {
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{}", file.display());
        }
    }
    // A database made by an older scanner is tightened when opened.
    std::fs::set_permissions(&st.db, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(st.result(NOW, &[], &code(45, false)), "ok");
    let mode = std::fs::metadata(&st.db).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0);
}

#[test]
fn enroll_says_how_to_write_the_node_address() {
    let st = Station::new("t", "Main", &[]);
    let out = scanner(
        &[
            "--db",
            st.db(),
            "enroll",
            "--server",
            "127.0.0.1:8090",
            "--token",
            "gs_x",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("write it as https://127.0.0.1:8090"), "{err}");
    assert_eq!(err.matches("error").count(), 1, "said once: {err}");
}

/// A copy of a SQLite database as it is now (a backup).
fn backup(db: &Path, to: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

#[test]
fn a_gate_pushes_again_what_a_node_restored_from_a_backup_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let node_db = tmp.path().join("node.db");
    let state = gate_sync::AppState::new(gate_sync::store::Store::open(&node_db).unwrap());
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();
    let st = Station::new("t", "Main", &[]);
    let token = state.lock(|s| s.create_enrollment("t", 0)).unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let url = format!("http://{addr}");
    let out = scanner(
        &[
            "--db",
            st.db(),
            "enroll",
            "--server",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(st.result(NOW, &[], &code(46, false)), "ok");
    assert!(scanner(&["--db", st.db(), "sync"], b"").status.success());
    backup(&node_db, &tmp.path().join("restored.db"));
    for n in [47, 48] {
        assert_eq!(st.result(NOW, &[], &code(n, false)), "ok");
    }
    assert!(scanner(&["--db", st.db(), "sync"], b"").status.success());
    // The node is lost and restored from the backup, which holds 1 record.
    let restored = gate_sync::AppState::new(
        gate_sync::store::Store::open(&tmp.path().join("restored.db")).unwrap(),
    );
    let again = gate_sync::serve_in_background(restored.clone(), "127.0.0.1:0").unwrap();
    let mut g = gate(&st);
    let device_token = g.device_token().unwrap().unwrap();
    g.set_enrollment(&format!("http://{again}"), &device_token, None)
        .unwrap();
    let out = scanner(&["--db", st.db(), "sync"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own = g.device().id;
    assert_eq!(restored.read(|s| s.log().version_vector().get(&own)), 3);
}

#[test]
fn another_gates_admission_counts_only_with_a_genuine_code_as_proof() {
    let st = Station::new("t", "Main", &[]);
    let ticket = code(49, false);
    // An enrolled but hostile device claims it admitted ticket 49, with a
    // code for it signed by a key the issuer never had.
    let forged = shared::code::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[66; 32]))
        .encode(shared::parse(&ticket).unwrap().claimed())
        .unwrap();
    let mut claim = remote(1, &ticket, Direction::Entry, NOW * 1000, (NOW * 1000) << 16);
    claim.proof = Some(shared::parse(&forged).unwrap().signature());
    shared::device::DeviceSigner::from_seed(&[7; 32]).sign(&mut claim);
    gate(&st).merge_remote(&[claim], &[]).unwrap();
    assert_eq!(
        st.result(NOW + 1, &[], &ticket),
        "ok",
        "the holder is let in"
    );
    // With the real code as proof, the ticket is used up.
    let other = code(50, false);
    gate(&st)
        .merge_remote(
            &[remote(
                2,
                &other,
                Direction::Entry,
                NOW * 1000,
                (NOW * 1000) << 16,
            )],
            &[],
        )
        .unwrap();
    assert_eq!(st.result(NOW + 2, &[], &other), "already_redeemed");
}

#[test]
fn a_device_that_wrote_an_index_twice_is_flagged_at_the_gate_and_keeps_its_admission() {
    let st = Station::new("t", "Main", &[]);
    let ticket = code(51, false);
    let admitted = remote(1, &ticket, Direction::Entry, NOW * 1000, (NOW * 1000) << 16);
    // The same index again, now a refusal: signed by the same (faulty) device.
    let mut refused = admitted.clone();
    refused.result = ResultCode::Invalid;
    refused.ticket = None;
    refused.proof = None;
    refused.reason = "second version".into();
    shared::device::DeviceSigner::from_seed(&[7; 32]).sign(&mut refused);
    // Whichever arrives first, the gate ends with the admission and the flag.
    gate(&st).merge_remote(&[refused.clone()], &[]).unwrap();
    gate(&st)
        .merge_remote(&[], &[admitted.clone(), refused])
        .unwrap();
    assert_eq!(st.result(NOW + 5, &[], &ticket), "already_redeemed");
    let out = scanner(&["--db", st.db(), "stats"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    let device = admitted.device_id.to_string();
    assert!(
        text.contains(&format!(
            "FLAGGED   device {device} wrote 1 record(s) twice"
        )),
        "{text}"
    );
}
