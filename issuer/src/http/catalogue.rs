//! Venues, events and ticket categories: organizers make them, everyone
//! browses them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{MaybeOrganizer, Organizer};
use super::body::{JsonBody, MAX_VENUE_BODY};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::domain::catalogue::{
    Category, Event, EventStatus, Genre, NewCategory, NewEvent, NewVenue,
};
use crate::storage::{EventQuery, Venue};

/// Events a page lists, unless asked for fewer.
pub const PAGE: usize = 50;

/// One `routes!` a path: it serves every handler it is given on every
/// path among them.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_venue))
        .routes(routes!(venue))
        .routes(routes!(events, add_event))
        .routes(routes!(event, update_event))
        .routes(routes!(set_status))
        .routes(routes!(add_category))
        .routes(routes!(search))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SearchParams {
    /// What the buyer typed: every word matches as a prefix (at most 500
    /// bytes).
    query: String,
    /// Most events answered (1 to 200; 50 unless given).
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    limit: Option<usize>,
}

/// Events matching every word typed, each as a prefix, best first.
#[utoipa::path(
    get,
    path = "/search",
    tag = "catalogue",
    params(SearchParams),
    security((), ("organizer" = [])),
    responses(
        (status = 200, description = "The events found, best first (never a `next`)", body = EventList),
        (status = 400, description = "The query is missing, too long or has an unknown parameter", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 500, response = super::error::Internal),
    )
)]
async fn search(
    State(s): State<AppState>,
    MaybeOrganizer(viewer): MaybeOrganizer,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if p.query.len() > 500 {
        return Err(ApiError::bad_request("the query is longer than 500 bytes"));
    }
    let limit = p.limit.unwrap_or(PAGE);
    let events = s.db(move |db| db.search(&p.query, limit, viewer)).await?;
    Ok(Json(EventList { events, next: None }))
}

/// An id from the path, in the error shape when it is not one.
pub(super) fn id(raw: &str, what: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {raw:?} not found")))
}

/// Adds a venue with its seating plan.
#[utoipa::path(
    post,
    path = "/venues",
    tag = "catalogue",
    request_body = NewVenue,
    security(("organizer" = [])),
    responses(
        (status = 201, description = "The venue, as stored", body = Venue),
        (status = 400, description = "The body is not a venue", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The venue or its plan is refused: the message says why", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn add_venue(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    JsonBody(venue): JsonBody<NewVenue, MAX_VENUE_BODY>,
) -> Result<(StatusCode, Json<Venue>), ApiError> {
    let venue = s.db(move |db| db.add_venue(by, &venue)).await?;
    Ok((StatusCode::CREATED, Json(venue)))
}

/// A venue with its plan: to everyone once an event there is shown (on
/// sale, cancelled or ended), else to its organizer only.
#[utoipa::path(
    get,
    path = "/venues/{id}",
    tag = "catalogue",
    params(("id" = u64, Path, description = "The venue's id")),
    security((), ("organizer" = [])),
    responses(
        (status = 200, description = "The venue", body = Venue),
        (status = 404, description = "No such venue (or none shown yet)", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn venue(
    State(s): State<AppState>,
    MaybeOrganizer(viewer): MaybeOrganizer,
    Path(raw): Path<String>,
) -> Result<Json<Venue>, ApiError> {
    let id = id(&raw, "venue")?;
    Ok(Json(s.db(move |db| db.venue_shown(id, viewer)).await?))
}

/// Adds an event, as a draft, at one of the organizer's venues.
#[utoipa::path(
    post,
    path = "/events",
    tag = "catalogue",
    request_body = NewEvent,
    security(("organizer" = [])),
    responses(
        (status = 201, description = "The event, a draft", body = Event),
        (status = 400, description = "The body is not an event", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such venue", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The event is refused: the message says why", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn add_event(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    JsonBody(event): JsonBody<NewEvent>,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    let event = s.db(move |db| db.add_event(by, &event)).await?;
    Ok((StatusCode::CREATED, Json(event)))
}

/// Changes an event of the organizer's.
#[utoipa::path(
    put,
    path = "/events/{id}",
    tag = "catalogue",
    params(("id" = u64, Path, description = "The event's id")),
    request_body = NewEvent,
    security(("organizer" = [])),
    responses(
        (status = 200, description = "The event, changed", body = Event),
        (status = 400, description = "The body is not an event", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event, or no such venue", body = ErrorBody),
        (status = 409, description = "The venue cannot change: the event has ticket categories", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The event is refused: the message says why", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn update_event(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(event): JsonBody<NewEvent>,
) -> Result<Json<Event>, ApiError> {
    let id = id(&raw, "event")?;
    let event = s.db(move |db| db.update_event(by, id, &event)).await?;
    s.pages.forget(id);
    Ok(Json(event))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusChange {
    status: EventStatus,
}

/// Moves an event on: a draft goes on sale (or is cancelled), an event on
/// sale is cancelled or ends.
#[utoipa::path(
    post,
    path = "/events/{id}/status",
    tag = "catalogue",
    params(("id" = u64, Path, description = "The event's id")),
    request_body = StatusChange,
    security(("organizer" = [])),
    responses(
        (status = 200, description = "The event, in its new status", body = Event),
        (status = 400, description = "The body is not a status change", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 409, description = "The event cannot go from its status to that one", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 500, response = super::error::Internal),
    )
)]
async fn set_status(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(change): JsonBody<StatusChange>,
) -> Result<Json<Event>, ApiError> {
    let id = id(&raw, "event")?;
    let event = s.db(move |db| db.set_status(by, id, change.status)).await?;
    s.pages.forget(id);
    Ok(Json(event))
}

/// Adds a ticket category to an event of the organizer's.
#[utoipa::path(
    post,
    path = "/events/{id}/categories",
    tag = "catalogue",
    params(("id" = u64, Path, description = "The event's id")),
    request_body = NewCategory,
    security(("organizer" = [])),
    responses(
        (status = 201, description = "The category, as stored", body = Category),
        (status = 400, description = "The body is not a category", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "The organizer has no such event", body = ErrorBody),
        (status = 413, response = super::error::TooLarge),
        (status = 415, response = super::error::NotJson),
        (status = 422, description = "The category is refused (its places, prices or sale window): the message says why", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn add_category(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(category): JsonBody<NewCategory>,
) -> Result<(StatusCode, Json<Category>), ApiError> {
    let id = id(&raw, "event")?;
    let category = s.db(move |db| db.add_category(by, id, &category)).await?;
    s.pages.forget(id);
    Ok((StatusCode::CREATED, Json(category)))
}

/// An event with what a buyer needs to choose: its venue and categories.
#[derive(Serialize, ToSchema)]
struct EventPage {
    #[serde(flatten)]
    event: Event,
    venue: Option<Venue>,
    categories: Vec<Category>,
}

/// An event with its venue and categories; a draft only to its organizer.
#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "catalogue",
    params(("id" = u64, Path, description = "The event's id")),
    security((), ("organizer" = [])),
    responses(
        (status = 200, description = "The event, its venue and its categories", body = EventPage),
        (status = 401, response = super::error::Unauthorized),
        (status = 404, description = "No such event (or a draft of another organizer's)", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn event(
    State(s): State<AppState>,
    MaybeOrganizer(viewer): MaybeOrganizer,
    Path(raw): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let id = id(&raw, "event")?;
    // What everyone sees is drawn once a second at most: a venue's plan
    // makes the page large. An organizer sees it fresh.
    let cached = viewer.is_none().then(|| s.pages.get(id)).flatten();
    let body = match cached {
        Some(body) => body,
        None => {
            let page = s
                .db(move |db| {
                    let event = db.event(id, viewer)?;
                    let venue = db.venue(event.info.venue_id).ok();
                    let categories = db.categories(id)?;
                    Ok(EventPage {
                        event,
                        venue,
                        categories,
                    })
                })
                .await?;
            let body = axum::body::Bytes::from(
                serde_json::to_vec(&page).map_err(|e| ApiError::internal(e.to_string()))?,
            );
            if viewer.is_none() && page.event.status != EventStatus::Draft {
                s.pages.put(id, body.clone());
            }
            body
        }
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// `GET /events`'s query: every filter optional.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsParams {
    /// One genre only.
    #[param(value_type = Option<Genre>)]
    genre: Option<String>,
    /// Events in this city (any case).
    city: Option<String>,
    /// `YYYY-MM-DD` (UTC): events starting that day or later.
    #[param(format = Date)]
    start_date: Option<String>,
    /// `YYYY-MM-DD` (UTC): events starting that day or earlier.
    #[param(format = Date)]
    end_date: Option<String>,
    /// Minor units: events with a category priced at least this.
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    min_price: Option<u64>,
    /// Minor units: events with a category priced at most this.
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    max_price: Option<u64>,
    /// The `next` of the page before.
    #[param(pattern = r"^[0-9]{1,19}\.[0-9]{1,19}$")]
    cursor: Option<String>,
    /// Events a page lists (1 to 200; 50 unless given).
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
struct EventList {
    events: Vec<Event>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Events by start time, filtered, a page at a time; drafts only to their
/// organizer.
#[utoipa::path(
    get,
    path = "/events",
    tag = "catalogue",
    params(EventsParams),
    security((), ("organizer" = [])),
    responses(
        (status = 200, description = "A page of events; `next` leads to the following page", body = EventList),
        (status = 400, description = "A filter is not one this API takes: the message says which", body = ErrorBody),
        (status = 401, response = super::error::Unauthorized),
        (status = 500, response = super::error::Internal),
    )
)]
async fn events(
    State(s): State<AppState>,
    MaybeOrganizer(viewer): MaybeOrganizer,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let genre = p
        .genre
        .map(|g| {
            Genre::parse(&g).ok_or_else(|| {
                let known: Vec<&str> = Genre::ALL.iter().map(|g| g.as_str()).collect();
                ApiError::bad_request(format!("genre {g:?} is none of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let start_from = p.start_date.as_deref().map(day).transpose()?;
    let start_until = p
        .end_date
        .as_deref()
        .map(|d| day(d).map(|t| t + 86_400))
        .transpose()?;
    let after = p
        .cursor
        .as_deref()
        .map(|c| {
            c.split_once('.')
                .and_then(|(a, b)| Some((super::digits(a)?, super::digits(b)?)))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("cursor {c:?} is not one this API gave"))
                })
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(PAGE).clamp(1, crate::storage::MAX_LIST);
    let query = EventQuery {
        genre,
        city: p.city,
        start_from,
        start_until,
        min_price: p.min_price,
        max_price: p.max_price,
        after,
        limit,
        viewer,
    };
    let events = s.db(move |db| db.events(&query)).await?;
    let next = (events.len() == limit)
        .then(|| {
            events
                .last()
                .map(|e| format!("{}.{}", e.info.starts_at, e.id))
        })
        .flatten();
    Ok(Json(EventList { events, next }))
}

/// Unix seconds at the start of a `YYYY-MM-DD` day, UTC (RFC 3339's
/// full-date, as the document's `format: date` has it); a day before 1970
/// is read as 1970's first.
fn day(s: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request(format!("{s:?} is not a date as YYYY-MM-DD"));
    let b = s.as_bytes();
    let digits_at = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (Some(y), Some(m), Some(d)) = (digits_at(0..4), digits_at(5..7), digits_at(8..10)) else {
        return Err(bad());
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !(1..=12).contains(&m)
        || !(1..=days_in_month).contains(&d)
    {
        return Err(bad());
    } // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(u64::try_from(days * 86_400).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_read_as_utc_midnights() {
        assert_eq!(super::day("1970-01-01").unwrap(), 0);
        assert_eq!(super::day("2000-03-01").unwrap(), 951_868_800);
        assert_eq!(super::day("2030-03-17").unwrap(), 1_899_936_000);
        assert_eq!(super::day("1969-12-31").unwrap(), 0);
        assert_eq!(super::day("0001-01-01").unwrap(), 0);
        assert_eq!(super::day("9999-12-31").unwrap(), 253_402_214_400);
        for bad in [
            "2030-3-17",
            "2030-13-01",
            "2030-02-29",
            "17-03-2030",
            "",
            "2030-03-17T00",
            "+030-03-17",
            "2030/03/17",
            "x",
        ] {
            assert!(super::day(bad).is_err(), "{bad}");
        }
    }
}
