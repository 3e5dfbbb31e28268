//! From the sale to the door, with the real issuer and gate-sync processes
//! and a real gate (the scanner's code on its own SQLite file): a ticket
//! bought through the API is admitted; the order is cancelled; the node
//! learns of it from the issuer, the gate from the node, and the same
//! ticket is refused as revoked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::{Direction, ResultCode};

/// The issuer's binary, built beside this crate's by `cargo test
/// --workspace`.
fn issuer_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_gate-sync")).with_file_name("issuer");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace`, or `cargo build -p issuer` first",
        bin.display()
    );
    bin
}

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match method {
        "GET" => {
            let mut req = agent.get(url);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.call()
        }
        _ => {
            let mut req = agent.post(url);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            match body {
                Some(b) => req
                    .header("content-type", "application/json")
                    .send(b.to_string()),
                None => req.send_empty(),
            }
        }
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_ticket_bought_admitted_then_cancelled_is_refused_as_revoked_after_the_gate_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shop");
    let token_file = tmp.path().join("organizer.token");
    // The shop: an organizer, the issuer serving.
    let added = Command::new(issuer_bin())
        .arg("--data")
        .arg(&data)
        .args(["organizers", "add", "--name", "Promoter", "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut issuer = Command::new(issuer_bin())
        .arg("--data")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(issuer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let issuer = Killed(issuer);
    let base = line
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/api/v1"))
        .unwrap_or_else(|| panic!("the issuer said {line:?}"))
        .to_owned();
    let api = |path: &str| format!("{base}/api/v1{path}");
    // An event tonight, one seated section, on sale now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let seats: Vec<Value> = (1..=10)
        .map(|n| json!({"label": n.to_string(), "x": n, "y": 1}))
        .collect();
    let venue = json!({"name": "Hall", "city": "Lyon", "plan": {"sections": [
        {"id": "A", "name": "Stalls", "rows": [{"label": "1", "seats": seats}]}]}});
    let (status, v) = call("POST", &api("/venues"), Some(&token), Some(venue));
    assert_eq!(status, 201, "{v}");
    let event = json!({"name": "Tonight", "genre": "concert", "venue_id": v["id"],
        "starts_at": now + 3600, "ends_at": now + 4 * 3600});
    let (_, e) = call("POST", &api("/events"), Some(&token), Some(event));
    let event_id = e["id"].as_u64().unwrap();
    let category = json!({"name": "Stalls", "price": 3000, "currency": "EUR",
        "places": {"kind": "seats", "sections": ["A"]},
        "sale_starts": now - 60, "sale_ends": now + 3600, "per_order": 4});
    let (status, c) = call(
        "POST",
        &api(&format!("/events/{event_id}/categories")),
        Some(&token),
        Some(category),
    );
    assert_eq!(status, 201, "{c}");
    let (status, _) = call(
        "POST",
        &api(&format!("/events/{event_id}/status")),
        Some(&token),
        Some(json!({"status": "on_sale"})),
    );
    assert_eq!(status, 200);
    // A buyer holds a seat and pays by card.
    let (status, hold) = call(
        "POST",
        &api("/holds"),
        None,
        Some(json!({"event_id": event_id, "items": [{"kind": "seats", "seats": ["A-1-5"]}]})),
    );
    assert_eq!(status, 201, "{hold}");
    let (status, order) = call(
        "POST",
        &api("/orders"),
        None,
        Some(json!({"hold_token": hold["token"],
        "email": "ana@example.org", "name": "Ana", "payment_method": "pm_card_visa"})),
    );
    assert_eq!(
        (status, order["state"].as_str()),
        (201, Some("paid")),
        "{order}"
    );
    let code = order["tickets"][0]["code"].as_str().unwrap().to_owned();
    // The venue's node follows the issuer.
    let node_db = tmp.path().join("node.db");
    let every = [
        "--issuer",
        &base,
        "--issuer-events",
        &event_id.to_string(),
        "--issuer-every",
        "1",
    ];
    let node = {
        let token_file = token_file.to_str().unwrap();
        let (child, addr, log) = crate::attacks::node_process(
            &node_db,
            &[&every[..], &["--issuer-token-file", token_file]].concat(),
        );
        // Its log is read to the end, as a terminal would.
        let lines =
            std::thread::spawn(move || log.lines().map_while(Result::ok).collect::<Vec<_>>());
        (Killed(child), addr, lines)
    };
    // A gate, provisioned with the issuer's keyset, enrolled with the node.
    let (_, keyset) = call(
        "GET",
        &api(&format!("/keyset?events={event_id}")),
        Some(&token),
        None,
    );
    let provision = scanner::gate::Provision {
        keyset_json: keyset.to_string(),
        device_name: "tablet".into(),
        gate: "North".into(),
        events: vec![event_id],
        skew_secs: 300,
    };
    let mut gate = scanner::gate::Gate::init(&tmp.path().join("gate.db"), &provision, 0).unwrap();
    let enroll = Command::new(env!("CARGO_BIN_EXE_gate-sync"))
        .args([
            "--db",
            node_db.to_str().unwrap(),
            "devices",
            "enroll",
            "--name",
            "tablet",
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8(enroll.stdout).unwrap();
    let enrollment = printed
        .lines()
        .rev()
        .find_map(|l| l.split("--token ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    scanner::sync::enroll(&mut gate, &format!("http://{}", node.1), &enrollment).unwrap();
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let admitted = gate.check(&code, Direction::Entry, ms()).unwrap();
    assert_eq!(
        admitted.record.result,
        ResultCode::Ok,
        "admitted: {:?}",
        admitted.outcome
    );
    // The organizer cancels the order, paid back.
    let (status, cancelled) = call(
        "POST",
        &api(&format!(
            "/orders/{}/cancel",
            order["code"].as_str().unwrap()
        )),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("refunded")),
        "{cancelled}"
    );
    // Within seconds the node has it from the issuer, and the gate from
    // the node: the same ticket is refused as revoked.
    let started = Instant::now();
    loop {
        scanner::sync::sync_once(&mut gate, ms()).unwrap();
        let again = gate.check(&code, Direction::Entry, ms()).unwrap();
        if again.record.result == ResultCode::Revoked {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            drop(node.0);
            let log = node.2.join().unwrap().join("\n");
            panic!(
                "never revoked: {:?}\nthe node's log:\n{log}",
                again.record.result
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(issuer);
}
