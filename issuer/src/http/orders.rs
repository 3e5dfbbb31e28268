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

use super::body::{JsonBody, MAX_BODY};
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::domain::order::{Buyer, Order, order_code};
use crate::payments::{Intent, IntentStatus, PaymentFailure, verify_webhook};
use crate::storage::{Created, NewOrder, Settled, StorageError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(add_order))
        .route("/orders/{code}", get(order))
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

fn answer(s: &AppState, order: Order) -> OrderAnswer {
    let secret = link_secret(&s.link_key, &order.code);
    OrderAnswer {
        link: format!("/api/v1/orders/{}?secret={secret}", order.code),
        secret,
        order,
    }
}

async fn add_order(
    State(s): State<AppState>,
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
    let new = NewOrder {
        hold_hash: super::auth::token_hash(&req.hold_token),
        secret_hash: Sha256::digest(link_secret(&s.link_key, &code)).into(),
        code,
        buyer: Buyer {
            email: req.email,
            name: req.name,
        },
        idempotency: key.map(|k| (k, request_hash)),
    };
    let order = match s.db(move |db| db.create_order(&new, now_ms())).await? {
        // The same request again: what it came to, never a second charge.
        Created::Again(order) => return Ok((StatusCode::OK, Json(answer(&s, order)))),
        Created::New(order) => order,
    };
    let (payments, method, code) = (s.payments.clone(), req.payment_method, order.code.clone());
    let (amount, currency) = (order.amount, order.currency.clone());
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
        Err(PaymentFailure::Refused(why)) => {
            let code = order.code.clone();
            s.db(move |db| {
                db.mark_failed(&code, &format!("the payment was refused: {why}"), now_ms())
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
    Ok((StatusCode::CREATED, Json(answer(&s, order))))
}

/// Brings an order in line with its payment as the provider reports it.
async fn settle(s: &AppState, code: &str, intent: &Intent) -> Result<Order, ApiError> {
    let (code, intent) = (code.to_owned(), intent.clone());
    let payments = s.payments.clone();
    s.db(move |db| {
        let order = db.set_intent(&code, &intent.id, now_ms())?;
        match intent.status {
            IntentStatus::Succeeded => match db.settle_paid(&code, now_ms())? {
                Settled::Paid(o) | Settled::Already(o) => Ok(o),
                Settled::MustRefund(o) => {
                    // Paid for places no longer to be had: paid back, once.
                    let refund = payments
                        .refund(&intent.id, o.amount, &format!("refund-{code}"))
                        .map_err(|e| StorageError::Backend(format!("refund of {code}: {e}")))?;
                    db.mark_refunded(
                        &code,
                        &refund.id,
                        "paid after the hold expired, and its places were taken: paid back",
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
    .await
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
) -> Result<Json<Order>, ApiError> {
    let Query(Secret { secret }) = params.map_err(|_| ApiError::not_found("order not found"))?;
    if code.len() > 20 || secret.len() > 100 {
        return Err(ApiError::not_found("order not found"));
    }
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    Ok(Json(s.db(move |db| db.order(&code, &hash)).await?))
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
    let payload: Bytes = axum::body::to_bytes(body, MAX_WEBHOOK)
        .await
        .map_err(|_| ApiError::bad_request(format!("a webhook is at most {MAX_WEBHOOK} bytes")))?;
    let event = verify_webhook(&secret, &payload, &signature, now_ms() / 1000).map_err(|why| {
        tracing::warn!(%why, "a webhook was refused");
        ApiError::new(StatusCode::BAD_REQUEST, "bad_signature", why)
    })?;
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
    settle(&s, &code, &intent).await?;
    Ok(StatusCode::OK)
}
