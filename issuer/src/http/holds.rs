//! Holds: a buyer takes places for a while, then orders or lets them go;
//! and what an event has left.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::body::JsonBody;
use super::{ApiError, AppState};
use crate::domain::hold::{Hold, HoldRequest};
use crate::storage::Availability;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/holds", post(add_hold))
        .route("/holds/{token}", get(hold).delete(release))
        .route("/events/{id}/tickets", get(tickets))
}

/// The milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The hash a hold is kept under, from its token as the buyer has it.
fn hold_hash(token: &str) -> Result<[u8; 32], ApiError> {
    if !token.starts_with("hold_") || token.len() > 100 {
        return Err(ApiError::not_found("hold not found"));
    }
    Ok(super::auth::token_hash(token))
}

#[derive(Serialize)]
struct NewHold {
    /// What the buyer shows to order, read or let go of the hold; given
    /// once, kept by its hash only.
    token: String,
    #[serde(flatten)]
    hold: Hold,
}

async fn add_hold(
    State(s): State<AppState>,
    super::limit::Limited(address): super::limit::Limited,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<(StatusCode, Json<NewHold>), ApiError> {
    let (token, hash) = super::auth::new_secret("hold_");
    let ttl = s.hold_ttl_ms;
    // One address holds at most so many places of an event at once.
    let client = address
        .zip(s.max_held)
        .map(|(ip, most)| (ip.to_string(), most));
    let hold = s
        .db(move |db| {
            let client = client.as_ref().map(|(a, most)| (a.as_str(), *most));
            db.hold_for(&request, &hash, now_ms(), ttl, client)
        })
        .await?;
    s.changed();
    Ok((StatusCode::CREATED, Json(NewHold { token, hold })))
}

async fn hold(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    let hash = hold_hash(&token)?;
    Ok(Json(s.db(move |db| db.hold_of(&hash, now_ms())).await?))
}

async fn release(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    let hash = hold_hash(&token)?;
    let hold = s.db(move |db| db.release(&hash, now_ms())).await?;
    s.changed();
    Ok(Json(hold))
}

async fn tickets(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Availability>, ApiError> {
    let id: u64 = raw
        .parse()
        .map_err(|_| ApiError::not_found(format!("event {raw:?} not found")))?;
    Ok(Json(s.db(move |db| db.availability(id, now_ms())).await?))
}
