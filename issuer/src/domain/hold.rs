//! What a buyer asks to hold, and what a hold is: places taken all or
//! nothing, at prices fixed when taken, until a time after which they
//! simply stop counting (no sweeper is needed for a hold to end).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::catalogue::MAX_PER_ORDER;
use super::{Invalid, invalid};

/// Most parts one hold request may have.
pub const MAX_ITEMS: usize = 10;

/// One part of a hold request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HoldItem {
    /// These seats, by key (`A-3-14`).
    Seats {
        #[schema(min_items = 1, max_items = 100)]
        seats: Vec<String>,
    },
    /// So many places of a category, any of them (a standing quota).
    Quantity {
        category_id: u64,
        #[schema(minimum = 1, maximum = 100)]
        quantity: u32,
    },
    /// The best `quantity` seats side by side of a seated category.
    Best {
        category_id: u64,
        #[schema(minimum = 1, maximum = 100)]
        quantity: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"event_id": 1, "items": [{"kind": "best", "category_id": 1, "quantity": 2}]}))]
pub struct HoldRequest {
    pub event_id: u64,
    /// At most 100 places in all.
    #[schema(min_items = 1, max_items = 10)]
    pub items: Vec<HoldItem>,
}

impl HoldRequest {
    /// Checks what can be checked without the event: a few parts, places
    /// asked for, no seat twice, no more than an order may hold.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(invalid(format!("a hold has 1 to {MAX_ITEMS} items")));
        }
        let mut total: u64 = 0;
        let mut seats = std::collections::HashSet::new();
        for item in &self.items {
            match item {
                HoldItem::Seats { seats: keys } => {
                    if keys.is_empty() {
                        return Err(invalid("a seats item lists no seat"));
                    }
                    for key in keys {
                        if key.len() > shared::code::MAX_SEAT_LEN || !seats.insert(key.as_str()) {
                            return Err(invalid(format!(
                                "seat {key:?} is asked for twice, or is no seat's key"
                            )));
                        }
                    }
                    total += keys.len() as u64;
                }
                HoldItem::Quantity { quantity, .. } | HoldItem::Best { quantity, .. } => {
                    if *quantity == 0 {
                        return Err(invalid("a quantity is at least 1"));
                    }
                    total += u64::from(*quantity);
                }
            }
        }
        if total > u64::from(MAX_PER_ORDER) {
            return Err(invalid(format!(
                "a hold takes at most {MAX_PER_ORDER} places"
            )));
        }
        Ok(())
    }
}

/// A place held, at the price it will be charged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeldPlace {
    pub category_id: u64,
    /// The seat's key; `None` for a standing place.
    pub seat: Option<String>,
    /// Minor units.
    pub price: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Active,
    Expired,
    Released,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hold {
    pub event_id: u64,
    /// Unix milliseconds.
    pub expires_at: u64,
    pub state: HoldState,
    pub places: Vec<HeldPlace>,
    pub total: u64,
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(keys: &[&str]) -> HoldItem {
        HoldItem::Seats {
            seats: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn a_hold_request_asks_for_some_places_each_once_and_not_too_many() {
        let ok = |items: Vec<HoldItem>| HoldRequest { event_id: 1, items }.check();
        assert!(ok(vec![seats(&["A-1-1", "A-1-2"])]).is_ok());
        assert!(ok(vec![]).is_err());
        assert!(ok(vec![seats(&[])]).is_err());
        assert!(ok(vec![seats(&["A-1-1"]), seats(&["A-1-1"])]).is_err());
        assert!(
            ok(vec![HoldItem::Best {
                category_id: 1,
                quantity: 0
            }])
            .is_err()
        );
        assert!(
            ok(vec![HoldItem::Quantity {
                category_id: 1,
                quantity: MAX_PER_ORDER
            }])
            .is_ok()
        );
        let too_many = vec![
            HoldItem::Quantity {
                category_id: 1,
                quantity: MAX_PER_ORDER,
            },
            HoldItem::Quantity {
                category_id: 2,
                quantity: 1,
            },
        ];
        assert!(ok(too_many).unwrap_err().0.contains("at most"));
        assert!(ok(vec![seats(&["A-1-1"]); MAX_ITEMS + 1]).is_err());
        let huge = HoldItem::Quantity {
            category_id: 1,
            quantity: u32::MAX,
        };
        assert!(ok(vec![huge.clone(), huge]).is_err());
    }
}
