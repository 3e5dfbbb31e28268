//! End to end, with real scanner processes and a gate-sync node on 127.0.0.1:
//! two gates admit the same ticket while offline; after they sync, the node
//! lists the double admission and both gates refuse the ticket from then on.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::check::{NOW, Station, code};
use crate::scanner;

pub fn serve_gate_sync(db: &Path) -> (SocketAddr, gate_sync::AppState) {
    let state = gate_sync::AppState::new(gate_sync::store::Store::open(db).unwrap());
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();
    (addr, state)
}

fn sync(st: &Station) -> std::process::Output {
    scanner(&["--db", st.db(), "sync"], b"")
}

/// Enrolls a station with the node, as staff would: a token from the
/// organizer, typed (or scanned) into `scanner enroll`.
pub fn enroll(st: &Station, url: &str, state: &gate_sync::AppState) {
    let token = state.lock(|s| s.create_enrollment("tablet", 0)).unwrap();
    let args = [
        "--db",
        st.db(),
        "enroll",
        "--server",
        url,
        "--token",
        &token,
    ];
    let out = scanner(&args, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The one-time token does not work twice.
    let again = scanner(&args, b"");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("401"));
}

#[test]
fn a_ticket_admitted_at_two_offline_gates_is_flagged_and_then_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_gate_sync(&tmp.path().join("sync.db"));
    let url = format!("http://{addr}");
    let north = Station::new("tablet-n", "North", &[]);
    let south = Station::new("tablet-s", "South", &[]);
    enroll(&north, &url, &state);
    enroll(&south, &url, &state);
    let ticket = code(5, false);
    // Offline, both gates admit the same ticket (a screenshot shown twice).
    assert_eq!(north.result(NOW, &[], &ticket), "ok");
    assert_eq!(south.result(NOW + 10, &[], &ticket), "ok");
    for st in [&north, &south] {
        let out = sync(st);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // North syncs once more to learn what South pushed after North's first sync.
    let out = sync(&north);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pulled 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let dups: Value = ureq::get(&format!("{url}/v1/duplicates?event_id=1001"))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let list = dups["duplicates"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["ticket_id"], format!("{:032x}", 5));
    let gates: Vec<&str> = list[0]["scans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["gate"].as_str().unwrap())
        .collect();
    assert_eq!(gates, ["North", "South"]);

    // A third scan at either gate is refused, naming the first admission.
    for st in [&north, &south] {
        let answer = &st.check(NOW + 60, &[], &[&ticket])[0];
        assert_eq!(answer["result"], "already_redeemed");
        assert_eq!(answer["first_admission"]["gate"], "North");
        assert_eq!(answer["first_admission"]["device_name"], "tablet-n");
    }
    // Another ticket admitted at North is refused at South after a sync.
    let other = code(6, false);
    assert_eq!(north.result(NOW + 70, &[], &other), "ok");
    assert!(sync(&north).status.success());
    assert!(sync(&south).status.success());
    assert_eq!(south.result(NOW + 80, &[], &other), "already_redeemed");

    // The station page tells staff the gate is online with nothing pending.
    let status = scanner::gate::Gate::open(&south.db)
        .unwrap()
        .sync_status()
        .unwrap();
    assert_eq!(
        (status.pending, status.last_error.clone()),
        (1, None),
        "South's refusal is not pushed yet"
    );
    assert!(sync(&south).status.success());
    let page = crate::station::serve(&south.db);
    let state: Value = ureq::get(&format!("http://{page}/api/state"))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    assert_eq!(state["sync"]["online"], true, "{state}");
    assert_eq!(state["sync"]["status"], "online");
    assert_eq!(state["sync"]["pending"], 0);
    assert!(state["sync"]["last_sync_ms"].is_u64(), "{state}");
}

#[test]
fn an_unreachable_server_is_a_clear_error_and_the_gate_keeps_working() {
    let st = Station::new("t", "Main", &[]);
    let out = sync(&st);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sync server"));
    // A port nothing listens on: enrolling fails clearly, and so does a sync
    // with a server that has gone away.
    // Port 1: nothing listens there, and no other test's server can take it
    // (a port found free by binding and dropping could be handed out again).
    let port = 1;
    let dead = format!("http://127.0.0.1:{port}");
    // (A token may start with `-`: it is still the token, not an option.)
    let out = scanner(
        &[
            "--db",
            st.db(),
            "enroll",
            "--server",
            &dead,
            "--token",
            "-1t",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    scanner::gate::Gate::open(&st.db)
        .unwrap()
        .set_enrollment(&dead, "token", None)
        .unwrap();
    let out = sync(&st);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    assert_eq!(st.result(NOW, &[], &code(1, false)), "ok");
    let status = scanner::gate::Gate::open(&st.db)
        .unwrap()
        .sync_status()
        .unwrap();
    assert_eq!(status.pending, 1);
    assert!(status.last_error.unwrap().contains("unreachable"));
}

#[test]
fn gates_pick_up_the_revocation_list_and_keyset_the_node_hands_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_gate_sync(&tmp.path().join("sync.db"));
    let url = format!("http://{addr}");
    let gate = Station::new("t", "Main", &[]);
    enroll(&gate, &url, &state);
    // Nothing handed out yet: the sync still works.
    assert!(sync(&gate).status.success());

    // The organizer revokes ticket 9 (refunded) and adds a second signing key.
    state
        .lock(|s| s.set_revocations(&format!("1001 {:032x}\n", 9), 1))
        .unwrap();
    let second = shared::code::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[77; 32]));
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let mut keyset = shared::Keyset::from_json(&v["keyset"].to_string()).unwrap();
    keyset.insert(second.verifying_key(), [1001]);
    state.lock(|s| s.set_keyset(&keyset.to_json(), 1)).unwrap();
    let new_key_ticket = second
        .encode(&shared::TicketFields {
            event_id: 1001,
            ticket_id: shared::TicketId([0xab; 16]),
            category_id: 2,
            multi_entry: false,
            valid_from: 1_900_000_000,
            valid_until: 1_900_086_400,
            seat: String::new(),
        })
        .unwrap();
    assert_eq!(gate.result(NOW, &[], &new_key_ticket), "unknown_key");

    let out = sync(&gate);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("revocation list: 1 tickets") && said.contains("keyset updated"),
        "{said}"
    );
    assert_eq!(gate.result(NOW, &[], &code(9, false)), "revoked");
    assert_eq!(gate.result(NOW, &[], &new_key_ticket), "ok");
    // A bad keyset never reaches the node.
    assert!(state.lock(|s| s.set_keyset("{\"keys\": 1}", 2)).is_err());
}

#[test]
fn the_dashboard_asks_for_the_organizer_token_then_shows_the_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let state = gate_sync::AppState::new(
        gate_sync::store::Store::open(&tmp.path().join("sync.db")).unwrap(),
    )
    .with_organizer_token(Some("door-42".into()));
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();
    let url = format!("http://{addr}");
    let north = Station::new("tablet-n", "North", &[]);
    let south = Station::new("tablet-s", "South", &[]);
    enroll(&north, &url, &state);
    enroll(&south, &url, &state);
    let ticket = code(21, false);
    assert_eq!(north.result(NOW, &[], &ticket), "ok");
    assert_eq!(south.result(NOW + 5, &[], &ticket), "ok");
    assert_eq!(south.result(NOW + 6, &[], &code(22, false)), "ok");
    assert!(sync(&north).status.success() && sync(&south).status.success());
    // A faulty far gate wrote its first record twice: flagged on the page.
    let first = far_scan(1, NOW * 1000);
    let mut again = first.clone();
    again.reason = "written again".into();
    far_gate().sign(&mut again);
    state
        .lock(|s| s.add_authentic(&[first, again], &[], 0))
        .unwrap();

    let Some(browser) = crate::station::Browser::start() else {
        return;
    };
    browser.cmd(
        "POST",
        "/url",
        serde_json::json!({ "url": format!("{url}/") }),
    );
    // The node asks for the token first; a wrong one is refused, the right one shows it all.
    browser.wait_for(
        "return document.getElementById('login').style.display",
        "flex",
    );
    crate::station::save_screenshot(&browser, "dashboard-login.png");
    browser.type_into("#token", "door-41\u{E007}");
    browser.wait_for(
        "return document.getElementById('login-error').textContent",
        "wrong organizer token",
    );
    browser.script("document.getElementById('token').value = ''");
    browser.type_into("#token", "door-42\u{E007}");
    browser.wait_for(
        "return document.getElementById('dupcount').textContent",
        "1",
    );
    assert_eq!(
        browser.script("return document.getElementById('login').style.display"),
        "none"
    );
    assert_eq!(browser.text("admitted"), "3");
    assert_eq!(browser.text("inside"), "2");
    let gates = browser.script(
        "return [...document.querySelectorAll('#gates tbody tr')].map(r => r.cells[0].textContent + ':' + r.cells[2].textContent).join(',')",
    );
    assert_eq!(gates, "North:1,South:2");
    let dup = browser.script("return document.querySelector('#dups .dup').textContent");
    let dup = dup.as_str().unwrap();
    assert!(
        dup.contains(&format!("{:032x}", 21)) && dup.contains("North") && dup.contains("South"),
        "{dup}"
    );
    assert_eq!(
        browser.script("return document.querySelectorAll('#chart rect').length"),
        1,
        "one minute of entries"
    );
    assert_eq!(
        browser.script("return document.querySelectorAll('#devices tbody tr').length"),
        3
    );
    let flagged = browser.script(
        "return [...document.querySelectorAll('#devices tr.flagged')].map(r => r.cells[0].textContent + ' ' + r.cells[2].textContent).join()",
    );
    assert_eq!(
        flagged,
        format!(
            "{} FLAGGED: wrote 1 record(s) twice; revoke it",
            &far_gate().id().to_string()[..8]
        )
    );
    crate::station::save_screenshot(&browser, "dashboard.png");
}

/// The far gate's key.
fn far_gate() -> shared::device::DeviceSigner {
    shared::device::DeviceSigner::from_seed(&[9; 32])
}

/// Scan `idx` of a gate far away: an unreadable code at `wall_ms`, signed
/// by that gate.
fn far_scan(idx: u64, wall_ms: u64) -> shared::ScanRecord {
    let mut r = shared::ScanRecord {
        device_id: far_gate().id(),
        idx,
        ticket: None,
        multi_entry: false,
        category_id: 0,
        seat: String::new(),
        direction: shared::Direction::Entry,
        result: shared::ResultCode::Invalid,
        reason: "unreadable".into(),
        wall_ms,
        hlc: shared::Hlc(wall_ms << 16),
        gate: "Far".into(),
        device_name: "far".into(),
        proof: None,
        prev: shared::RecordHash::FIRST,
        device_key: None,
        sig: shared::DeviceSig::NONE,
    };
    far_gate().sign(&mut r);
    r
}

#[test]
fn a_gate_takes_no_record_above_a_gap_from_a_node() {
    let st = Station::new("t", "Main", &[]);
    assert_eq!(st.result(NOW, &[], &code(1, false)), "ok");
    let mut gate = scanner::gate::Gate::open(&st.db).unwrap();
    let other = far_gate().id();
    let remote: Vec<shared::ScanRecord> = [1, 2, 4]
        .into_iter()
        .map(|idx| far_scan(idx, NOW * 1000))
        .collect();
    let err = gate.merge_remote(&remote, &[]).unwrap_err();
    assert!(err.to_string().contains("/4 would leave a gap"), "{err}");
    assert_eq!(
        gate.version_vector().unwrap().get(&other),
        0,
        "refused whole"
    );
    assert_eq!(gate.merge_remote(&remote[..2], &[]).unwrap(), 2);
    assert_eq!(
        gate.merge_remote(&remote[..2], &[]).unwrap(),
        0,
        "a replay adds nothing"
    );
    let vv = gate.version_vector().unwrap();
    assert_eq!(vv.get(&other), 2);
    assert_eq!(vv.get(&gate.device().id), 1);
}

#[test]
fn a_gate_back_from_a_long_offline_spell_pulls_every_page() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_gate_sync(&tmp.path().join("node.db"));
    // Other gates' scans, more than two pages of a pull answer.
    let other = far_gate().id();
    let n = gate_sync::http::PULL_PAGE as u64 * 2 + 17;
    let remote: Vec<shared::ScanRecord> =
        (1..=n).map(|idx| far_scan(idx, NOW * 1000 + idx)).collect();
    state.lock(|s| s.add(&remote, 0)).unwrap();
    let st = Station::new("t", "Main", &[]);
    enroll(&st, &format!("http://{addr}"), &state);
    let out = sync(&st);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gate = scanner::gate::Gate::open(&st.db).unwrap();
    assert_eq!(gate.version_vector().unwrap().get(&other), n);
}

#[test]
fn gates_sync_over_tls_with_the_pinned_certificate_and_refuse_another() {
    let tmp = tempfile::tempdir().unwrap();
    let store = gate_sync::store::Store::open(&tmp.path().join("node.db")).unwrap();
    let cert = store.node_cert().unwrap();
    let state = gate_sync::AppState::new(store);
    let addr = gate_sync::serve_in_background_tls(state.clone(), "127.0.0.1:0", &cert).unwrap();
    let url = format!("https://{addr}");
    let code = |fingerprint: Option<String>| {
        gate_sync::tls::EnrollmentCode {
            token: state.lock(|s| s.create_enrollment("tablet", 0)).unwrap(),
            fingerprint,
        }
        .to_string()
    };
    let enroll = |st: &Station, token: &str| {
        scanner(
            &[
                "--db",
                st.db(),
                "enroll",
                "--server",
                &url,
                "--token",
                token,
            ],
            b"",
        )
    };
    // Enrolled with the token the node printed: scans reach the node.
    let north = Station::new("tablet-n", "North", &[]);
    let out = enroll(&north, &code(Some(cert.fingerprint())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(north.result(NOW, &[], &code_of(31)), "ok");
    let out = sync(&north);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state.read(|s| s.log().len()), 1);
    // Another certificate's fingerprint: the gate refuses to talk, and says why.
    let other = gate_sync::tls::NodeCert::generate().unwrap().fingerprint();
    let south = Station::new("tablet-s", "South", &[]);
    let out = enroll(&south, &code(Some(other.clone())));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the node this device enrolled with"),
        "{err}"
    );
    // A gate whose pin no longer matches (the node was replaced) will not sync.
    let mut gate = scanner::gate::Gate::open(&north.db).unwrap();
    let token = gate.device_token().unwrap().unwrap();
    gate.set_enrollment(&url, &token, Some(&other)).unwrap();
    assert_eq!(north.result(NOW + 1, &[], &code_of(32)), "ok");
    let out = sync(&north);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the pinned"), "{err}");
    assert_eq!(state.read(|s| s.log().len()), 1, "nothing was sent");
    // https with a token that carries no fingerprint, or plain http across
    // the network: refused before anything is sent.
    let out = enroll(&south, &code(None));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no certificate fingerprint"));
    let out = scanner(
        &[
            "--db",
            south.db(),
            "enroll",
            "--server",
            "http://10.0.0.2:8090",
            "--token",
            "gs_x",
        ],
        b"",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("use https://"));
}

/// A code of ticket `n` (single entry).
fn code_of(n: u32) -> String {
    code(n, false)
}
