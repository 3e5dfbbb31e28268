//! Orders: a buyer orders a hold's places and pays; the provider's
//! webhooks settle what was not settled at once. Guest checkout: the order
//! is read with the secret of its link.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Organizer;
use super::body::{JsonBody, MAX_BODY};
use super::error::ErrorBody;
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::domain::order::{Buyer, Order, order_code};
use crate::payments::{Intent, IntentStatus, PaymentFailure, verify_webhook};
use crate::storage::{Created, IssuedTicket, NewOrder, Settled, Signed, StorageError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_order))
        .routes(routes!(order))
        .routes(routes!(cancel))
        .routes(routes!(withdraw))
        .routes(routes!(reissue))
        .routes(routes!(qr_png))
        .routes(routes!(qr_svg))
        .routes(routes!(webhook))
}

/// Longest `Idempotency-Key` taken.
const MAX_KEY: usize = 255;

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "hold_token": "hold_...",
    "email": "ana@example.org",
    "name": "Ana",
    "payment_method": "pm_card_visa"
}))]
struct OrderRequest {
    /// The hold whose places are ordered (`hold_...`).
    hold_token: String,
    /// Where the tickets are sent.
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// The provider's payment method (`pm_...`), made by the buyer's
    /// browser with the provider; a test card's in the sandbox.
    #[schema(pattern = "^[!-~]{1,200}$", example = "pm_card_visa")]
    payment_method: String,
}

#[derive(Serialize, ToSchema)]
struct OrderAnswer {
    #[serde(flatten)]
    order: Order,
    /// The secret of the order's link: whoever has it reads the order.
    secret: String,
    /// The order's own address, its secret included.
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
    let paid = order.state == crate::domain::order::OrderState::Paid;
    let signer = s.signer.clone();
    let (code, hash) = (order.code.clone(), Sha256::digest(&secret).into());
    let tickets = s
        .db(move |db| {
            if paid {
                sign_order(db, signer.as_deref(), &code)?;
            }
            db.order_tickets(&code, &hash)
        })
        .await?;
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
    let (signer, code) = (s.signer.clone(), code.to_owned());
    s.db(move |db| sign_order(db, signer.as_deref(), &code))
        .await
}

/// [`issue_tickets`] on the storage's thread.
fn sign_order(
    db: &dyn crate::storage::Storage,
    signer: Option<&crate::keys::ActiveSigner>,
    code: &str,
) -> Result<(), StorageError> {
    let signer = signer
        .ok_or_else(|| StorageError::Backend("no signing key to sign tickets with".into()))?
        .get()
        .map_err(|e| StorageError::Backend(format!("the signing key: {e}")))?;
    crate::issue::sign_order(db, &signer, code, now_ms())
}

/// Orders a hold's places and pays for them.
///
/// The payment goes through the provider at once. Sent again with the same
/// `Idempotency-Key`, the same request is answered with what it came to,
/// never charged twice.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body = OrderRequest,
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "1 to 255 printable ASCII characters: the same key and request again is the same order",
        pattern = r"^[!-~]([\t -~]*[!-~])?$",
        max_length = 255
    )),
    responses(
        (status = 200, description = "The same request again with its key: the order it made", body = OrderAnswer, links(
            ("read" = (operation_id = "order", parameters(("code" = "$response.body#/code"), ("secret" = "$response.body#/secret")))),
            ("cancel" = (operation_id = "cancel", parameters(("code" = "$response.body#/code")), description = "The organizer cancels it")),
            ("png" = (operation_id = "qr_png", parameters(("id" = "$response.body#/tickets/0/ticket_id"), ("secret" = "$response.body#/secret")), description = "The first ticket's picture")),
            ("svg" = (operation_id = "qr_svg", parameters(("id" = "$response.body#/tickets/0/ticket_id"), ("secret" = "$response.body#/secret")))),
        )),
        (status = 201, description = "The order: paid (with its tickets), failed (the payment was refused, see `note`) or pending (the payment is not settled yet)", body = OrderAnswer, links(
            ("read" = (operation_id = "order", parameters(("code" = "$response.body#/code"), ("secret" = "$response.body#/secret")))),
            ("cancel" = (operation_id = "cancel", parameters(("code" = "$response.body#/code")), description = "The organizer cancels it")),
            ("png" = (operation_id = "qr_png", parameters(("id" = "$response.body#/tickets/0/ticket_id"), ("secret" = "$response.body#/secret")), description = "The first ticket's picture")),
            ("svg" = (operation_id = "qr_svg", parameters(("id" = "$response.body#/tickets/0/ticket_id"), ("secret" = "$response.body#/secret")))),
        )),
        (status = 400, description = "The body is not an order, or the Idempotency-Key or payment method is malformed", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 409, description = "The hold expired, was let go or is ordered already; the event is off sale; or the key was used for another request", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The buyer's name or e-mail address is refused", body = ErrorBody),
        (status = 429, response = super::error::RateLimited),
        (status = 500, response = super::error::Internal),
    )
)]
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
    if !(1..=200).contains(&req.payment_method.len())
        || !req.payment_method.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "payment_method is 1 to 200 printable ASCII characters, no spaces",
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
        payment_method: Some(req.payment_method.clone()),
    };
    let order = match s.storage.create_order_pending(new, now_ms()).await? {
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
    let turn = s
        .payment_turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let charged = tokio::task::spawn_blocking(move || {
        let _turn = turn;
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

/// How long an order may stay pending before the provider is asked how
/// its payment went, unless told otherwise.
pub const RECONCILE_AFTER_MS: u64 = 60_000;

/// Asks the provider, now and then, about orders still pending: a payment
/// whose answer was lost (the provider did not answer in time) is asked
/// again with the same parameters and key, which charges nothing twice
/// and tells what the first request came to; a payment in progress is
/// looked up. Each is settled as its webhook would have settled it. Orders
/// older than a day are left alone (a provider forgets keys after that).
pub async fn reconcile(s: AppState, after_ms: u64) {
    let warn = super::OncePerSecond::default();
    let every = std::time::Duration::from_millis((after_ms / 2).clamp(500, 30_000));
    loop {
        tokio::time::sleep(every).await;
        let now = now_ms();
        let due = s
            .db(move |db| {
                db.claim_unsettled(
                    now.saturating_sub(after_ms),
                    now.saturating_sub(86_400_000),
                    now,
                    50,
                )
            })
            .await;
        let due = match due {
            Ok(due) => due,
            Err(e) => {
                if warn.allow() {
                    tracing::warn!(error = %e.message, "reconciling: reading pending orders");
                }
                continue;
            }
        };
        for (order, method) in due {
            let code = order.code.clone();
            if let Err(e) = ask_provider(&s, order, method).await
                && warn.allow()
            {
                tracing::warn!(order = %code, error = %e.message, "reconciling an order");
            }
        }
    }
}

/// Asks the provider how an order's payment went (the same charge under
/// the same key, or the payment looked up), and settles the order so:
/// the order as it stands then, or `None` if the provider did not answer.
async fn ask_provider(
    s: &AppState,
    order: Order,
    method: Option<String>,
) -> Result<Option<Order>, ApiError> {
    let code = order.code.clone();
    let payments = s.payments.clone();
    let turn = s
        .payment_turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let asked = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        match (&order.payment_intent, method) {
            (Some(id), _) => payments.intent(id),
            (None, Some(method)) => payments.charge(
                order.amount,
                &order.currency,
                &method,
                &[("order", order.code.as_str())],
                &format!("order-{}", order.code),
            ),
            (None, None) => Err(PaymentFailure::Refused("no payment method was kept".into())),
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    match asked {
        Ok(intent) => {
            let order = settle(s, &code, &intent).await?;
            if order.state == crate::domain::order::OrderState::Paid {
                issue_tickets(s, &code).await?;
            }
            tracing::info!(order = %code, state = order.state.as_str(), "reconciled with the provider");
            Ok(Some(order))
        }
        Err(PaymentFailure::Refused(why)) => {
            tracing::warn!(order = %code, %why, "the provider refused the payment when asked again");
            let order = s
                .db(move |db| {
                    db.mark_failed(&code, "the payment provider refused the payment", now_ms())
                })
                .await?;
            Ok(Some(order))
        }
        // Asked again at the next pass.
        Err(PaymentFailure::Unreachable(_)) => Ok(None),
    }
}

/// The order's tickets, signed before its payment is settled so that
/// they are recorded in the same change, when there is a key to sign them
/// (else they are signed when asked for).
fn sign_ahead(
    db: &dyn crate::storage::Storage,
    signer: Option<&crate::keys::ActiveSigner>,
    code: &str,
) -> Result<Option<Signed>, StorageError> {
    let Some(Ok(signer)) = signer.map(|s| s.get()) else {
        return Ok(None);
    };
    let Some(fields) = db.tickets_to_sign_ahead(code)? else {
        return Ok(None);
    };
    Ok(Some(Signed {
        key_id: signer.key_id().to_string(),
        tickets: crate::issue::sign_fields(&signer, fields)?,
    }))
}

/// Brings an order in line with its payment as the provider reports it.
///
/// It runs as a task of its own, to its end, whether or not the request
/// that asked is still there: money that moved is never left unsettled.
async fn settle(s: &AppState, code: &str, intent: &Intent) -> Result<Order, ApiError> {
    let (state, code, intent) = (s.clone(), code.to_owned(), intent.clone());
    let settled = tokio::spawn(async move { settle_as_told(&state, code, intent).await })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    s.changed();
    settled
}

async fn settle_as_told(s: &AppState, code: String, intent: Intent) -> Result<Order, ApiError> {
    match intent.status {
        IntentStatus::Succeeded => {
            let signer = s.signer.clone();
            let ahead = code.clone();
            let signed = s
                .db(move |db| sign_ahead(db, signer.as_deref(), &ahead))
                .await?;
            let settled = s
                .storage
                .pay_pending(code.clone(), intent.id.clone(), now_ms(), signed)
                .await?;
            match settled {
                Settled::Paid(o) | Settled::Already(o) => Ok(o),
                Settled::MustRefund(o) => {
                    // Paid for places no longer to be had: paid back, once.
                    let payments = s.payments.clone();
                    s.db(move |db| {
                        let refund = refund(&*payments, &intent.id, &o)?;
                        db.mark_refunded(
                            &code,
                            &refund,
                            "its places could no longer be sold to it (the hold had expired and \
                             they were taken, or the order or the event was cancelled): paid back",
                            now_ms(),
                        )
                    })
                    .await
                }
            }
        }
        IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
            let why = intent
                .last_payment_error
                .map(|e| match e.decline_code {
                    Some(d) => format!("{}: {d}", e.code),
                    None => e.code,
                })
                .unwrap_or_else(|| "the payment was not made".into());
            s.db(move |db| {
                db.set_intent(&code, &intent.id, now_ms())?;
                db.mark_failed(&code, &why, now_ms())
            })
            .await
        }
        IntentStatus::Processing | IntentStatus::Other => {
            s.db(move |db| db.set_intent(&code, &intent.id, now_ms()))
                .await
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Secret {
    /// The secret of the order's link (`sec_...`).
    secret: String,
}

/// The SHA-256 of the link's secret a request shows, if the request can
/// be one (`plausible`: the code or id it names has the right length);
/// anything else is not found, saying no more.
fn secret_hash(
    params: Result<Query<Secret>, QueryRejection>,
    plausible: bool,
    what: &str,
) -> Result<[u8; 32], ApiError> {
    let not_found = || ApiError::not_found(format!("{what} not found"));
    let Query(Secret { secret }) = params.map_err(|_| not_found())?;
    if !plausible || secret.len() > 100 {
        return Err(not_found());
    }
    Ok(Sha256::digest(secret.as_bytes()).into())
}

/// An order, by its code and its link's secret (guest checkout).
#[utoipa::path(
    get,
    path = "/orders/{code}",
    tag = "orders",
    params(("code" = String, Path, description = "The order's code"), Secret),
    responses(
        (status = 200, description = "The order, its link and its tickets", body = OrderAnswer),
        (status = 404, description = "No such order, or not its secret", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn order(
    State(s): State<AppState>,
    Path(code): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<Json<OrderAnswer>, ApiError> {
    let hash = secret_hash(params, code.len() <= 20, "order")?;
    let order = s.db(move |db| db.order(&code, &hash)).await?;
    Ok(Json(answer(&s, order).await?))
}

/// A ticket's signed code, by its id and its order's link secret.
async fn ticket_code(
    s: &AppState,
    id: String,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<String, ApiError> {
    let hash = secret_hash(params, id.len() == 32, "ticket")?;
    s.db(move |db| db.ticket_code(&id, &hash)).await
}

/// A PNG picture's bytes, as the document describes them (OpenAPI 3.1
/// names binary content by its media type).
pub struct Png;

impl utoipa::PartialSchema for Png {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("image/png")
            .into()
    }
}

impl ToSchema for Png {}

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

/// A ticket's QR code as a PNG picture.
#[utoipa::path(
    get,
    path = "/tickets/{id}/qr.png",
    tag = "orders",
    params(("id" = String, Path, description = "The ticket's id (32 hex digits)"), Secret),
    responses(
        (status = 200, description = "The picture", content_type = "image/png", body = Png),
        (status = 404, description = "No such ticket, or not its order's secret", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn qr_png(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    picture(&s, id, params, false).await
}

/// A ticket's QR code as an SVG picture.
#[utoipa::path(
    get,
    path = "/tickets/{id}/qr.svg",
    tag = "orders",
    params(("id" = String, Path, description = "The ticket's id (32 hex digits)"), Secret),
    responses(
        (status = 200, description = "The picture", content_type = "image/svg+xml", body = String),
        (status = 404, description = "No such ticket, or not its order's secret", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
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
#[utoipa::path(
    post,
    path = "/payments/webhook",
    tag = "orders",
    params(("Stripe-Signature" = String, Header, description = "`t=UNIX_SECONDS,v1=HEX`: HMAC-SHA256 of `t.body` with the webhook secret")),
    request_body(
        content = Object,
        content_type = "application/json",
        description = "A Stripe event (`{\"id\", \"type\", \"data\": {\"object\": PaymentIntent}}`), at most 64 KiB; \
                       only `payment_intent.succeeded` and `payment_intent.payment_failed` are acted on"
    ),
    responses(
        (status = 200, description = "Taken: the order is settled (or the event was of no interest)"),
        (status = 400, description = "No signature, a stale or wrong one, or a body over 64 KiB", body = ErrorBody),
        (status = 404, description = "No webhooks are taken here, or no order was paid by that payment", body = ErrorBody),
        (status = 422, description = "The news does not apply to the order's state", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
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
    // News already known (the charge's own answer settled the order): done,
    // with nothing written.
    let known = {
        let id = intent.id.clone();
        s.db(move |db| match db.order_by_intent(&id) {
            Ok(order) => Ok(Some(order)),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await?
    };
    let settled = |o: &Order| match intent.status {
        IntentStatus::Succeeded => matches!(
            o.state,
            crate::domain::order::OrderState::Paid | crate::domain::order::OrderState::Refunded
        ),
        IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
            o.state != crate::domain::order::OrderState::Pending
        }
        _ => false,
    };
    if known.as_ref().is_some_and(settled) {
        return Ok(StatusCode::OK);
    }
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
#[utoipa::path(
    post,
    path = "/orders/{code}/cancel",
    tag = "orders",
    params(("code" = String, Path, description = "The order's code")),
    security(("organizer" = [])),
    responses(
        (status = 200, description = "The order, cancelled or refunded", body = Order),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "No such order of the organizer's events", body = ErrorBody),
        (status = 409, description = "The order is failed, cancelled or refunded already: nothing to cancel", body = ErrorBody),
        (status = 500, response = super::error::Internal),
        (status = 503, description = "The order's payment went out unanswered and the provider has not said yet how it went", body = ErrorBody),
    )
)]
async fn cancel(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(code): Path<String>,
) -> Result<Json<Order>, ApiError> {
    if code.len() > 20 {
        return Err(ApiError::not_found("order not found"));
    }
    let order = s.db(move |db| db.organizer_order(by, &code)).await?;
    Ok(Json(
        cancel_order(&s, order, "cancelled by the organizer").await?,
    ))
}

/// Gives up a pending order, or pays a paid one back (its tickets revoked).
/// A pending order whose charge went out unanswered is asked about first:
/// the money, if it was taken, goes back rather than stays.
async fn cancel_order(s: &AppState, order: Order, why: &'static str) -> Result<Order, ApiError> {
    use crate::domain::order::OrderState;
    let mut order = order;
    if order.state == OrderState::Pending && order.payment_intent.is_none() && order.amount > 0 {
        let code = order.code.clone();
        let (_, method) = s.db(move |db| db.order_by_code(&code)).await?;
        if method.is_some() {
            match ask_provider(s, order.clone(), method).await? {
                Some(now) => order = now,
                None => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "payment_unknown",
                        "the payment provider has not said yet how the payment went; try again in a minute",
                    ));
                }
            }
        }
    }
    let code = order.code.clone();
    let cancelled = cancel_now(s, order, why).await;
    if let Err(e) = &cancelled
        && e.status != StatusCode::NOT_FOUND
    {
        // Cancelled meanwhile by someone else (the buyer and the organizer
        // at once, say): said as such, whatever the loser's error was.
        let (now, _) = s.db(move |db| db.order_by_code(&code)).await?;
        if matches!(
            now.state,
            OrderState::Refunded | OrderState::Cancelled | OrderState::Failed
        ) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "the order is {}: there is nothing to cancel",
                    now.state.as_str()
                ),
            ));
        }
    }
    cancelled
}

async fn cancel_now(s: &AppState, order: Order, why: &'static str) -> Result<Order, ApiError> {
    use crate::domain::order::OrderState;
    let payments = s.payments.clone();
    let code = order.code.clone();
    let order = s
        .db(move |db| match order.state {
            OrderState::Pending => db.cancel_pending(&code, now_ms()),
            OrderState::Paid => {
                let intent = order.payment_intent.clone().ok_or_else(|| {
                    StorageError::Backend(format!("paid order {code} has no payment"))
                })?;
                let refund = refund(&*payments, &intent, &order)?;
                db.mark_refunded(&code, &refund, why, now_ms())
            }
            other => Err(StorageError::Conflict(format!(
                "the order is {}: there is nothing to cancel",
                other.as_str()
            ))),
        })
        .await?;
    s.changed();
    Ok(order)
}

/// The buyer cancels its own order, where the event allows it (until its
/// `buyers_cancel_until`): a pending one is given up, a paid one paid back
/// in full, and its tickets revoked.
#[utoipa::path(
    post,
    path = "/orders/{code}/withdraw",
    tag = "orders",
    params(("code" = String, Path, description = "The order's code"), Secret),
    responses(
        (status = 200, description = "The order, cancelled or refunded", body = Order),
        (status = 404, description = "No such order, or not its secret", body = ErrorBody),
        (status = 409, description = "The event does not let buyers cancel (or no longer), or there is nothing to cancel", body = ErrorBody),
        (status = 500, response = super::error::Internal),
        (status = 503, description = "The order's payment went out unanswered and the provider has not said yet how it went", body = ErrorBody),
    )
)]
async fn withdraw(
    State(s): State<AppState>,
    Path(code): Path<String>,
    params: Result<Query<Secret>, QueryRejection>,
) -> Result<Json<Order>, ApiError> {
    let hash = secret_hash(params, code.len() <= 20, "order")?;
    let (order, until) = s
        .db(move |db| {
            let order = db.order(&code, &hash)?;
            let event = db.event(order.event_id, None)?;
            Ok((order, event.info.buyers_cancel_until))
        })
        .await?;
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "conflict", m);
    match until {
        Some(t) if now_ms() / 1000 < t => {}
        Some(t) => {
            return Err(conflict(format!(
                "buyers could cancel until {}; ask the organizer",
                crate::time::format(t)
            )));
        }
        None => {
            return Err(conflict(
                "the organizer alone cancels this event's orders".into(),
            ));
        }
    }
    Ok(Json(
        cancel_order(&s, order, "cancelled by the buyer").await?,
    ))
}

/// The organizer issues a paid ticket again (lost, or passed on to someone
/// it should not have been): a fresh ticket for the same place, signed now;
/// the old one is revoked, so gates refuse it once they sync.
#[utoipa::path(
    post,
    path = "/orders/{code}/tickets/{ticket_id}/reissue",
    tag = "orders",
    params(
        ("code" = String, Path, description = "The order's code"),
        ("ticket_id" = String, Path, description = "The ticket's id: 32 hex digits"),
    ),
    security(("organizer" = [])),
    responses(
        (status = 201, description = "The new ticket", body = IssuedTicket),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "No such ticket of a paid order of the organizer's events", body = ErrorBody),
        (status = 409, description = "The order is not paid", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn reissue(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path((code, ticket_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<IssuedTicket>), ApiError> {
    if code.len() > 20 || ticket_id.len() != 32 {
        return Err(ApiError::not_found("ticket not found"));
    }
    let Some(signer) = s.signer.clone() else {
        return Err(ApiError::internal("no signing key to sign tickets with"));
    };
    let ticket = s
        .db(move |db| {
            let signer = signer
                .get()
                .map_err(|e| StorageError::Backend(format!("the signing key: {e}")))?;
            let fields = db.ticket_to_reissue(by, &code, &ticket_id)?;
            let signed = signer
                .encode(&fields)
                .map_err(|e| StorageError::Backend(format!("signing a ticket: {e}")))?;
            db.reissue_ticket(
                by,
                &code,
                &ticket_id,
                &signer.key_id().to_string(),
                &(fields, signed),
                now_ms(),
            )
        })
        .await?;
    Ok((StatusCode::CREATED, Json(ticket)))
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
