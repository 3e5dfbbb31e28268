//! Live availability (`GET /events/{id}/live`) as a buyer's page uses it: a
//! watcher keeps its own picture of the event from the snapshot and the
//! changes, and that picture must be what `GET /events/{id}/tickets` says.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::{Server, code, event_on_sale, hold_seats, order, order_body, organizer};
use crate::Env;

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn watch(api: &Server, event: u64, since: Option<u64>) -> Socket {
    let host = api.base.trim_start_matches("http://");
    let query = since.map(|n| format!("?since={n}")).unwrap_or_default();
    let (socket, _) =
        tungstenite::connect(format!("ws://{host}/api/v1/events/{event}/live{query}")).unwrap();
    if let MaybeTlsStream::Plain(s) = socket.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    socket
}

/// The next message (pings aside).
fn next(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("a message within 10 s") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What a watcher knows of the event: seats' states, categories' counts
/// (available, held, sold), and the number of the last change.
#[derive(Debug, Default, PartialEq)]
struct Picture {
    seq: u64,
    seats: BTreeMap<String, String>,
    counts: BTreeMap<u64, (i64, i64, i64)>,
}

impl Picture {
    fn of_snapshot(s: &Value) -> Picture {
        assert_eq!(s["type"], "snapshot", "{s}");
        Picture {
            seq: s["seq"].as_u64().unwrap(),
            seats: seats_of(s),
            counts: counts_of(s),
        }
    }

    /// Applies a change, which must be the next one.
    fn apply(&mut self, c: &Value) {
        assert_eq!(c["type"], "change", "{c}");
        assert_eq!(c["seq"].as_u64(), Some(self.seq + 1), "no gap: {c}");
        self.seq += 1;
        let (from, to) = match c["kind"].as_str().unwrap() {
            "held" => ("available", "held"),
            "released" | "expired" => ("held", "available"),
            "sold" => ("held", "sold"),
            "refunded" => ("sold", "available"),
            other => panic!("kind {other}"),
        };
        for seat in c["seats"].as_array().unwrap() {
            let state = self.seats.get_mut(seat.as_str().unwrap()).unwrap();
            assert_eq!(state, from, "{seat} moved from {from}: {c}");
            *state = to.to_owned();
        }
        for p in c["places"].as_array().unwrap() {
            let counts = self
                .counts
                .get_mut(&p["category_id"].as_u64().unwrap())
                .unwrap();
            let n = p["count"].as_i64().unwrap();
            for (state, delta) in [(from, -n), (to, n)] {
                match state {
                    "available" => counts.0 += delta,
                    "held" => counts.1 += delta,
                    _ => counts.2 += delta,
                }
            }
        }
    }

    /// The same as the event's tickets now (the number aside).
    fn matches(&self, api: &Server, event: u64) {
        let (status, t) = api.call(
            "GET",
            &format!("/api/v1/events/{event}/tickets"),
            None,
            None,
        );
        assert_eq!(status, 200, "{t}");
        assert_eq!(self.seats, seats_of(&t), "seats");
        assert_eq!(self.counts, counts_of(&t), "counts");
        assert!(t["seq"].as_u64().unwrap() >= self.seq);
    }
}

fn seats_of(v: &Value) -> BTreeMap<String, String> {
    v["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_owned(),
                s[2].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn counts_of(v: &Value) -> BTreeMap<u64, (i64, i64, i64)> {
    v["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_i64().unwrap();
            (
                c["category_id"].as_u64().unwrap(),
                (n("available"), n("held"), n("sold")),
            )
        })
        .collect()
}

#[test]
fn a_watcher_sees_every_change_in_order_and_resumes_after_a_reconnect_without_a_gap() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--hold-seconds", "2"]);
    let (e, seated, standing) = event_on_sale(&api, &token);
    let mut ws = watch(&api, e, None);
    let mut picture = Picture::of_snapshot(&next(&mut ws));
    assert_eq!(picture.seq, 0);
    assert_eq!(picture.seats["A-1-1"], "available");
    assert_eq!(picture.counts[&standing], (300, 0, 0));
    picture.matches(&api, e);

    // Held (two seats and three standing places), then let go.
    let (status, h) = api.call(
        "POST",
        "/api/v1/holds",
        None,
        Some(&json!({"event_id": e, "items": [
            {"kind": "seats", "seats": ["A-1-1", "A-1-2"]},
            {"kind": "quantity", "category_id": standing, "quantity": 3}
        ]})),
    );
    assert_eq!(status, 201, "{h}");
    let held = next(&mut ws);
    assert_eq!(held["kind"], "held");
    assert_eq!(held["seats"], json!(["A-1-1", "A-1-2"]));
    assert_eq!(
        held["places"],
        json!([{"category_id": seated, "count": 2}, {"category_id": standing, "count": 3}])
    );
    picture.apply(&held);
    picture.matches(&api, e);
    let token_ = h["token"].as_str().unwrap();
    api.call("DELETE", &format!("/api/v1/holds/{token_}"), None, None);
    let released = next(&mut ws);
    assert_eq!(released["kind"], "released");
    picture.apply(&released);
    picture.matches(&api, e);

    // Sold: held, then sold when the card pays.
    let hold = hold_seats(&api, e, &["A-3-5", "A-3-6"]);
    picture.apply(&next(&mut ws));
    let (status, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "live-1");
    assert_eq!(
        (status, paid["state"].as_str()),
        (201, Some("paid")),
        "{paid}"
    );
    let sold = next(&mut ws);
    assert_eq!(sold["kind"], "sold");
    picture.apply(&sold);
    assert_eq!(picture.seats["A-3-5"], "sold");
    picture.matches(&api, e);

    // The watcher goes away; meanwhile a pair is held (and lapses) and the
    // paid order is cancelled by the organizer.
    drop(ws);
    let lapsing = hold_seats(&api, e, &["A-5-1", "A-5-2"]);
    let code_ = paid["code"].as_str().unwrap();
    let (status, cancelled) = api.call(
        "POST",
        &format!("/api/v1/orders/{code_}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{cancelled}");
    // Back with the last number seen: exactly what was missed, in order,
    // then the lapse as it comes (no one asks for anything meanwhile).
    let mut ws = watch(&api, e, Some(picture.seq));
    let missed = next(&mut ws);
    assert_eq!(missed["kind"], "held", "no snapshot, the next change");
    picture.apply(&missed);
    let refunded = next(&mut ws);
    assert_eq!(refunded["kind"], "refunded");
    picture.apply(&refunded);
    assert_eq!(picture.seats["A-3-5"], "available");
    let expired = next(&mut ws);
    assert_eq!(expired["kind"], "expired", "{expired}");
    assert_eq!(expired["seats"], json!(["A-5-1", "A-5-2"]));
    picture.apply(&expired);
    picture.matches(&api, e);
    let (_, lapsed) = api.call("GET", &format!("/api/v1/holds/{lapsing}"), None, None);
    assert_eq!(lapsed["state"], "expired");

    // A second watcher at once, and the first: both hear the next change.
    let mut other = watch(&api, e, None);
    let mut second = Picture::of_snapshot(&next(&mut other));
    assert_eq!(second, picture);
    hold_seats(&api, e, &["A-2-2"]);
    let change = next(&mut ws);
    assert_eq!(next(&mut other), change);
    picture.apply(&change);
    second.apply(&change);
    picture.matches(&api, e);
}

#[test]
fn a_number_the_event_never_reached_or_too_old_gets_a_snapshot_and_bad_requests_are_refused() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    hold_seats(&api, e, &["A-1-1"]);
    hold_seats(&api, e, &["A-1-2"]);
    // Another shop's number, or one from the future: a snapshot, not a
    // silent wait for changes that will never come.
    for since in [3, 99, u64::MAX] {
        let mut ws = watch(&api, e, Some(since));
        let s = next(&mut ws);
        assert_eq!(
            (s["type"].as_str(), s["seq"].as_u64()),
            (Some("snapshot"), Some(2)),
            "{s}"
        );
    }
    // Having seen nothing is a snapshot; resuming from the present waits
    // for the next change.
    let mut ws = watch(&api, e, Some(0));
    let s = next(&mut ws);
    assert_eq!(
        (s["type"].as_str(), s["seq"].as_u64()),
        (Some("snapshot"), Some(2)),
        "{s}"
    );
    let mut ws = watch(&api, e, Some(2));
    hold_seats(&api, e, &["A-1-3"]);
    let third = next(&mut ws);
    assert_eq!(
        (third["type"].as_str(), third["seq"].as_u64()),
        (Some("change"), Some(3))
    );

    // Not a WebSocket, no such event, a draft, a bad number: the error
    // shape, before any upgrade.
    let (status, answer) = api.call("GET", &format!("/api/v1/events/{e}/live"), None, None);
    assert_eq!(
        (status, code(&answer)),
        (426, "websocket_required"),
        "{answer}"
    );
    let (status, answer) = api.call("GET", "/api/v1/events/987654/live", None, None);
    assert_eq!((status, code(&answer)), (404, "not_found"), "{answer}");
    let (status, answer) = api.call(
        "GET",
        &format!("/api/v1/events/{e}/live?since=-1"),
        None,
        None,
    );
    assert_eq!((status, code(&answer)), (400, "bad_request"), "{answer}");
    let (_, v) = api.call(
        "POST",
        "/api/v1/venues",
        Some(&token),
        Some(&super::venue("Metz")),
    );
    let (_, draft) = api.call(
        "POST",
        "/api/v1/events",
        Some(&token),
        Some(&super::event(
            v["id"].as_u64().unwrap(),
            "Draft",
            "concert",
            1_900_000_000,
        )),
    );
    let host = api.base.trim_start_matches("http://");
    let refused = tungstenite::connect(format!(
        "ws://{host}/api/v1/events/{}/live",
        draft["id"].as_u64().unwrap()
    ));
    match refused {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("a draft is not watched: {:?}", other.map(|_| ())),
    }
    // A watcher that talks too much is let go; the server goes on.
    let mut chatty = watch(&api, e, None);
    next(&mut chatty);
    let _ = chatty.send(Message::Text("x".repeat(100_000).into()));
    let gone = (0..10).any(|_| matches!(chatty.read(), Err(_) | Ok(Message::Close(_))));
    assert!(gone, "an oversized message ends the watch");
    let (status, _) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
    assert_eq!(status, 200);
}

#[test]
fn a_watcher_that_never_answers_is_let_go_and_a_refusal_names_the_protocol() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--idle-seconds", "2"]);
    let (e, _, _) = event_on_sale(&api, &token);
    // Pinged each second, it answers nothing (it does not read): gone
    // within three seconds, though the server kept writing to it.
    let mut silent = watch(&api, e, None);
    std::thread::sleep(Duration::from_secs(5));
    let ended = (0..20).any(|_| matches!(silent.read(), Err(_) | Ok(Message::Close(_))));
    assert!(ended, "a silent watcher keeps no connection");
    // One that reads (and so answers pings) stays past the idle limit.
    let mut awake = watch(&api, e, None);
    next(&mut awake);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        match awake.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("the watcher was let go: {other:?}"),
        }
    }
    hold_seats(&api, e, &["A-1-4"]);
    assert_eq!(next(&mut awake)["kind"], "held");
    // A plain request for the feed is told to upgrade, and to what.
    let resp = ureq::Agent::from(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    )
    .get(format!("{}/api/v1/events/{e}/live", api.base))
    .call()
    .unwrap();
    assert_eq!(resp.status().as_u16(), 426);
    assert_eq!(
        resp.headers().get("upgrade").and_then(|v| v.to_str().ok()),
        Some("websocket")
    );
}

/// Two `issuer serve` processes on one PostgreSQL database, buyers spread
/// over both with no stickiness: each place is sold once, and a watcher on
/// one process hears what was sold through the other.
#[test]
fn two_processes_on_one_database_sell_each_place_once_and_watchers_hear_both() {
    let Some(url) = crate::pg::fresh_database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shop");
    // Started at once on a new database: one of them sets the shop up.
    let args = ["--buyer-rate", "0", "--max-held", "0"];
    let (one, two) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_in(&data, Some(&url), &args));
        let b = s.spawn(|| Server::start_in(&data, Some(&url), &args));
        (a.join().unwrap(), b.join().unwrap())
    });
    let shown = |api: &Server| {
        let (_, list) = api.call("GET", "/api/v1/events?limit=100", None, None);
        list["events"].as_array().unwrap().len()
    };
    let demo: Vec<Value> = serde_json::from_str(fixtures::SHOP_EVENTS).unwrap();
    assert_eq!(
        (shown(&one), shown(&two)),
        (demo.len(), demo.len()),
        "set up once"
    );
    let token = std::fs::read_to_string(data.join("demo-organizer.token")).unwrap();
    let (e, seated, standing) = event_on_sale(&one, token.trim());
    let mut ws = watch(&one, e, None);
    let mut picture = Picture::of_snapshot(&next(&mut ws));

    // A seat held and sold through the other process.
    let hold = hold_seats(&two, e, &["A-1-1"]);
    let held = next(&mut ws);
    assert_eq!(
        (held["kind"].as_str(), &held["seats"]),
        (Some("held"), &json!(["A-1-1"]))
    );
    picture.apply(&held);
    let (status, paid) = order(&two, &order_body(&hold, "pm_card_visa"), "two-1");
    assert_eq!(
        (status, paid["state"].as_str()),
        (201, Some("paid")),
        "{paid}"
    );
    let sold = next(&mut ws);
    assert_eq!(
        (sold["kind"].as_str(), &sold["seats"]),
        (Some("sold"), &json!(["A-1-1"]))
    );
    picture.apply(&sold);

    // Buyers at once, each request to either process: seats by key, the
    // best pair, standing places, all paid at once.
    let bought: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|buyer| {
                let (one, two) = (&one, &two);
                s.spawn(move || {
                    let mut paid = Vec::new();
                    for t in 0..15u64 {
                        let api = if (buyer + t) % 2 == 0 { one } else { two };
                        let item = match (buyer + t) % 3 {
                            0 => json!({"kind": "seats", "seats": [format!("A-{}-{}", 1 + t % 5, 1 + buyer)]}),
                            1 => json!({"kind": "best", "category_id": seated, "quantity": 2}),
                            _ => json!({"kind": "quantity", "category_id": standing, "quantity": 8}),
                        };
                        let (status, h) = api.call(
                            "POST",
                            "/api/v1/holds",
                            None,
                            Some(&json!({"event_id": e, "items": [item]})),
                        );
                        if status != 201 {
                            assert_eq!(status, 409, "{h}");
                            continue;
                        }
                        // The order through the other process.
                        let other = if std::ptr::eq(api, one) { two } else { one };
                        let hold = h["token"].as_str().unwrap();
                        let (status, o) = order(
                            other,
                            &order_body(hold, "pm_card_visa"),
                            &format!("b{buyer}-t{t}"),
                        );
                        assert_eq!((status, o["state"].as_str()), (201, Some("paid")), "{o}");
                        paid.push(o);
                    }
                    paid
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let places: Vec<&Value> = bought
        .iter()
        .flat_map(|o| o["places"].as_array().unwrap())
        .collect();
    let seats: Vec<&str> = places.iter().filter_map(|p| p["seat"].as_str()).collect();
    let unique: std::collections::HashSet<&&str> = seats.iter().collect();
    assert_eq!(unique.len(), seats.len(), "a seat sold twice");
    assert!(!seats.contains(&"A-1-1"), "sold before");
    let standing_sold = places.len() - seats.len();
    assert!(
        standing_sold <= 300,
        "{standing_sold} of 300 standing places sold"
    );
    assert!(
        standing_sold >= 200,
        "the quota was contended: {standing_sold} sold"
    );
    // Both processes say the same, and the watcher on one, change by
    // change, comes to it.
    let tickets = |api: &Server| {
        let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
        (seats_of(&t), counts_of(&t), t["seq"].as_u64().unwrap())
    };
    let (a, b) = (tickets(&one), tickets(&two));
    assert_eq!(a, b);
    assert_eq!(a.1[&standing].2 as usize, standing_sold);
    while picture.seq < a.2 {
        picture.apply(&next(&mut ws));
    }
    picture.matches(&two, e);
}

/// A process on the shop's database with a data directory that lacks the
/// shop's keys refuses to start: it would sign tickets the gates' keysets
/// lack, and links the other processes cannot read.
#[test]
fn a_process_without_the_shops_keys_refuses_to_serve_its_database() {
    let Some(url) = crate::pg::fresh_database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = Server::start_in(&tmp.path().join("first"), Some(&url), &[]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_issuer"));
    let out = crate::with_database(&mut command, Some(&url))
        .arg("--data")
        .arg(tmp.path().join("other"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("lacks the shop's"), "{said}");
    // The first goes on serving.
    let (status, _) = first.call("GET", "/api/v1/events", None, None);
    assert_eq!(status, 200);
}
