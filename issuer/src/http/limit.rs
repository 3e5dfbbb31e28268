//! How fast one client may hold and order: a token bucket per address, so
//! one bot cannot hold a whole event. Refused requests are answered 429
//! with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::{ApiError, AppState};

/// Most addresses remembered; beyond, the full buckets are forgotten.
const MAX_CLIENTS: usize = 100_000;

pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimit {
    /// `per_second` requests a second from one address, `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> RateLimit {
        RateLimit {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `ip`'s bucket at `now`, or says when to come
    /// back.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

/// A buyer's request that counts against its address's rate; taken before
/// the body is read. Holds the address, when known.
pub struct Limited(pub Option<IpAddr>);

impl FromRequestParts<AppState> for Limited {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let (Some(limit), Some(ip)) = (state.buyer_rate.as_ref(), addr) else {
            return Ok(Limited(addr));
        };
        limit
            .take(ip, Instant::now())
            .map(|()| Limited(addr))
            .map_err(|wait| {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "too many holds and orders from this address: try again in {} s",
                        wait.as_secs() + 1
                    ),
                );
                e.retry_after = Some(wait.as_secs() + 1);
                e
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_not_slowed() {
        let limit = RateLimit::new(2.0, 5.0);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limit.take(a, t0).is_ok());
        }
        let wait = limit.take(a, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(limit.take(b, t0).is_ok(), "another address is not slowed");
        // Half a second later, one more.
        assert!(limit.take(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(limit.take(a, t0 + Duration::from_millis(500)).is_err());
        // Much later, the burst again, not more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limit.take(a, later).is_ok());
        }
        assert!(limit.take(a, later).is_err());
    }
}
