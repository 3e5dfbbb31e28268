//! A payment gateway for the demo and the tests, on 127.0.0.1, speaking the
//! part of Stripe's protocol the issuer uses: create-and-confirm
//! PaymentIntents, read them, refund them, idempotency keys, and webhooks
//! signed as Stripe signs them. Its cards are Stripe's test cards:
//!
//! | payment method | card number | what happens |
//! | --- | --- | --- |
//! | `pm_card_visa` | 4242 4242 4242 4242 | succeeds |
//! | `pm_card_chargeDeclined` | 4000 0000 0000 0002 | declined (`generic_decline`) |
//! | `pm_card_chargeDeclinedInsufficientFunds` | 4000 0000 0000 9995 | declined (`insufficient_funds`) |
//! | `pm_card_timeout` | 4000 0000 0000 0119 | charged, but the answer comes too late (the sandbox's own) |
//! | `pm_card_timeoutWebhookLost` | | the same, and its webhook is lost too (the sandbox's own) |
//! | `pm_card_late` | 4000 0000 0000 3220 | `processing`, then succeeds by webhook (the sandbox's own) |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Intent, IntentStatus, PaymentError, Refund, sign_webhook};

/// How the sandbox behaves in time.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long `pm_card_late` stays processing before it succeeds.
    pub late_after: Duration,
    /// How long `pm_card_timeout` keeps its answer (longer than a client waits).
    pub hang: Duration,
    /// Where webhooks go, if anywhere.
    pub webhook_url: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            late_after: Duration::from_secs(3),
            hang: super::stripe::TIMEOUT + Duration::from_secs(5),
            webhook_url: None,
        }
    }
}

/// A running sandbox: where it is and its secrets (in memory only).
#[derive(Clone)]
pub struct Sandbox {
    pub addr: SocketAddr,
    pub secret_key: String,
    pub webhook_secret: String,
}

impl Sandbox {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A request's form, and the status and body it was answered.
type Answer = (Vec<(String, String)>, u16, Value);

#[derive(Default)]
struct Ledger {
    intents: HashMap<String, Intent>,
    refunded: HashMap<String, u64>,
    /// Idempotency key: the request's parameters and the answer given.
    answers: HashMap<String, Answer>,
}

#[derive(Clone)]
struct Shared {
    ledger: Arc<Mutex<Ledger>>,
    /// Webhook deliveries under way at once.
    senders: Arc<tokio::sync::Semaphore>,
    /// What delivers them: its connections kept open between deliveries.
    agent: ureq::Agent,
    secret_key: String,
    webhook_secret: String,
    config: Config,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn random(prefix: &str) -> String {
    let (token, _) = crate::http::auth::new_secret(prefix);
    token
}

/// Starts a sandbox on 127.0.0.1 (a free port) on the current runtime.
pub async fn start(config: Config) -> std::io::Result<Sandbox> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sandbox = Sandbox {
        addr: listener.local_addr()?,
        secret_key: random("sk_test_"),
        webhook_secret: random("whsec_"),
    };
    let shared = Shared {
        ledger: Default::default(),
        senders: Arc::new(tokio::sync::Semaphore::new(SENDERS)),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .max_idle_connections(SENDERS)
            .max_idle_connections_per_host(SENDERS)
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .build()
            .into(),
        secret_key: sandbox.secret_key.clone(),
        webhook_secret: sandbox.webhook_secret.clone(),
        config,
    };
    let app = Router::new()
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/{id}", get(read_intent))
        .route("/v1/refunds", post(refund))
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(sandbox)
}

/// Stripe's error shape.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "type": kind, "message": message } })),
    )
        .into_response()
}

/// What a write is answered before it is done: a refusal of a wrong key,
/// or the answer given before to its idempotency key.
fn before_write(
    shared: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Option<Response> {
    if !authorized(shared, headers) {
        return Some(unauthorized());
    }
    replay(shared, headers, form)
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Invalid API Key provided",
    )
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k == shared.secret_key)
}

/// The answer given before to this idempotency key, if any; a key used
/// with other parameters is refused, as Stripe refuses it.
fn replay(shared: &Shared, headers: &HeaderMap, form: &[(String, String)]) -> Option<Response> {
    let key = headers.get("idempotency-key")?.to_str().ok()?;
    let ledger = shared.ledger();
    let (params, status, body) = ledger.answers.get(key)?;
    if params != form {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        ));
    }
    Some(
        (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
            Json(body.clone()),
        )
            .into_response(),
    )
}

fn remember(
    shared: &Shared,
    headers: &HeaderMap,
    form: Vec<(String, String)>,
    status: u16,
    body: &Value,
) {
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        shared
            .ledger()
            .answers
            .insert(key.to_owned(), (form, status, body.clone()));
    }
}

/// What a test card does.
enum Card {
    Succeeds,
    Declined(&'static str),
    /// Charged, but answers too late; its webhook comes, or is lost.
    Hangs {
        webhook: bool,
    },
    Late,
}

fn card(method: &str) -> Option<Card> {
    Some(match method {
        "pm_card_visa" | "tok_visa" | "4242424242424242" => Card::Succeeds,
        "pm_card_chargeDeclined" | "4000000000000002" => Card::Declined("generic_decline"),
        "pm_card_chargeDeclinedInsufficientFunds" | "4000000000009995" => {
            Card::Declined("insufficient_funds")
        }
        "pm_card_timeout" | "4000000000000119" => Card::Hangs { webhook: true },
        "pm_card_timeoutWebhookLost" => Card::Hangs { webhook: false },
        "pm_card_late" | "4000000000003220" => Card::Late,
        _ => return None,
    })
}

async fn create_intent(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Some(answer) = before_write(&shared, &headers, &form) {
        return answer;
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(amount) = get("amount")
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|a| *a > 0)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Invalid amount",
        );
    };
    let currency = get("currency").unwrap_or_default().to_owned();
    if currency.len() != 3 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Invalid currency",
        );
    }
    let method = get("payment_method").unwrap_or_default();
    let Some(card) = card(method) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("No such PaymentMethod: '{method}'"),
        );
    };
    let metadata = form
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), v.clone()))
        })
        .collect();
    // Random, as Stripe's are: a sandbox started again never gives a
    // payment the id of one made before.
    let id = random("pi_sandbox_").replace('-', "_");
    let mut intent = Intent {
        id: id.clone(),
        amount,
        currency,
        status: IntentStatus::Succeeded,
        last_payment_error: None,
        metadata,
    };
    let mut status = 200;
    match card {
        Card::Succeeds | Card::Hangs { .. } => {}
        Card::Declined(why) => {
            intent.status = IntentStatus::RequiresPaymentMethod;
            intent.last_payment_error = Some(PaymentError {
                code: "card_declined".into(),
                decline_code: Some(why.into()),
                message: "Your card was declined.".into(),
            });
            status = 402;
        }
        Card::Late => intent.status = IntentStatus::Processing,
    }
    shared.ledger().intents.insert(id.clone(), intent.clone());
    let body = match status {
        402 => json!({ "error": {
            "type": "card_error", "code": "card_declined",
            "message": "Your card was declined.", "payment_intent": intent,
        }}),
        _ => serde_json::to_value(&intent).unwrap_or_default(),
    };
    remember(&shared, &headers, form, status, &body);
    let lost = matches!(card, Card::Hangs { webhook: false });
    match intent.status {
        IntentStatus::Succeeded if lost => {}
        IntentStatus::Succeeded => notify(&shared, "payment_intent.succeeded", &intent),
        IntentStatus::RequiresPaymentMethod => {
            notify(&shared, "payment_intent.payment_failed", &intent)
        }
        _ => {}
    }
    if matches!(card, Card::Late) {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(shared.config.late_after).await;
            let done = {
                let mut ledger = shared.ledger();
                ledger.intents.get_mut(&id).map(|i| {
                    i.status = IntentStatus::Succeeded;
                    i.clone()
                })
            };
            if let Some(intent) = done {
                notify(&shared, "payment_intent.succeeded", &intent);
            }
        });
    }
    if matches!(card, Card::Hangs { .. }) {
        tokio::time::sleep(shared.config.hang).await;
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(body),
    )
        .into_response()
}

async fn read_intent(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    match shared.ledger().intents.get(&id) {
        Some(intent) => Json(intent.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "No such payment_intent",
        ),
    }
}

async fn refund(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Some(answer) = before_write(&shared, &headers, &form) {
        return answer;
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let id = get("payment_intent").unwrap_or_default();
    let answer = {
        let mut ledger = shared.ledger();
        let Some(intent) = ledger.intents.get(&id).cloned() else {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "No such payment_intent",
            );
        };
        if intent.status != IntentStatus::Succeeded {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "This PaymentIntent does not have a successful charge to refund.",
            );
        }
        let done = ledger.refunded.get(&id).copied().unwrap_or(0);
        let amount = get("amount")
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(intent.amount - done);
        if amount == 0 || done + amount > intent.amount {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Refund amount is greater than the unrefunded amount on the charge.",
            );
        }
        ledger.refunded.insert(id.clone(), done + amount);
        Refund {
            id: random("re_sandbox_").replace('-', "_"),
            amount,
            payment_intent: id,
            status: "succeeded".into(),
        }
    };
    let body = serde_json::to_value(&answer).unwrap_or_default();
    remember(&shared, &headers, form, 200, &body);
    Json(body).into_response()
}

/// Webhook deliveries under way at once.
const SENDERS: usize = 16;

/// Sends a webhook event, signed, a few times until it is taken.
fn notify(shared: &Shared, kind: &str, intent: &Intent) {
    let Some(url) = shared.config.webhook_url.clone() else {
        return;
    };
    let payload = json!({
        "id": random("evt_"), "type": kind, "data": { "object": intent },
    })
    .to_string();
    let secret = shared.webhook_secret.clone();
    let (senders, agent) = (shared.senders.clone(), shared.agent.clone());
    tokio::spawn(async move {
        for attempt in 0..5u32 {
            // A few deliveries at once, each one attempt on a thread: a
            // flood of webhooks never takes every blocking thread.
            let sent = match senders.clone().acquire_owned().await {
                Ok(turn) => {
                    let (url, payload, secret) = (url.clone(), payload.clone(), secret.clone());
                    let agent = agent.clone();
                    tokio::task::spawn_blocking(move || {
                        let _turn = turn;
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .header(
                                "stripe-signature",
                                &sign_webhook(&secret, payload.as_bytes(), now),
                            )
                            .send(payload.as_str())
                            .is_ok_and(|r| r.status().is_success())
                    })
                    .await
                    .unwrap_or(false)
                }
                Err(_) => false,
            };
            if sent {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        tracing::warn!(%url, "a webhook was not taken after 5 tries");
    });
}
