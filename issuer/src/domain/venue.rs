//! A venue's seating plan: sections of rows of seats, each with a label and
//! a position on the plan, and general-admission areas with a capacity.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use shared::code::MAX_SEAT_LEN;
use utoipa::ToSchema;

use super::{Invalid, invalid};

fn text(what: &str, s: &str) -> Result<(), Invalid> {
    super::text(what, s, MAX_NAME)
}

/// Most seats a plan may hold (an arena's bowl is about 20,000).
pub const MAX_SEATS: usize = 100_000;
/// Most sections, rows in a section, and general-admission areas.
pub const MAX_PARTS: usize = 1_000;
/// Longest name or label, in bytes.
pub const MAX_NAME: usize = 200;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeatingPlan {
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub sections: Vec<Section>,
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub areas: Vec<Area>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Section {
    /// Short, unique in the plan: it starts every seat's key (`A-3-14`).
    /// Letters, digits and `. _ / +` only.
    #[schema(min_length = 1, max_length = 200)]
    pub id: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Front to back: best-available tries them in this order.
    #[schema(max_items = 1000)]
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Row {
    /// Letters, digits and `. _ / +` only.
    #[schema(min_length = 1, max_length = 200)]
    pub label: String,
    /// Left to right, side by side: seats next to each other in the list
    /// are next to each other in the hall (an aisle starts a new row).
    pub seats: Vec<Seat>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Seat {
    /// Letters, digits and `. _ / +` only; with its section's id and row's
    /// label, at most 32 bytes (`A-3-14`).
    #[schema(min_length = 1, max_length = 200)]
    pub label: String,
    /// Where the seat is drawn on the plan, in the plan's units.
    pub x: f32,
    pub y: f32,
}

/// Standing room: places counted, not named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Area {
    /// Letters, digits and `. _ / +` only.
    #[schema(min_length = 1, max_length = 200)]
    pub id: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(minimum = 1, maximum = 100_000)]
    pub capacity: u32,
}

impl SeatingPlan {
    /// The key a seat is sold and printed under: section, row and seat.
    pub fn seat_key(section: &Section, row: &Row, seat: &Seat) -> String {
        format!("{}-{}-{}", section.id, row.label, seat.label)
    }

    /// Every seat's key, in plan order.
    pub fn seat_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.sections.iter().flat_map(|s| {
            s.rows
                .iter()
                .flat_map(move |r| r.seats.iter().map(move |seat| Self::seat_key(s, r, seat)))
        })
    }

    pub fn seat_count(&self) -> usize {
        self.sections
            .iter()
            .flat_map(|s| &s.rows)
            .map(|r| r.seats.len())
            .sum()
    }

    /// Checks the plan whole: names present and short, ids unique, every
    /// seat key unique and short enough to print on a ticket, positions
    /// finite, sizes bounded.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.sections.len() > MAX_PARTS || self.areas.len() > MAX_PARTS {
            return Err(invalid(format!(
                "a plan holds at most {MAX_PARTS} sections and {MAX_PARTS} areas"
            )));
        }
        if self.sections.is_empty() && self.areas.is_empty() {
            return Err(invalid("a plan needs a section or a standing area"));
        }
        let seats = self.seat_count();
        if seats > MAX_SEATS {
            return Err(invalid(format!(
                "the plan has {seats} seats; at most {MAX_SEATS}"
            )));
        }
        let mut ids = HashSet::new();
        for (kind, id, name) in self
            .sections
            .iter()
            .map(|s| ("section", &s.id, &s.name))
            .chain(self.areas.iter().map(|a| ("area", &a.id, &a.name)))
        {
            label("id", id)?;
            text(&format!("{kind} {id:?}'s name"), name)?;
            if !ids.insert(id) {
                return Err(invalid(format!("id {id:?} names two sections or areas")));
            }
        }
        let mut keys = HashSet::new();
        for section in &self.sections {
            if section.rows.len() > MAX_PARTS {
                return Err(invalid(format!(
                    "section {:?} has {} rows; at most {MAX_PARTS}",
                    section.id,
                    section.rows.len()
                )));
            }
            for row in &section.rows {
                label(
                    &format!("a row label of section {:?}", section.id),
                    &row.label,
                )?;
                for seat in &row.seats {
                    let key = Self::seat_key(section, row, seat);
                    label(&format!("seat {key:?}'s label"), &seat.label)?;
                    if key.len() > MAX_SEAT_LEN {
                        return Err(invalid(format!(
                            "seat key {key:?} is {} bytes; a ticket holds at most {MAX_SEAT_LEN}",
                            key.len()
                        )));
                    }
                    if !seat.x.is_finite() || !seat.y.is_finite() {
                        return Err(invalid(format!("seat {key:?} has no position")));
                    }
                    if !keys.insert(key.clone()) {
                        return Err(invalid(format!("seat {key:?} is in the plan twice")));
                    }
                }
            }
        }
        let standing: u64 = self.areas.iter().map(|a| u64::from(a.capacity)).sum();
        if seats as u64 + standing > 2 * MAX_SEATS as u64 {
            return Err(invalid(format!(
                "the plan holds {} places; at most {}",
                seats as u64 + standing,
                2 * MAX_SEATS
            )));
        }
        for area in &self.areas {
            if area.capacity == 0 || area.capacity as usize > MAX_SEATS {
                return Err(invalid(format!(
                    "area {:?} holds {}: a standing area holds 1 to {MAX_SEATS}",
                    area.id, area.capacity
                )));
            }
        }
        Ok(())
    }
}

/// A label in a seat's key: letters, digits and a few marks; no spaces,
/// and no '-', which separates the key's parts.
fn label(what: &str, s: &str) -> Result<(), Invalid> {
    text(what, s)?;
    if !s
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '/' | '+'))
    {
        return Err(invalid(format!(
            "{what} {s:?} may hold letters, digits and . _ / + only"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sections` sections of `rows` rows of `seats` seats.
    fn plan(sections: usize, rows: usize, seats: usize) -> SeatingPlan {
        SeatingPlan {
            sections: (0..sections)
                .map(|s| Section {
                    id: format!("S{s}"),
                    name: format!("Section {s}"),
                    rows: (0..rows)
                        .map(|r| Row {
                            label: (r + 1).to_string(),
                            seats: (0..seats)
                                .map(|n| Seat {
                                    label: (n + 1).to_string(),
                                    x: n as f32,
                                    y: r as f32,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            areas: vec![Area {
                id: "floor".into(),
                name: "Standing".into(),
                capacity: 5000,
            }],
        }
    }

    #[test]
    fn an_arena_plan_passes_and_names_every_seat_once() {
        let p = plan(10, 40, 50);
        assert_eq!(p.check(), Ok(()));
        assert_eq!(p.seat_count(), 20_000);
        let keys: HashSet<String> = p.seat_keys().collect();
        assert_eq!(keys.len(), 20_000);
        assert!(keys.contains("S3-12-7"));
    }

    #[test]
    fn a_plan_that_cannot_be_sold_is_refused_with_a_reason() {
        let refused = |change: &dyn Fn(&mut SeatingPlan), says: &str| {
            let mut p = plan(2, 2, 3);
            change(&mut p);
            let e = p.check().expect_err(says).0;
            assert!(e.contains(says), "{e:?} should say {says:?}");
        };
        refused(&|p| p.sections[1].id = "S0".into(), "names two");
        refused(&|p| p.areas[0].id = "S1".into(), "names two");
        refused(
            &|p| p.sections[0].rows[1].seats[2].label = "1".into(),
            "twice",
        );
        refused(&|p| p.sections[0].rows[0].label = "1-2".into(), "may hold");
        refused(
            &|p| p.sections[0].rows[0].seats[0].label = "a b".into(),
            "may hold",
        );
        refused(&|p| p.sections[0].rows[0].seats[0].x = f32::NAN, "position");
        refused(&|p| p.sections[0].name = " ".into(), "empty");
        refused(&|p| p.sections[0].name = "a\nb".into(), "control");
        refused(&|p| p.areas[0].capacity = 0, "holds 1 to");
        refused(&|p| p.areas[0].capacity = 150_000, "holds 1 to");
        refused(&|p| p.areas[0].capacity = 4_000_000_000, "at most");
        refused(
            &|p| p.sections[0].rows[0].seats[0].label = "9".repeat(40),
            "a ticket holds",
        );
        refused(
            &|p| {
                p.sections.clear();
                p.areas.clear();
            },
            "needs a section",
        );
        let mut big = plan(1, 1, 1);
        big.sections[0].rows[0].seats =
            vec![big.sections[0].rows[0].seats[0].clone(); MAX_SEATS + 1];
        assert!(big.check().unwrap_err().0.contains("at most"));
    }
}
