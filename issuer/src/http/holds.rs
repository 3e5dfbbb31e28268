//! Holds: a buyer takes places for a while, then orders or lets them go;
//! and what an event has left.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::JsonBody;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::domain::hold::{Hold, HoldRequest};
use crate::storage::{Availability, Client};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_hold))
        .routes(routes!(hold, release))
        .routes(routes!(tickets))
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

#[derive(Serialize, ToSchema)]
struct NewHold {
    /// What the buyer shows to order, read or let go of the hold; given
    /// once, kept by its hash only.
    token: String,
    #[serde(flatten)]
    hold: Hold,
}

/// Holds places of an event, all or none.
///
/// At prices fixed now, for a while (10 minutes unless the server is told
/// otherwise).
#[utoipa::path(
    post,
    path = "/holds",
    tag = "holds",
    request_body = HoldRequest,
    responses(
        (status = 201, description = "The hold, with the token that orders, reads or releases it", body = NewHold, links(
            ("order" = (operation_id = "add_order", request_body = json!({"hold_token": "$response.body#/token"}), description = "Order the hold's places")),
            ("read" = (operation_id = "hold", parameters(("token" = "$response.body#/token")))),
            ("release" = (operation_id = "release", parameters(("token" = "$response.body#/token")))),
        )),
        (status = 400, description = "The body is not a hold request", body = ErrorBody),
        (status = 404, description = "No such event (drafts are not shown)", body = ErrorBody),
        (status = 409, description = "The event is not on sale, or a place asked for is taken, sold out, or more than this address may hold", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The request cannot be met as asked: the message says why", body = ErrorBody),
        (status = 429, response = super::error::RateLimited),
        (status = 500, response = super::error::Internal),
    )
)]
async fn add_hold(
    State(s): State<AppState>,
    super::limit::Limited(address): super::limit::Limited,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<(StatusCode, Json<NewHold>), ApiError> {
    let (token, hash) = super::auth::new_secret("hold_");
    let ttl = s.hold_ttl_ms;
    // One address holds at most so many places of an event at once.
    let client = address.zip(s.max_held).map(|(ip, most)| Client {
        address: ip.to_string(),
        most,
    });
    let hold = s
        .storage
        .hold_pending(request, hash, now_ms(), ttl, client)
        .await?;
    s.changed();
    Ok((StatusCode::CREATED, Json(NewHold { token, hold })))
}

/// A hold, as it stands now.
#[utoipa::path(
    get,
    path = "/holds/{token}",
    tag = "holds",
    params(("token" = String, Path, description = "The hold's token (`hold_...`), as its creation gave it")),
    responses(
        (status = 200, description = "The hold", body = Hold),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn hold(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    let hash = hold_hash(&token)?;
    Ok(Json(s.db(move |db| db.hold_of(&hash, now_ms())).await?))
}

/// Lets a hold's places go at once (again: nothing changes).
#[utoipa::path(
    delete,
    path = "/holds/{token}",
    tag = "holds",
    params(("token" = String, Path, description = "The hold's token (`hold_...`), as its creation gave it")),
    responses(
        (status = 200, description = "The hold, released (or as it was, if it had ended)", body = Hold),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn release(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    let hash = hold_hash(&token)?;
    let hold = s.storage.release_pending(hash, now_ms()).await?;
    s.changed();
    Ok(Json(hold))
}

/// What an event has left now: every category's counts and every seat's
/// state.
#[utoipa::path(
    get,
    path = "/events/{id}/tickets",
    tag = "holds",
    params(("id" = u64, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The event's places, numbered with the last change they include", body = Availability),
        (status = 404, description = "No such event (drafts are not shown)", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn tickets(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Availability>, ApiError> {
    let id = super::catalogue::id(&raw, "event")?;
    Ok(Json(s.db(move |db| db.availability(id, now_ms())).await?))
}
