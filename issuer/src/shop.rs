//! What a new shop opens with: the fixture venues and a dozen events on
//! sale, owned by a demo organizer, so a new user meets a working shop.

use serde::Deserialize;

use crate::domain::catalogue::{EventStatus, Genre, NewCategory, NewEvent, NewVenue};
use crate::storage::{OrganizerId, Storage, StorageError};

#[derive(Deserialize)]
struct FixtureEvent {
    /// Index into the fixture venues.
    venue: usize,
    name: String,
    genre: Genre,
    starts_at: u64,
    ends_at: u64,
    performers: Vec<String>,
    description: String,
    categories: Vec<NewCategory>,
}

/// Fills an empty shop with the fixture venues and events, on sale, owned
/// by a new organizer whose API token (hash `token_hash`) the caller keeps.
/// Returns the organizer and how many events were added.
pub fn open_demo_shop(
    db: &dyn Storage,
    token_hash: &[u8; 32],
    now: u64,
) -> Result<(OrganizerId, usize), StorageError> {
    let bad = |e: serde_json::Error| StorageError::Invalid(format!("the fixture shop: {e}"));
    let venues: Vec<NewVenue> = serde_json::from_str(fixtures::SHOP_VENUES).map_err(bad)?;
    let events: Vec<FixtureEvent> = serde_json::from_str(fixtures::SHOP_EVENTS).map_err(bad)?;
    let by = db.add_organizer("Demo promoter", token_hash, now)?;
    let venue_ids = venues
        .iter()
        .map(|v| db.add_venue(by, v).map(|v| v.id))
        .collect::<Result<Vec<_>, _>>()?;
    for e in &events {
        let venue_id = *venue_ids
            .get(e.venue)
            .ok_or_else(|| StorageError::Invalid(format!("{}: no venue {}", e.name, e.venue)))?;
        let event = db.add_event(
            by,
            &NewEvent {
                name: e.name.clone(),
                description: e.description.clone(),
                performers: e.performers.clone(),
                genre: e.genre,
                venue_id,
                starts_at: e.starts_at,
                ends_at: e.ends_at,
                // Buyers of the demo shop may cancel until a day before.
                buyers_cancel_until: Some(e.starts_at.saturating_sub(86_400)),
            },
        )?;
        for c in &e.categories {
            db.add_category(by, event.id, c)?;
        }
        db.set_status(by, event.id, EventStatus::OnSale)?;
    }
    Ok((by, events.len()))
}
