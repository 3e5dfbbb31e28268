//! What gates need from the issuer, for an organizer's events: the keyset
//! that verifies their tickets and the tickets revoked since. gate-sync
//! fetches both with the organizer's token and hands them to the gates.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Organizer;
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::storage::Revocation;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keyset", get(keyset))
        .route("/revocations", get(revocations))
        .route("/revocations.txt", get(revocations_text))
        .route("/events/{id}/figures", get(figures))
}

/// An event's sales for its organizer: revenue, orders by state, every
/// category's places, sales by day, holds under way.
async fn figures(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Json<crate::storage::Figures>, ApiError> {
    let id: u64 = raw
        .parse()
        .map_err(|_| ApiError::not_found(format!("event {raw:?} not found")))?;
    Ok(Json(s.db(move |db| db.figures(by, id, now_ms())).await?))
}

/// Most events one request names, and revocations one page holds.
const MAX_EVENTS: usize = 50;
const PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    /// Event ids, comma-separated.
    events: String,
    since: Option<u64>,
    limit: Option<usize>,
}

fn events_of(raw: &str) -> Result<Vec<u64>, ApiError> {
    let events: Vec<u64> = raw
        .split(',')
        .map(|e| {
            e.trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{e:?} is not an event id")))
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

#[derive(Serialize)]
struct Feed {
    revocations: Vec<Revocation>,
    /// Pass as `since` for what follows; the last `seq` seen.
    next: u64,
}

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
