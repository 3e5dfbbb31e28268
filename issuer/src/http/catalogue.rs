//! Venues, events and ticket categories: organizers make them, everyone
//! browses them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::{MaybeOrganizer, Organizer};
use super::body::{JsonBody, MAX_VENUE_BODY};
use super::{ApiError, AppState};
use crate::domain::catalogue::{
    Category, Event, EventStatus, Genre, NewCategory, NewEvent, NewVenue,
};
use crate::storage::{EventQuery, Venue};

/// Events a page lists, unless asked for fewer.
pub const PAGE: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/venues", post(add_venue))
        .route("/venues/{id}", get(venue))
        .route("/events", get(events).post(add_event))
        .route("/events/{id}", get(event).put(update_event))
        .route("/events/{id}/status", post(set_status))
        .route("/events/{id}/categories", post(add_category))
        .route("/search", get(search))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    query: String,
    limit: Option<usize>,
}

/// Events matching every word typed, each as a prefix, best first.
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
fn id(raw: &str, what: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {raw:?} not found")))
}

async fn add_venue(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    JsonBody(venue): JsonBody<NewVenue, MAX_VENUE_BODY>,
) -> Result<(StatusCode, Json<Venue>), ApiError> {
    let venue = s.db(move |db| db.add_venue(by, &venue)).await?;
    Ok((StatusCode::CREATED, Json(venue)))
}

async fn venue(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Venue>, ApiError> {
    let id = id(&raw, "venue")?;
    Ok(Json(s.db(move |db| db.venue(id)).await?))
}

async fn add_event(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    JsonBody(event): JsonBody<NewEvent>,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    let event = s.db(move |db| db.add_event(by, &event)).await?;
    Ok((StatusCode::CREATED, Json(event)))
}

async fn update_event(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(event): JsonBody<NewEvent>,
) -> Result<Json<Event>, ApiError> {
    let id = id(&raw, "event")?;
    Ok(Json(s.db(move |db| db.update_event(by, id, &event)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusChange {
    status: EventStatus,
}

async fn set_status(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(change): JsonBody<StatusChange>,
) -> Result<Json<Event>, ApiError> {
    let id = id(&raw, "event")?;
    Ok(Json(
        s.db(move |db| db.set_status(by, id, change.status)).await?,
    ))
}

async fn add_category(
    State(s): State<AppState>,
    Organizer(by): Organizer,
    Path(raw): Path<String>,
    JsonBody(category): JsonBody<NewCategory>,
) -> Result<(StatusCode, Json<Category>), ApiError> {
    let id = id(&raw, "event")?;
    let category = s.db(move |db| db.add_category(by, id, &category)).await?;
    Ok((StatusCode::CREATED, Json(category)))
}

/// An event with what a buyer needs to choose: its venue and categories.
#[derive(Serialize)]
struct EventPage {
    #[serde(flatten)]
    event: Event,
    venue: Option<Venue>,
    categories: Vec<Category>,
}

async fn event(
    State(s): State<AppState>,
    MaybeOrganizer(viewer): MaybeOrganizer,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = id(&raw, "event")?;
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
    serde_json::to_value(page)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /events`'s query: every filter optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    genre: Option<String>,
    city: Option<String>,
    /// `YYYY-MM-DD` (UTC): events starting that day or later.
    start_date: Option<String>,
    /// `YYYY-MM-DD` (UTC): events starting that day or earlier.
    end_date: Option<String>,
    /// Minor units: events with a category priced within.
    min_price: Option<u64>,
    max_price: Option<u64>,
    /// The `next` of the page before.
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventList {
    events: Vec<Event>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

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
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("cursor {c:?} is not one this API gave"))
                })
        })
        .transpose()?;
    let limit = p
        .limit
        .unwrap_or(PAGE)
        .clamp(1, crate::storage::sqlite::MAX_LIST);
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

/// Unix seconds at the start of a `YYYY-MM-DD` day, UTC.
fn day(s: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request(format!("{s:?} is not a date as YYYY-MM-DD"));
    let mut parts = s.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (Some(Some(y)), Some(Some(m)), Some(Some(d))) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if s.len() != 10
        || !(1970..=2105).contains(&y)
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
    u64::try_from(days * 86_400).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_read_as_utc_midnights() {
        assert_eq!(super::day("1970-01-01").unwrap(), 0);
        assert_eq!(super::day("2000-03-01").unwrap(), 951_868_800);
        assert_eq!(super::day("2030-03-17").unwrap(), 1_899_936_000);
        for bad in [
            "2030-3-17",
            "2030-13-01",
            "17-03-2030",
            "",
            "2030-03-17T00",
            "x",
        ] {
            assert!(super::day(bad).is_err(), "{bad}");
        }
    }
}
