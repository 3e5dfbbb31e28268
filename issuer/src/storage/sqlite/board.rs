//! Which seats of an event are free, kept in memory and brought up to
//! date from the live feed's changes, so that a best-seats hold need not
//! read every free seat of its category (5,000 rows) to choose two.
//!
//! The board only chooses: the places are still taken by the conditional
//! updates of [`super::inventory`], which the database decides. It is
//! read and changed only by the writer, inside its transaction, after the
//! expired holds are announced: then the feed's changes up to the event's
//! last number are exactly the places' state. Every change that moves a
//! place is in the feed (the contract suite replays the feed against the
//! seats), so replaying the changes that came after the board's number
//! brings it to now. A batch whose commit fails takes changes the board
//! may have read with it: then every board is dropped ([`Boards::clear`]).

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::changes::last_seq;
use super::key;
use crate::storage::{ChangeKind, PlaceState, Result};

/// Most events kept on boards at once: beyond, one is dropped.
const MAX_BOARDS: usize = 64;

/// Most changes replayed at once: a board further behind is built again.
const MAX_REPLAY: i64 = 5_000;

#[derive(Default)]
pub(super) struct Boards {
    events: HashMap<u64, Board>,
    /// What the change under way replayed, to be undone with it: the
    /// changes it read may be its own, which its savepoint takes back.
    undo: Vec<Undo>,
}

enum Undo {
    /// A seat's state before.
    Seat {
        event: u64,
        category: u64,
        i: usize,
        was: bool,
    },
    /// A board's number before.
    Seq { event: u64, was: u64 },
    /// A board built.
    Built { event: u64 },
}

/// One event's seats.
struct Board {
    /// The last change the board includes.
    seq: u64,
    /// Where each seat is: (its category, its place number less one).
    at: HashMap<String, (u64, usize)>,
    /// Each seated category's seats, free or not, by place number less one.
    free: HashMap<u64, Vec<bool>>,
}

impl Boards {
    /// Forgets every board: the next look builds them again.
    pub fn clear(&mut self) {
        self.events.clear();
        self.undo.clear();
    }

    /// Forgets one event's board.
    pub fn forget(&mut self, event_id: u64) {
        self.events.remove(&event_id);
        self.undo.retain(|u| match u {
            Undo::Seat { event, .. } | Undo::Seq { event, .. } | Undo::Built { event } => {
                *event != event_id
            }
        });
    }

    /// A change begins: what it replays can be undone with it.
    pub fn begin(&mut self) {
        self.undo.clear();
    }

    /// The change under way was undone: so is what it replayed.
    pub fn undo(&mut self) {
        while let Some(step) = self.undo.pop() {
            match step {
                Undo::Seat {
                    event,
                    category,
                    i,
                    was,
                } => {
                    if let Some(f) = self
                        .events
                        .get_mut(&event)
                        .and_then(|b| b.free.get_mut(&category))
                        .and_then(|f| f.get_mut(i))
                    {
                        *f = was;
                    }
                }
                Undo::Seq { event, was } => {
                    if let Some(b) = self.events.get_mut(&event) {
                        b.seq = was;
                    }
                }
                Undo::Built { event } => {
                    self.events.remove(&event);
                }
            }
        }
    }

    /// The free seats of seated category `category` of `event_id` now,
    /// by place number less one. Call it in the writer's transaction, with
    /// the event's expired holds announced.
    pub fn free(
        &mut self,
        conn: &Connection,
        event_id: u64,
        category: u64,
        now_ms: u64,
    ) -> Result<&[bool]> {
        let current = match self.events.get_mut(&event_id) {
            // A category added since is not on the board: built again.
            Some(board) if board.free.contains_key(&category) => {
                board.catch_up(conn, event_id, &mut self.undo)?
            }
            _ => false,
        };
        if !current {
            if self.events.len() >= MAX_BOARDS && !self.events.contains_key(&event_id) {
                // One other event's board goes (built again if asked for).
                if let Some(&other) = self.events.keys().next() {
                    self.forget(other);
                }
            }
            // What the change under way replayed is in the board built.
            self.forget(event_id);
            self.events
                .insert(event_id, Board::build(conn, event_id, now_ms)?);
            self.undo.push(Undo::Built { event: event_id });
        }
        Ok(self.events[&event_id]
            .free
            .get(&category)
            .map_or(&[][..], Vec::as_slice))
    }
}

impl Board {
    /// The board of `event_id` as its places stand.
    fn build(conn: &Connection, event_id: u64, now_ms: u64) -> Result<Board> {
        let seq = last_seq(conn, event_id)?;
        let mut board = Board {
            seq,
            at: HashMap::new(),
            free: HashMap::new(),
        };
        let mut stmt = conn.prepare_cached(
            "SELECT category_id, n, seat_key, order_id IS NULL AND held_until <= ?2
             FROM places WHERE event_id = ?1 AND seat_key IS NOT NULL",
        )?;
        let mut rows = stmt.query(params![key(event_id), key(now_ms)])?;
        while let Some(r) = rows.next()? {
            let (category, n, seat, free): (i64, i64, String, bool) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let Some(i) = usize::try_from(n - 1).ok() else {
                continue;
            };
            let seats = board.free.entry(category as u64).or_default();
            if seats.len() <= i {
                seats.resize(i + 1, false);
            }
            seats[i] = free;
            board.at.insert(seat, (category as u64, i));
        }
        Ok(board)
    }

    /// Replays the changes after the board's: false if the board cannot
    /// be brought up to date so (changes cleared, too many, or unknown
    /// seats), and must be built again.
    fn catch_up(&mut self, conn: &Connection, event_id: u64, undo: &mut Vec<Undo>) -> Result<bool> {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, seats FROM place_changes
             WHERE event_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![key(event_id), key(self.seq), MAX_REPLAY])?;
        let mut replayed = 0;
        while let Some(r) = rows.next()? {
            replayed += 1;
            let (seq, kind, seats): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if seq as u64 != self.seq + 1 {
                return Ok(false);
            }
            let Some(kind) = ChangeKind::parse(&kind) else {
                return Ok(false);
            };
            let free = kind.moves().1 == PlaceState::Available;
            let seats: Vec<String> = serde_json::from_str(&seats)?;
            for seat in seats {
                let Some(&(category, i)) = self.at.get(&seat) else {
                    return Ok(false);
                };
                match self.free.get_mut(&category).and_then(|f| f.get_mut(i)) {
                    Some(f) => {
                        undo.push(Undo::Seat {
                            event: event_id,
                            category,
                            i,
                            was: *f,
                        });
                        *f = free;
                    }
                    None => return Ok(false),
                }
            }
            undo.push(Undo::Seq {
                event: event_id,
                was: self.seq,
            });
            self.seq = seq as u64;
        }
        // Fewer than asked: none left behind. As many: there may be more.
        Ok(replayed < MAX_REPLAY && last_seq(conn, event_id)? == self.seq)
    }
}
