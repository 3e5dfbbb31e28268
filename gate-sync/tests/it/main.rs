//! The one integration-test binary of gate-sync: the real service on
//! 127.0.0.1 over a real SQLite file, and the partition simulation.

mod attacks;
mod cli;
mod issuer_feed;
mod simulation;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use shared::device::DeviceSigner;
use shared::{DeviceId, DeviceSig, Direction, Hlc, RecordHash, ResultCode, ScanRecord, TicketId};

/// Starts gate-sync on `db` at 127.0.0.1:0 in a background runtime.
fn serve(db: &Path) -> SocketAddr {
    serve_state(db).0
}

fn serve_state(db: &Path) -> (SocketAddr, gate_sync::AppState) {
    serve_with(db, None)
}

fn serve_with(db: &Path, peer_token: Option<String>) -> (SocketAddr, gate_sync::AppState) {
    let state = gate_sync::AppState::new(gate_sync::store::Store::open(db).unwrap())
        .with_peer_token(peer_token);
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();
    (addr, state)
}

/// A node on 127.0.0.1 and its state.
type Node = (SocketAddr, gate_sync::AppState);

/// Two nodes in `dir` sharing the peer token "venue-secret".
fn two_peers(dir: &Path) -> (Node, Node) {
    let secret = Some("venue-secret".to_owned());
    (
        serve_with(&dir.join("a.db"), secret.clone()),
        serve_with(&dir.join("b.db"), secret),
    )
}

/// Test device `d`: its key is made from the seed `[d; 32]`.
fn signer(d: u8) -> DeviceSigner {
    DeviceSigner::from_seed(&[d; 32])
}

/// Test device `d`'s id.
fn dev(d: u8) -> DeviceId {
    signer(d).id()
}

/// The code of ticket `ticket` (event 1001, category 1, seat A-1-1): what
/// a record naming it carries as proof.
fn ticket_code(ticket: u8) -> String {
    shared::code::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[42; 32]))
        .encode(&shared::TicketFields {
            event_id: 1001,
            ticket_id: TicketId([ticket; 16]),
            category_id: 1,
            multi_entry: false,
            valid_from: 1_900_000_000,
            valid_until: 1_900_086_400,
            seat: "A-1-1".into(),
        })
        .unwrap()
}

/// `r` signed again by its device, after a change.
fn signed(mut r: ScanRecord) -> ScanRecord {
    let d = (0..=255u8)
        .find(|d| dev(*d) == r.device_id)
        .expect("a test device");
    signer(d).sign(&mut r);
    r
}

/// Record `idx` of test device `device`, about `ticket`, signed on its own.
fn record(
    device: u8,
    idx: u64,
    ticket: u8,
    direction: Direction,
    result: ResultCode,
    at_s: u64,
) -> ScanRecord {
    let mut r = ScanRecord {
        device_id: dev(device),
        idx,
        ticket: Some((1001, TicketId([ticket; 16]))),
        multi_entry: false,
        category_id: 1,
        seat: "A-1-1".into(),
        direction,
        result,
        reason: String::new(),
        wall_ms: at_s * 1000,
        hlc: Hlc((at_s * 1000) << 16),
        gate: format!("gate-{device}"),
        device_name: format!("tablet-{device}"),
        proof: Some(shared::parse(&ticket_code(ticket)).unwrap().signature()),
        prev: RecordHash::FIRST,
        device_key: None,
        sig: DeviceSig::NONE,
    };
    signer(device).sign(&mut r);
    r
}

/// An enrollment request for test device `device` with `token`.
fn enroll_request(token: &str, device: u8) -> String {
    json!({
        "token": token,
        "device_id": dev(device),
        "device_key": signer(device).public_key(),
        "sig": signer(device).sign_enrollment(token),
    })
    .to_string()
}

fn call(method: &str, addr: SocketAddr, path: &str, body: Option<String>) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let resp = match body {
        Some(b) => ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "application/json")
            .send(b),
        None if method == "GET" => ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
        None => ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty(),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn push(addr: SocketAddr, token: &str, device: u8, records: &[ScanRecord]) -> (u16, Value) {
    let url = format!("http://{addr}/v1/devices/{}/records", dev(device));
    send(
        &url,
        Some(token),
        &json!({ "records": records }).to_string(),
    )
}

fn send(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends `request` as it is over a fresh connection and reads the answer
/// until the node closes it or 2 s pass (the node may answer before the
/// request is whole, and close).
fn raw(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let _ = conn.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Enrolls device `device` through the API; returns its device token.
fn enroll(addr: SocketAddr, state: &gate_sync::AppState, device: u8) -> String {
    let token = state
        .lock(|s| s.create_enrollment(&format!("tablet-{device}"), 0))
        .unwrap();
    // Never mistaken for an option when typed after `--token`.
    assert!(token.starts_with("gs_"), "{token}");
    let (status, body) = send(
        &format!("http://{addr}/v1/enroll"),
        None,
        &enroll_request(&token, device),
    );
    assert_eq!(status, 200, "{body}");
    body["device_token"].as_str().unwrap().to_owned()
}

fn entry(device: u8, idx: u64, ticket: u8, at_s: u64) -> ScanRecord {
    record(device, idx, ticket, Direction::Entry, ResultCode::Ok, at_s)
}

#[test]
fn two_gates_admitting_one_ticket_offline_are_flagged_with_both_scans() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let (t1, t2) = (enroll(addr, &state, 1), enroll(addr, &state, 2));
    assert_eq!(push(addr, &t1, 1, &[entry(1, 1, 7, 1_900_000_000)]).0, 200);
    assert_eq!(push(addr, &t2, 2, &[entry(2, 1, 7, 1_900_000_030)]).0, 200);
    let (status, body) = call("GET", addr, "/v1/duplicates?event_id=1001", None);
    assert_eq!(status, 200);
    let dups = body["duplicates"].as_array().unwrap();
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0]["ticket_id"], TicketId([7; 16]).to_string());
    let scans = dups[0]["scans"].as_array().unwrap();
    let gates: Vec<&str> = scans.iter().map(|s| s["gate"].as_str().unwrap()).collect();
    assert_eq!(gates, ["gate-1", "gate-2"]);
    assert_eq!(scans[0]["at"], "2030-03-17T17:46:40Z");
    assert_eq!(scans[1]["result"], "ok");
    let (_, other) = call("GET", addr, "/v1/duplicates?event_id=1002", None);
    assert_eq!(other["duplicates"].as_array().unwrap().len(), 0);
    let (status, _) = call("GET", addr, "/v1/duplicates?event_id=x", None);
    assert_eq!(status, 400);
}

#[test]
fn a_replayed_batch_changes_nothing_and_pull_sends_what_is_lacking() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let (t1, t2) = (enroll(addr, &state, 1), enroll(addr, &state, 2));
    let batch: Vec<ScanRecord> = (1..=3)
        .map(|i| entry(1, i, i as u8, 1_900_000_000 + i))
        .collect();
    let (_, first) = push(addr, &t1, 1, &batch);
    assert_eq!(first["stored"], 3);
    let (_, again) = push(addr, &t1, 1, &batch);
    assert_eq!(again["stored"], 0);
    assert_eq!(again["version_vector"][dev(1).to_string()], 3);
    // A device that holds 1 of device 1's records is sent the other two.
    let vv = json!({ "version_vector": { dev(1).to_string(): 1 } });
    let (status, pulled) = send(
        &format!("http://{addr}/v1/pull"),
        Some(&t2),
        &vv.to_string(),
    );
    assert_eq!(status, 200);
    let idxs: Vec<u64> = pulled["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["idx"].as_u64().unwrap())
        .collect();
    assert_eq!(idxs, [2, 3]);
}

#[test]
fn records_above_a_gap_are_refused_and_never_sent_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let (t1, t2) = (enroll(addr, &state, 1), enroll(addr, &state, 2));
    let batch: Vec<ScanRecord> = (1..=3)
        .map(|i| entry(1, i, i as u8, 1_900_000_000 + i))
        .collect();
    assert_eq!(push(addr, &t1, 1, &batch).0, 200);
    // The attack: records far above what the device wrote.
    for idx in [5, 1_000_000_000] {
        let (status, body) = push(addr, &t1, 1, &[entry(1, idx, 9, 1_900_000_100)]);
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["held"], 3, "the node says where to push from: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("send from 4"),
            "{body}"
        );
    }
    // So every pull of a gate that holds what there is sends nothing.
    let vv = json!({ "version_vector": { dev(1).to_string(): 3 } });
    for _ in 0..2 {
        let (status, pulled) = send(
            &format!("http://{addr}/v1/pull"),
            Some(&t2),
            &vv.to_string(),
        );
        assert_eq!(status, 200);
        assert_eq!(pulled["records"], json!([]), "{pulled}");
    }
    // Pushed in order, the rest is taken.
    let (_, filled) = push(
        addr,
        &t1,
        1,
        &[entry(1, 4, 8, 1_900_000_090), entry(1, 5, 9, 1_900_000_100)],
    );
    assert_eq!(filled["version_vector"][dev(1).to_string()], 5);
}

#[test]
fn a_long_pull_comes_in_pages_that_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let (t1, t2, t3) = (
        enroll(addr, &state, 1),
        enroll(addr, &state, 2),
        enroll(addr, &state, 3),
    );
    // Device 1 holds 1-5; device 2 holds 1-2.
    let one: Vec<ScanRecord> = [1, 2, 3, 4, 5]
        .into_iter()
        .map(|i| entry(1, i, i as u8, 1_900_000_000 + i))
        .collect();
    assert_eq!(push(addr, &t1, 1, &one).0, 200);
    assert_eq!(push(addr, &t2, 2, &[entry(2, 1, 20, 1_900_000_001)]).0, 200);
    assert_eq!(push(addr, &t2, 2, &[entry(2, 2, 21, 1_900_000_002)]).0, 200);
    // Device 3 holds device 1's 1-3 and pages through the rest two at a time.
    let vv = json!({ dev(1).to_string(): 3 });
    let mut after = Value::Null;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = send(
            &format!("http://{addr}/v1/pull"),
            Some(&t3),
            &json!({ "version_vector": vv, "after": after, "limit": 2 }).to_string(),
        );
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert!(pages <= 3, "paging must end: {page}");
        for r in page["records"].as_array().unwrap() {
            got.push(serde_json::from_value::<ScanRecord>(r.clone()).unwrap());
        }
        if page["next"].is_null() {
            break;
        }
        after = page["next"].clone();
    }
    let keys: Vec<(DeviceId, u64)> = got.iter().map(|r| (r.device_id, r.idx)).collect();
    let mut want = vec![(dev(1), 4), (dev(1), 5), (dev(2), 1), (dev(2), 2)];
    want.sort();
    assert_eq!(keys, want, "in key order");
    assert_eq!(got[0], one[3], "a record comes back as it was pushed");
    // A limit beyond the page size is served as a full page, not refused.
    let (status, all) = send(
        &format!("http://{addr}/v1/pull"),
        Some(&t3),
        &json!({ "version_vector": {}, "limit": 1_000_000 }).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(all["records"].as_array().unwrap().len(), 7);
    assert!(all["next"].is_null());
    // A cursor that is not a record key is a 400.
    let (status, body) = send(
        &format!("http://{addr}/v1/pull"),
        Some(&t3),
        &json!({ "version_vector": {}, "after": "yesterday" }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn duplicates_and_stats_need_the_organizer_token_when_the_node_has_one() {
    let tmp = tempfile::tempdir().unwrap();
    let state = gate_sync::AppState::new(
        gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap(),
    )
    .with_organizer_token(Some("door-42".into()));
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();
    let device = enroll(addr, &state, 1);
    assert_eq!(
        push(addr, &device, 1, &[entry(1, 1, 7, 1_900_000_000)]).0,
        200
    );
    for path in ["/v1/duplicates", "/v1/stats"] {
        let url = format!("http://{addr}{path}");
        let get = |token: Option<&str>| {
            let mut req = ureq::get(&url).config().http_status_as_error(false).build();
            if let Some(t) = token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            let resp = req.call().unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.into_body().read_json().unwrap();
            (status, body)
        };
        let (status, body) = get(None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("organizer token"));
        assert_eq!(get(Some("door-41")).0, 401, "{path}: a wrong token");
        assert_eq!(
            get(Some(&device)).0,
            401,
            "{path}: a device token is not an organizer's"
        );
        let (status, body) = get(Some("door-42"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, stats) = call("GET", addr, "/v1/stats", None);
    assert!(
        stats.get("records").is_none(),
        "nothing leaks without the token"
    );
}

#[test]
fn pushes_arriving_together_are_all_stored_once() {
    // Eight gates push at once, ten batches each, then replay them all at
    // once: the node groups what arrives together into one commit, and each
    // push is still answered for its own records.
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let tokens: Vec<String> = (1..=8).map(|d| enroll(addr, &state, d)).collect();
    let batches = |d: u8| -> Vec<Vec<ScanRecord>> {
        (0..10u64)
            .map(|b| {
                (b * 50 + 1..=(b + 1) * 50)
                    .map(|i| entry(d, i, (i % 200) as u8, 1_900_000_000 + i))
                    .collect()
            })
            .collect()
    };
    for round in ["first", "replay"] {
        let stored: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=8u8)
                .map(|d| {
                    let token = &tokens[usize::from(d) - 1];
                    s.spawn(move || {
                        batches(d)
                            .iter()
                            .map(|b| {
                                let (status, body) = push(addr, token, d, b);
                                assert_eq!(status, 200, "{body}");
                                body["stored"].as_u64().unwrap()
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let want = if round == "first" { 50 } else { 0 };
        assert!(stored.iter().all(|&n| n == want), "{round}: {stored:?}");
    }
    assert_eq!(state.read(|s| s.log().len()), 8 * 500);
    let (_, stats) = call("GET", addr, "/v1/stats", None);
    assert_eq!(
        stats["devices"].as_array().unwrap().len(),
        8,
        "every push noted its device"
    );
    // What was answered is on disk: a restarted node holds it all.
    let reopened = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
    assert_eq!(reopened.log().len(), 8 * 500);
}

#[test]
fn a_lesser_conflicting_record_is_counted_again_not_below_zero() {
    // A faulty device rewrites its scan 2 (an exit) as an entry, and sends
    // scan 3 (an exit) with it. Counting scan 3 against the rewritten scan
    // 2 would take one person out of a gate that holds none.
    let tmp = tempfile::tempdir().unwrap();
    let mut store = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
    let exit = |idx, at| record(4, idx, 1, Direction::Exit, ResultCode::Ok, at);
    store
        .add(&[entry(4, 1, 1, 1_900_000_010), exit(2, 1_900_000_020)], 0)
        .unwrap();
    let rewritten = entry(4, 2, 1, 1_900_000_020);
    assert!(
        rewritten < exit(2, 1_900_000_020),
        "the CRDT keeps the lesser"
    );
    store.add(&[rewritten, exit(3, 1_900_000_030)], 0).unwrap();
    let c = store.counts().per_gate(None);
    let gate = c.values().next().unwrap();
    assert_eq!((gate.admitted, gate.inside), (2, 0));
}

#[test]
fn a_page_stops_at_a_few_megabytes_whatever_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
    // 3,000 records of a gate that writes long reasons: about 6 MB.
    let records: Vec<ScanRecord> = (1..=3000)
        .map(|i| {
            let mut r = record(
                5,
                i,
                1,
                Direction::Entry,
                ResultCode::Invalid,
                1_900_000_000,
            );
            r.ticket = None;
            r.proof = None;
            r.reason = "x".repeat(2000);
            signed(r)
        })
        .collect();
    store.add(&records, 0).unwrap();
    let all = shared::VersionVector::default();
    let nothing = Default::default();
    let first = store.page(&all, &nothing, None, 5000);
    assert!(
        first.records.len() <= gate_sync::store::PAGE_BYTES + 4000,
        "{}",
        first.records.len()
    );
    let n = first.n;
    assert!(n < 3000 && first.next.is_some());
    let rest = store.page(&all, &nothing, first.next, 5000);
    assert_eq!((n + rest.n, rest.next), (3000, None));
    let page: Vec<ScanRecord> = serde_json::from_slice(&first.records.to_vec()).unwrap();
    assert_eq!(page.len(), n);
}

#[test]
fn pages_match_the_log_whatever_the_sizes_and_order_of_pushes() {
    // Three devices' records, signed once; each seed pushes them in its own
    // sizes (around the sizes kept at hand: 16, 64, 128), sends some again,
    // and commits two devices' pushes together now and then.
    let all: Vec<Vec<ScanRecord>> = (1..=3)
        .map(|d| {
            (1..=1200)
                .map(|i| {
                    record(
                        d,
                        i,
                        (i % 200) as u8,
                        Direction::Entry,
                        ResultCode::Ok,
                        1_900_000_000 + i,
                    )
                })
                .collect()
        })
        .collect();
    let sizes = [1, 2, 3, 15, 16, 17, 63, 64, 65, 128, 129, 200];
    for seed in 1..=20u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut store = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
        let mut held = [0usize; 3];
        for step in 0..25 {
            let mut push = |d: usize, rnd: &mut dyn FnMut(usize) -> usize| {
                let n = sizes[rnd(sizes.len())].min(all[d].len() - held[d]);
                // Some records already held go again, as after a lost answer.
                let from = held[d].saturating_sub(rnd(2) * rnd(4));
                let to = held[d] + n;
                held[d] = to;
                &all[d][from..to]
            };
            let (a, b) = (rnd(3), rnd(3));
            let first = push(a, &mut rnd);
            if a != b && rnd(3) == 0 {
                let second = push(b, &mut rnd);
                store
                    .add_group(&[(first, None), (second, None)], 0)
                    .unwrap();
            } else {
                store.add(first, 0).unwrap();
            }
            let theirs = shared::VersionVector(
                (0..3)
                    .map(|d| (dev(d as u8 + 1), rnd(held[d] + 1) as u64))
                    .collect(),
            );
            let limit = [1, 7, 100, 5000][rnd(4)];
            let lacking: Vec<ScanRecord> =
                store.log().missing_after(&theirs, None).cloned().collect();
            let (mut got, mut after) = (Vec::new(), None);
            loop {
                let page = store.page(&theirs, &Default::default(), after, limit);
                let records: Vec<ScanRecord> =
                    serde_json::from_slice(&page.records.to_vec()).unwrap();
                assert_eq!(records.len(), page.n);
                got.extend(records);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert!(
                got == lacking,
                "seed {seed} step {step}: limit {limit}, theirs {theirs:?}, held {held:?}"
            );
        }
    }
}

#[test]
fn pages_hold_exactly_what_a_replica_lacks_in_order_however_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sync.db");
    let mut store = gate_sync::store::Store::open(&db).unwrap();
    // Device 1's newest records have their JSON at hand and its oldest not;
    // device 2 has a few; device 3 came in one batch.
    let of = |device: u8, idx: std::ops::RangeInclusive<u64>| -> Vec<ScanRecord> {
        idx.map(|i| {
            record(
                device,
                i,
                (i % 200) as u8,
                Direction::Entry,
                ResultCode::Ok,
                1_900_000_000 + i,
            )
        })
        .collect()
    };
    for batch in [
        of(1, 1..=100),
        of(2, 1..=5),
        of(1, 101..=200),
        of(3, 1..=70),
    ] {
        store.add(&batch, 0).unwrap();
    }
    store.add(&of(1, 201..=300), 0).unwrap();
    // Device 2 goes on one record at a time, device 4 three at a time, as
    // gates syncing after every scan do.
    for i in 6..=90 {
        store.add(&of(2, i..=i), 0).unwrap();
    }
    for i in (1..=60).step_by(3) {
        store.add(&of(4, i..=i + 2), 0).unwrap();
    }
    // Device 5 pushes a few, then a backlog longer than what is kept at
    // hand (a gate back online): what is kept starts after a gap.
    store.add(&of(5, 1..=5), 0).unwrap();
    store.add(&of(5, 6..=205), 0).unwrap();
    let vv = |held: &[(u8, u64)]| {
        shared::VersionVector(held.iter().map(|(d, i)| (dev(*d), *i)).collect())
    };
    let check = |store: &gate_sync::store::Store| {
        for theirs in [
            vv(&[]),
            vv(&[(1, 250), (2, 5)]),
            vv(&[(1, 10), (3, 69)]),
            vv(&[(1, 300), (2, 5), (3, 70)]),
            vv(&[(1, 300), (2, 17), (3, 70), (4, 31)]),
            vv(&[(1, 300), (2, 89), (3, 70), (4, 62)]),
            vv(&[(1, 300), (2, 90), (3, 70), (4, 60), (5, 5)]),
            vv(&[(1, 300), (2, 90), (3, 70), (4, 60), (5, 100)]),
        ] {
            let lacking: Vec<ScanRecord> =
                store.log().missing_after(&theirs, None).cloned().collect();
            for limit in [1, 7, 64, 100, 5000] {
                let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
                loop {
                    let page = store.page(&theirs, &Default::default(), after, limit);
                    let records: Vec<ScanRecord> =
                        serde_json::from_slice(&page.records.to_vec()).unwrap();
                    assert!(records.len() <= limit && records.len() == page.n);
                    got.extend(records);
                    pages += 1;
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                    assert!(pages <= 2000, "paging ends");
                }
                assert_eq!(got, lacking, "limit {limit}, theirs {theirs:?}");
            }
        }
    };
    check(&store);
    // A node restarted has no JSON at hand: the same pages.
    drop(store);
    check(&gate_sync::store::Store::open(&db).unwrap());
}

#[test]
fn a_node_made_before_records_were_kept_in_arrival_order_keeps_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sync.db");
    let old = [
        include_str!("../../migrations/0001_records.sql"),
        include_str!("../../migrations/0002_devices_auth.sql"),
        include_str!("../../migrations/0003_distribution.sql"),
        include_str!("../../migrations/0004_conflicts.sql"),
        include_str!("../../migrations/0005_tls.sql"),
    ];
    let held: Vec<ScanRecord> = (1..=3)
        .map(|i| {
            record(
                4,
                i,
                i as u8,
                Direction::Entry,
                ResultCode::Ok,
                1_900_000_000 + i,
            )
        })
        .collect();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for sql in old {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", old.len()).unwrap();
        for r in &held {
            conn.execute(
                "INSERT INTO records (device_id, idx, body, received_at) VALUES (?1, ?2, ?3, 0)",
                rusqlite::params![
                    r.device_id.to_string(),
                    r.idx as i64,
                    serde_json::to_string(r).unwrap()
                ],
            )
            .unwrap();
        }
    }
    let mut store = gate_sync::store::Store::open(&db).unwrap();
    assert_eq!(store.log().records().cloned().collect::<Vec<_>>(), held);
    // Still one record a key, and the log still grow-only.
    assert!(store.add(&held[..1], 0).is_ok());
    store
        .add(
            &[record(
                4,
                4,
                4,
                Direction::Exit,
                ResultCode::Ok,
                1_900_000_100,
            )],
            0,
        )
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 4);
    assert!(
        conn.execute("DELETE FROM records", []).is_err(),
        "grow-only"
    );
    assert!(
        conn.execute(
            "INSERT INTO records (device_id, idx, body, received_at) VALUES (?1, 1, 'x', 0)",
            [held[0].device_id.to_string()],
        )
        .is_err(),
        "one record a key"
    );
    assert_eq!(gate_sync::store::Store::open(&db).unwrap().log().len(), 4);
}

#[test]
fn a_clock_beyond_the_year_9999_is_refused_and_the_last_day_is_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let token = enroll(addr, &state, 6);
    let mut r = entry(6, 1, 1, 0);
    r.wall_ms = u64::MAX / 2;
    let (status, body) = push(addr, &token, 6, std::slice::from_ref(&r));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("year 9999"),
        "{body}"
    );
    r.wall_ms = shared::time::MAX_MS;
    assert_eq!(push(addr, &token, 6, &[signed(r)]).0, 200);
    let (status, stats) = call("GET", addr, "/v1/stats", None);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["entries_per_minute"][0]["minute"],
        "9999-12-31T23:59:00Z"
    );
}

#[test]
fn an_enrollment_token_never_takes_over_a_device_known_from_a_peer() {
    // A peer enrolled this device (with its clock an hour ahead); an
    // enrollment token used here with the same id is refused, and the
    // device's own token keeps working.
    let tmp = tempfile::tempdir().unwrap();
    let mut store = gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap();
    let now = 1_900_000_000_000;
    let old = gate_sync::store::DeviceAuth {
        device_id: dev(7),
        name: "tablet-7".into(),
        token_hash: "a".repeat(64),
        enrolled_at_ms: now + 3_600_000,
        revoked_at_ms: None,
    };
    store.merge_device_auth(std::slice::from_ref(&old)).unwrap();
    let enrollment = store.create_enrollment("tablet-7", now).unwrap();
    let err = store.enroll(&enrollment, dev(7), now).unwrap_err();
    assert!(err.to_string().contains("already enrolled"), "{err}");
    let held = store.device_auth().unwrap();
    assert_eq!(held, [old], "the peer's enrollment stands");
    // The unused token still enrolls a new device.
    assert!(store.enroll(&enrollment, dev(8), now).is_ok());
}

#[test]
fn bad_batches_are_refused_whole_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("sync.db");
    let (addr, state) = serve_state(&db);
    let t1 = enroll(addr, &state, 1);
    let mine = entry(1, 1, 1, 1_900_000_000);
    let (status, body) = push(addr, &t1, 1, &[mine.clone(), entry(2, 1, 1, 1_900_000_000)]);
    assert_eq!(status, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("belongs to another device")
    );
    let url = format!("http://{addr}/v1/devices/{}/records", dev(1));
    for bad in ["{", "{\"records\": [{\"idx\": 1}]}", "[]"] {
        let (status, body) = send(&url, Some(&t1), bad);
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string());
    }
    let (status, _) = send(
        &format!("http://{addr}/v1/devices/not-hex/records"),
        Some(&t1),
        "{\"records\": []}",
    );
    assert_eq!(status, 400);
    // A body over the limit is refused from its declared length, unread.
    let answer = raw(
        addr,
        &format!(
            "POST /v1/devices/{}/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t1}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{{",
            dev(1),
            shared::protocol::MAX_PUSH_BODY + 1
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // And one that does not declare it is cut off at the limit.
    let huge = format!(
        "{{\"records\": [], \"pad\": \"{}\"}}",
        "x".repeat(shared::protocol::MAX_PUSH_BODY + 1)
    );
    let chunked = raw(
        addr,
        &format!(
            "POST /v1/devices/{}/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t1}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{huge}\r\n0\r\n\r\n",
            dev(1),
            huge.len()
        ),
    );
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // An index beyond what SQLite stores, and labels as long as documents.
    let mut beyond = mine.clone();
    beyond.idx = 1 << 63;
    let mut wordy = mine.clone();
    wordy.gate = "g".repeat(257);
    for (bad, why) in [(beyond, "indexes go from 1 to"), (wordy, "too long")] {
        let (status, body) = push(addr, &t1, 1, &[mine.clone(), bad]);
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
    let (_, stats) = call("GET", addr, "/v1/stats", None);
    assert_eq!(stats["records"], 0, "nothing was applied partially");
    // What was accepted survives a restart.
    assert_eq!(push(addr, &t1, 1, &[mine]).0, 200);
    let again = serve(&db);
    let (_, stats) = call("GET", again, "/v1/stats?event_id=1001", None);
    assert_eq!(stats["records"], 1);
    assert_eq!(stats["admitted"], 1);
    assert_eq!(stats["inside"], 1);
    assert_eq!(stats["per_gate"][0]["gate"], "gate-1");
    assert_eq!(stats["devices"][0]["device_id"], dev(1).to_string());
}

#[test]
fn devices_are_known_not_anonymous() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let r = entry(1, 1, 1, 1_900_000_000);
    // No token, a made-up token: 401.
    let url = format!("http://{addr}/v1/devices/{}/records", dev(1));
    assert_eq!(send(&url, None, "{\"records\": []}").0, 401);
    assert_eq!(push(addr, "made-up", 1, std::slice::from_ref(&r)).0, 401);
    assert_eq!(
        send(
            &format!("http://{addr}/v1/pull"),
            None,
            "{\"version_vector\": {}}"
        )
        .0,
        401
    );
    // An enrollment token works once.
    let token = state.lock(|s| s.create_enrollment("tablet-1", 0)).unwrap();
    let body = enroll_request(&token, 1);
    let (status, first) = send(&format!("http://{addr}/v1/enroll"), None, &body);
    assert_eq!(status, 200);
    assert_eq!(
        send(&format!("http://{addr}/v1/enroll"), None, &body).0,
        401,
        "a used token is refused"
    );
    let t1 = first["device_token"].as_str().unwrap().to_owned();
    // A device pushes only under its own id.
    let other = format!("http://{addr}/v1/devices/{}/records", dev(2));
    let (status, body) = send(&other, Some(&t1), "{\"records\": []}");
    assert_eq!(status, 403, "{body}");
    assert_eq!(push(addr, &t1, 1, std::slice::from_ref(&r)).0, 200);
    // Revoked: refused from then on, its records stay.
    state.revoke(&dev(1).to_string(), 1).unwrap();
    let (status, body) = push(addr, &t1, 1, &[entry(1, 2, 2, 1_900_000_010)]);
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("revoked"));
    let (_, stats) = call("GET", addr, "/v1/stats", None);
    assert_eq!(stats["records"], 1);
}

#[test]
fn the_openapi_document_lists_exactly_the_served_routes() {
    let doc: Value = serde_json::from_str(gate_sync::http::OPENAPI).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = gate_sync::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And each is really served: an answer in the API's shape, not 404 or 405.
    let tmp = tempfile::tempdir().unwrap();
    let addr = serve(&tmp.path().join("sync.db"));
    for (method, path) in served {
        let path = path.replace("{device_id}", &dev(3).to_string());
        let (status, _) = if method == "post" {
            send(&format!("http://{addr}{path}"), None, "{}")
        } else {
            call("GET", addr, &path, None)
        };
        assert!(![404, 405].contains(&status), "{method} {path}: {status}");
    }
}

#[test]
fn peer_nodes_exchange_what_each_lacks_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), (b, b_state)) = two_peers(tmp.path());
    let (t1, t2) = (enroll(a, &a_state, 1), enroll(b, &b_state, 2));
    assert_eq!(push(a, &t1, 1, &[entry(1, 1, 7, 1_900_000_000)]).0, 200);
    assert_eq!(push(b, &t2, 2, &[entry(2, 1, 7, 1_900_000_005)]).0, 200);
    let agent = ureq::Agent::new_with_defaults();
    // B, told of peer A, pulls A's record and sends its own.
    let (received, sent) =
        gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap();
    assert_eq!((received, sent), (1, 1));
    for node in [a, b] {
        let (_, dups) = call("GET", node, "/v1/duplicates", None);
        assert_eq!(
            dups["duplicates"].as_array().unwrap().len(),
            1,
            "both nodes see the double admission"
        );
    }
    // Again: nothing left to move.
    assert_eq!(
        gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap(),
        (0, 0)
    );
    // A peer that is down is an error for this round, not a crash.
    // Port 1: nothing listens there, and no other test's server can take it
    // (a port found free by binding and dropping could be handed out again).
    let port = 1;
    assert!(
        gate_sync::peers::exchange(&b_state, &format!("http://127.0.0.1:{port}"), &agent).is_err()
    );
    // A node without the secret is refused.
    let (c, _) = serve_with(&tmp.path().join("c.db"), Some("other".into()));
    let records = json!({ "records": [entry(3, 1, 1, 1_900_000_000)] }).to_string();
    assert_eq!(
        send(
            &format!("http://{c}/v1/merge"),
            Some("venue-secret"),
            &records
        )
        .0,
        401
    );
    assert_eq!(
        send(
            &format!("http://{}/v1/merge", serve(&tmp.path().join("d.db"))),
            Some("x"),
            &records
        )
        .0,
        403
    );
}

#[test]
fn a_device_enrolled_at_one_node_syncs_with_its_peers_and_a_revocation_travels() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), (b, b_state)) = two_peers(tmp.path());
    let t1 = enroll(a, &a_state, 1);
    let t2 = enroll(b, &b_state, 2);
    assert_eq!(
        push(b, &t1, 1, &[entry(1, 1, 7, 1_900_000_000)]).0,
        401,
        "B does not know it yet"
    );
    let agent = ureq::Agent::new_with_defaults();
    gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap();
    // Each node now takes the other's device, with the token it was given.
    assert_eq!(push(b, &t1, 1, &[entry(1, 1, 7, 1_900_000_000)]).0, 200);
    assert_eq!(push(a, &t2, 2, &[entry(2, 1, 8, 1_900_000_000)]).0, 200);
    // Device 1 is lost: revoked at B, the revocation reaches A.
    b_state.revoke(&dev(1).to_string(), 5).unwrap();
    gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap();
    let (status, body) = push(a, &t1, 1, &[entry(1, 2, 9, 1_900_000_001)]);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("revoked"));
    let listed = |state: &gate_sync::AppState| state.read(|s| s.device_auth()).unwrap();
    assert_eq!(
        listed(&a_state),
        listed(&b_state),
        "both nodes agree on every device"
    );
    // A peer sending a malformed device list is refused whole.
    let (status, body) = send(
        &format!("http://{a}/v1/merge"),
        Some("venue-secret"),
        &json!({ "records": [entry(3, 1, 1, 1_900_000_000)], "devices": [{
            "device_id": dev(3), "name": "x", "token_hash": "not-hex",
            "enrolled_at_ms": 1, "revoked_at_ms": null }] })
        .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        a_state.read(|s| s.log().len()),
        2,
        "nothing of it was applied"
    );
    // A device cannot slip a device list into its own push.
    let before = listed(&b_state);
    let (status, body) = send(
        &format!("http://{b}/v1/devices/{}/records", dev(2)),
        Some(&t2),
        &json!({ "records": [], "devices": [{
            "device_id": dev(9), "name": "x", "token_hash": "a".repeat(64),
            "enrolled_at_ms": 1, "revoked_at_ms": null }] })
        .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("devices"),
        "{body}"
    );
    assert_eq!(listed(&b_state), before);
}

#[test]
fn device_lists_merge_alike_in_any_order() {
    use gate_sync::store::{DeviceAuth, Store};
    let tmp = tempfile::tempdir().unwrap();
    let auth = |hash: char, enrolled: u64, revoked: Option<u64>| DeviceAuth {
        device_id: dev(4),
        name: format!("tablet-{hash}"),
        token_hash: hash.to_string().repeat(64),
        enrolled_at_ms: enrolled,
        revoked_at_ms: revoked,
    };
    // Enrolled at 10, enrolled again at 20 (a reinstalled tablet), revoked at 30 and at 25.
    let lists = [
        vec![auth('a', 10, None)],
        vec![auth('b', 20, None)],
        vec![auth('a', 10, Some(30))],
        vec![auth('b', 20, Some(25))],
    ];
    let mut results = Vec::new();
    for (n, order) in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]]
        .iter()
        .enumerate()
    {
        let mut store = Store::open(&tmp.path().join(format!("{n}.db"))).unwrap();
        for &i in order {
            store.merge_device_auth(&lists[i]).unwrap();
            store.merge_device_auth(&lists[i]).unwrap();
        }
        results.push(store.device_auth().unwrap());
    }
    assert_eq!(results[0], vec![auth('b', 20, Some(25))]);
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
}

#[test]
fn a_new_node_catches_up_on_more_than_a_page_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let ((a, a_state), (_, b_state)) = two_peers(tmp.path());
    // A holds two and a half pages of one device's scans, B a page and a
    // half of another's: each way takes several pages.
    let page = gate_sync::http::PULL_PAGE as u64;
    let on_a: Vec<ScanRecord> = (1..=page * 5 / 2)
        .map(|i| entry(1, i, (i % 250) as u8, 1_900_000_000 + i))
        .collect();
    let on_b: Vec<ScanRecord> = (1..=page * 3 / 2)
        .map(|i| entry(2, i, (i % 250) as u8, 1_900_100_000 + i))
        .collect();
    a_state.lock(|s| s.add(&on_a, 0)).unwrap();
    b_state.lock(|s| s.add(&on_b, 0)).unwrap();
    let agent = ureq::Agent::new_with_defaults();
    let moved = gate_sync::peers::exchange(&b_state, &format!("http://{a}"), &agent).unwrap();
    assert_eq!(moved, (on_a.len(), on_b.len()));
    let (a_log, b_log) = (
        a_state.read(|s| s.log().clone()),
        b_state.read(|s| s.log().clone()),
    );
    assert_eq!(a_log.len(), on_a.len() + on_b.len());
    assert_eq!(a_log, b_log, "both nodes hold the same records");
}

#[test]
fn keyset_and_revocations_are_handed_to_enrolled_devices_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_state(&tmp.path().join("sync.db"));
    let t1 = enroll(addr, &state, 1);
    let get = |path: &str, token: Option<&str>| {
        let mut req = ureq::get(&format!("http://{addr}{path}"))
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().read_json::<Value>().unwrap())
    };
    assert_eq!(
        get("/v1/revocations", Some(&t1)).0,
        404,
        "nothing imported yet"
    );
    let list = format!("# refunds\n1001 {:032x}\n", 4);
    assert_eq!(state.lock(|s| s.set_revocations(&list, 5)).unwrap(), 1);
    assert!(
        state
            .lock(|s| s.set_revocations("garbage line here", 6))
            .is_err(),
        "a bad list is refused"
    );
    let (status, body) = get("/v1/revocations", Some(&t1));
    assert_eq!(status, 200);
    assert_eq!(body["body"], list, "the last good list is kept");
    assert_eq!(get("/v1/revocations", None).0, 401);
    assert_eq!(get("/v1/keyset", Some("nope")).0, 401);
}
