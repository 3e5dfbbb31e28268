//! The booking API through the real `issuer serve` on 127.0.0.1, as an
//! organizer and a buyer would use it, and as a hostile client would not.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::Env;

mod faults;
mod live;
mod mail;
mod moving;
mod openapi;

/// `issuer serve` on a free port of this machine; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &Env) -> Server {
        Server::start_with(env, &[])
    }

    fn start_with(env: &Env, args: &[&str]) -> Server {
        Server::start_in(&env.data(), env.database.as_deref(), args)
    }

    fn start_in(data: &std::path::Path, database: Option<&str>, args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_issuer"));
        let mut child = crate::with_database(&mut command, database)
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // What it prints first on a new shop, then where it serves.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("serving") {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("issuer serve stopped before serving");
            }
        }
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .and_then(|url| url.strip_suffix("/api/v1"))
            .unwrap_or_else(|| panic!("serve said {line:?}"))
            .to_owned();
        Server { child, base }
    }

    /// (status, JSON answer) of `method path` with an optional token and body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.raw(
            method,
            path,
            token,
            body.map(|b| ("application/json", b.to_string())),
        )
    }

    fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut req = agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
            (m, body) => {
                if m == "DELETE" {
                    let mut req = agent.delete(&url);
                    if let Some(a) = &auth {
                        req = req.header("authorization", a);
                    }
                    return finish(req.call().unwrap());
                }
                let mut req = match m {
                    "PUT" => agent.put(&url),
                    _ => agent.post(&url),
                };
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                match body {
                    Some((ty, b)) => req.header("content-type", ty).send(b),
                    None => req.send_empty(),
                }
            }
        }
        .unwrap();
        finish(resp)
    }
}

/// (status, JSON answer) of a response.
fn finish(resp: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An organizer added with the real command: its token.
fn organizer(env: &Env, name: &str) -> String {
    let file = env.path(&format!("{name}.token"));
    env.ok(&[
        "organizers",
        "add",
        "--name",
        name,
        "--token-file",
        file.to_str().unwrap(),
    ]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the token file is its owner's only");
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

fn venue(city: &str) -> Value {
    let rows: Vec<Value> = (1..=5)
        .map(|r| {
            json!({"label": r.to_string(), "seats": (1..=20).map(|n| json!({"label": n.to_string(), "x": n, "y": r})).collect::<Vec<_>>()})
        })
        .collect();
    json!({
        "name": format!("Hall of {city}"),
        "city": city,
        "plan": {
            "sections": [{"id": "A", "name": "Stalls", "rows": rows}],
            "areas": [{"id": "floor", "name": "Standing", "capacity": 300}]
        }
    })
}

fn event(venue: u64, name: &str, genre: &str, starts_at: u64) -> Value {
    json!({
        "name": name, "genre": genre, "venue_id": venue,
        "starts_at": starts_at, "ends_at": starts_at + 7200,
        "performers": ["The Band"], "description": "A night out"
    })
}

/// A request and what it must be answered: (method, path, token, (content
/// type, body), status, error code).
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<(&'a str, String)>,
    u16,
    &'a str,
);

/// The error shape: `{"error": {"code", "message"}}`.
fn code(answer: &Value) -> &str {
    answer["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {answer}"))
}

#[test]
fn an_organizer_puts_an_event_on_sale_and_a_buyer_finds_it() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (status, v) = api.call("POST", "/api/v1/venues", Some(&token), Some(&venue("Lyon")));
    assert_eq!(status, 201, "{v}");
    let venue_id = v["id"].as_u64().unwrap();
    let (status, e) = api.call(
        "POST",
        "/api/v1/events",
        Some(&token),
        Some(&event(venue_id, "Night", "concert", 1_900_000_000)),
    );
    assert_eq!((status, e["status"].as_str()), (201, Some("draft")), "{e}");
    let id = e["id"].as_u64().unwrap();
    let category = json!({
        "name": "Stalls", "price": 4500, "currency": "EUR",
        "places": {"kind": "seats", "sections": ["A"]},
        "sale_starts": 0, "sale_ends": 1_900_000_000, "per_order": 6
    });
    let (status, c) = api.call(
        "POST",
        &format!("/api/v1/events/{id}/categories"),
        Some(&token),
        Some(&category),
    );
    assert_eq!(status, 201, "{c}");
    // A draft is the organizer's alone.
    let (status, list) = api.call("GET", "/api/v1/events", None, None);
    assert_eq!(
        (status, list["events"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(
        api.call("GET", &format!("/api/v1/events/{id}"), None, None)
            .0,
        404
    );
    assert_eq!(
        api.call("GET", &format!("/api/v1/events/{id}"), Some(&token), None)
            .0,
        200
    );
    let (status, on_sale) = api.call(
        "POST",
        &format!("/api/v1/events/{id}/status"),
        Some(&token),
        Some(&json!({"status": "on_sale"})),
    );
    assert_eq!((status, on_sale["status"].as_str()), (200, Some("on_sale")));
    // A buyer browses and finds it, with its venue's plan and categories.
    let (_, list) = api.call("GET", "/api/v1/events?genre=concert&city=lyon&start_date=2030-03-17&end_date=2030-03-17&max_price=5000", None, None);
    let found: Vec<u64> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(found, vec![id], "{list}");
    let (status, page) = api.call("GET", &format!("/api/v1/events/{id}"), None, None);
    assert_eq!(status, 200);
    assert_eq!(
        page["venue"]["plan"]["sections"][0]["rows"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(page["categories"][0]["price"], 4500);
    assert_eq!(page["performers"][0], "The Band");
    // Search, by a prefix of a performer's name.
    let (status, hits) = api.call("GET", "/api/v1/search?query=the%20ban", None, None);
    assert_eq!(status, 200, "{hits}");
    assert_eq!(hits["events"][0]["id"].as_u64(), Some(id), "{hits}");
    let (_, none) = api.call("GET", "/api/v1/search?query=%22*%20OR", None, None);
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0));
    // Filters that exclude it.
    for query in [
        "genre=sports",
        "city=Nice",
        "start_date=2030-03-18",
        "min_price=4501",
    ] {
        let (_, list) = api.call("GET", &format!("/api/v1/events?{query}"), None, None);
        assert_eq!(list["events"].as_array().unwrap().len(), 0, "{query}");
    }
}

#[test]
fn browsing_pages_by_cursor_through_every_event_once() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (_, v) = api.call("POST", "/api/v1/venues", Some(&token), Some(&venue("Lyon")));
    let venue_id = v["id"].as_u64().unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        let (_, e) = api.call(
            "POST",
            "/api/v1/events",
            Some(&token),
            Some(&event(
                venue_id,
                &format!("E{i}"),
                "theatre",
                1_900_000_000 + i / 3,
            )),
        );
        let id = e["id"].as_u64().unwrap();
        api.call(
            "POST",
            &format!("/api/v1/events/{id}/status"),
            Some(&token),
            Some(&json!({"status": "on_sale"})),
        );
        ids.push(id);
    }
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/events?limit=5&cursor={c}"),
            None => "/api/v1/events?limit=5".into(),
        };
        let (status, list) = api.call("GET", &path, None, None);
        assert_eq!(status, 200, "{list}");
        seen.extend(
            list["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap()),
        );
        match list["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[test]
fn hostile_or_careless_requests_get_a_clear_refusal_and_change_nothing() {
    let env = Env::new();
    let alice = organizer(&env, "Alice");
    let mallory = organizer(&env, "Mallory");
    let api = Server::start(&env);
    let (_, v) = api.call("POST", "/api/v1/venues", Some(&alice), Some(&venue("Lyon")));
    let venue_id = v["id"].as_u64().unwrap();
    let (_, e) = api.call(
        "POST",
        "/api/v1/events",
        Some(&alice),
        Some(&event(venue_id, "Night", "concert", 1_900_000_000)),
    );
    let id = e["id"].as_u64().unwrap();
    let ev = event(venue_id, "Mine now", "concert", 1_900_000_000);
    let cases: Vec<Case> = vec![
        // A path that is not UTF-8, refused by the router itself: still
        // in the error shape.
        (
            "GET",
            "/api/v1/events/%FF".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/holds/%FF%FE".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        // No token, a wrong one, a malformed header.
        (
            "POST",
            "/api/v1/events".into(),
            None,
            Some(("application/json", ev.to_string())),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/v1/events".into(),
            Some("org_nope"),
            Some(("application/json", ev.to_string())),
            401,
            "unauthorized",
        ),
        // Another organizer's event, as if it did not exist.
        (
            "PUT",
            format!("/api/v1/events/{id}"),
            Some(&mallory),
            Some(("application/json", ev.to_string())),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/v1/events/{id}/status"),
            Some(&mallory),
            Some(("application/json", r#"{"status":"cancelled"}"#.into())),
            404,
            "not_found",
        ),
        // Bodies that are not what they should be.
        (
            "POST",
            "/api/v1/events".into(),
            Some(&alice),
            Some(("text/plain", ev.to_string())),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/events".into(),
            Some(&alice),
            Some(("application/json", "{\"name\":".into())),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/events".into(),
            Some(&alice),
            Some(("application/json", "x".repeat(70_000))),
            413,
            "too_large",
        ),
        (
            "POST",
            format!("/api/v1/events/{id}/status"),
            Some(&alice),
            Some(("application/json", r#"{"status":"sold_out"}"#.into())),
            400,
            "bad_request",
        ),
        // Meanings that cannot be.
        (
            "POST",
            "/api/v1/events".into(),
            Some(&alice),
            Some((
                "application/json",
                event(venue_id, "", "concert", 5).to_string(),
            )),
            422,
            "invalid",
        ),
        (
            "POST",
            format!("/api/v1/events/{id}/status"),
            Some(&alice),
            Some(("application/json", r#"{"status":"ended"}"#.into())),
            409,
            "conflict",
        ),
        // Queries and paths.
        (
            "GET",
            "/api/v1/events?genre=opera".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/events?start_date=tomorrow".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/events?cursor=abc".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/events?limit=-1".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/events?colour=red".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/search".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "DELETE",
            "/api/v1/events".into(),
            None,
            None,
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/events?start_date=2030-02-31".into(),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/v1/search?query={}", "a".repeat(600)),
            None,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/events/99999999999999999999999".into(),
            None,
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/venues/x".into(),
            None,
            None,
            404,
            "not_found",
        ),
        ("GET", "/api/v2/events".into(), None, None, 404, "not_found"),
    ];
    for (method, path, token, body, status, expect) in cases {
        let (got, answer) = api.raw(method, &path, token, body);
        assert_eq!(
            (got, code(&answer)),
            (status, expect),
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Alice's event is untouched: a draft, named as she named it.
    let (_, mine) = api.call("GET", &format!("/api/v1/events/{id}"), Some(&alice), None);
    assert_eq!(
        (mine["name"].as_str(), mine["status"].as_str()),
        (Some("Night"), Some("draft"))
    );
    let (_, list) = api.call("GET", "/api/v1/events", Some(&alice), None);
    assert_eq!(list["events"].as_array().unwrap().len(), 1, "{list}");
}

/// An event on sale with seats of section A and 300 standing places:
/// (event id, seated category, standing category).
fn event_on_sale(api: &Server, token: &str) -> (u64, u64, u64) {
    let (_, v) = api.call("POST", "/api/v1/venues", Some(token), Some(&venue("Lyon")));
    let venue_id = v["id"].as_u64().unwrap();
    let (_, e) = api.call(
        "POST",
        "/api/v1/events",
        Some(token),
        Some(&event(venue_id, "Night", "concert", 1_900_000_000)),
    );
    let id = e["id"].as_u64().unwrap();
    let mut categories = Vec::new();
    for places in [
        json!({"kind": "seats", "sections": ["A"]}),
        json!({"kind": "quota", "area": "floor", "places": 300}),
    ] {
        let body = json!({
            "name": "Tickets", "price": 4500, "currency": "EUR", "places": places,
            "sale_starts": 0, "sale_ends": 1_900_000_000, "per_order": 8
        });
        let (status, c) = api.call(
            "POST",
            &format!("/api/v1/events/{id}/categories"),
            Some(token),
            Some(&body),
        );
        assert_eq!(status, 201, "{c}");
        categories.push(c["id"].as_u64().unwrap());
    }
    let (status, _) = api.call(
        "POST",
        &format!("/api/v1/events/{id}/status"),
        Some(token),
        Some(&json!({"status": "on_sale"})),
    );
    assert_eq!(status, 200);
    (id, categories[0], categories[1])
}

/// The state of seat `key` as `GET /events/{id}/tickets` says.
fn seat(api: &Server, event: u64, key: &str) -> String {
    let (status, t) = api.call(
        "GET",
        &format!("/api/v1/events/{event}/tickets"),
        None,
        None,
    );
    assert_eq!(status, 200, "{t}");
    t["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == key)
        .map(|s| s[2].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn a_buyer_holds_seats_another_cannot_take_them_until_released_or_expired() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--hold-seconds", "2"]);
    let (e, seated, standing) = event_on_sale(&api, &token);
    let hold = json!({"event_id": e, "items": [
        {"kind": "seats", "seats": ["A-1-1", "A-1-2"]},
        {"kind": "quantity", "category_id": standing, "quantity": 3}
    ]});
    let (status, h) = api.call("POST", "/api/v1/holds", None, Some(&hold));
    assert_eq!(status, 201, "{h}");
    assert_eq!(
        (h["total"].as_u64(), h["state"].as_str()),
        (Some(5 * 4500), Some("active"))
    );
    let first = h["token"].as_str().unwrap().to_owned();
    assert_eq!(seat(&api, e, "A-1-1"), "held");
    // Another buyer asking for one of them gets a conflict, and nothing.
    let clash = json!({"event_id": e, "items": [{"kind": "seats", "seats": ["A-1-3", "A-1-2"]}]});
    let (status, answer) = api.call("POST", "/api/v1/holds", None, Some(&clash));
    assert_eq!((status, code(&answer)), (409, "conflict"), "{answer}");
    assert_eq!(seat(&api, e, "A-1-3"), "available");
    // Released: free at once.
    let (status, released) = api.call("DELETE", &format!("/api/v1/holds/{first}"), None, None);
    assert_eq!(
        (status, released["state"].as_str()),
        (200, Some("released"))
    );
    assert_eq!(seat(&api, e, "A-1-2"), "available");
    // Best pair, then it lapses by itself after two seconds.
    let best =
        json!({"event_id": e, "items": [{"kind": "best", "category_id": seated, "quantity": 2}]});
    let (status, h) = api.call("POST", "/api/v1/holds", None, Some(&best));
    assert_eq!(status, 201, "{h}");
    let pair: Vec<String> = h["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seat"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seat(&api, e, &pair[0]), "held");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        seat(&api, e, &pair[0]),
        "available",
        "the hold lapsed with nothing run"
    );
    let (_, lapsed) = api.call(
        "GET",
        &format!("/api/v1/holds/{}", h["token"].as_str().unwrap()),
        None,
        None,
    );
    assert_eq!(lapsed["state"].as_str(), Some("expired"));
    let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
    let floor = t["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category_id"] == standing)
        .unwrap();
    assert_eq!(floor["available"].as_u64(), Some(300));
}

#[test]
fn hold_requests_that_cannot_be_met_are_refused_in_the_error_shape() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, seated, standing) = event_on_sale(&api, &token);
    let json = |v: Value| Some(("application/json", v.to_string()));
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            Some(("application/json", "{".into())),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(json!({"event_id": e, "items": []})),
            422,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(
                json!({"event_id": e, "items": [{"kind": "quantity", "category_id": standing, "quantity": 0}]}),
            ),
            422,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(
                json!({"event_id": e, "items": [{"kind": "quantity", "category_id": standing, "quantity": 9}]}),
            ),
            422,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(
                json!({"event_id": e, "items": [{"kind": "best", "category_id": standing, "quantity": 2}]}),
            ),
            422,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(
                json!({"event_id": e, "items": [{"kind": "best", "category_id": seated, "quantity": 21}]}),
            ),
            422,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(json!({"event_id": e + 9, "items": [{"kind": "seats", "seats": ["A-1-1"]}]})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/holds".into(),
            None,
            json(
                json!({"event_id": e, "items": [{"kind": "seats", "seats": ["A-1-1"]}], "extra": 1}),
            ),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/holds/hold_nothing".into(),
            None,
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/holds/org_x".into(),
            None,
            None,
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/holds/hold_nothing".into(),
            None,
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/v1/events/{}/tickets", e + 9),
            None,
            None,
            404,
            "not_found",
        ),
    ];
    for (method, path, token, body, status, expect) in cases {
        let (got, answer) = api.raw(method, &path, token, body);
        assert_eq!(
            (got, code(&answer)),
            (status, expect),
            "{method} {path}: {answer}"
        );
    }
    let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
    assert!(
        t["categories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["held"] == 0),
        "{t}"
    );
}

/// Holds seats `keys` of event `e`: the hold's token.
fn hold_seats(api: &Server, e: u64, keys: &[&str]) -> String {
    let (status, h) = api.call(
        "POST",
        "/api/v1/holds",
        None,
        Some(&json!({"event_id": e, "items": [{"kind": "seats", "seats": keys}]})),
    );
    assert_eq!(status, 201, "{h}");
    h["token"].as_str().unwrap().to_owned()
}

fn order_body(hold: &str, card: &str) -> Value {
    json!({"hold_token": hold, "email": "ana@example.org", "name": "Ana", "payment_method": card})
}

/// Posts an order with an idempotency key.
fn order(api: &Server, body: &Value, key: &str) -> (u16, Value) {
    let url = format!("{}/api/v1/orders", api.base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    finish(
        agent
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .send(body.to_string())
            .unwrap(),
    )
}

/// The order as its link shows it, once `done` says so (at most 10 s).
fn order_when(api: &Server, link: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let (status, o) = api.call("GET", link, None, None);
        assert_eq!(status, 200, "{o}");
        if done(&o) {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the order never got there");
}

#[test]
fn a_buyer_pays_by_card_a_retry_is_the_same_order_and_a_declined_card_can_be_replaced() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-4-1", "A-4-2"]);
    // Declined: the order failed, the hold still stands.
    let (status, failed) = order(&api, &order_body(&hold, "4000000000000002"), "try-1");
    assert_eq!(
        (status, failed["state"].as_str()),
        (201, Some("failed")),
        "{failed}"
    );
    assert_eq!(
        failed["note"].as_str(),
        Some("card_declined: generic_decline")
    );
    assert_eq!(seat(&api, e, "A-4-1"), "held");
    // Another card: paid.
    let (status, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "try-2");
    assert_eq!(
        (status, paid["state"].as_str()),
        (201, Some("paid")),
        "{paid}"
    );
    assert_eq!(paid["amount"].as_u64(), Some(9000));
    assert_eq!(seat(&api, e, "A-4-1"), "sold");
    // One signed ticket a seat, its picture behind the order's secret.
    let tickets = paid["tickets"].as_array().unwrap();
    let seats: Vec<&str> = tickets
        .iter()
        .map(|t| t["seat"].as_str().unwrap())
        .collect();
    assert_eq!(seats, ["A-4-1", "A-4-2"], "{paid}");
    let verifier = shared::Verifier::new(env.keyset(&[e]));
    let secret = paid["secret"].as_str().unwrap();
    for t in tickets {
        let code = t["code"].as_str().unwrap();
        let ticket = verifier.verify(code, 1_900_000_000).unwrap();
        assert_eq!(ticket.fields().seat, t["seat"].as_str().unwrap());
        assert_eq!(
            ticket.fields().ticket_id.to_string(),
            t["ticket_id"].as_str().unwrap()
        );
        let id = t["ticket_id"].as_str().unwrap();
        let url = format!("{}/api/v1/tickets/{id}/qr.png?secret={secret}", api.base);
        let png = ureq::get(&url)
            .call()
            .unwrap()
            .into_body()
            .read_to_vec()
            .unwrap();
        let path = env.path(&format!("{id}.png"));
        std::fs::write(&path, png).unwrap();
        assert_eq!(crate::decode_png(&path), vec![(code.to_owned(), 0)]);
        let svg = format!("/api/v1/tickets/{id}/qr.svg?secret={secret}");
        assert_eq!(api.call("GET", &svg, None, None).0, 200);
        let wrong = format!("/api/v1/tickets/{id}/qr.png?secret=sec_nope");
        assert_eq!(api.call("GET", &wrong, None, None).0, 404);
    }
    // The same request again: the same order, not a second charge.
    let (status, again) = order(&api, &order_body(&hold, "pm_card_visa"), "try-2");
    assert_eq!(
        (status, again["code"].as_str()),
        (200, paid["code"].as_str()),
        "{again}"
    );
    assert_eq!(again["secret"], paid["secret"]);
    // Another buyer using the same key for a hold of its own is not
    // blocked by it.
    let other = hold_seats(&api, e, &["A-4-9"]);
    let (status, theirs) = order(&api, &order_body(&other, "pm_card_visa"), "try-2");
    assert_eq!(
        (status, theirs["state"].as_str()),
        (201, Some("paid")),
        "{theirs}"
    );
    assert_ne!(theirs["code"], paid["code"]);
    // The key with another request.
    let (status, other) = order(&api, &order_body(&hold, "pm_card_chargeDeclined"), "try-2");
    assert_eq!((status, code(&other)), (409, "conflict"), "{other}");
    // The link reads it; a wrong secret does not.
    let link = paid["link"].as_str().unwrap();
    let (status, read) = api.call("GET", link, None, None);
    assert_eq!((status, read["state"].as_str()), (200, Some("paid")));
    let code_ = paid["code"].as_str().unwrap();
    for wrong in [
        format!("/api/v1/orders/{code_}?secret=sec_x"),
        format!("/api/v1/orders/{code_}"),
    ] {
        let (status, answer) = api.call("GET", &wrong, None, None);
        assert_eq!((status, self::code(&answer)), (404, "not_found"), "{wrong}");
    }
}

#[test]
fn a_late_payment_is_settled_by_webhook_and_paid_back_when_its_places_are_gone() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--hold-seconds", "1"]);
    let (e, _, _) = event_on_sale(&api, &token);
    // Confirmed by webhook seconds later, after its hold lapsed; the seat
    // is still free then: held again, paid.
    let hold = hold_seats(&api, e, &["A-5-1"]);
    let (status, pending) = order(&api, &order_body(&hold, "pm_card_late"), "late-1");
    assert_eq!(
        (status, pending["state"].as_str()),
        (201, Some("pending")),
        "{pending}"
    );
    let paid = order_when(&api, pending["link"].as_str().unwrap(), |o| {
        o["state"] != "pending"
    });
    assert_eq!(paid["state"].as_str(), Some("paid"), "{paid}");
    assert_eq!(seat(&api, e, "A-5-1"), "sold");
    // This time another buyer buys the seat once the hold lapsed.
    let hold = hold_seats(&api, e, &["A-5-2"]);
    let (_, pending) = order(&api, &order_body(&hold, "pm_card_late"), "late-2");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = hold_seats(&api, e, &["A-5-2"]);
    let (_, bought) = order(&api, &order_body(&other, "pm_card_visa"), "other-1");
    assert_eq!(bought["state"].as_str(), Some("paid"), "{bought}");
    let refunded = order_when(&api, pending["link"].as_str().unwrap(), |o| {
        o["state"] != "pending"
    });
    assert_eq!(refunded["state"].as_str(), Some("refunded"), "{refunded}");
    assert!(refunded["note"].as_str().unwrap().contains("paid back"));
    assert_eq!(seat(&api, e, "A-5-2"), "sold", "the other buyer keeps it");
    let (_, theirs) = api.call("GET", bought["link"].as_str().unwrap(), None, None);
    assert_eq!(theirs["state"].as_str(), Some("paid"));
}

#[test]
fn a_forged_or_unsigned_webhook_changes_nothing() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-3-3"]);
    let (_, pending) = order(&api, &order_body(&hold, "pm_card_late"), "forge-1");
    let forged = json!({"id": "evt_x", "type": "payment_intent.succeeded", "data": {"object": {
        "id": "pi_forged", "amount": 1, "currency": "eur", "status": "succeeded",
        "metadata": {"order": pending["code"]}}}});
    let body = forged.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/api/v1/payments/webhook", api.base);
    for signature in [
        Some(issuer::payments::sign_webhook(
            "whsec_guess",
            body.as_bytes(),
            now,
        )),
        Some(format!("t={now},v1={}", "0".repeat(64))),
        Some("garbage".into()),
        None,
    ] {
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some(s) = &signature {
            req = req.header("stripe-signature", s);
        }
        let (status, answer) = finish(req.send(body.as_str()).unwrap());
        assert_eq!(status, 400, "{signature:?}: {answer}");
    }
    // Still pending until the real payment's webhook; then paid once.
    let (_, now_) = api.call("GET", pending["link"].as_str().unwrap(), None, None);
    assert_eq!(
        now_["payment_intent"]
            .as_str()
            .map(|p| p.starts_with("pi_sandbox")),
        Some(true),
        "{now_}"
    );
    let paid = order_when(&api, pending["link"].as_str().unwrap(), |o| {
        o["state"] != "pending"
    });
    assert_eq!(paid["state"].as_str(), Some("paid"));
}

#[test]
fn an_organizer_cancels_a_paid_order_the_money_goes_back_and_its_tickets_are_revoked() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let mallory = organizer(&env, "Mallory");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-2-7", "A-2-8"]);
    let (_, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "c-1");
    let code_ = paid["code"].as_str().unwrap();
    let cancel = format!("/api/v1/orders/{code_}/cancel");
    // Not another organizer's to cancel.
    let (status, answer) = api.call("POST", &cancel, Some(&mallory), None);
    assert_eq!((status, code(&answer)), (404, "not_found"), "{answer}");
    let (status, cancelled) = api.call("POST", &cancel, Some(&token), None);
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("refunded")),
        "{cancelled}"
    );
    assert_eq!(seat(&api, e, "A-2-7"), "available", "on sale again");
    let (status, again) = api.call("POST", &cancel, Some(&token), None);
    assert_eq!((status, code(&again)), (409, "conflict"), "{again}");
    // The feed names both tickets; the text list is what gate-sync imports.
    let ids: Vec<String> = paid["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ticket_id"].as_str().unwrap().to_owned())
        .collect();
    let (status, feed) = api.call(
        "GET",
        &format!("/api/v1/revocations?events={e}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{feed}");
    let mut fed: Vec<&str> = feed["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ticket_id"].as_str().unwrap())
        .collect();
    fed.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(fed, ids, "{feed}");
    let next = feed["next"].as_u64().unwrap();
    let (_, after) = api.call(
        "GET",
        &format!("/api/v1/revocations?events={e}&since={next}"),
        Some(&token),
        None,
    );
    assert_eq!(after["revocations"].as_array().unwrap().len(), 0);
    let (status, text) = api.call(
        "GET",
        &format!("/api/v1/revocations.txt?events={e}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let listed = shared::revocations::parse(text.as_str().unwrap()).unwrap();
    let mut listed: Vec<String> = listed.iter().map(|r| r.ticket_id.to_string()).collect();
    listed.sort();
    assert_eq!(listed, ids);
    // The keyset verifies the tickets; not another organizer's to read.
    let (status, keyset) = api.call(
        "GET",
        &format!("/api/v1/keyset?events={e}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{keyset}");
    let keyset = shared::Keyset::from_json(&keyset.to_string()).unwrap();
    let code0 = paid["tickets"][0]["code"].as_str().unwrap();
    assert!(
        shared::Verifier::new(keyset)
            .verify(code0, 1_900_000_000)
            .is_ok()
    );
    for path in [
        format!("/api/v1/keyset?events={e}"),
        format!("/api/v1/revocations?events={e}"),
    ] {
        let (status, answer) = api.call("GET", &path, Some(&mallory), None);
        assert_eq!((status, code(&answer)), (404, "not_found"), "{path}");
        assert_eq!(api.call("GET", &path, None, None).0, 401, "{path}");
    }
    assert_eq!(
        api.call("GET", "/api/v1/revocations?events=x", Some(&token), None)
            .0,
        400
    );
    // The organizer's figures: one order, paid back; no revenue.
    let figures = format!("/api/v1/events/{e}/figures");
    let (status, f) = api.call("GET", &figures, Some(&token), None);
    assert_eq!(
        (
            status,
            f["orders"]["refunded"].as_u64(),
            f["revenue"].as_u64()
        ),
        (200, Some(1), Some(0)),
        "{f}"
    );
    assert_eq!(api.call("GET", &figures, Some(&mallory), None).0, 404);
}

#[test]
fn a_reissued_ticket_replaces_the_old_one_which_is_revoked() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let mallory = organizer(&env, "Mallory");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-3-3", "A-3-4"]);
    let (_, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "re-1");
    let code_ = paid["code"].as_str().unwrap();
    let old = paid["tickets"][0].clone();
    let old_id = old["ticket_id"].as_str().unwrap();
    let path = format!("/api/v1/orders/{code_}/tickets/{old_id}/reissue");
    // Not another organizer's, nor a buyer's, to reissue.
    let (status, answer) = api.call("POST", &path, Some(&mallory), None);
    assert_eq!((status, code(&answer)), (404, "not_found"), "{answer}");
    assert_eq!(api.call("POST", &path, None, None).0, 401);
    let (status, fresh) = api.call("POST", &path, Some(&token), None);
    assert_eq!(status, 201, "{fresh}");
    assert_eq!(fresh["seat"], old["seat"], "the same place");
    assert_ne!(fresh["ticket_id"], old["ticket_id"]);
    // The order's link shows the new ticket in place of the old, whose
    // picture is gone; the new one is signed by the shop's key.
    let (_, shown) = api.call("GET", paid["link"].as_str().unwrap(), None, None);
    let ids: Vec<&str> = shown["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ticket_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&fresh["ticket_id"].as_str().unwrap()));
    assert!(!ids.contains(&old_id));
    let secret = paid["secret"].as_str().unwrap();
    let (status, _) = api.call(
        "GET",
        &format!("/api/v1/tickets/{old_id}/qr.png?secret={secret}"),
        None,
        None,
    );
    assert_eq!(status, 404);
    let (_, keyset) = api.call(
        "GET",
        &format!("/api/v1/keyset?events={e}"),
        Some(&token),
        None,
    );
    let keyset = shared::Keyset::from_json(&keyset.to_string()).unwrap();
    let verifier = shared::Verifier::new(keyset);
    assert!(
        verifier
            .verify(fresh["code"].as_str().unwrap(), 1_900_000_000)
            .is_ok()
    );
    // The old one is in the revocation feed; reissuing it again finds
    // nothing to reissue.
    let (_, feed) = api.call(
        "GET",
        &format!("/api/v1/revocations?events={e}"),
        Some(&token),
        None,
    );
    let revoked: Vec<&str> = feed["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ticket_id"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, vec![old_id], "{feed}");
    let (status, again) = api.call("POST", &path, Some(&token), None);
    assert_eq!((status, code(&again)), (404, "not_found"), "{again}");
}

#[test]
fn a_payment_whose_answer_was_lost_is_asked_again_and_the_order_settled() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(
        &env,
        &[
            "--payment-timeout-seconds",
            "1",
            "--reconcile-after-seconds",
            "1",
        ],
    );
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-2-9", "A-2-10"]);
    // The card is charged, but the provider's answer comes too late, and
    // its webhook never comes.
    let lost = "pm_card_timeoutWebhookLost";
    let (status, pending) = order(&api, &order_body(&hold, lost), "lost-1");
    assert_eq!(
        (status, pending["state"].as_str()),
        (201, Some("pending")),
        "{pending}"
    );
    // Retried by the buyer with the same key: the same order, still
    // pending, nothing charged again.
    let (status, again) = order(&api, &order_body(&hold, lost), "lost-1");
    assert_eq!(
        (status, again["code"].clone()),
        (200, pending["code"].clone())
    );
    // The issuer asks the provider itself (the same charge, the same key)
    // and learns it was paid: tickets, with no webhook and no buyer action.
    let paid = order_when(&api, api_link(&pending), |o| o["state"] != "pending");
    assert_eq!(paid["state"], "paid", "{paid}");
    assert_eq!(paid["tickets"].as_array().unwrap().len(), 2, "{paid}");
    assert_eq!(seat(&api, e, "A-2-9"), "sold");
    // Its charge is the one made at first: one payment for the order.
    let (_, f) = api.call(
        "GET",
        &format!("/api/v1/events/{e}/figures"),
        Some(&token),
        None,
    );
    assert_eq!(f["revenue"].as_u64(), Some(2 * 4500), "{f}");
}

#[test]
fn a_pending_order_whose_charge_went_unanswered_is_paid_back_when_cancelled() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(
        &env,
        &[
            "--payment-timeout-seconds",
            "1",
            "--reconcile-after-seconds",
            "600",
        ],
    );
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-3-9"]);
    let (_, pending) = order(
        &api,
        &order_body(&hold, "pm_card_timeoutWebhookLost"),
        "gone-1",
    );
    assert_eq!(pending["state"], "pending", "{pending}");
    // Cancelled at once: the issuer first learns the card was charged,
    // then pays it back; no money is kept for an order that is not.
    let code_ = pending["code"].as_str().unwrap();
    let (status, cancelled) = api.call(
        "POST",
        &format!("/api/v1/orders/{code_}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("refunded")),
        "{cancelled}"
    );
    assert_eq!(seat(&api, e, "A-3-9"), "available");
    // An address no mail server takes is refused before anything is charged.
    let hold = hold_seats(&api, e, &["A-3-10"]);
    for bad in ["a@b@c.de", "ana@example.org;bcc@x.y", "a\"@example.org"] {
        let body = json!({"hold_token": hold, "email": bad, "name": "Ana", "payment_method": "pm_card_visa"});
        let (status, answer) = api.call("POST", "/api/v1/orders", None, Some(&body));
        assert_eq!((status, code(&answer)), (422, "invalid"), "{bad}: {answer}");
    }
}

fn api_link(order: &Value) -> &str {
    order["link"].as_str().unwrap()
}

#[test]
fn a_buyer_cancels_its_own_order_where_and_while_the_event_allows() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-4-1"]);
    let (_, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "w-1");
    let code_ = paid["code"].as_str().unwrap();
    let secret = paid["secret"].as_str().unwrap();
    let withdraw = format!("/api/v1/orders/{code_}/withdraw?secret={secret}");
    // The event does not let buyers cancel: the organizer alone does.
    let (status, answer) = api.call("POST", &withdraw, None, None);
    assert_eq!((status, code(&answer)), (409, "conflict"), "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("organizer")
    );
    // The organizer lets buyers cancel until a day before the start.
    let (_, ev) = api.call("GET", &format!("/api/v1/events/{e}"), None, None);
    let mut changed = event(
        ev["venue_id"].as_u64().unwrap(),
        "Night",
        "concert",
        1_900_000_000,
    );
    changed["buyers_cancel_until"] = json!(1_900_000_000u64 - 86_400);
    let (status, updated) = api.call(
        "PUT",
        &format!("/api/v1/events/{e}"),
        Some(&token),
        Some(&changed),
    );
    assert_eq!(status, 200, "{updated}");
    // Not without the order's secret.
    let wrong = format!("/api/v1/orders/{code_}/withdraw?secret=sec_wrong");
    assert_eq!(api.call("POST", &wrong, None, None).0, 404);
    let (status, cancelled) = api.call("POST", &withdraw, None, None);
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("refunded")),
        "{cancelled}"
    );
    assert_eq!(seat(&api, e, "A-4-1"), "available", "on sale again");
    let (_, feed) = api.call(
        "GET",
        &format!("/api/v1/revocations?events={e}"),
        Some(&token),
        None,
    );
    assert_eq!(feed["revocations"].as_array().unwrap().len(), 1, "{feed}");
    // Once is enough; and past the deadline, no more.
    let (status, again) = api.call("POST", &withdraw, None, None);
    assert_eq!((status, code(&again)), (409, "conflict"), "{again}");
    changed["buyers_cancel_until"] = json!(1_000_000_000u64);
    api.call(
        "PUT",
        &format!("/api/v1/events/{e}"),
        Some(&token),
        Some(&changed),
    );
    let hold = hold_seats(&api, e, &["A-4-2"]);
    let (_, late) = order(&api, &order_body(&hold, "pm_card_visa"), "w-2");
    let path = format!(
        "/api/v1/orders/{}/withdraw?secret={}",
        late["code"].as_str().unwrap(),
        late["secret"].as_str().unwrap()
    );
    let (status, answer) = api.call("POST", &path, None, None);
    assert_eq!((status, code(&answer)), (409, "conflict"), "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("until")
    );
    // After the end of the event, not at all: refused when set.
    changed["buyers_cancel_until"] = json!(1_900_007_201u64);
    let (status, answer) = api.call(
        "PUT",
        &format!("/api/v1/events/{e}"),
        Some(&token),
        Some(&changed),
    );
    assert_eq!(status, 422, "{answer}");
}

#[test]
fn a_key_made_and_the_old_one_retired_while_serving_signs_the_next_tickets() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let key_of = |order: &Value| {
        shared::code::parse(order["tickets"][0]["code"].as_str().unwrap())
            .unwrap()
            .key_id()
            .to_string()
    };
    let hold = hold_seats(&api, e, &["A-5-5"]);
    let (_, first) = order(&api, &order_body(&hold, "pm_card_visa"), "k-1");
    let old = key_of(&first);
    // The organizer rotates keys with the command line, the server running.
    let new = env.generate_key();
    env.ok(&["keys", "retire", &old]);
    std::thread::sleep(std::time::Duration::from_millis(5500));
    let hold = hold_seats(&api, e, &["A-5-6"]);
    let (status, second) = order(&api, &order_body(&hold, "pm_card_visa"), "k-2");
    assert_eq!(status, 201, "{second}");
    assert_eq!(key_of(&second), new, "signed with the key made meanwhile");
    assert_ne!(new, old);
}

#[test]
fn a_server_whose_stderr_is_gone_goes_on_serving() {
    // Under a supervisor whose log reader died, every log line fails to be
    // written (a broken pipe): the server must not fall over on the first.
    let env = Env::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_issuer"));
    let mut child = crate::with_database(&mut command, env.database.as_deref())
        .arg("--data")
        .arg(env.data())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("issuer serve stopped before serving: {:?}", child.wait());
        }
    }
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .and_then(|url| url.strip_suffix("/api/v1"))
        .unwrap()
        .to_owned();
    let api = Server { child, base };
    // Requests that log: a forged webhook (a warning), browsing (debug).
    for _ in 0..3 {
        let (status, _) = api.raw(
            "POST",
            "/api/v1/payments/webhook",
            None,
            Some(("application/json", "{}".into())),
        );
        assert_eq!(status, 400);
        assert_eq!(api.call("GET", "/api/v1/events", None, None).0, 200);
    }
}

#[test]
fn a_command_run_beside_the_server_loses_none_of_its_orders() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-1-5"]);
    let (_, first) = order(&api, &order_body(&hold, "pm_card_visa"), "side-1");
    // The organizer runs commands on the same data directory meanwhile.
    env.ok(&["events", "list"]);
    env.ok(&["keys", "list"]);
    if env.database.is_none() {
        // The embedded database's log is the server's to end.
        let wal = env.data().join("issuer.db-wal");
        assert!(wal.exists(), "the server's write-ahead log is still there");
    }
    let hold = hold_seats(&api, e, &["A-1-6"]);
    let (_, second) = order(&api, &order_body(&hold, "pm_card_visa"), "side-2");
    assert_eq!(second["state"], "paid", "{second}");
    // The server dies hard and starts again: both orders are there.
    drop(api);
    let api = Server::start(&env);
    for paid in [&first, &second] {
        let (status, shown) = api.call("GET", paid["link"].as_str().unwrap(), None, None);
        assert_eq!(
            (status, shown["state"].as_str()),
            (200, Some("paid")),
            "{shown}"
        );
    }
}

#[test]
fn a_pending_order_cancelled_then_paid_is_paid_back() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-1-9"]);
    let (_, pending) = order(&api, &order_body(&hold, "pm_card_late"), "p-1");
    let code_ = pending["code"].as_str().unwrap();
    let (status, cancelled) = api.call(
        "POST",
        &format!("/api/v1/orders/{code_}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    // Its hold went with it: the seat is free at once, the hold can be
    // ordered no more.
    assert_eq!(seat(&api, e, "A-1-9"), "available");
    let (status, again) = order(&api, &order_body(&hold, "pm_card_visa"), "p-2");
    assert_eq!((status, code(&again)), (409, "conflict"), "{again}");
    // The payment lands anyway: the money goes back, the seat is not sold.
    let done = order_when(&api, pending["link"].as_str().unwrap(), |o| {
        o["state"] != "cancelled"
    });
    assert_eq!(done["state"].as_str(), Some("refunded"), "{done}");
    assert_ne!(seat(&api, e, "A-1-9"), "sold");
}

#[test]
fn a_new_shop_opens_with_events_on_sale_that_a_buyer_can_buy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shop");
    let database = crate::shop_database();
    let api = Server::start_in(&data, database.as_deref(), &[]);
    let token = std::fs::read_to_string(data.join("demo-organizer.token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("demo-organizer.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the token is its owner's only");
    let (_, list) = api.call("GET", "/api/v1/events?limit=100", None, None);
    let events = list["events"].as_array().unwrap();
    assert_eq!(events.len(), 12, "{list}");
    let genres: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["genre"].as_str().unwrap())
        .collect();
    let cities: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["city"].as_str().unwrap()).collect();
    assert!(
        genres.len() >= 6 && cities.len() >= 3,
        "{genres:?} {cities:?}"
    );
    let (_, found) = api.call("GET", "/api/v1/search?query=daft", None, None);
    assert_eq!(
        found["events"][0]["name"].as_str(),
        Some("Daft Punk Tribute Night"),
        "{found}"
    );
    // The theatre's 2,000 seats, and the best four together in the stalls.
    let cyrano = events
        .iter()
        .find(|e| e["name"] == "Cyrano de Bergerac")
        .unwrap();
    let id = cyrano["id"].as_u64().unwrap();
    let (_, tickets) = api.call("GET", &format!("/api/v1/events/{id}/tickets"), None, None);
    assert_eq!(tickets["seats"].as_array().unwrap().len(), 2000);
    let orchestra = tickets["categories"][0]["category_id"].as_u64().unwrap();
    let (status, hold) = api.call(
        "POST",
        "/api/v1/holds",
        None,
        Some(&json!({"event_id": id,
        "items": [{"kind": "best", "category_id": orchestra, "quantity": 4}]})),
    );
    assert_eq!(status, 201, "{hold}");
    assert!(
        hold["places"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["seat"].as_str().unwrap().starts_with("ORCH-1-"))
    );
    let (_, paid) = order(
        &api,
        &order_body(hold["token"].as_str().unwrap(), "pm_card_visa"),
        "demo-1",
    );
    assert_eq!(
        (
            paid["state"].as_str(),
            paid["tickets"].as_array().map(Vec::len)
        ),
        (Some("paid"), Some(4))
    );
    // The demo organizer's token works; a restart opens the same shop.
    let (status, _) = api.call(
        "GET",
        &format!("/api/v1/revocations?events={id}"),
        Some(token.trim()),
        None,
    );
    assert_eq!(status, 200);
    drop(api);
    let again = Server::start_in(&data, database.as_deref(), &[]);
    let (_, list) = again.call("GET", "/api/v1/events?limit=100", None, None);
    assert_eq!(list["events"].as_array().unwrap().len(), 12);
}

#[test]
fn one_address_holding_too_fast_is_slowed_and_told_when_to_come_back() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--buyer-rate", "1"]);
    let (e, _, standing) = event_on_sale(&api, &token);
    let one = json!({"event_id": e, "items": [{"kind": "quantity", "category_id": standing, "quantity": 1}]});
    let (mut held, mut slowed) = (0, 0);
    for _ in 0..30 {
        let url = format!("{}/api/v1/holds", api.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(one.to_string())
            .unwrap();
        match response.status().as_u16() {
            201 => held += 1,
            429 => {
                let wait: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "{wait}");
                let (_, answer) = finish(response);
                assert_eq!(code(&answer), "rate_limited");
                slowed += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        (20..=22).contains(&held) && held + slowed == 30,
        "{held} held, {slowed} slowed"
    );
    let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
    let floor = t["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category_id"] == standing)
        .unwrap();
    assert_eq!(
        floor["held"].as_u64(),
        Some(held),
        "only what was answered 201 is held"
    );
}

#[test]
fn free_places_are_ordered_without_a_payment() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (_, v) = api.call("POST", "/api/v1/venues", Some(&token), Some(&venue("Lyon")));
    let (_, e) = api.call(
        "POST",
        "/api/v1/events",
        Some(&token),
        Some(&event(
            v["id"].as_u64().unwrap(),
            "Open day",
            "family",
            1_900_000_000,
        )),
    );
    let id = e["id"].as_u64().unwrap();
    let free = json!({"name": "Free", "price": 0, "currency": "EUR",
        "places": {"kind": "quota", "area": "floor", "places": 100},
        "sale_starts": 0, "sale_ends": 1_900_000_000, "per_order": 4});
    let (_, c) = api.call(
        "POST",
        &format!("/api/v1/events/{id}/categories"),
        Some(&token),
        Some(&free),
    );
    api.call(
        "POST",
        &format!("/api/v1/events/{id}/status"),
        Some(&token),
        Some(&json!({"status": "on_sale"})),
    );
    let (_, hold) = api.call(
        "POST",
        "/api/v1/holds",
        None,
        Some(&json!({"event_id": id,
        "items": [{"kind": "quantity", "category_id": c["id"], "quantity": 2}]})),
    );
    let (status, o) = order(
        &api,
        &order_body(hold["token"].as_str().unwrap(), "pm_card_chargeDeclined"),
        "free-1",
    );
    assert_eq!(
        (status, o["state"].as_str(), o["amount"].as_u64()),
        (201, Some("paid"), Some(0)),
        "{o}"
    );
    assert_eq!(o["tickets"].as_array().map(Vec::len), Some(2));
    // Cancelled: nothing to pay back, the tickets revoked.
    let (status, c) = api.call(
        "POST",
        &format!("/api/v1/orders/{}/cancel", o["code"].as_str().unwrap()),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, c["state"].as_str()),
        (200, Some("refunded")),
        "{c}"
    );
}

#[test]
fn silent_and_trickling_connections_are_closed_and_the_api_keeps_serving() {
    use std::io::{Read, Write};
    let env = Env::new();
    let api = Server::start_with(&env, &["--idle-seconds", "1"]);
    let addr = api.base.trim_start_matches("http://").to_owned();
    let closed_within = |mut conn: std::net::TcpStream, trickle: bool| {
        conn.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        loop {
            if trickle {
                // A header a byte at a time, never finished.
                let _ = conn.write_all(b"X");
            }
            match conn.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => return started.elapsed(),
                Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {}
                Err(e) => panic!("still open after 10 s: {e}"),
            }
        }
    };
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(silent, false) < std::time::Duration::from_secs(4));
    let mut trickling = std::net::TcpStream::connect(&addr).unwrap();
    trickling
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    assert!(closed_within(trickling, true) < std::time::Duration::from_secs(8));
    let (status, _) = api.call("GET", "/api/v1/events", None, None);
    assert_eq!(status, 200);
}
