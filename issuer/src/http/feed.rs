//! What gates need from the issuer, for an organizer's events: the keyset
//! that verifies their tickets and the tickets revoked since. gate-sync
//! fetches both with the organizer's token and hands them to the gates.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Organizer;
use super::error::ErrorBody;
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::storage::Revocation;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(keyset))
        .routes(routes!(revocations))
        .routes(routes!(revocations_text))
        .routes(routes!(figures))
}

/// An event's sales for its organizer: revenue, orders by state, every
/// category's places, sales by day, holds under way.
#[utoipa::path(
    get,
    path = "/events/{id}/figures",
    tag = "feed",
    params(("id" = u64, Path, description = "The event's id")),
    security(("organizer" = [])),
    responses(
        (status = 200, description = "The event's sales", body = crate::storage::Figures),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn figures(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Json<crate::storage::Figures>, ApiError> {
    let id = super::catalogue::id(&raw, "event")?;
    Ok(Json(s.db(move |db| db.figures(by, id, now_ms())).await?))
}

/// Most events one request names, and revocations one page holds.
const MAX_EVENTS: usize = 50;
const PAGE: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FeedParams {
    /// The ids of 1 to 50 of the organizer's events, comma-separated
    /// (`1,2,3`).
    #[param(pattern = r"^[0-9]{1,19}(,[0-9]{1,19}){0,49}$", example = "1,2")]
    events: String,
    /// `/revocations` only: the `next` of the page before (0 unless given).
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    since: Option<u64>,
    /// `/revocations` only: most revocations a page lists (1 to 1000; 1000
    /// unless given).
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    limit: Option<usize>,
}

/// The keyset as `GET /keyset` sends it: `shared::Keyset::to_json`'s
/// format, which gates read (described here, never built).
#[derive(ToSchema)]
pub struct KeysetDoc {
    pub keys: Vec<KeysetEntryDoc>,
}

#[derive(ToSchema)]
pub struct KeysetEntryDoc {
    /// 8 lower-case hex digits: the first 4 bytes of the SHA-256 of the
    /// public key.
    pub key_id: String,
    /// The Ed25519 public key, base64url without padding.
    pub public_key: String,
    /// The only events the key may sign tickets for.
    pub event_ids: Vec<u64>,
}

/// `events` as the document's pattern has it: ids of 1 to 19 digits,
/// comma-separated, nothing else.
fn events_of(raw: &str) -> Result<Vec<u64>, ApiError> {
    let events: Vec<u64> = raw
        .split(',')
        .map(|e| {
            super::digits(e)
                .ok_or_else(|| ApiError::bad_request(format!("{e:?} is not an event id")))
        })
        .collect::<Result<_, _>>()?;
    if events.is_empty() || events.len() > MAX_EVENTS {
        return Err(ApiError::bad_request(format!(
            "name 1 to {MAX_EVENTS} events"
        )));
    }
    Ok(events)
}

fn params(p: Result<Query<FeedParams>, QueryRejection>) -> Result<FeedParams, ApiError> {
    p.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The public keys that verify the tickets of the organizer's events, for
/// its gates.
#[utoipa::path(
    get,
    path = "/keyset",
    tag = "feed",
    params(FeedParams),
    security(("organizer" = [])),
    responses(
        (status = 200, description = "The keyset", body = KeysetDoc),
        (status = 400, description = "`events` is missing or not 1 to 50 event ids", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn keyset(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    p: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let events = events_of(&params(p)?.events)?;
    let json = s
        .db(move |db| db.keyset(by, &events, now_ms() / 1000))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Serialize, ToSchema)]
struct Feed {
    revocations: Vec<Revocation>,
    /// Pass as `since` for what follows; the last `seq` seen.
    next: u64,
}

/// Tickets of the organizer's events revoked since `since`, in the order
/// they were revoked, a page at a time.
#[utoipa::path(
    get,
    path = "/revocations",
    tag = "feed",
    params(FeedParams),
    security(("organizer" = [])),
    responses(
        (status = 200, description = "A page of revocations", body = Feed),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn revocations(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    p: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Json<Feed>, ApiError> {
    let p = params(p)?;
    let events = events_of(&p.events)?;
    let since = p.since.unwrap_or(0);
    let limit = p.limit.unwrap_or(PAGE).clamp(1, PAGE);
    let revocations = s
        .db(move |db| db.revocations(by, &events, since, limit))
        .await?;
    let next = revocations.last().map_or(since, |r| r.seq);
    Ok(Json(Feed { revocations, next }))
}

/// Every revoked ticket of the events, one `EVENT_ID TICKET_ID` a line:
/// the list `gate-sync revocations import` takes.
#[utoipa::path(
    get,
    path = "/revocations.txt",
    tag = "feed",
    params(FeedParams),
    security(("organizer" = [])),
    responses(
        (status = 200, description = "A comment line, then one `EVENT_ID TICKET_ID` a line", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, description = "`events` is missing or not 1 to 50 event ids", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn revocations_text(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    p: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let events = events_of(&params(p)?.events)?;
    let all = s
        .db(move |db| {
            let mut all = Vec::new();
            let mut since = 0;
            loop {
                let page = db.revocations(by, &events, since, PAGE)?;
                let Some(last) = page.last() else { break };
                since = last.seq;
                all.extend(page);
            }
            Ok(all)
        })
        .await?;
    let mut text = String::from("# revoked tickets: EVENT_ID TICKET_ID\n");
    for r in all {
        text.push_str(&format!("{} {}\n", r.event_id, r.ticket_id));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
