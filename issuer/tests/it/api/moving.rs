//! An embedded shop moved up to PostgreSQL (`issuer migrate`): what
//! buyers, organizers and gates saw before is what they see after, and the
//! shop goes on selling there.

use serde_json::{Value, json};

use super::{Server, event_on_sale, hold_seats, order, order_body, organizer, seat};
use crate::Env;

/// What a shop shows of event `e`: its seats and counts, the orders'
/// states, the revocations and the keyset, as its users read them.
fn shown(api: &Server, token: &str, e: u64, links: &[String]) -> Value {
    let get = |path: &str, token: Option<&str>| {
        let (status, v) = api.call("GET", path, token, None);
        assert_eq!(status, 200, "{path}: {v}");
        v
    };
    let mut tickets = get(&format!("/api/v1/events/{e}/tickets"), None);
    tickets.as_object_mut().unwrap().remove("seq");
    let orders: Vec<Value> = links.iter().map(|l| get(l, None)).collect();
    json!({
        "tickets": tickets,
        "orders": orders,
        "revocations": get(&format!("/api/v1/revocations?events={e}"), Some(token)),
        "keyset": get(&format!("/api/v1/keyset?events={e}"), Some(token)),
        "found": get("/api/v1/search?query=night", None),
        "figures": get(&format!("/api/v1/events/{e}/figures"), Some(token)),
    })
}

#[test]
fn an_embedded_shop_moved_up_to_postgresql_is_the_same_shop_and_sells_on() {
    let Some(url) = crate::pg::fresh_database() else {
        return;
    };
    // The embedded shop: paid orders, one paid back (its tickets
    // revoked), one pending, one failed; a hold left.
    let mut env = Env::new();
    env.database = None;
    let token = organizer(&env, "Promoter");
    let api = Server::start(&env);
    let (e, _, standing) = event_on_sale(&api, &token);
    let mut links = Vec::new();
    for (n, (seats, card)) in [
        (&["A-1-1", "A-1-2"][..], "pm_card_visa"),
        (&["A-2-1"][..], "pm_card_visa"),
        (&["A-3-1"][..], "pm_card_chargeDeclined"),
        (&["A-4-1"][..], "pm_card_timeoutWebhookLost"),
    ]
    .iter()
    .enumerate()
    {
        let hold = hold_seats(&api, e, seats);
        let (status, o) = order(&api, &order_body(&hold, card), &format!("m-{n}"));
        assert!(status == 201 || status == 200, "{o}");
        links.push(o["link"].as_str().unwrap().to_owned());
    }
    let (_, paid) = api.call("GET", &links[1], None, None);
    let code = paid["code"].as_str().unwrap();
    let (status, _) = api.call(
        "POST",
        &format!("/api/v1/orders/{code}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    hold_seats(&api, e, &["A-5-5"]);
    let before = shown(&api, &token, e, &links);
    let numbered = |api: &Server| {
        let (_, t) = api.call("GET", &format!("/api/v1/events/{e}/tickets"), None, None);
        t["seq"].as_u64().unwrap()
    };
    let last = numbered(&api);
    assert_eq!(
        before["revocations"]["revocations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    drop(api);

    // Moved up, checked.
    let moved = env.ok(&[
        "migrate",
        "--from",
        env.data().to_str().unwrap(),
        "--to",
        &url,
    ]);
    assert!(moved.contains("moved and checked"), "{moved}");
    assert!(moved.contains("stay in"), "the keys stay: {moved}");
    // Not twice into one database, and never with a password on the line.
    let again = env.fails(&[
        "migrate",
        "--from",
        env.data().to_str().unwrap(),
        "--to",
        &url,
    ]);
    assert!(again.contains("holds a shop already"), "{again}");
    let secret = env.fails(&[
        "migrate",
        "--from",
        env.data().to_str().unwrap(),
        "--to",
        "postgres://issuer:hunter2@localhost/shop",
    ]);
    assert!(
        secret.contains("password") && !secret.contains("hunter2"),
        "{secret}"
    );

    // The same shop on PostgreSQL, keys from the same data directory.
    env.database = Some(url);
    let api = Server::start(&env);
    let after = shown(&api, &token, e, &links);
    assert_eq!(numbered(&api), last);
    assert_eq!(after, before);
    // Its tickets are the same codes.
    let (_, first) = api.call("GET", &links[0], None, None);
    assert_eq!(first["tickets"], before["orders"][0]["tickets"]);
    // It sells on: new ids after the old, the feed numbered on.
    let hold = hold_seats(&api, e, &["A-1-3"]);
    let (status, o) = order(&api, &order_body(&hold, "pm_card_visa"), "after-1");
    assert_eq!((status, o["state"].as_str()), (201, Some("paid")), "{o}");
    assert_eq!(seat(&api, e, "A-1-3"), "sold");
    assert_eq!(seat(&api, e, "A-2-1"), "available", "the paid-back seat");
    let (status, h) = api.call(
        "POST",
        "/api/v1/holds",
        None,
        Some(&json!({"event_id": e, "items": [{"kind": "quantity", "category_id": standing, "quantity": 2}]})),
    );
    assert_eq!(status, 201, "{h}");
    // Held, sold, held: numbered on from the last change moved.
    assert_eq!(numbered(&api), last + 3);
    let (status, ks) = api.call(
        "GET",
        &format!("/api/v1/keyset?events={e}"),
        Some(&token),
        None,
    );
    assert_eq!((status, &ks), (200, &before["keyset"]));
}
