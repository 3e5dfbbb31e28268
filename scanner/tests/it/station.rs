//! The station page: its HTTP API on a real socket, its live feed following
//! scans from any process, and the page itself in a real headless Chromium.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::check::{NOW, Station, code};
use crate::scanner;

/// Starts the station library on 127.0.0.1:0 in a background runtime.
pub fn serve(db: &Path) -> SocketAddr {
    serve_with(db, scanner::station::RESULT_SHOWN_FOR, None)
}

/// [`serve`], showing each result for `shown_for`, and syncing every
/// `sync_every` as `scanner station` does, if given.
pub fn serve_with(db: &Path, shown_for: Duration, sync_every: Option<Duration>) -> SocketAddr {
    let gate = scanner::gate::Gate::open(db).unwrap();
    let state = scanner::station::AppState::new(gate).with_result_shown_for(shown_for);
    if let Some(every) = sync_every {
        scanner::station::spawn_sync_loop(db.to_owned(), every, Some(state.clone()));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            scanner::station::run(listener, state, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

fn get_state(addr: SocketAddr) -> Value {
    ureq::get(&format!("http://{addr}/api/state"))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap()
}

/// An admission of ticket `n` at a gate far away (its record `idx`), at
/// `at_s`, signed by that gate: what a sync brings from another gate.
fn far_admission(idx: u64, n: u32, at_s: u64) -> shared::ScanRecord {
    let mut id = [0u8; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    let far = shared::device::DeviceSigner::from_seed(&[9; 32]);
    let mut r = shared::ScanRecord {
        device_id: far.id(),
        idx,
        ticket: Some((1001, shared::TicketId(id))),
        multi_entry: false,
        category_id: 1,
        seat: String::new(),
        direction: shared::Direction::Entry,
        result: shared::ResultCode::Ok,
        reason: String::new(),
        wall_ms: at_s * 1000,
        hlc: shared::Hlc((at_s * 1000) << 16),
        gate: "Far".into(),
        device_name: "far".into(),
        proof: Some(
            shared::parse(&crate::check::code(n, false))
                .unwrap()
                .signature(),
        ),
        prev: shared::RecordHash::FIRST,
        device_key: None,
        sig: shared::DeviceSig::NONE,
    };
    far.sign(&mut r);
    r
}

/// Merges records from another gate into `st`'s log, as a sync does.
fn pull(st: &Station, records: &[shared::ScanRecord]) {
    let mut gate = scanner::gate::Gate::open(&st.db).unwrap();
    assert_eq!(gate.merge_remote(records, &[]).unwrap(), records.len());
}

fn post(addr: SocketAddr, body: &str) -> (u16, Value) {
    let resp = ureq::post(&format!("http://{addr}/api/check"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().read_json().unwrap())
}

#[test]
fn api_checks_codes_and_refuses_malformed_requests_in_one_shape() {
    let st = Station::new("tablet-1", "North", &[]);
    let addr = serve(&st.db);
    let c = code(1, false);
    // The station checks at the wall clock, so use a ticket valid now: none
    // of the vector-key tickets are (they are for 2030); expect not_yet_valid.
    let (status, answer) = post(addr, &json!({ "code": c }).to_string());
    assert_eq!(status, 200);
    assert_eq!(answer["result"], "not_yet_valid");
    assert_eq!(answer["gate"], "North");
    for bad in ["{", "{\"code\": 5}", "[]", ""] {
        let (status, answer) = post(addr, bad);
        assert_eq!(status, 400, "{bad}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("expected {\"code\""),
            "{answer}"
        );
    }
    let state = get_state(addr);
    assert_eq!(
        state["stats"]["scans"], 1,
        "malformed requests record nothing"
    );
    assert_eq!(state["last"]["result"], "not_yet_valid");
    assert_eq!(state["device"]["name"], "tablet-1");
}

#[test]
fn live_feed_shows_scans_made_by_another_process() {
    let st = Station::new("tablet-2", "South", &[]);
    let addr = serve(&st.db);
    let resp = ureq::get(&format!("http://{addr}/api/events"))
        .call()
        .unwrap();
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    // A scan through the command line, a separate process on the same database.
    let now = NOW.to_string();
    let c = code(2, false);
    let out = scanner(&["--db", st.db(), "check", "--now", &now, &c], b"");
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let data = loop {
        assert!(Instant::now() < deadline, "no event arrived");
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            break data.to_owned();
        }
    };
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["scan"]["result"], "ok");
    assert_eq!(event["scan"]["ticket_id"], format!("{:032x}", 2));
    assert_eq!(event["state"]["stats"]["admitted"], 1);
}

/// Drives Chromium through chromedriver's WebDriver API.
pub struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
}

impl Browser {
    /// `None` when Chromium is not installed and this is not CI (where it must be).
    pub fn start() -> Option<Browser> {
        if !Path::new("/usr/bin/chromedriver").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install chromium and chromium-driver"
            );
            // Straight to stderr, past the test harness's capture, so the
            // skip is seen even when the test "passes".
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: a browser test did not run: no /usr/bin/chromedriver \
                 (apt-get install chromium chromium-driver) ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1024,768", format!("--user-data-dir={}", profile.display())]}}}});
        let resp: Value = ureq::post(&format!("{base}/session"))
            .send_json(&caps)
            .unwrap()
            .into_body()
            .read_json()
            .unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap().to_owned();
        Some(Browser {
            driver,
            base,
            session,
        })
    }

    pub fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let resp = if method == "GET" {
            ureq::get(&url).call()
        } else {
            ureq::post(&url).send_json(&body)
        };
        resp.unwrap().into_body().read_json::<Value>().unwrap()["value"].clone()
    }

    pub fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": js, "args": []}))
    }

    /// The text of the element with id `id`.
    pub fn text(&self, id: &str) -> Value {
        self.script(&format!(
            "return document.getElementById('{id}').textContent"
        ))
    }

    /// Types `text` into the element `css` picks, as a keyboard would.
    pub fn type_into(&self, css: &str, text: &str) {
        let found = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned();
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Waits until `js` returns `want`.
    pub fn wait_for(&self, js: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.script(js);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{js} is {got}, not {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_page_turns_green_then_red_as_scans_happen() {
    let st = Station::new("tablet-3", "West", &[]);
    let addr = serve_with(&st.db, Duration::from_secs(600), None);
    let Some(browser) = Browser::start() else {
        return;
    };
    browser.cmd("POST", "/url", json!({"url": format!("http://{addr}/")}));
    browser.wait_for(
        "return document.getElementById('link').textContent",
        "station connected",
    );
    browser.wait_for(
        "return document.getElementById('device').textContent",
        "Gate West · tablet-3",
    );

    // A seated ticket admitted by another process appears, green, with its seat.
    let (seat_code, now) = {
        let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
        (
            v["cases"][0]["code"].as_str().unwrap().to_owned(),
            v["cases"][0]["now"].to_string(),
        )
    };
    assert!(
        scanner(&["--db", st.db(), "check", "--now", &now, &seat_code], b"")
            .status
            .success()
    );
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "ADMIT",
    );
    assert_eq!(
        browser.script("return document.getElementById('result').className"),
        "admit"
    );
    let ticket = browser.text("ticket");
    assert_eq!(ticket, "Seat A-12-7 · Category 3");
    assert_eq!(browser.text("admitted"), "1");

    // Garbage typed into the manual field (as a wedge types) turns it red with the reason.
    browser.type_into("#code", "not-a-ticket\u{E007}");
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "INVALID",
    );
    assert_eq!(
        browser.script("return document.getElementById('result').className"),
        "refuse"
    );
    let reason = browser.text("reason");
    assert_eq!(reason, "does not start with \"VT1:\"");
    assert_eq!(browser.text("scans"), "2");

    save_screenshot(&browser, "station.png");
}

/// The page opened at a gate whose last record is another gate's admission,
/// brought by a sync, says "Ready", not that gate's ADMIT; more such records
/// change the counts only; a scan made here shows, and still shows on a
/// page opened while it is on screen.
#[test]
fn the_page_shows_only_scans_made_here_and_opens_ready() {
    let st = Station::new("tablet-4", "East", &[]);
    pull(&st, &[far_admission(1, 31, NOW)]);
    let addr = serve_with(&st.db, Duration::from_secs(600), None);
    let state = get_state(addr);
    assert_eq!(
        state["last"]["device_name"], "far",
        "programs see every gate"
    );
    assert_eq!(state["current"], Value::Null, "{state}");
    let Some(browser) = Browser::start() else {
        return;
    };
    let url = json!({"url": format!("http://{addr}/")});
    browser.cmd("POST", "/url", url.clone());
    browser.wait_for(
        "return document.getElementById('link').textContent",
        "station connected",
    );
    browser.wait_for(
        "return document.getElementById('admitted').textContent",
        "1",
    );
    let screen = || {
        [
            browser.script("return document.getElementById('result').className"),
            browser.text("verdict"),
            browser.text("reason"),
        ]
    };
    let ready = ["ready", "READY", "Scan a ticket"].map(Value::from);
    assert_eq!(screen(), ready);

    pull(&st, &[far_admission(2, 32, NOW + 60)]);
    browser.wait_for(
        "return document.getElementById('admitted').textContent",
        "2",
    );
    assert_eq!(screen(), ready, "another gate's admission is not shown");

    let now = (NOW + 120).to_string();
    assert!(
        scanner(
            &["--db", st.db(), "check", "--now", &now, &code(33, false)],
            b""
        )
        .status
        .success()
    );
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "ADMIT",
    );
    assert_eq!(browser.text("admitted"), "3");
    browser.cmd("POST", "/url", url);
    browser.wait_for(
        "return document.getElementById('link').textContent",
        "station connected",
    );
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "ADMIT",
    );
}

/// A result goes back to "Ready" once it has been shown for its time, so the
/// next holder never sees the previous one's green; a new scan shows anew.
#[test]
fn a_result_fades_to_ready_after_it_has_been_shown() {
    let st = Station::new("tablet-5", "North", &[]);
    let shown_for = Duration::from_millis(700);
    let addr = serve_with(&st.db, shown_for, None);
    let Some(browser) = Browser::start() else {
        return;
    };
    browser.cmd("POST", "/url", json!({"url": format!("http://{addr}/")}));
    browser.wait_for(
        "return document.getElementById('link').textContent",
        "station connected",
    );
    for (n, verdict) in [(41, "ADMIT"), (41, "ALREADY USED")] {
        let now = (NOW + 60).to_string();
        let scanned = Instant::now();
        scanner(
            &["--db", st.db(), "check", "--now", &now, &code(n, false)],
            b"",
        );
        browser.wait_for(
            "return document.getElementById('verdict').textContent",
            verdict,
        );
        browser.wait_for(
            "return document.getElementById('result').className",
            "ready",
        );
        assert!(scanned.elapsed() >= shown_for, "shown for its time");
        assert_eq!(browser.text("verdict"), "READY");
        assert_eq!(browser.text("ticket"), "");
        assert_eq!(get_state(addr)["current"], Value::Null);
    }
    assert_eq!(
        get_state(addr)["result_shown_ms"],
        shown_for.as_millis() as u64
    );
}

/// Polls the station's state until `f` of it holds.
fn wait_for_state(addr: SocketAddr, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = get_state(addr);
        if f(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "{state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Another gate's record stamped hours ahead (its clock is wrong) must not
/// hide the scans made here after it: this device's clock does not follow
/// a stamp that far ahead, so its scans sort below it in the log.
#[test]
fn scans_made_here_still_show_after_a_record_from_a_clock_far_ahead() {
    let st = Station::new("tablet-7", "North", &[]);
    let addr = serve_with(&st.db, Duration::from_secs(600), None);
    let ahead_s = scanner::unix_now_ms() / 1000 + 3 * 3600;
    pull(&st, &[far_admission(1, 61, ahead_s)]);
    wait_for_state(addr, |s| s["stats"]["admitted"] == 1);
    for n in 1..=2u64 {
        // At the real clock: the vector tickets are not valid yet, and recorded.
        scanner(&["--db", st.db(), "check", &code(62, false)], b"");
        let state = wait_for_state(addr, |s| s["current"]["scan"]["idx"] == n);
        assert_eq!(state["current"]["scan"]["device_name"], "tablet-7");
        assert_eq!(state["stats"]["scans"], n + 1);
    }
}

/// The same, with the far record already in the log when the station
/// starts: the page's cursor starts at the newest record within reach of
/// this device's clock, not past it.
#[test]
fn a_station_started_after_a_record_from_a_clock_far_ahead_shows_its_own_scans() {
    let st = Station::new("tablet-8", "North", &[]);
    let ahead_s = scanner::unix_now_ms() / 1000 + 3 * 3600;
    pull(&st, &[far_admission(1, 63, ahead_s)]);
    let addr = serve_with(&st.db, Duration::from_secs(600), None);
    wait_for_state(addr, |s| s["stats"]["admitted"] == 1);
    scanner(&["--db", st.db(), "check", &code(64, false)], b"");
    let state = wait_for_state(addr, |s| s["current"]["scan"]["idx"] == 1);
    assert_eq!(state["current"]["scan"]["device_name"], "tablet-8");
}

/// A node that cannot be reached is `offline` (a retry will do); a node
/// that refuses this device (revoked) is `refused` (someone must act). The
/// node's own words stay in `error`, for programs.
#[test]
fn the_sync_state_says_whether_a_retry_can_help() {
    let every = Some(Duration::from_millis(100));
    let unreachable = Station::new("t-1", "Main", &[]);
    scanner::gate::Gate::open(&unreachable.db)
        .unwrap()
        .set_enrollment("http://127.0.0.1:1", "token", None)
        .unwrap();
    let addr = serve_with(&unreachable.db, scanner::station::RESULT_SHOWN_FOR, every);
    let state = wait_for_state(addr, |s| s["sync"]["status"] == "offline");
    assert_eq!(state["sync"]["online"], false);
    assert!(
        state["sync"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{state}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let (node, node_state) = crate::sync::serve_gate_sync(&tmp.path().join("node.db"));
    let revoked = Station::new("t-2", "Main", &[]);
    crate::sync::enroll(&revoked, &format!("http://{node}"), &node_state);
    let id = scanner::gate::Gate::open(&revoked.db)
        .unwrap()
        .device()
        .id
        .to_string();
    let addr = serve_with(&revoked.db, scanner::station::RESULT_SHOWN_FOR, every);
    wait_for_state(addr, |s| s["sync"]["status"] == "online");
    node_state.revoke(&id, 1).unwrap();
    let state = wait_for_state(addr, |s| s["sync"]["status"] == "refused");
    assert!(state["sync"]["error"].is_string(), "{state}");
}

/// Gate staff read the sync state in plain words and times on the clock:
/// no "os error 111", no unix seconds, no RFC 3339.
#[test]
fn the_page_words_the_sync_state_and_shows_clock_times() {
    let st = Station::new("tablet-6", "West", &[]);
    let mut gate = scanner::gate::Gate::open(&st.db).unwrap();
    gate.set_enrollment("http://127.0.0.1:1", "token", None)
        .unwrap();
    let now_ms = scanner::unix_now_ms();
    gate.note_sync(now_ms - 150_000, None).unwrap();
    drop(gate);
    let addr = serve_with(
        &st.db,
        Duration::from_secs(600),
        Some(Duration::from_millis(100)),
    );
    let Some(browser) = Browser::start() else {
        return;
    };
    browser.cmd("POST", "/url", json!({"url": format!("http://{addr}/")}));
    let offline = "Offline: the sync server cannot be reached; scans are kept and sent later";
    let sync_is = |pattern: &str| {
        format!(
            "const t = document.getElementById('sync').textContent; \
             return /^{pattern}$/.test(t) ? 'yes' : t"
        )
    };
    browser.wait_for(
        &sync_is(&format!(
            "{offline} · last sync \\d\\d:\\d\\d:\\d\\d \\(2 min ago\\)"
        )),
        "yes",
    );

    // A scan at the clock shows its time as HH:MM:SS; two waiting scans are said.
    scanner(&["--db", st.db(), "check", &code(51, false)], b"");
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "NOT YET VALID",
    );
    browser.wait_for(
        "return /^\\d\\d:\\d\\d:\\d\\d$/.test(document.getElementById('when').textContent) ? 'yes' : 'no'",
        "yes",
    );
    let now = NOW.to_string();
    for _ in 0..2 {
        scanner(
            &["--db", st.db(), "check", "--now", &now, &code(52, false)],
            b"",
        );
    }
    browser.wait_for(
        "return document.getElementById('verdict').textContent",
        "ALREADY USED",
    );
    // The first admission's time, which the gate words in UTC, is clock time too.
    let reason = browser.text("reason");
    let reason = reason.as_str().unwrap();
    assert!(
        reason.starts_with("already admitted at gate \"West\" by \"tablet-6\" at ")
            && !reason.contains('T')
            && !reason.contains('Z'),
        "{reason}"
    );
    browser.wait_for(
        &sync_is(&format!(
            "{offline} · last sync \\d\\d:\\d\\d:\\d\\d \\(2 min ago\\) · 3 scans to send"
        )),
        "yes",
    );
    let header = browser.script("return document.querySelector('header').textContent");
    for raw in ["os error", "io:", "refused", "unix", "1970", "2030-"] {
        assert!(!header.as_str().unwrap().contains(raw), "{header}");
    }
    save_screenshot(&browser, "station-offline.png");
}

/// Saves what the browser shows as target/NAME, for a person to look at.
pub fn save_screenshot(browser: &Browser, name: &str) {
    let png = browser.cmd("GET", "/screenshot", json!({}));
    if let Some(b64) = png.as_str() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(name);
        let _ = std::fs::write(path, decode_base64(b64));
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}
