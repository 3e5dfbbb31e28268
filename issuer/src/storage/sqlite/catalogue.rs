//! The catalogue on SQLite: organizers, venues, events, categories, search.

use rusqlite::{Connection, OptionalExtension, params};

use super::{EVENT_COLUMNS, MAX_LIST, SqliteStorage, event_from, key, own_venue, venue_of};
use crate::domain::catalogue::{
    Category, Event, EventStatus, NewCategory, NewEvent, NewVenue, Places,
};
use crate::domain::venue::SeatingPlan;
use crate::storage::rows::{CATEGORY_COLUMNS, category_from};
use crate::storage::{Catalogue, EventQuery, OrganizerId, Result, StorageError, Venue};

impl Catalogue for SqliteStorage {
    fn add_organizer(&self, name: &str, token_hash: &[u8; 32], now: u64) -> Result<OrganizerId> {
        crate::domain::text("the organizer's name", name, 200)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached("INSERT INTO organizers (name, created_at) VALUES (?1, ?2)")?
            .execute(params![name, key(now)])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO organizer_tokens (token_hash, organizer_id, created_at) VALUES (?1, ?2, ?3)")?.execute(
            params![&token_hash[..], id, key(now)],
        )?;
        tx.commit()?;
        Ok(id as u64)
    }

    fn has_organizers(&self) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM organizers LIMIT 1")?
            .exists([])?)
    }

    fn organizer_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<OrganizerId>> {
        Ok(self
            .read()
            .prepare_cached("SELECT organizer_id FROM organizer_tokens WHERE token_hash = ?1 AND revoked_at IS NULL")?.query_row(
                [&token_hash[..]],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|id| id as u64))
    }

    fn add_venue(&self, by: OrganizerId, venue: &NewVenue) -> Result<Venue> {
        venue.check()?;
        let conn = self.conn();
        conn.prepare_cached("INSERT INTO venues (organizer_id, name, city, address, plan) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(
            params![
                key(by),
                venue.name,
                venue.city,
                venue.address,
                serde_json::to_string(&venue.plan)?
            ],
        )?;
        Ok(Venue {
            id: conn.last_insert_rowid() as u64,
            organizer_id: by,
            info: venue.clone(),
        })
    }

    fn venue(&self, id: u64) -> Result<Venue> {
        venue_of(&self.read(), id)?.ok_or_else(|| StorageError::NotFound(format!("venue {id}")))
    }

    fn venue_name(&self, id: u64) -> Result<(String, String)> {
        self.read()
            .prepare_cached("SELECT name, city FROM venues WHERE id = ?1")?
            .query_row([key(id)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| StorageError::NotFound(format!("venue {id}")))
    }

    fn venue_shown(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Venue> {
        let conn = self.read();
        let not_found = || StorageError::NotFound(format!("venue {id}"));
        let venue = venue_of(&conn, id)?.ok_or_else(not_found)?;
        if viewer == Some(venue.organizer_id) {
            return Ok(venue);
        }
        let shown = conn
            .prepare_cached(
                "SELECT 1 FROM events WHERE venue_id = ?1 AND status != 'draft' LIMIT 1",
            )?
            .exists([key(id)])?;
        if shown { Ok(venue) } else { Err(not_found()) }
    }

    fn add_event(&self, by: OrganizerId, event: &NewEvent) -> Result<Event> {
        event.check()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let venue = own_venue(&tx, by, event.venue_id)?;
        tx.prepare_cached("INSERT INTO events (name, description, performers, genre, venue_id, starts_at, ends_at,
                                 status, city, organizer_id, buyers_cancel_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'draft', ?8, ?9, ?10)")?.execute(
            params![
                event.name,
                event.description,
                serde_json::to_string(&event.performers)?,
                event.genre.as_str(),
                key(event.venue_id),
                key(event.starts_at),
                key(event.ends_at),
                venue.info.city,
                key(by),
                event.buyers_cancel_until.map(key)
            ],
        )?;
        let id = tx.last_insert_rowid() as u64;
        index_event(&tx, id)?;
        let stored = Self::own_event(&tx, by, id)?;
        tx.commit()?;
        Ok(stored)
    }

    fn update_event(&self, by: OrganizerId, id: u64, event: &NewEvent) -> Result<Event> {
        event.check()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = Self::own_event(&tx, by, id)?;
        // A new venue is fine until places are on sale at the old one.
        if old.info.venue_id != event.venue_id
            && tx
                .prepare("SELECT 1 FROM categories WHERE event_id = ?1")?
                .exists([key(id)])?
        {
            return Err(StorageError::Conflict(
                "the event has ticket categories at its venue: its venue cannot change".into(),
            ));
        }
        let venue = own_venue(&tx, by, event.venue_id)?;
        tx.prepare_cached(
            "UPDATE events SET name = ?2, description = ?3, performers = ?4, genre = ?5,
                venue_id = ?6, starts_at = ?7, ends_at = ?8, city = ?9, buyers_cancel_until = ?10
             WHERE id = ?1",
        )?
        .execute(params![
            key(id),
            event.name,
            event.description,
            serde_json::to_string(&event.performers)?,
            event.genre.as_str(),
            key(event.venue_id),
            key(event.starts_at),
            key(event.ends_at),
            venue.info.city,
            event.buyers_cancel_until.map(key)
        ])?;
        index_event(&tx, id)?;
        let stored = Self::own_event(&tx, by, id)?;
        tx.commit()?;
        Ok(stored)
    }

    fn set_status(&self, by: OrganizerId, id: u64, status: EventStatus) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = Self::own_event(&tx, by, id)?;
        if !old.status.may_become(status) {
            return Err(StorageError::Conflict(format!(
                "the event is {}: it cannot become {}",
                old.status.as_str(),
                status.as_str()
            )));
        }
        tx.prepare_cached("UPDATE events SET status = ?2 WHERE id = ?1")?
            .execute(params![key(id), status.as_str()])?;
        let stored = Self::own_event(&tx, by, id)?;
        tx.commit()?;
        Ok(stored)
    }

    fn event(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Event> {
        match Self::event_row(&self.read(), id)? {
            Some((event, owner))
                if event.status != EventStatus::Draft || (owner.is_some() && owner == viewer) =>
            {
                Ok(event)
            }
            _ => Err(StorageError::NotFound(format!("event {id}"))),
        }
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE venue_id IS NOT NULL");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        match q.viewer {
            Some(o) => arg(
                &mut sql,
                " AND (status <> 'draft' OR organizer_id = ?)",
                key(o).into(),
            ),
            None => sql.push_str(" AND status <> 'draft'"),
        }
        if let Some(g) = q.genre {
            arg(&mut sql, " AND genre = ?", g.as_str().to_owned().into());
        }
        if let Some(city) = &q.city {
            arg(
                &mut sql,
                " AND city = ? COLLATE NOCASE",
                city.clone().into(),
            );
        }
        if let Some(t) = q.start_from {
            arg(&mut sql, " AND starts_at >= ?", key(t).into());
        }
        if let Some(t) = q.start_until {
            arg(&mut sql, " AND starts_at < ?", key(t).into());
        }
        if q.min_price.is_some() || q.max_price.is_some() {
            sql.push_str(" AND EXISTS (SELECT 1 FROM categories c WHERE c.event_id = e.id");
            if let Some(p) = q.min_price {
                arg(&mut sql, " AND c.price >= ?", key(p).into());
            }
            if let Some(p) = q.max_price {
                arg(&mut sql, " AND c.price <= ?", key(p).into());
            }
            sql.push(')');
        }
        if let Some((start, id)) = q.after {
            arg(&mut sql, " AND (starts_at, id) > (?", key(start).into());
            arg(&mut sql, ", ?)", key(id).into());
        }
        sql.push_str(" ORDER BY starts_at, id LIMIT ");
        sql.push_str(&q.limit.clamp(1, MAX_LIST).to_string());
        let conn = self.read();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| Ok(event_from(r)))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??.0);
        }
        Ok(out)
    }

    fn search(&self, query: &str, limit: usize, viewer: Option<OrganizerId>) -> Result<Vec<Event>> {
        let terms = crate::domain::catalogue::search_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // Each word a quoted prefix: nothing typed is read as FTS5 syntax.
        let expr: Vec<String> = terms.iter().map(|t| format!("\"{t}\"*")).collect();
        let columns: Vec<String> = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect();
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM events_fts JOIN events e ON e.id = events_fts.rowid
             WHERE events_fts MATCH ?1 AND (e.status <> 'draft' OR e.organizer_id = ?2)
             ORDER BY bm25(events_fts, 10.0, 8.0, 4.0, 4.0, 1.0), e.starts_at, e.id
             LIMIT ?3",
            columns.join(", ")
        ))?;
        let rows = stmt.query_map(
            params![
                expr.join(" "),
                viewer.map(key),
                limit.clamp(1, MAX_LIST) as i64
            ],
            |r| Ok(event_from(r)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??.0);
        }
        Ok(out)
    }

    fn add_category(
        &self,
        by: OrganizerId,
        event_id: u64,
        category: &NewCategory,
    ) -> Result<Category> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let event = Self::own_event(&tx, by, event_id)?;
        let venue = venue_of(&tx, event.info.venue_id)?
            .ok_or_else(|| StorageError::NotFound(format!("venue {}", event.info.venue_id)))?;
        let others: Vec<NewCategory> = categories_of(&tx, event_id)?
            .into_iter()
            .map(|c| c.info)
            .collect();
        category.check(&venue.info.plan, &others)?;
        tx.prepare_cached(
            "INSERT INTO categories (event_id, name, price, currency, pricing, places, sale_starts,
                                     sale_ends, per_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            key(event_id),
            category.name,
            key(category.pricing.price),
            category.pricing.currency,
            serde_json::to_string(&category.pricing)?,
            serde_json::to_string(&category.places)?,
            key(category.sale_starts),
            key(category.sale_ends),
            category.per_order
        ])?;
        let id = tx.last_insert_rowid() as u64;
        // Its number within the event, as tickets carry it.
        tx.prepare_cached(
            "UPDATE categories SET number = (SELECT count(*) FROM categories WHERE event_id = ?1)
             WHERE id = ?2",
        )?
        .execute(params![key(event_id), key(id)])?;
        // Its places, one row each, in the plan's order.
        {
            let mut place = tx.prepare_cached(
                "INSERT INTO places (event_id, category_id, n, seat_key) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut n: i64 = 0;
            let mut add = |seat: Option<String>| {
                n += 1;
                place.execute(params![key(event_id), key(id), n, seat])
            };
            match &category.places {
                Places::Seats { sections } => {
                    let plan = &venue.info.plan;
                    for section in plan.sections.iter().filter(|s| sections.contains(&s.id)) {
                        for row in &section.rows {
                            for seat in &row.seats {
                                add(Some(SeatingPlan::seat_key(section, row, seat)))?;
                            }
                        }
                    }
                }
                Places::Quota { places, .. } => {
                    for _ in 0..*places {
                        add(None)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(Category {
            id,
            event_id,
            info: category.clone(),
        })
    }

    fn categories(&self, event_id: u64) -> Result<Vec<Category>> {
        categories_of(&self.read(), event_id)
    }

    fn keyset(&self, by: OrganizerId, events: &[u64], now: u64) -> Result<String> {
        for &event in events {
            Self::own_event(&self.read(), by, event)?;
        }
        crate::storage::keyset_in(&self.dir, events, now)
    }
}

/// Writes event `id`'s words into the search index, as they are now.
fn index_event(conn: &Connection, id: u64) -> Result<()> {
    conn.prepare_cached("DELETE FROM events_fts WHERE rowid = ?1")?
        .execute([key(id)])?;
    conn.prepare_cached(
        "INSERT INTO events_fts (rowid, name, performers, venue, city, description)
         SELECT e.id, e.name, e.performers, v.name, e.city, e.description
         FROM events e JOIN venues v ON v.id = e.venue_id WHERE e.id = ?1",
    )?
    .execute([key(id)])?;
    Ok(())
}

pub(super) fn categories_of(conn: &Connection, event_id: u64) -> Result<Vec<Category>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CATEGORY_COLUMNS} FROM categories WHERE event_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([key(event_id)], |r| Ok(category_from(r)))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}
