//! What an attacker with a spare enrollment token, or none, tried against
//! the node, each as a regression test named after what it guards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::{Direction, ResultCode};

use crate::{
    call, dev, enroll, enroll_request, entry, push, raw, record, send, serve_state, signed,
    two_peers,
};

#[test]
fn an_enrollment_token_cannot_claim_an_enrolled_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let real = enroll(addr, &state, 1);
    assert_eq!(
        push(addr, &real, 1, &[entry(1, 1, 1, 1_900_000_000)]).0,
        200
    );
    // A spare token, made for a new tablet, names the real gate's id.
    let spare = state
        .lock(|s| s.create_enrollment("new tablet", 0))
        .unwrap();
    let (status, body) = send(
        &format!("http://{addr}/v1/enroll"),
        None,
        &json!({ "token": spare, "device_id": dev(1),
                 "device_key": crate::signer(9).public_key(),
                 "sig": crate::signer(9).sign_enrollment(&spare) })
        .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not the one of its key"),
        "{body}"
    );
    // Even with the real key's signature, a known id is not enrolled again.
    let (status, body) = send(
        &format!("http://{addr}/v1/enroll"),
        None,
        &enroll_request(&spare, 1),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already enrolled"));
    assert!(body.get("device_token").is_none());
    // The real gate is not locked out, and the spare token is not used up.
    assert_eq!(
        push(addr, &real, 1, &[entry(1, 2, 2, 1_900_000_001)]).0,
        200
    );
    let (status, _) = send(
        &format!("http://{addr}/v1/enroll"),
        None,
        &enroll_request(&spare, 2),
    );
    assert_eq!(status, 200);
}

#[test]
fn an_accepted_admission_cannot_be_rewritten_by_a_push_or_a_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), (b, b_state)) = two_peers(tmp.path());
    let token = enroll(a, &a_state, 1);
    let other = enroll(a, &a_state, 2);
    let admitted = entry(1, 1, 7, 1_900_000_000);
    assert_eq!(push(a, &token, 1, std::slice::from_ref(&admitted)).0, 200);
    assert_eq!(push(a, &other, 2, &[entry(2, 1, 7, 1_900_000_030)]).0, 200);
    let (_, dups) = call("GET", a, "/v1/duplicates", None);
    assert_eq!(dups["duplicates"].as_array().unwrap().len(), 1);
    // The same index again, now a refusal naming no ticket.
    let mut erased = record(
        1,
        1,
        7,
        Direction::Entry,
        ResultCode::Invalid,
        1_900_000_000,
    );
    erased.ticket = None;
    erased.proof = None;
    // Forged by anyone but the device, it is refused.
    let (status, body) = push(a, &token, 1, std::slice::from_ref(&erased));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    // Signed by the device itself (a faulty one), it is kept as proof
    // against it, answered as a conflict, and the admission stays.
    let erased = signed(erased);
    let (status, body) = push(a, &token, 1, std::slice::from_ref(&erased));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("other content"),
        "{body}"
    );
    // Sent by a peer instead, it does not win either.
    let (status, body) = send(
        &format!("http://{a}/v1/merge"),
        Some("venue-secret"),
        &json!({ "records": [erased] }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        a_state.read(|s| s.log().get(&dev(1), 1).cloned()),
        Some(admitted.clone())
    );
    let (_, stats) = call("GET", a, "/v1/stats", None);
    assert_eq!(stats["admitted"], 2, "{stats}");
    assert_eq!(
        stats["flagged_devices"][0]["device_id"],
        dev(1).to_string(),
        "{stats}"
    );
    let (_, dups) = call("GET", a, "/v1/duplicates", None);
    assert_eq!(dups["duplicates"].as_array().unwrap().len(), 1, "{dups}");
    // A replica that pulls afterwards gets the admission.
    let agent = ureq::Agent::new_with_defaults();
    gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap();
    assert_eq!(
        b_state.read(|s| s.log().get(&dev(1), 1).cloned()),
        Some(admitted)
    );
    let _ = b;
}

#[test]
fn bodies_are_not_read_before_the_token_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _state) = serve_state(&tmp.path().join("sync.db"));
    let device = dev(1);
    // A stranger announces 16 MiB and sends none of it: refused at once.
    for (path, auth) in [
        (format!("/v1/devices/{device}/records"), ""),
        (
            format!("/v1/devices/{device}/records"),
            "authorization: Bearer made-up\r\n",
        ),
        ("/v1/pull".to_owned(), ""),
        ("/v1/merge".to_owned(), "authorization: Bearer made-up\r\n"),
    ] {
        let started = Instant::now();
        let answer = raw(
            addr,
            &format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n\
                 content-length: 16777216\r\n\r\n"
            ),
        );
        assert!(
            answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 403"),
            "{path}: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: answered without the body"
        );
    }
    // Enrollment is open to anyone, so its body is small.
    let answer = raw(
        addr,
        "POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 100000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn silent_half_sent_and_idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = gate_sync::AppState::new(
        gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap(),
    );
    let addr =
        gate_sync::serve_in_background_idle(state, "127.0.0.1:0", Duration::from_millis(500))
            .unwrap();
    let closed_within = |mut conn: TcpStream, limit: Duration| {
        conn.set_read_timeout(Some(limit)).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return started.elapsed() < limit,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    let silent = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"POST /v1/pull HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    for (what, conn) in [
        ("silent", silent),
        ("half-sent", half),
        ("idle keep-alive", idle),
    ] {
        assert!(
            closed_within(conn, Duration::from_secs(5)),
            "{what} connection left open"
        );
    }
    // Headers sent a byte at a time, each well within the idle limit: the
    // headers' deadline (four times the idle limit here) closes it.
    let trickle = TcpStream::connect(addr).unwrap();
    let mut drip = trickle.try_clone().unwrap();
    let dripping = std::thread::spawn(move || {
        let _ = drip.write_all(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nx-slow: ");
        for _ in 0..40 {
            if drip.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let started = Instant::now();
    assert!(
        closed_within(trickle, Duration::from_secs(5)),
        "a connection trickling its headers left open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not for idling"
    );
    dripping.join().unwrap();
    // One address cannot hold every connection the node has.
    let held: Vec<TcpStream> = (0..gate_sync::net::PER_ADDR)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(extra, Duration::from_millis(400)),
        "the connection over the limit is closed at once"
    );
    drop(held);
}

#[test]
fn the_node_answers_only_json_in_the_documented_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let token = enroll(addr, &state, 1);
    let url = format!("http://{addr}/v1/devices/{}/records", dev(1));
    // Any other Content-Type is refused.
    let resp = ureq::post(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .send("{\"records\": []}")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    // A record must say `ticket`, null when the code was unreadable.
    let mut r = serde_json::to_value(entry(1, 1, 1, 1_900_000_000)).unwrap();
    r.as_object_mut().unwrap().remove("ticket");
    let (status, body) = send(&url, Some(&token), &json!({ "records": [r] }).to_string());
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ticket"), "{body}");
    // An admission names its ticket.
    let mut r = entry(1, 1, 1, 1_900_000_000);
    r.ticket = None;
    r.proof = None;
    let (status, body) = push(addr, &token, 1, &[signed(r)]);
    assert_eq!(status, 400, "{body}");
    // Unknown fields are refused, not ignored.
    let (status, _) = send(&url, Some(&token), "{\"records\": [], \"extra\": 1}");
    assert_eq!(status, 400);
    // The document says all this.
    let doc: serde_json::Value = serde_json::from_str(gate_sync::http::OPENAPI).unwrap();
    for path in [
        "/v1/devices/{device_id}/records",
        "/v1/pull",
        "/v1/merge",
        "/v1/enroll",
    ] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for status in ["400", "413", "415"] {
            assert!(responses.get(status).is_some(), "{path} documents {status}");
        }
        if path != "/v1/enroll" {
            assert!(responses.get("401").is_some(), "{path} documents 401");
        }
    }
}

/// The node's own binary, serving `db` on a port of its own (with `extra`
/// arguments); returns the child (the caller kills and waits for it) and
/// the address it printed.
#[allow(clippy::zombie_processes)]
pub fn node_process(
    db: &std::path::Path,
    extra: &[&str],
) -> (
    std::process::Child,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gate-sync"))
        .args([
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("GATE_SYNC_ORGANIZER_TOKEN")
        .env_remove("GATE_SYNC_PEER_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("the node stopped before serving");
        }
        if let Some(at) = line.split("address=").nth(1) {
            let addr = at.split_whitespace().next().unwrap().to_owned();
            return (child, addr, err);
        }
    }
}

#[test]
fn refusals_leave_a_line_in_the_node_log() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sync.db");
    let enrolled = {
        let store = gate_sync::store::Store::open(&db).unwrap();
        store.create_enrollment("tablet-1", 0).unwrap()
    };
    let (mut child, addr, mut log) = node_process(&db, &[]);
    let (status, body) = send(
        &format!("http://{addr}/v1/enroll"),
        None,
        &enroll_request(&enrolled, 1),
    );
    assert_eq!(status, 200, "{body}");
    let token = body["device_token"].as_str().unwrap().to_owned();
    let url = |d: u8| format!("http://{addr}/v1/devices/{}/records", dev(d));
    assert_eq!(send(&url(1), Some("made-up"), "{\"records\": []}").0, 401);
    assert_eq!(send(&url(2), Some(&token), "{\"records\": []}").0, 403);
    let answer = raw(
        addr.parse().unwrap(),
        &format!(
            "POST /v1/devices/{}/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 99999999\r\n\r\n",
            dev(1)
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut text = String::new();
    log.read_to_string(&mut text).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    for (line, status, why) in [
        (refusals[0], "status=401", "unknown"),
        (refusals[1], "status=403", "not"),
        (refusals[2], "status=413", "over"),
    ] {
        assert!(line.contains(status) && line.contains(why), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "who asked: {line}");
    }
    assert!(!text.contains(&token), "tokens never reach the log");
}

#[test]
fn a_peer_cannot_forge_or_alter_a_gates_records() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), _) = two_peers(tmp.path());
    let token = enroll(a, &a_state, 1);
    assert_eq!(push(a, &token, 1, &[entry(1, 1, 1, 1_900_000_000)]).0, 200);
    // A hostile peer (it holds the peer token) sends an admission in device
    // 1's name, signed by another key, and a device whose id is not its key's.
    let mut forged = entry(1, 2, 2, 1_900_000_010);
    crate::signer(9).sign(&mut forged);
    forged.device_id = dev(1);
    let mut renamed = entry(3, 1, 3, 1_900_000_020);
    renamed.device_id = shared::DeviceId([3; 16]);
    let (status, body) = send(
        &format!("http://{a}/v1/merge"),
        Some("venue-secret"),
        &json!({ "records": [forged, renamed] }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 0, "{body}");
    assert_eq!(
        a_state.read(|s| s.log().len()),
        1,
        "nothing forged was taken"
    );
    // Genuine records of another device in the same merge are taken.
    let (status, body) = send(
        &format!("http://{a}/v1/merge"),
        Some("venue-secret"),
        &json!({ "records": [entry(4, 1, 4, 1_900_000_030), forged_again()] }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 1, "{body}");
}

/// Device 1's record 2, signed by device 9.
fn forged_again() -> shared::ScanRecord {
    let mut forged = entry(1, 2, 2, 1_900_000_010);
    crate::signer(9).sign(&mut forged);
    forged.device_id = dev(1);
    forged
}

#[test]
fn peer_nodes_pin_each_other_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = Some("venue-secret".to_owned());
    let store = gate_sync::store::Store::open(&tmp.path().join("a.db")).unwrap();
    let cert = store.node_cert().unwrap();
    let a_state = gate_sync::AppState::new(store).with_peer_token(secret.clone());
    let a = gate_sync::serve_in_background_tls(a_state.clone(), "127.0.0.1:0", &cert).unwrap();
    let (_, b_state) = crate::serve_with(&tmp.path().join("b.db"), secret);
    a_state
        .lock(|s| s.add_authentic(&[entry(1, 1, 7, 1_900_000_000)], &[], 0))
        .unwrap();
    // Named as URL#FINGERPRINT, as `--peer` takes it.
    let named = format!("https://{a}#{}", cert.fingerprint());
    let (url, pin) = gate_sync::peers::parse_peer(&named).unwrap();
    let agent = gate_sync::tls::agent(pin.as_deref(), Duration::from_secs(10));
    assert_eq!(
        gate_sync::peers::exchange(&b_state, &url, &agent).unwrap(),
        (1, 0)
    );
    // Another fingerprint: no exchange, and the reason.
    let other = gate_sync::tls::NodeCert::generate().unwrap().fingerprint();
    let wrong = gate_sync::tls::agent(Some(&other), Duration::from_secs(10));
    let err = gate_sync::peers::exchange(&b_state, &url, &wrong).unwrap_err();
    assert!(err.contains("not the pinned"), "{err}");
    // https without a fingerprint, or plain http across the network: refused.
    assert!(
        gate_sync::peers::parse_peer(&format!("https://{a}"))
            .unwrap_err()
            .contains("fingerprint")
    );
    assert!(
        gate_sync::peers::parse_peer("http://10.0.0.3:8090")
            .unwrap_err()
            .contains("https")
    );
    assert!(gate_sync::peers::parse_peer("http://127.0.0.1:8090").is_ok());
}

#[test]
fn a_pull_sends_the_version_kept_after_a_second_version_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
    let mut refused = record(
        1,
        1,
        7,
        Direction::Entry,
        ResultCode::Invalid,
        1_900_000_000,
    );
    refused.ticket = None;
    refused.proof = None;
    let refused = signed(refused);
    let admitted = entry(1, 1, 7, 1_900_000_000);
    store.add_authentic(&[refused], &[], 0).unwrap();
    let pulled = |store: &gate_sync::store::Store| {
        let page = store.page(&Default::default(), &Default::default(), None, 10);
        serde_json::from_slice::<Vec<shared::ScanRecord>>(&page.records.to_vec()).unwrap()
    };
    assert_eq!(pulled(&store)[0].result, ResultCode::Invalid);
    store
        .add_authentic(&[], std::slice::from_ref(&admitted), 0)
        .unwrap();
    assert_eq!(
        pulled(&store),
        [admitted],
        "the admission, not what was sent first"
    );
}

#[test]
fn device_times_a_database_cannot_hold_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), _) = two_peers(tmp.path());
    // Stored as a signed integer, 2^63 came back negative and lost every
    // "latest enrollment wins" comparison.
    for (enrolled, revoked) in [(1u64 << 63, None), (1, Some(u64::MAX))] {
        let (status, body) = send(
            &format!("http://{a}/v1/merge"),
            Some("venue-secret"),
            &json!({ "records": [], "devices": [{ "device_id": dev(2), "name": "x",
                     "token_hash": "ab".repeat(32), "enrolled_at_ms": enrolled,
                     "revoked_at_ms": revoked }] })
            .to_string(),
        );
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("go up to"),
            "{body}"
        );
    }
    assert!(a_state.read(|s| s.device_auth().unwrap()).is_empty());
}

#[test]
fn a_device_list_naming_another_devices_token_hash_is_refused_not_a_server_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), _) = two_peers(tmp.path());
    let token = enroll(a, &a_state, 1);
    let held = a_state.read(|s| s.device_auth().unwrap())[0]
        .token_hash
        .clone();
    let merge = |devices: serde_json::Value| {
        send(
            &format!("http://{a}/v1/merge"),
            Some("venue-secret"),
            &json!({ "records": [], "devices": devices }).to_string(),
        )
    };
    let device = |d: u8, hash: &str| {
        json!({ "device_id": dev(d), "name": "x", "token_hash": hash,
                "enrolled_at_ms": 1, "revoked_at_ms": null })
    };
    // A peer names device 2 with device 1's token hash: refused, and why
    // (the database holds each hash once: this was a 500).
    let (status, body) = merge(json!([device(2, &held)]));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("token_hash"),
        "{body}"
    );
    // One hash for two devices in one list, or a hash in upper case.
    let other = "ab".repeat(32);
    let (status, body) = merge(json!([device(3, &other), device(4, &other)]));
    assert_eq!(status, 400, "{body}");
    let (status, body) = merge(json!([device(3, &other.to_uppercase())]));
    assert_eq!(status, 400, "{body}");
    // Nothing was taken, and device 1 still syncs.
    assert_eq!(a_state.read(|s| s.device_auth().unwrap()).len(), 1);
    assert_eq!(push(a, &token, 1, &[entry(1, 1, 1, 1_900_000_000)]).0, 200);
}

#[test]
fn two_versions_of_an_index_in_one_push_are_answered_as_a_conflict_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let token = enroll(addr, &state, 1);
    // Both versions new to the node, in one push: this was a 200, though
    // the node kept the second as proof and flagged the device.
    let first = entry(1, 1, 1, 1_900_000_000);
    let second = entry(1, 1, 2, 1_900_000_001);
    let (status, body) = push(addr, &token, 1, &[first, second]);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/1 ", dev(1))),
        "{body}"
    );
    assert_eq!(state.read(|s| s.log().flagged().len()), 1);
    // A replay beside a second version: the answer names the second
    // version's index, not the batch's least.
    let kept = state.read(|s| s.log().get(&dev(1), 1).cloned()).unwrap();
    assert_eq!(
        push(addr, &token, 1, &[entry(1, 2, 3, 1_900_000_002)]).0,
        200
    );
    let (status, body) = push(addr, &token, 1, &[kept, entry(1, 2, 4, 1_900_000_003)]);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/2 ", dev(1))),
        "{body}"
    );
}

/// Record `idx` of test device 1, a refusal with the longest reason and
/// names a record may have.
fn long_refusal(idx: u64, fill: char) -> shared::ScanRecord {
    let mut r = record(
        1,
        idx,
        1,
        Direction::Entry,
        ResultCode::Invalid,
        1_900_000_000 + idx,
    );
    r.reason = fill.to_string().repeat(shared::protocol::MAX_REASON);
    r.gate = "g".repeat(shared::protocol::MAX_LABEL);
    r.device_name = "d".repeat(shared::protocol::MAX_LABEL);
    signed(r)
}

#[test]
fn thousands_of_second_versions_cannot_stop_gates_or_peers_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), (b, b_state)) = two_peers(tmp.path());
    let token = enroll(a, &a_state, 1);
    // A hostile device writes 2,600 long records, then a second version of
    // each: 5,200 versions, 17 MB. All were sent on the first page of every
    // pull and in the first merge, past what gates and peers read (16 MiB):
    // no gate or peer of the venue could sync any more.
    const N: u64 = 2600;
    let signer = crate::signer(1);
    let mut chain: Vec<shared::ScanRecord> = Vec::new();
    for idx in 1..=N {
        let mut r = long_refusal(idx, 'x');
        signer.seal(&mut r, chain.last());
        chain.push(r);
    }
    let seconds: Vec<shared::ScanRecord> = (1..=N).map(|i| long_refusal(i, 'y')).collect();
    for batch in chain.chunks(700) {
        assert_eq!(push(a, &token, 1, batch).0, 200);
    }
    for batch in seconds.chunks(700) {
        assert_eq!(push(a, &token, 1, batch).0, 409);
    }
    assert_eq!(a_state.read(|s| s.log().flagged()[&dev(1)]), N as usize);
    // Node a sends node b everything, a page at a time.
    let agent = gate_sync::tls::agent(None, Duration::from_secs(60));
    let (_, sent) = gate_sync::peers::exchange(&a_state, &format!("http://{b}"), &agent).unwrap();
    assert_eq!(sent, 2 * N as usize);
    assert_eq!(b_state.read(|s| s.log().flagged()[&dev(1)]), N as usize);
    // A device's pull answers stay a page each, and carry every version.
    let reader = enroll(a, &a_state, 2);
    let (mut after, mut proofs, mut pages) = (serde_json::Value::Null, 0, 0);
    loop {
        let (status, page) = send(
            &format!("http://{a}/v1/pull"),
            Some(&reader),
            &json!({ "version_vector": { dev(1).to_string(): N }, "after": after }).to_string(),
        );
        assert_eq!(status, 200);
        assert!(page.to_string().len() < shared::protocol::PAGE_BYTES + 20_000);
        proofs += page["conflicts"].as_array().map_or(0, Vec::len);
        pages += 1;
        assert!(pages < 10, "paging ends");
        match page["next"].clone() {
            serde_json::Value::Null => break,
            next => after = next,
        }
    }
    assert_eq!(proofs, 2 * N as usize);
    // A real gate enrolls, syncs, and flags the device as the node does.
    let mut keyset = shared::Keyset::new();
    keyset.insert(
        ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key(),
        [1001],
    );
    let provision = scanner::gate::Provision {
        keyset_json: keyset.to_json(),
        device_name: "tablet".into(),
        gate: "South".into(),
        events: vec![1001],
        skew_secs: 300,
    };
    let mut gate = scanner::gate::Gate::init(&tmp.path().join("gate.db"), &provision, 0).unwrap();
    let enrollment = b_state.lock(|s| s.create_enrollment("tablet", 0)).unwrap();
    scanner::sync::enroll(&mut gate, &format!("http://{b}"), &enrollment).unwrap();
    let report = scanner::sync::sync_once(&mut gate, 1_900_000_000_000).unwrap();
    assert_eq!(report.pulled, N as usize);
    assert_eq!(gate.flagged().unwrap()[&dev(1).to_string()], N);
}

#[test]
fn many_scans_of_one_ticket_are_counted_without_walking_them_again() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sync.db");
    let mut store = gate_sync::store::Store::open(&db).unwrap();
    // One device lets one ticket out 30,000 times, then in. Each admitted
    // scan walked every earlier one of its ticket, looking for an entry:
    // 0.5 s a push of 1,000 at 12,000 scans, and minutes for a node to start.
    const N: u64 = 30_000;
    let scans: Vec<shared::ScanRecord> = (1..=N)
        .map(|i| {
            let direction = match i {
                N => Direction::Entry,
                _ => Direction::Exit,
            };
            record(2, i, 5, direction, ResultCode::Ok, 1_900_000_000 + i)
        })
        .collect();
    let started = Instant::now();
    for batch in scans.chunks(1000) {
        store.add(batch, 0).unwrap();
    }
    drop(store);
    let store = gate_sync::store::Store::open(&db).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let gates = store.counts().per_gate(None);
    let counts = gates.values().next().unwrap();
    assert_eq!((counts.admitted, counts.inside), (1, 1));
    assert!(store.duplicates(None).is_empty());
}

#[test]
fn a_flood_of_refused_requests_cannot_fill_the_node_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr, mut log) = node_process(&tmp.path().join("sync.db"), &[]);
    // A stranger sends 300 requests with a made-up token, as fast as the
    // node answers: each left a line in the log (thousands a second).
    let url = format!("http://{addr}/v1/devices/{}/records", dev(1));
    let flood = 300;
    for _ in 0..flood {
        assert_eq!(send(&url, Some("made-up"), "{\"records\": []}").0, 401);
    }
    // The next refusal, a second later, says how many were not logged.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send(&url, Some("made-up"), "{\"records\": []}").0, 401);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut text = String::new();
    log.read_to_string(&mut text).unwrap();
    let logged = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .count();
    let not_logged: usize = text
        .lines()
        .filter_map(|l| l.split("not_logged=").nth(1))
        .map(|n| {
            n.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(logged < flood / 2, "{logged} lines");
    assert_eq!(logged + not_logged, flood + 1, "every refusal is counted");
}

#[test]
fn unknown_paths_and_methods_are_refused_in_the_error_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _state) = serve_state(&tmp.path().join("sync.db"));
    // Both were empty answers, unlike every other refusal.
    let (status, body) = call("GET", addr, "/v1/nothing-here", None);
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("openapi"),
        "{body}"
    );
    let answer = raw(addr, "DELETE /v1/pull HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: post"),
        "{answer}"
    );
    assert!(answer.contains("{\"error\":"), "{answer}");
}

#[test]
fn an_encoded_event_filter_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let token = enroll(addr, &state, 1);
    assert_eq!(
        push(addr, &token, 1, &[entry(1, 1, 1, 1_900_000_000)]).0,
        200
    );
    // `event%5Fid` was not taken for `event_id`: every event was counted.
    for query in ["event_id=7", "event%5Fid=7", "event_id=%37"] {
        let (status, stats) = call("GET", addr, &format!("/v1/stats?{query}"), None);
        assert_eq!(status, 200, "{query}: {stats}");
        assert_eq!(stats["admitted"], 0, "{query}: {stats}");
    }
    let (_, stats) = call("GET", addr, "/v1/stats?event%5fid=10%30%31", None);
    assert_eq!(stats["admitted"], 1, "{stats}");
}
