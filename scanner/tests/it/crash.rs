//! A gate killed mid-stream forgets nothing it admitted: every code answered
//! `ok` is in the log afterwards, and the log's indexes have no gaps or repeats.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::check::{NOW, Station, code};

#[test]
fn sigkill_while_checking_a_stream_loses_no_admission() {
    let st = Station::new("crashy", "Main", &[]);
    let mut answered_ok: HashSet<String> = HashSet::new();
    let mut next_ticket = 0u32;
    // Three runs, each killed after a different number of answers, so the
    // kill lands at different points of the check-and-commit cycle.
    for kill_after in [40usize, 173, 311] {
        let codes: Vec<String> = (0..1000).map(|i| code(next_ticket + i, false)).collect();
        next_ticket += 1000;
        let now = NOW.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_scanner"))
            .args(["--db", st.db(), "check", "--now", &now, "--json", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for c in &codes {
                // The pipe breaks when the scanner is killed; stop feeding then.
                if writeln!(stdin, "{c}").is_err() {
                    break;
                }
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..kill_after {
            let line = lines.next().unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["result"], "ok");
            answered_ok.insert(v["ticket_id"].as_str().unwrap().to_owned());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        feeder.join().unwrap();
    }
    let log = st.log();
    let logged_ok: HashSet<String> = log
        .iter()
        .filter(|r| r.result == shared::ResultCode::Ok)
        .map(|r| r.ticket.unwrap().1.to_string())
        .collect();
    let lost: Vec<&String> = answered_ok.difference(&logged_ok).collect();
    assert!(
        lost.is_empty(),
        "{} admissions shown but not logged",
        lost.len()
    );
    assert!(log.len() >= answered_ok.len());
    let idxs: Vec<u64> = log.iter().map(|r| r.idx).collect();
    let want: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(idxs, want, "indexes without gaps or repeats");
    // And the gate still works after the crashes.
    assert_eq!(st.result(NOW, &[], &code(999_999, false)), "ok");
}
