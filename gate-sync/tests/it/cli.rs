//! The `gate-sync` binary's own commands, as an organizer types them.

use std::process::{Command, Output};

fn gate_sync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate-sync"))
        .args(args)
        .env_remove("GATE_SYNC_ORGANIZER_TOKEN")
        .env_remove("GATE_SYNC_PEER_TOKEN")
        .output()
        .unwrap()
}

/// A file of garbage given as the database: one line that names it, says
/// why once (not SQLite's words three times over) and what to do, for
/// every command; the file is left as it was.
#[test]
fn a_corrupt_database_is_named_once_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("corrupt.db");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let db = db.to_str().unwrap();
    for args in [
        &["--db", db, "devices", "list"][..],
        &["--db", db, "devices", "enroll", "--name", "t"],
        &["--db", db, "serve", "--listen", "127.0.0.1:0"],
    ] {
        let out = gate_sync(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!(
                "error: {db} is not a gate-sync database (the file is not SQLite, or is damaged): \
                 give this node's database with --db, or restore it from a backup\n"
            )
        );
    }
    assert_eq!(std::fs::read(db).unwrap(), garbage, "the file is untouched");
}

#[test]
fn a_malformed_keyset_is_refused_with_its_reason_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("node.db");
    let keyset = tmp.path().join("keyset.json");
    std::fs::write(&keyset, "garbage").unwrap();
    let (db, keyset) = (db.to_str().unwrap(), keyset.to_str().unwrap());
    let out = gate_sync(&["--db", db, "keyset", "import", keyset]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("expected value at line 1 column 1").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.starts_with(&format!("error: keyset {keyset} refused: "))
            && stderr.contains("issuer keys export-keyset"),
        "{stderr}"
    );
}

/// Another program's SQLite file given as the database: refused, and left
/// without gate-sync's tables.
#[test]
fn another_programs_database_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE scans (x INTEGER); INSERT INTO scans VALUES (1);")
            .unwrap();
    }
    let out = gate_sync(&["--db", db.to_str().unwrap(), "devices", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to another program"), "{stderr}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "no table of ours was added");
}
