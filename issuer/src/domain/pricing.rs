//! A ticket category's price, worked out when places are held: the price a
//! buyer is shown is fixed on the hold and is the price charged.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Invalid, invalid};

/// Most tiers of each kind a category may have.
pub const MAX_TIERS: usize = 20;
/// Highest price, in minor units (ten million in a currency of cents).
pub const MAX_PRICE: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pricing {
    /// Minor units (cents): no fractions, no rounding.
    #[schema(maximum = 1_000_000_000_u64)]
    pub price: u64,
    /// ISO 4217, three capital letters (`EUR`).
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// Early-bird prices: the first tier whose time has not passed applies.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub time_tiers: Vec<TimeTier>,
    /// Prices by demand: once at least a share of the category is sold, the
    /// tier with the greatest share reached applies (when no time tier does).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub demand_tiers: Vec<DemandTier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimeTier {
    /// Unix seconds: the tier applies before this.
    #[schema(maximum = 4_294_967_295_u64)]
    pub until: u64,
    #[schema(maximum = 1_000_000_000_u64)]
    pub price: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DemandTier {
    /// Share of the capacity sold, in thousandths (500: half sold).
    #[schema(minimum = 1, maximum = 1000)]
    pub sold_permille: u16,
    #[schema(maximum = 1_000_000_000_u64)]
    pub price: u64,
}

impl Pricing {
    /// The price of one place at `now` (unix seconds), with `sold` of
    /// `capacity` places sold.
    pub fn price_at(&self, now: u64, sold: u64, capacity: u64) -> u64 {
        if let Some(tier) = self
            .time_tiers
            .iter()
            .filter(|t| now < t.until)
            .min_by_key(|t| t.until)
        {
            return tier.price;
        }
        self.demand_tiers
            .iter()
            .filter(|t| {
                // sold / capacity >= permille / 1000, without division.
                u128::from(sold) * 1000 >= u128::from(t.sold_permille) * u128::from(capacity)
            })
            .max_by_key(|t| t.sold_permille)
            .map_or(self.price, |t| t.price)
    }

    pub fn check(&self) -> Result<(), Invalid> {
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(format!(
                "currency {:?} is not three capital letters (EUR, USD...)",
                self.currency
            )));
        }
        if self.time_tiers.len() > MAX_TIERS || self.demand_tiers.len() > MAX_TIERS {
            return Err(invalid(format!(
                "a category has at most {MAX_TIERS} tiers of each kind"
            )));
        }
        let prices = std::iter::once(self.price)
            .chain(self.time_tiers.iter().map(|t| t.price))
            .chain(self.demand_tiers.iter().map(|t| t.price));
        for price in prices {
            if price > MAX_PRICE {
                return Err(invalid(format!(
                    "price {price} is above the highest, {MAX_PRICE} (minor units)"
                )));
            }
        }
        let mut shares: Vec<u16> = self.demand_tiers.iter().map(|t| t.sold_permille).collect();
        shares.sort_unstable();
        if shares.iter().any(|s| *s == 0 || *s > 1000) {
            return Err(invalid(
                "a demand tier's share sold is 1 to 1000 thousandths",
            ));
        }
        if shares.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("two demand tiers start at the same share sold"));
        }
        let mut times: Vec<u64> = self.time_tiers.iter().map(|t| t.until).collect();
        times.sort_unstable();
        // Times are unix seconds before 2106, as tickets carry them.
        if times.last().is_some_and(|t| *t > u64::from(u32::MAX)) {
            return Err(invalid("a time tier ends after 2106"));
        }
        if times.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("two time tiers end at the same time"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        Pricing {
            price: 5000,
            currency: "EUR".into(),
            time_tiers: vec![
                TimeTier {
                    until: 2000,
                    price: 4000,
                },
                TimeTier {
                    until: 1000,
                    price: 3000,
                },
            ],
            demand_tiers: vec![
                DemandTier {
                    sold_permille: 900,
                    price: 7000,
                },
                DemandTier {
                    sold_permille: 500,
                    price: 6000,
                },
            ],
        }
    }

    #[test]
    fn the_earliest_early_bird_applies_until_its_time() {
        let p = pricing();
        assert_eq!(p.price_at(999, 990, 1000), 3000);
        assert_eq!(p.price_at(1000, 990, 1000), 4000);
        assert_eq!(p.price_at(1999, 0, 1000), 4000);
    }

    #[test]
    fn after_the_early_birds_the_price_follows_the_share_sold() {
        let p = pricing();
        assert_eq!(p.price_at(2000, 499, 1000), 5000);
        assert_eq!(p.price_at(2000, 500, 1000), 6000);
        assert_eq!(p.price_at(2000, 899, 1000), 6000);
        assert_eq!(p.price_at(2000, 900, 1000), 7000);
        // A third of 3 places is 333.3 thousandths: not yet half.
        assert_eq!(p.price_at(2000, 1, 3), 5000);
        assert_eq!(p.price_at(2000, 2, 3), 6000);
        assert_eq!(p.price_at(2000, u64::MAX, u64::MAX), 7000);
    }

    #[test]
    fn prices_and_tiers_out_of_bounds_are_refused_with_a_reason() {
        assert!(pricing().check().is_ok());
        let mut p = pricing();
        p.currency = "euro".into();
        assert!(p.check().unwrap_err().0.contains("currency"));
        let mut p = pricing();
        p.price = MAX_PRICE + 1;
        assert!(p.check().unwrap_err().0.contains("highest"));
        let mut p = pricing();
        p.demand_tiers[1].sold_permille = 900;
        assert!(p.check().unwrap_err().0.contains("same share"));
        let mut p = pricing();
        p.demand_tiers[0].sold_permille = 1001;
        assert!(p.check().is_err());
        let mut p = pricing();
        p.time_tiers[1].until = 2000;
        assert!(p.check().unwrap_err().0.contains("same time"));
    }
}
