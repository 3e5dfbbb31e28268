//! The OpenAPI document (`GET /api/v1/openapi.json`) against what the real
//! server serves: every operation it documents is served, no other method
//! or path is, and the operations are the ones listed here.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Server;
use crate::Env;

/// Every operation of the API: (method, path under `/api/v1`). A route
/// added, removed or moved must be changed here too.
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/openapi.json"),
    ("POST", "/venues"),
    ("GET", "/venues/{id}"),
    ("GET", "/events"),
    ("POST", "/events"),
    ("GET", "/events/{id}"),
    ("PUT", "/events/{id}"),
    ("POST", "/events/{id}/status"),
    ("POST", "/events/{id}/categories"),
    ("GET", "/events/{id}/tickets"),
    ("GET", "/events/{id}/live"),
    ("GET", "/events/{id}/figures"),
    ("GET", "/search"),
    ("POST", "/holds"),
    ("GET", "/holds/{token}"),
    ("DELETE", "/holds/{token}"),
    ("POST", "/orders"),
    ("GET", "/orders/{code}"),
    ("POST", "/orders/{code}/cancel"),
    ("POST", "/orders/{code}/withdraw"),
    ("POST", "/orders/{code}/tickets/{ticket_id}/reissue"),
    ("GET", "/tickets/{id}/qr.png"),
    ("GET", "/tickets/{id}/qr.svg"),
    ("POST", "/payments/webhook"),
    ("GET", "/keyset"),
    ("GET", "/revocations"),
    ("GET", "/revocations.txt"),
];

/// Paths no route serves, under `/api/v1` and beside it.
const NO_SUCH_PATHS: &[&str] = &[
    "/api/v1",
    "/api/v1/",
    "/api/v1/openapi.yaml",
    "/api/v1/venues/1/events",
    "/api/v1/events/1/orders",
    "/api/v1/events/1/tickets/1",
    "/api/v1/tickets/1",
    "/api/v1/tickets/1/qr.jpg",
    "/api/v1/payments",
    "/api/v1/organizers",
    "/api/v2/events",
    "/openapi.json",
    "/events",
];

/// The methods tried on every documented path (HEAD goes with GET).
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// (status, content type, body) of `method url`, with no body sent.
fn request(method: &str, url: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .unwrap();
    let resp = agent.run(request).unwrap();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = resp.status().as_u16();
    (status, kind, resp.into_body().read_to_string().unwrap())
}

/// Whether an answer is the router's own: no route for the path (404 "no
/// such path"), or none for the method (405), in the error shape.
fn unrouted(status: u16, body: &str) -> Option<&'static str> {
    let answer: Value = serde_json::from_str(body).unwrap_or_default();
    let (code, message) = (&answer["error"]["code"], &answer["error"]["message"]);
    match status {
        404 if code == "not_found" && message == "no such path" => Some("no such path"),
        405 if code == "method_not_allowed" => Some("no such method"),
        _ => None,
    }
}

/// A path of the document with a value in each parameter.
fn filled(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{token}", "hold_none")
        .replace("{code}", "NOORDER")
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(r)) = fields.get("$ref") {
                out.push(r);
            }
            fields.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_served_routes_are_the_documented_ones() {
    let env = Env::new();
    let api = Server::start(&env);

    // (a) OpenAPI 3.1, as JSON, for this API under /api/v1.
    let (status, kind, body) = request("GET", &format!("{}/api/v1/openapi.json", api.base));
    assert_eq!(status, 200, "{body}");
    assert_eq!(kind, "application/json");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    let organizer = &doc["components"]["securitySchemes"]["organizer"];
    assert_eq!(organizer["type"], "http");
    assert_eq!(organizer["scheme"], "bearer");

    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let at = format!("{method} {path}");
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{at}: no tag"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{at}: no answer that succeeds"
            );
            // Every refusal is in the error shape.
            let refusals = responses
                .iter()
                .filter(|(s, _)| s.parse::<u16>().unwrap() >= 400);
            for (status, response) in refusals {
                let schema = match response.get("$ref") {
                    Some(r) => {
                        let name = r.as_str().unwrap().rsplit('/').next().unwrap();
                        &doc["components"]["responses"][name]["content"]["application/json"]["schema"]
                    }
                    None => &response["content"]["application/json"]["schema"],
                };
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{at} {status}"
                );
            }
            operation_ids.insert(op["operationId"].as_str().unwrap().to_owned());
            documented.insert((method, path.clone()));
        }
    }
    // The document holds together: every reference and link resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for op in item.as_object().unwrap().values() {
            for response in op["responses"].as_object().unwrap().values() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    assert!(
                        operation_ids.contains(target),
                        "{path}: link {name} to {link}"
                    );
                }
            }
        }
    }

    // (c) The operations are the ones listed above.
    let listed: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        OPERATIONS.len(),
        listed.len(),
        "an operation is listed twice"
    );
    assert_eq!(
        documented.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented, not listed in this test"
    );
    assert_eq!(
        listed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "listed in this test, not documented"
    );

    // (b) The server serves exactly the documented operations: each is
    // routed; every other method on their paths is not, nor other paths.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let url = format!("{}/api/v1{}", api.base, filled(path));
        for method in METHODS {
            let (status, _, body) = request(method, &url);
            let is_documented = documented.contains(&(method.to_string(), path.clone()));
            match unrouted(status, &body) {
                Some(why) if is_documented => {
                    panic!(
                        "{method} {path} is documented, but the server says {why}: {status} {body}"
                    )
                }
                None if !is_documented => {
                    panic!("{method} {path} is served ({status} {body}) but not documented")
                }
                _ => {}
            }
        }
    }
    for path in NO_SUCH_PATHS {
        for method in METHODS {
            let (status, _, body) = request(method, &format!("{}{path}", api.base));
            assert_eq!(
                unrouted(status, &body),
                Some("no such path"),
                "{method} {path}: {status} {body}"
            );
        }
    }
}
