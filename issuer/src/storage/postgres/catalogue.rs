//! The catalogue on PostgreSQL: organizers, venues, events, categories,
//! search (a weighted `tsvector` a event, matched by prefix).

use tokio_postgres::types::ToSql;

use super::{Conn, PgStorage, Shifted, key};
use crate::domain::catalogue::{
    Category, Event, EventStatus, NewCategory, NewEvent, NewVenue, Places,
};
use crate::domain::venue::SeatingPlan;
use crate::storage::rows::{
    CATEGORY_COLUMNS, EVENT_COLUMNS, VENUE_COLUMNS, category_from, event_from, venue_from,
};
use crate::storage::{
    Catalogue, EventQuery, MAX_LIST, OrganizerId, Result, StorageError, Venue, wait,
};

/// The event with its organizer, whoever may see it.
pub(super) async fn event_row(
    c: &mut Conn,
    id: u64,
) -> Result<Option<(Event, Option<OrganizerId>)>> {
    c.query_opt(
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"),
        &[&key(id)],
    )
    .await?
    .map(|r| event_from(&r))
    .transpose()
}

/// The event with its categories in order, read at once (whoever may
/// see it).
pub(super) async fn event_and_categories(
    c: &mut Conn,
    id: u64,
) -> Result<Option<(Event, Vec<Category>)>> {
    let rows = c.query(&EVENT_AND_CATEGORIES, &[&key(id)]).await?;
    event_and_categories_from(&rows)
}

/// The statement reading an event (`$1`) with its categories.
pub(super) static EVENT_AND_CATEGORIES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "SELECT e.*, c.* FROM (SELECT {EVENT_COLUMNS} FROM events WHERE id = $1) e
             LEFT JOIN (SELECT {CATEGORY_COLUMNS} FROM categories WHERE event_id = $1) c
             ON true ORDER BY c.id"
        )
    });

/// The event with its categories, from the rows of
/// [`EVENT_AND_CATEGORIES`].
pub(super) fn event_and_categories_from(
    rows: &[tokio_postgres::Row],
) -> Result<Option<(Event, Vec<Category>)>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let event = event_from(first)?.0;
    let width = EVENT_COLUMNS.split(", ").count();
    let categories = rows
        .iter()
        .filter(|r| r.try_get::<_, Option<i64>>(width).ok().flatten().is_some())
        .map(|r| category_from(&Shifted(r, width)))
        .collect::<Result<_>>()?;
    Ok(Some((event, categories)))
}

/// An event of organizer `by`'s, or not found.
pub(super) async fn own_event(c: &mut Conn, by: OrganizerId, id: u64) -> Result<Event> {
    match event_row(c, id).await? {
        Some((event, Some(owner))) if owner == by => Ok(event),
        _ => Err(StorageError::NotFound(format!("event {id}"))),
    }
}

pub(super) async fn venue_of(c: &mut Conn, id: u64) -> Result<Option<Venue>> {
    c.query_opt(
        &format!("SELECT {VENUE_COLUMNS} FROM venues WHERE id = $1"),
        &[&key(id)],
    )
    .await?
    .map(|r| venue_from(&r))
    .transpose()
}

/// A venue of organizer `by`'s, or not found.
async fn own_venue(c: &mut Conn, by: OrganizerId, id: u64) -> Result<Venue> {
    match venue_of(c, id).await? {
        Some(v) if v.organizer_id == by => Ok(v),
        _ => Err(StorageError::NotFound(format!("venue {id}"))),
    }
}

pub(super) async fn categories_of(c: &mut Conn, event_id: u64) -> Result<Vec<Category>> {
    c.query(
        &format!("SELECT {CATEGORY_COLUMNS} FROM categories WHERE event_id = $1 ORDER BY id"),
        &[&key(event_id)],
    )
    .await?
    .iter()
    .map(category_from)
    .collect()
}

/// Writes event `id`'s words into its search vector, as they are now:
/// name first, then performers, venue and city, then description.
async fn index_event(c: &mut Conn, id: u64) -> Result<()> {
    c.execute(&format!("{INDEX_EVENTS} AND e.id = $1"), &[&key(id)])
        .await?;
    Ok(())
}

/// Sets events' words for search, weighted: name, performers, venue and
/// city, description (all events, or those a further condition names).
pub(super) const INDEX_EVENTS: &str = "UPDATE events e SET search =
         setweight(to_tsvector('simple', unaccent(e.name)), 'A')
      || setweight(to_tsvector('simple', unaccent(e.performers)), 'B')
      || setweight(to_tsvector('simple', unaccent(v.name || ' ' || e.city)), 'C')
      || setweight(to_tsvector('simple', unaccent(e.description)), 'D')
     FROM venues v WHERE v.id = e.venue_id";

impl PgStorage {
    async fn add_event_(&self, by: OrganizerId, event: &NewEvent) -> Result<Event> {
        event.check()?;
        self.transaction(async |c| {
            let venue = own_venue(c, by, event.venue_id).await?;
            let id: i64 = c
                .query_one(
                    "INSERT INTO events (name, description, performers, genre, venue_id, starts_at,
                         ends_at, status, city, organizer_id, buyers_cancel_until)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'draft', $8, $9, $10) RETURNING id",
                    &[
                        &event.name,
                        &event.description,
                        &serde_json::to_string(&event.performers)?,
                        &event.genre.as_str(),
                        &key(event.venue_id),
                        &key(event.starts_at),
                        &key(event.ends_at),
                        &venue.info.city,
                        &key(by),
                        &event.buyers_cancel_until.map(key),
                    ],
                )
                .await?
                .get(0);
            index_event(c, id as u64).await?;
            own_event(c, by, id as u64).await
        })
        .await
    }

    async fn update_event_(&self, by: OrganizerId, id: u64, event: &NewEvent) -> Result<Event> {
        event.check()?;
        self.transaction(async |c| {
            // The event's row is locked: changes to one event take turns.
            c.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", &[&key(id)])
                .await?;
            let old = own_event(c, by, id).await?;
            // A new venue is fine until places are on sale at the old one.
            if old.info.venue_id != event.venue_id
                && c.query_opt(
                    "SELECT 1 FROM categories WHERE event_id = $1 LIMIT 1",
                    &[&key(id)],
                )
                .await?
                .is_some()
            {
                return Err(StorageError::Conflict(
                    "the event has ticket categories at its venue: its venue cannot change".into(),
                ));
            }
            let venue = own_venue(c, by, event.venue_id).await?;
            c.execute(
                "UPDATE events SET name = $2, description = $3, performers = $4, genre = $5,
                    venue_id = $6, starts_at = $7, ends_at = $8, city = $9, buyers_cancel_until = $10
                 WHERE id = $1",
                &[
                    &key(id),
                    &event.name,
                    &event.description,
                    &serde_json::to_string(&event.performers)?,
                    &event.genre.as_str(),
                    &key(event.venue_id),
                    &key(event.starts_at),
                    &key(event.ends_at),
                    &venue.info.city,
                    &event.buyers_cancel_until.map(key),
                ],
            )
            .await?;
            index_event(c, id).await?;
            own_event(c, by, id).await
        })
        .await
    }

    async fn set_status_(&self, by: OrganizerId, id: u64, status: EventStatus) -> Result<Event> {
        self.transaction(async |c| {
            c.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", &[&key(id)])
                .await?;
            let old = own_event(c, by, id).await?;
            if !old.status.may_become(status) {
                return Err(StorageError::Conflict(format!(
                    "the event is {}: it cannot become {}",
                    old.status.as_str(),
                    status.as_str()
                )));
            }
            c.execute(
                "UPDATE events SET status = $2 WHERE id = $1",
                &[&key(id), &status.as_str()],
            )
            .await?;
            own_event(c, by, id).await
        })
        .await
    }

    async fn events_(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE venue_id IS NOT NULL");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        match q.viewer {
            Some(o) => arg(
                &mut sql,
                " AND (status <> 'draft' OR organizer_id = ?)",
                Box::new(key(o)),
            ),
            None => sql.push_str(" AND status <> 'draft'"),
        }
        if let Some(g) = q.genre {
            arg(&mut sql, " AND genre = ?", Box::new(g.as_str()));
        }
        if let Some(city) = &q.city {
            arg(
                &mut sql,
                " AND lower(city) = lower(?)",
                Box::new(city.clone()),
            );
        }
        if let Some(t) = q.start_from {
            arg(&mut sql, " AND starts_at >= ?", Box::new(key(t)));
        }
        if let Some(t) = q.start_until {
            arg(&mut sql, " AND starts_at < ?", Box::new(key(t)));
        }
        if q.min_price.is_some() || q.max_price.is_some() {
            sql.push_str(" AND EXISTS (SELECT 1 FROM categories c WHERE c.event_id = e.id");
            if let Some(p) = q.min_price {
                arg(&mut sql, " AND c.price >= ?", Box::new(key(p)));
            }
            if let Some(p) = q.max_price {
                arg(&mut sql, " AND c.price <= ?", Box::new(key(p)));
            }
            sql.push(')');
        }
        if let Some((start, id)) = q.after {
            arg(&mut sql, " AND (starts_at, id) > (?", Box::new(key(start)));
            arg(&mut sql, ", ?)", Box::new(key(id)));
        }
        sql.push_str(" ORDER BY starts_at, id LIMIT ");
        sql.push_str(&q.limit.clamp(1, MAX_LIST).to_string());
        let mut c = self.conn().await?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        c.client()
            .await?
            .query(&sql, &refs)
            .await?
            .iter()
            .map(|r| Ok(event_from(r)?.0))
            .collect()
    }

    async fn search_(
        &self,
        query: &str,
        limit: usize,
        viewer: Option<OrganizerId>,
    ) -> Result<Vec<Event>> {
        let terms = crate::domain::catalogue::search_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // Each word unaccented, then kept to its letters and digits (an
        // unaccented letter may be a quote: Hawaiʻi), then a quoted prefix:
        // nothing typed is read as the query syntax.
        let mut c = self.conn().await?;
        let columns: Vec<String> = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect();
        c.query(
            &format!(
                "WITH w AS (SELECT regexp_replace(unaccent(t), '[^[:alnum:]]', '', 'g') AS w
                            FROM unnest($1::text[]) AS t),
                      q AS (SELECT to_tsquery('simple', string_agg('''' || w || ''':*', ' & ')) AS q
                            FROM w WHERE w <> '')
                 SELECT {} FROM events e, q
                 WHERE q.q IS NOT NULL AND e.search @@ q.q
                   AND (e.status <> 'draft' OR e.organizer_id = $2)
                 ORDER BY ts_rank(e.search, q.q) DESC, e.starts_at, e.id
                 LIMIT $3",
                columns.join(", ")
            ),
            &[&terms, &viewer.map(key), &(limit.clamp(1, MAX_LIST) as i64)],
        )
        .await?
        .iter()
        .map(|r| Ok(event_from(r)?.0))
        .collect()
    }

    async fn add_category_(
        &self,
        by: OrganizerId,
        event_id: u64,
        category: &NewCategory,
    ) -> Result<Category> {
        self.transaction(async |c| {
            // Categories of one event are added one at a time (their
            // numbers, their sections).
            c.execute(
                "SELECT 1 FROM events WHERE id = $1 FOR UPDATE",
                &[&key(event_id)],
            )
            .await?;
            let event = own_event(c, by, event_id).await?;
            let venue = venue_of(c, event.info.venue_id)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("venue {}", event.info.venue_id)))?;
            let others: Vec<NewCategory> = categories_of(c, event_id)
                .await?
                .into_iter()
                .map(|c| c.info)
                .collect();
            category.check(&venue.info.plan, &others)?;
            let id: i64 = c
                .query_one(
                    "INSERT INTO categories (event_id, name, price, currency, pricing, places,
                                             sale_starts, sale_ends, per_order, number)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                    &[
                        &key(event_id),
                        &category.name,
                        &key(category.pricing.price),
                        &category.pricing.currency,
                        &serde_json::to_string(&category.pricing)?,
                        &serde_json::to_string(&category.places)?,
                        &key(category.sale_starts),
                        &key(category.sale_ends),
                        &i64::from(category.per_order),
                        &(others.len() as i64 + 1),
                    ],
                )
                .await?
                .get(0);
            // Its places, one row each, in the plan's order: inserted from
            // arrays, in one statement.
            let seats: Vec<Option<String>> = match &category.places {
                Places::Seats { sections } => {
                    let plan = &venue.info.plan;
                    plan.sections
                        .iter()
                        .filter(|s| sections.contains(&s.id))
                        .flat_map(|s| {
                            s.rows.iter().flat_map(move |row| {
                                row.seats
                                    .iter()
                                    .map(move |seat| Some(SeatingPlan::seat_key(s, row, seat)))
                            })
                        })
                        .collect()
                }
                Places::Quota { places, .. } => vec![None; *places as usize],
            };
            c.execute(
                "INSERT INTO places (event_id, category_id, n, seat_key)
                 SELECT $1, $2, n, seat FROM unnest($3::text[]) WITH ORDINALITY AS s(seat, n)",
                &[&key(event_id), &id, &seats],
            )
            .await?;
            Ok(Category {
                id: id as u64,
                event_id,
                info: category.clone(),
            })
        })
        .await
    }
}

impl Catalogue for PgStorage {
    fn add_organizer(&self, name: &str, token_hash: &[u8; 32], now: u64) -> Result<OrganizerId> {
        crate::domain::text("the organizer's name", name, 200)?;
        wait(self.transaction(async |c| {
            let id: i64 = c
                .query_one(
                    "INSERT INTO organizers (name, created_at) VALUES ($1, $2) RETURNING id",
                    &[&name, &key(now)],
                )
                .await?
                .get(0);
            c.execute(
                "INSERT INTO organizer_tokens (token_hash, organizer_id, created_at)
                 VALUES ($1, $2, $3)",
                &[&&token_hash[..], &id, &key(now)],
            )
            .await?;
            Ok(id as u64)
        }))
    }

    fn has_organizers(&self) -> Result<bool> {
        wait(async {
            let mut c = self.conn().await?;
            Ok(c.query_opt("SELECT 1 FROM organizers LIMIT 1", &[])
                .await?
                .is_some())
        })
    }

    fn organizer_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<OrganizerId>> {
        wait(async {
            let mut c = self.conn().await?;
            Ok(c.query_opt(
                "SELECT organizer_id FROM organizer_tokens
                 WHERE token_hash = $1 AND revoked_at IS NULL",
                &[&&token_hash[..]],
            )
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    fn add_venue(&self, by: OrganizerId, venue: &NewVenue) -> Result<Venue> {
        venue.check()?;
        wait(async {
            let mut c = self.conn().await?;
            let id: i64 = c
                .query_one(
                    "INSERT INTO venues (organizer_id, name, city, address, plan)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[
                        &key(by),
                        &venue.name,
                        &venue.city,
                        &venue.address,
                        &serde_json::to_string(&venue.plan)?,
                    ],
                )
                .await?
                .get(0);
            Ok(Venue {
                id: id as u64,
                organizer_id: by,
                info: venue.clone(),
            })
        })
    }

    fn venue(&self, id: u64) -> Result<Venue> {
        wait(async {
            let mut c = self.conn().await?;
            venue_of(&mut c, id)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("venue {id}")))
        })
    }

    fn venue_name(&self, id: u64) -> Result<(String, String)> {
        wait(async {
            let mut c = self.conn().await?;
            c.query_opt("SELECT name, city FROM venues WHERE id = $1", &[&key(id)])
                .await?
                .map(|r| (r.get(0), r.get(1)))
                .ok_or_else(|| StorageError::NotFound(format!("venue {id}")))
        })
    }

    fn venue_shown(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Venue> {
        wait(async {
            let mut c = self.conn().await?;
            let not_found = || StorageError::NotFound(format!("venue {id}"));
            let venue = venue_of(&mut c, id).await?.ok_or_else(not_found)?;
            if viewer == Some(venue.organizer_id) {
                return Ok(venue);
            }
            let shown = c
                .query_opt(
                    "SELECT 1 FROM events WHERE venue_id = $1 AND status <> 'draft' LIMIT 1",
                    &[&key(id)],
                )
                .await?
                .is_some();
            if shown { Ok(venue) } else { Err(not_found()) }
        })
    }

    fn add_event(&self, by: OrganizerId, event: &NewEvent) -> Result<Event> {
        wait(self.add_event_(by, event))
    }

    fn update_event(&self, by: OrganizerId, id: u64, event: &NewEvent) -> Result<Event> {
        wait(self.update_event_(by, id, event))
    }

    fn set_status(&self, by: OrganizerId, id: u64, status: EventStatus) -> Result<Event> {
        wait(self.set_status_(by, id, status))
    }

    fn event(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Event> {
        wait(async {
            let mut c = self.conn().await?;
            match event_row(&mut c, id).await? {
                Some((event, owner))
                    if event.status != EventStatus::Draft
                        || (owner.is_some() && owner == viewer) =>
                {
                    Ok(event)
                }
                _ => Err(StorageError::NotFound(format!("event {id}"))),
            }
        })
    }

    fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        wait(self.events_(query))
    }

    fn search(&self, query: &str, limit: usize, viewer: Option<OrganizerId>) -> Result<Vec<Event>> {
        wait(self.search_(query, limit, viewer))
    }

    fn add_category(
        &self,
        by: OrganizerId,
        event_id: u64,
        category: &NewCategory,
    ) -> Result<Category> {
        let category = wait(self.add_category_(by, event_id, category))?;
        // The planner learns the new places: with what it knew of an
        // emptier table it would sort a whole category to take two places.
        // Worth a moment of the organizer's, once; the category is made
        // whether or not it could be done (the server's own analysis
        // comes later).
        if let Err(e) = wait(async { self.conn().await?.batch("ANALYZE places").await }) {
            tracing::warn!(error = %e, "telling the planner of the new places");
        }
        Ok(category)
    }

    fn categories(&self, event_id: u64) -> Result<Vec<Category>> {
        wait(async {
            let mut c = self.conn().await?;
            categories_of(&mut c, event_id).await
        })
    }

    fn keyset(&self, by: OrganizerId, events: &[u64], now: u64) -> Result<String> {
        let facts = wait(async {
            let mut c = self.conn().await?;
            for &event in events {
                own_event(&mut c, by, event).await?;
            }
            self.event_keys(&mut c, events).await
        })?;
        crate::storage::keyset_of(self.dir(), &facts, now)
    }
}

impl PgStorage {
    /// What the keyset of `events` needs to know of them
    /// ([`crate::keys::EventKeys`]).
    pub(super) async fn event_keys(
        &self,
        c: &mut Conn,
        events: &[u64],
    ) -> Result<Vec<crate::keys::EventKeys>> {
        let mut out = Vec::with_capacity(events.len());
        for &event in events {
            let ends_at: i64 = c
                .query_opt("SELECT ends_at FROM events WHERE id = $1", &[&key(event)])
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("event {event}")))?
                .get(0);
            let signed = c
                .query(
                    "SELECT key_id, max(valid_until) FROM tickets WHERE event_id = $1
                     GROUP BY key_id",
                    &[&key(event)],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            out.push(crate::keys::EventKeys {
                event_id: event,
                ends_at,
                signed,
            });
        }
        Ok(out)
    }

    /// What the keyset of event `id` needs to know of it, whoever sells
    /// it (for the command line); `None` if the shop has no such event.
    pub fn event_keys_any(&self, id: u64) -> Result<Option<crate::keys::EventKeys>> {
        wait(async {
            let mut c = self.conn().await?;
            match self.event_keys(&mut c, &[id]).await {
                Ok(mut facts) => Ok(facts.pop()),
                Err(StorageError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}
