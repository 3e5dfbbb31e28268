//! Orders: a buyer orders a hold's places and pays; the provider's
//! webhooks settle what was not settled at once. Guest checkout: the order
//! is read with the secret of its link.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::Organizer;
use super::body::{JsonBody, MAX_BODY};
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::domain::order::{Buyer, Order, order_code};
use crate::payments::{Intent, IntentStatus, PaymentFailure, verify_webhook};
use crate::storage::{Created, IssuedTicket, NewOrder, Settled, StorageError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(add_order))
        .route("/orders/{code}", get(order))
        .route("/orders/{code}/cancel", post(cancel))
        .route("/tickets/{id}/qr.png", get(qr_png))
        .route("/tickets/{id}/qr.svg", get(qr_svg))
        .route("/payments/webhook", post(webhook))
}

/// Longest `Idempotency-Key` taken.
const MAX_KEY: usize = 255;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    hold_token: String,
    email: String,
    name: String,
    /// The provider's payment method (`pm_...`), made by the buyer's
    /// browser with the provider; a test card's in the sandbox.
    payment_method: String,
}

#[derive(Serialize)]
struct OrderAnswer {
    #[serde(flatten)]
    order: Order,
    /// The secret of the order's link: whoever has it reads the order.
    secret: String,
    link: String,
    /// A paid order's tickets; their pictures are at
    /// `/api/v1/tickets/{ticket_id}/qr.png?secret=...` (and `.svg`).
    tickets: Vec<IssuedTicket>,
}

/// The secret of an order's link, worked out again whenever needed from
/// the node's link key: never stored (only its hash is).
pub fn link_secret(link_key: &[u8; 32], code: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(link_key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(code.as_bytes());
    format!(
        "sec_{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// An order with its link and tickets, issuing them if it is paid and has
/// none yet (a crash between payment and signing leaves none).
async fn answer(s: &AppState, order: Order) -> Result<OrderAnswer, ApiError> {
    let secret = link_secret(&s.link_key, &order.code);
    if order.state == crate::domain::order::OrderState::Paid {
        issue_tickets(s, &order.code).await?;
    }
    let (code, hash) = (order.code.clone(), Sha256::digest(&secret).into());
    let tickets = s.db(move |db| db.order_tickets(&code, &hash)).await?;
    Ok(OrderAnswer {
        link: format!("/api/v1/orders/{}?secret={secret}", order.code),
        secret,
        order,
        tickets,
    })
}

/// Signs and records a paid order's tickets, once: one a place, signed by
/// the data directory's active key, as `issuer tickets issue` signs them.
async fn issue_tickets(s: &AppState, code: &str) -> Result<(), ApiError> {
    let Some(signer) = s.signer.clone() else {
        return Err(ApiError::internal("no signing key to sign tickets with"));
    };
    let code = code.to_owned();
    s.db(move |db| crate::issue::sign_order(db, &signer, &code, now_ms()))
        .await
}

async fn add_order(
    State(s): State<AppState>,
    _: super::limit::Limited,
    headers: HeaderMap,
    JsonBody(req): JsonBody<OrderRequest, MAX_BODY>,
) -> Result<(StatusCode, Json<OrderAnswer>), ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key is 1 to {MAX_KEY} printable characters"
                    ))
                })?
                .to_owned(),
        ),
    };
    if !req.hold_token.starts_with("hold_") || req.hold_token.len() > 100 {
        return Err(ApiError::not_found("hold not found"));
    }
    if req.payment_method.is_empty() || req.payment_method.len() > 200 {
        return Err(ApiError::bad_request(
            "payment_method is 1 to 200 characters",
        ));
    }
    let request_hash: [u8; 32] =
        Sha256::digest(serde_json::to_vec(&req).map_err(|e| ApiError::internal(e.to_string()))?)
            .into();
    let mut random = [0u8; 8];
    OsRng.fill_bytes(&mut random);
    let code = order_code(random);
    let hold_hash = super::auth::token_hash(&req.hold_token);
    let new = NewOrder {
        hold_hash,
        secret_hash: Sha256::digest(link_secret(&s.link_key, &code)).into(),
        code,
        buyer: Buyer {
            email: req.email,
            name: req.name,
        },
        // A key counts within its hold: one buyer's key never blocks another's.
        idempotency: key.map(|k| {
            let hold: String = hold_hash[..8].iter().map(|b| format!("{b:02x}")).collect();
            (format!("{hold}:{k}"), request_hash)
        }),
    };
    let order = match s.db(move |db| db.create_order(&new, now_ms())).await? {
        // The same request again: what it came to, never a second charge.
        Created::Again(order) => return Ok((StatusCode::OK, Json(answer(&s, order).await?))),
        Created::New(order) => order,
    };
    let (payments, method, code) = (s.payments.clone(), req.payment_method, order.code.clone());
    let (amount, currency) = (order.amount, order.currency.clone());
    if amount == 0 {
        // Free places: nothing to charge.
        let free = Intent {
            id: format!("free-{code}"),
            amount: 0,
            currency,
            status: IntentStatus::Succeeded,
            last_payment_error: None,
            metadata: Default::default(),
        };
        let order = settle(&s, &order.code, &free).await?;
        return Ok((StatusCode::CREATED, Json(answer(&s, order).await?)));
    }
    let charged = tokio::task::spawn_blocking(move || {
        payments.charge(
            amount,
            &currency,
            &method,
            &[("order", code.as_str())],
            &format!("order-{code}"),
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let order = match charged {
        Ok(intent) => settle(&s, &order.code, &intent).await?,
        // The provider's own words may name our account: logged, not shown.
        Err(PaymentFailure::Refused(why)) => {
            tracing::warn!(order = %order.code, %why, "the payment provider refused the charge");
            let code = order.code.clone();
            s.db(move |db| {
                db.mark_failed(&code, "the payment provider refused the payment", now_ms())
            })
            .await?
        }
        // Charged or not, we cannot tell yet: the order stays pending, and
        // asking again with its key finds out without charging twice.
        Err(PaymentFailure::Unreachable(why)) => {
            tracing::warn!(order = %order.code, %why, "the payment provider did not answer");
            order
        }
    };
    Ok((StatusCode::CREATED, Json(answer(&s, order).await?)))
}

/// Brings an order in line with its payment as the provider reports it.
async fn settle(s: &AppState, code: &str, intent: &Intent) -> Result<Order, ApiError> {
    let (code, intent) = (code.to_owned(), intent.clone());
    let payments = s.payments.clone();
    let settled = s
        .db(move |db| {
            let order = db.set_intent(&code, &intent.id, now_ms())?;
            match intent.status {
                IntentStatus::Succeeded => match db.settle_paid(&code, now_ms())? {
                    Settled::Paid(o) | Settled::Already(o) => Ok(o),
                    Settled::MustRefund(o) => {
                        // Paid for places no longer to be had: paid back, once.
                        let refund = refund(&*payments, &intent.id, &o)?;
                        db.mark_refunded(
                        &code,
                        &refund,
                        "its places could no longer be sold to it (the hold had expired and they \
                         were taken, or the order or the event was cancelled): paid back",
                        now_ms(),
                    )
                    }
                },
                IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
                    let why = intent
                        .last_payment_error
                        .map(|e| match e.decline_code {
                            Some(d) => format!("{}: {d}", e.code),
                            None => e.code,
                        })
                        .unwrap_or_else(|| "the payment was not made".into());
                    db.mark_failed(&code, &why, now_ms())
                }
                IntentStatus::Processing | IntentStatus::Other => Ok(order),
            }
        })
        .await;
    s.changed();
    settled
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Secret {
    secret: String,
}

async fn order(
    State(s): State<AppState>,
    Path(code): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<Json<OrderAnswer>, ApiError> {
    let Query(Secret { secret }) = params.map_err(|_| ApiError::not_found("order not found"))?;
    if code.len() > 20 || secret.len() > 100 {
        return Err(ApiError::not_found("order not found"));
    }
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let order = s.db(move |db| db.order(&code, &hash)).await?;
    Ok(Json(answer(&s, order).await?))
}

/// A ticket's signed code, by its id and its order's link secret.
async fn ticket_code(
    s: &AppState,
    id: String,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<String, ApiError> {
    let Query(Secret { secret }) = params.map_err(|_| ApiError::not_found("ticket not found"))?;
    if id.len() != 32 || secret.len() > 100 {
        return Err(ApiError::not_found("ticket not found"));
    }
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    s.db(move |db| db.ticket_code(&id, &hash)).await
}

/// A ticket's QR picture, as PNG or SVG.
async fn picture(
    s: &AppState,
    id: String,
    params: Result<Query<Secret>, QueryRejection>,
    svg: bool,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let code = ticket_code(s, id, params).await?;
    let symbol = crate::qr::encode(&code).map_err(|e| ApiError::internal(e.to_string()))?;
    let (kind, body) = match svg {
        true => ("image/svg+xml", crate::qr::svg(&symbol).into_bytes()),
        false => (
            "image/png",
            crate::qr::png(&symbol, crate::issue::DEFAULT_SCALE)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        ),
    };
    Ok(([(axum::http::header::CONTENT_TYPE, kind)], body).into_response())
}

async fn qr_png(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    picture(&s, id, params, false).await
}

async fn qr_svg(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    picture(&s, id, params, true).await
}

/// Most bytes of a webhook.
const MAX_WEBHOOK: usize = 64 << 10;

/// The provider's news of a payment, signed with the webhook secret.
async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    let Some(secret) = s.webhook_secret.clone() else {
        return Err(ApiError::not_found(
            "no payment provider sends webhooks here",
        ));
    };
    // The signature header first: without one, the body is not read.
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("no Stripe-Signature header"))?
        .to_owned();
    let refused = |why: String| {
        // At most one line a second, however many are sent.
        if s.webhook_log.allow() {
            tracing::warn!(%why, "a webhook was refused");
        }
        ApiError::new(StatusCode::BAD_REQUEST, "bad_signature", why)
    };
    crate::payments::fresh_signature(&signature, now_ms() / 1000).map_err(refused)?;
    let payload: Bytes = axum::body::to_bytes(body, MAX_WEBHOOK)
        .await
        .map_err(|_| ApiError::bad_request(format!("a webhook is at most {MAX_WEBHOOK} bytes")))?;
    let event = verify_webhook(&secret, &payload, &signature, now_ms() / 1000).map_err(refused)?;
    if !matches!(
        event.kind.as_str(),
        "payment_intent.succeeded" | "payment_intent.payment_failed"
    ) {
        return Ok(StatusCode::OK);
    }
    let intent = event.data.object;
    let code = match intent.metadata.get("order") {
        Some(code) => code.clone(),
        None => {
            let id = intent.id.clone();
            s.db(move |db| db.order_by_intent(&id)).await?.code
        }
    };
    let order = settle(&s, &code, &intent).await?;
    if order.state == crate::domain::order::OrderState::Paid {
        issue_tickets(&s, &order.code).await?;
    }
    Ok(StatusCode::OK)
}

/// The organizer cancels an order: a pending one is given up, a paid one
/// paid back through the provider, and its tickets revoked.
async fn cancel(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(code): Path<String>,
) -> Result<Json<Order>, ApiError> {
    use crate::domain::order::OrderState;
    if code.len() > 20 {
        return Err(ApiError::not_found("order not found"));
    }
    let order = {
        let code = code.clone();
        s.db(move |db| db.organizer_order(by, &code)).await?
    };
    let payments = s.payments.clone();
    let order = s
        .db(move |db| match order.state {
            OrderState::Pending => db.cancel_pending(&code, now_ms()),
            OrderState::Paid => {
                let intent = order.payment_intent.clone().ok_or_else(|| {
                    StorageError::Backend(format!("paid order {code} has no payment"))
                })?;
                let refund = refund(&*payments, &intent, &order)?;
                db.mark_refunded(&code, &refund, "cancelled by the organizer", now_ms())
            }
            other => Err(StorageError::Conflict(format!(
                "the order is {}: there is nothing to cancel",
                other.as_str()
            ))),
        })
        .await?;
    s.changed();
    Ok(Json(order))
}

/// Pays an order's amount back through the provider, once (its idempotency
/// key is the order's); a free order has nothing to pay back. Returns the
/// refund's id.
fn refund(
    payments: &dyn crate::payments::Provider,
    intent: &str,
    order: &Order,
) -> Result<String, StorageError> {
    if order.amount == 0 {
        return Ok(format!("free-{}", order.code));
    }
    payments
        .refund(intent, order.amount, &format!("refund-{}", order.code))
        .map(|r| r.id)
        .map_err(|e| StorageError::Backend(format!("refund of {}: {e}", order.code)))
}
