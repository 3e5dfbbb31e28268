//! What is for sale: venues, events and their ticket categories, as an
//! organizer creates them, checked before anything is stored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::pricing::Pricing;
use super::venue::SeatingPlan;
use super::{Invalid, invalid, text};

/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 20_000;
/// Most performers an event lists.
pub const MAX_PERFORMERS: usize = 50;
/// Most places one order may hold, whatever a category allows.
pub const MAX_PER_ORDER: u32 = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewVenue {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub city: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub address: String,
    pub plan: SeatingPlan,
}

impl NewVenue {
    pub fn check(&self) -> Result<(), Invalid> {
        text("the venue's name", &self.name, 200)?;
        text("the venue's city", &self.city, 200)?;
        if !self.address.is_empty() {
            text("the venue's address", &self.address, 500)?;
        }
        self.plan.check()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Genre {
    Concert,
    Sports,
    Theatre,
    Comedy,
    Festival,
    Family,
    Conference,
    Other,
}

impl Genre {
    pub const ALL: [Genre; 8] = [
        Genre::Concert,
        Genre::Sports,
        Genre::Theatre,
        Genre::Comedy,
        Genre::Festival,
        Genre::Family,
        Genre::Conference,
        Genre::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Genre::Concert => "concert",
            Genre::Sports => "sports",
            Genre::Theatre => "theatre",
            Genre::Comedy => "comedy",
            Genre::Festival => "festival",
            Genre::Family => "family",
            Genre::Conference => "conference",
            Genre::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Genre> {
        Genre::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Being prepared: seen by its organizer only.
    Draft,
    OnSale,
    Cancelled,
    Ended,
}

impl EventStatus {
    pub const ALL: [EventStatus; 4] = [
        EventStatus::Draft,
        EventStatus::OnSale,
        EventStatus::Cancelled,
        EventStatus::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Draft => "draft",
            EventStatus::OnSale => "on_sale",
            EventStatus::Cancelled => "cancelled",
            EventStatus::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// Whether an event may go from this status to `to`: a draft goes on
    /// sale; an event on sale is cancelled or ends; nothing comes back
    /// from cancelled or ended.
    pub fn may_become(self, to: EventStatus) -> bool {
        use EventStatus as S;
        self == to
            || matches!(
                (self, to),
                (S::Draft, S::OnSale | S::Cancelled) | (S::OnSale, S::Cancelled | S::Ended)
            )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewEvent {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// At most 20,000 bytes.
    #[serde(default)]
    #[schema(max_length = 20_000)]
    pub description: String,
    /// Each name 1 to 200 bytes.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub performers: Vec<String>,
    pub genre: Genre,
    pub venue_id: u64,
    /// Unix seconds.
    #[schema(maximum = 4_294_967_295_u64)]
    pub starts_at: u64,
    /// Unix seconds, not before `starts_at` (tickets carry it in 32 bits).
    #[schema(maximum = 4_294_967_295_u64)]
    pub ends_at: u64,
    /// Until when (unix seconds, at the latest the event's end) buyers may
    /// cancel their own orders, paid back in full; absent: only the
    /// organizer cancels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4_294_967_295_u64)]
    pub buyers_cancel_until: Option<u64>,
}

impl NewEvent {
    pub fn check(&self) -> Result<(), Invalid> {
        text("the event's name", &self.name, 200)?;
        if self.description.len() > MAX_DESCRIPTION {
            return Err(invalid(format!(
                "the description is longer than {MAX_DESCRIPTION} bytes"
            )));
        }
        if self.performers.len() > MAX_PERFORMERS {
            return Err(invalid(format!(
                "an event lists at most {MAX_PERFORMERS} performers"
            )));
        }
        for p in &self.performers {
            text("a performer's name", p, 200)?;
        }
        // Tickets carry their validity as 32-bit unix seconds.
        if self.ends_at > u64::from(u32::MAX) {
            return Err(invalid("the event ends after 2106"));
        }
        if self.ends_at < self.starts_at {
            return Err(invalid("the event ends before it starts"));
        }
        if self.buyers_cancel_until.is_some_and(|t| t > self.ends_at) {
            return Err(invalid(
                "buyers may cancel until the event ends at the latest",
            ));
        }
        Ok(())
    }
}

/// An event as stored: what was given, and what the store adds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: u64,
    #[serde(flatten)]
    pub info: NewEvent,
    pub status: EventStatus,
    /// The venue's city, for browsing.
    pub city: String,
}

/// Where a category's places are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Places {
    /// Every seat of these sections of the venue's plan.
    Seats {
        #[schema(min_items = 1)]
        sections: Vec<String>,
    },
    /// So many places of a standing area.
    Quota {
        area: String,
        #[schema(minimum = 1)]
        places: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewCategory {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[serde(flatten)]
    pub pricing: Pricing,
    pub places: Places,
    /// Unix seconds; sales open from `sale_starts` to before `sale_ends`.
    #[schema(maximum = 4_294_967_295_u64)]
    pub sale_starts: u64,
    #[schema(maximum = 4_294_967_295_u64)]
    pub sale_ends: u64,
    /// Most places of this category one order may hold.
    #[schema(minimum = 1, maximum = 100)]
    pub per_order: u32,
}

impl NewCategory {
    /// Checks the category against its venue's plan and the event's other
    /// categories (`others`): one currency for all (one order pays in one),
    /// its sections or area exist, no seat is sold under two categories,
    /// and a standing area's quotas together fit it.
    pub fn check(&self, plan: &SeatingPlan, others: &[NewCategory]) -> Result<(), Invalid> {
        if let Some(o) = others
            .iter()
            .find(|o| o.pricing.currency != self.pricing.currency)
        {
            return Err(invalid(format!(
                "the event's other categories are priced in {}: one order pays in one currency",
                o.pricing.currency
            )));
        }
        let taken: Vec<&String> = others
            .iter()
            .filter_map(|c| match &c.places {
                Places::Seats { sections } => Some(sections),
                Places::Quota { .. } => None,
            })
            .flatten()
            .collect();
        text("the category's name", &self.name, 200)?;
        self.pricing.check()?;
        if self.sale_ends <= self.sale_starts {
            return Err(invalid("sales end before they start"));
        }
        // Times are unix seconds before 2106, as tickets carry them.
        if self.sale_ends > u64::from(u32::MAX) {
            return Err(invalid("sales end after 2106"));
        }
        if self.per_order == 0 || self.per_order > MAX_PER_ORDER {
            return Err(invalid(format!("per_order is 1 to {MAX_PER_ORDER}")));
        }
        match &self.places {
            Places::Seats { sections } => {
                if sections.is_empty() {
                    return Err(invalid("a seated category needs a section"));
                }
                for (i, id) in sections.iter().enumerate() {
                    if !plan.sections.iter().any(|s| s.id == *id) {
                        return Err(invalid(format!("the venue has no section {id:?}")));
                    }
                    if sections[..i].contains(id) || taken.contains(&id) {
                        return Err(invalid(format!(
                            "section {id:?} is sold under another category already"
                        )));
                    }
                }
            }
            Places::Quota { area, places } => {
                let Some(a) = plan.areas.iter().find(|a| a.id == *area) else {
                    return Err(invalid(format!("the venue has no standing area {area:?}")));
                };
                // What the event's other quotas sell of the same area.
                let sold: u64 = others
                    .iter()
                    .filter_map(|c| match &c.places {
                        Places::Quota { area: a, places } if a == area => Some(u64::from(*places)),
                        _ => None,
                    })
                    .sum();
                let left = u64::from(a.capacity).saturating_sub(sold);
                if *places == 0 || u64::from(*places) > left {
                    return Err(invalid(format!(
                        "area {area:?} holds {}, {sold} of them in other categories: a quota is 1 to {left}",
                        a.capacity
                    )));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Category {
    pub id: u64,
    pub event_id: u64,
    #[serde(flatten)]
    pub info: NewCategory,
}

/// Most words of a search that count.
pub const MAX_SEARCH_TERMS: usize = 8;

/// The words of what a buyer typed, for a full-text search where each
/// matches as a prefix: letters and digits only (whatever else is typed
/// separates words), at most [`MAX_SEARCH_TERMS`] of at most 40 bytes.
pub fn search_terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut end = w.len().min(40);
            while !w.is_char_boundary(end) {
                end -= 1;
            }
            w[..end].to_lowercase()
        })
        .take(MAX_SEARCH_TERMS)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_terms_are_words_and_nothing_a_query_language_would_read() {
        assert_eq!(
            super::search_terms("  Daft-Punk \"live\" OR *NEAR(x) "),
            ["daft", "punk", "live", "or", "near", "x"]
        );
        assert!(super::search_terms("\"*:^()").is_empty());
        assert_eq!(super::search_terms("Béguin"), ["béguin"]);
        assert_eq!(super::search_terms(&"a ".repeat(20)).len(), 8);
        assert_eq!(super::search_terms(&"é".repeat(30))[0].len(), 40);
    }
}
