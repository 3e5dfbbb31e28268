//! PostgreSQL restarted under load: requests in flight are refused with a
//! 503 and a `Retry-After`, the server reconnects by itself, nothing is
//! sold twice or lost, and an order answered as paid stays paid.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Server, event_on_sale, order_body};

/// (status, Retry-After, JSON answer) of a POST.
fn post(api: &Server, path: &str, body: &Value, key: Option<&str>) -> (u16, Option<u64>, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send(body.to_string()).unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = resp.into_body().read_to_string().unwrap();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What a buyer's program saw.
#[derive(Default)]
struct Seen {
    /// Orders answered paid: (link, places).
    paid: Vec<(String, Vec<Value>)>,
    /// Orders answered otherwise (pending while the database was away).
    other: Vec<String>,
    unavailable: usize,
    ok_after_restart: usize,
    /// Statuses of holds asked after the restart.
    after: Vec<u16>,
}

#[test]
fn a_database_restarted_under_load_loses_nothing_and_sells_nothing_twice() {
    let Some(cluster) = crate::pg::Restartable::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shop");
    let url = cluster.url("shop");
    let api = Server::start_in(
        &data,
        Some(&url),
        &[
            "--buyer-rate",
            "0",
            "--max-held",
            "0",
            "--reconcile-after-seconds",
            "1",
        ],
    );
    let token = std::fs::read_to_string(data.join("demo-organizer.token")).unwrap();
    let (e, seated, standing) = event_on_sale(&api, token.trim());
    let restarted = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let seen: Vec<Seen> = std::thread::scope(|s| {
        let buyers: Vec<_> = (0..6u64)
            .map(|buyer| {
                let (api, restarted, stop) = (&api, &restarted, &stop);
                s.spawn(move || {
                    let mut seen = Seen::default();
                    let mut t = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        t += 1;
                        // Paced, so that the event lasts the test.
                        std::thread::sleep(Duration::from_millis(50));
                        let item = match (buyer + t) % 3 {
                            0 => json!({"kind": "best", "category_id": seated, "quantity": 2}),
                            1 => json!({"kind": "seats", "seats": [format!("A-{}-{}", 1 + t % 5, 1 + (buyer * 3 + t) % 20)]}),
                            _ => json!({"kind": "quantity", "category_id": standing, "quantity": 2}),
                        };
                        let after = restarted.load(Ordering::Relaxed);
                        let (status, retry, h) = post(
                            api,
                            "/api/v1/holds",
                            &json!({"event_id": e, "items": [item]}),
                            None,
                        );
                        if after {
                            seen.after.push(status);
                        }
                        match status {
                            201 => seen.ok_after_restart += usize::from(after),
                            409 => continue,
                            503 => {
                                assert!(retry.is_some_and(|r| r >= 1), "a 503 says when: {h}");
                                seen.unavailable += 1;
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                            other => panic!("a hold answered {other}: {h}"),
                        }
                        // The order, tried again with its key while the
                        // database is away, as a careful client would.
                        let hold = h["token"].as_str().unwrap();
                        let key = format!("b{buyer}-t{t}");
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let answer = loop {
                            let (status, retry, o) =
                                post(api, "/api/v1/orders", &order_body(hold, "pm_card_visa"), Some(&key));
                            match status {
                                200 | 201 => break Some(o),
                                503 => {
                                    assert!(retry.is_some_and(|r| r >= 1), "a 503 says when: {o}");
                                    seen.unavailable += 1;
                                    assert!(Instant::now() < deadline, "the database never came back");
                                    std::thread::sleep(Duration::from_millis(200));
                                }
                                // The hold lapsed while the database was away.
                                409 => break None,
                                other => panic!("an order answered {other}: {o}"),
                            }
                        };
                        let Some(o) = answer else { continue };
                        let link = o["link"].as_str().unwrap().to_owned();
                        if o["state"] == "paid" {
                            seen.paid.push((link, o["places"].as_array().unwrap().clone()));
                        } else {
                            seen.other.push(link);
                        }
                    }
                    seen
                })
            })
            .collect();
        // Load, then the server goes away and comes back under it.
        std::thread::sleep(Duration::from_secs(2));
        cluster.down();
        std::thread::sleep(Duration::from_secs(2));
        cluster.up();
        restarted.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        buyers.into_iter().map(|b| b.join().unwrap()).collect()
    });
    let unavailable: usize = seen.iter().map(|s| s.unavailable).sum();
    let after: usize = seen.iter().map(|s| s.ok_after_restart).sum();
    assert!(unavailable > 0, "no request met the database away");
    let statuses: Vec<&Vec<u16>> = seen.iter().map(|s| &s.after).collect();
    assert!(
        after > 0,
        "no hold made after the restart: the pool did not reconnect: {statuses:?}"
    );
    // Every order answered paid is paid still; those left pending are
    // settled by asking the provider (charged or not, never twice).
    let get = |link: &str| api.call("GET", link, None, None).1;
    let mut seats = Vec::new();
    let mut places = 0;
    for (link, held) in seen.iter().flat_map(|s| &s.paid) {
        assert_eq!(get(link)["state"], "paid", "{link}");
        seats.extend(
            held.iter()
                .filter_map(|p| p["seat"].as_str().map(str::to_owned)),
        );
        places += held.len();
    }
    for link in seen.iter().flat_map(|s| &s.other) {
        let mut state = get(link)["state"].clone();
        for _ in 0..100 {
            if state != "pending" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            state = get(link)["state"].clone();
        }
        assert!(state == "paid" || state == "failed", "{link}: {state}");
        if state == "paid" {
            let o = get(link);
            seats.extend(
                o["places"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|p| p["seat"].as_str().map(str::to_owned)),
            );
            places += o["places"].as_array().unwrap().len();
        }
    }
    let unique: std::collections::HashSet<&String> = seats.iter().collect();
    assert_eq!(unique.len(), seats.len(), "a seat sold twice");
    // What the database says was sold is what buyers were told they bought.
    let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
    let sold: u64 = t["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sold"].as_u64().unwrap())
        .sum();
    assert_eq!(sold as usize, places, "sold places and paid orders' places");
    assert!(places > 20, "{places} places sold: too little load");
}
