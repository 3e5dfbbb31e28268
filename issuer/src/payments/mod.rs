//! Payments through a provider that speaks Stripe's wire protocol:
//! PaymentIntents created and confirmed in one call, refunds, and webhooks
//! signed with the `Stripe-Signature` HMAC scheme. [`stripe::Stripe`] is the
//! client; pointing it at Stripe is configuration (base URL and secrets).
//! [`sandbox`] is a small gateway speaking the same protocol on 127.0.0.1,
//! for the demo and the tests, with Stripe's test cards.

pub mod sandbox;
pub mod stripe;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How a payment stands at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    Succeeded,
    /// Being confirmed: a webhook tells the end.
    Processing,
    /// Refused (declined, insufficient funds...): nothing was charged.
    RequiresPaymentMethod,
    Canceled,
    /// Any other state of the provider's, for a payment not finished.
    #[serde(other)]
    Other,
}

/// A PaymentIntent, as much of it as the issuer reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub amount: u64,
    pub currency: String,
    pub status: IntentStatus,
    /// Why a payment was refused: `card_declined`, `insufficient_funds`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_payment_error: Option<PaymentError>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: u64,
    pub payment_intent: String,
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentFailure {
    /// The provider could not be reached or did not answer in time: the
    /// payment may or may not have happened; asking again with the same
    /// idempotency key finds out without charging twice.
    #[error("the payment provider did not answer: {0}")]
    Unreachable(String),
    /// The provider refused the request itself (bad key, bad parameters).
    #[error("the payment provider refused the request: {0}")]
    Refused(String),
}

/// What the issuer needs of a payment provider.
pub trait Provider: Send + Sync {
    /// Charges `amount` (minor units) with `payment_method`, at once. The
    /// same `idempotency_key` again answers the first charge, never a
    /// second one.
    fn charge(
        &self,
        amount: u64,
        currency: &str,
        payment_method: &str,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<Intent, PaymentFailure>;

    /// The payment as it stands now.
    fn intent(&self, id: &str) -> Result<Intent, PaymentFailure>;

    /// Pays back `amount` of a payment, once per idempotency key.
    fn refund(
        &self,
        intent_id: &str,
        amount: u64,
        idempotency_key: &str,
    ) -> Result<Refund, PaymentFailure>;
}

/// A webhook event, as much as the issuer reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    /// `payment_intent.succeeded`, `payment_intent.payment_failed`...
    #[serde(rename = "type")]
    pub kind: String,
    pub data: WebhookData,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookData {
    pub object: Intent,
}

/// How old a webhook's signature may be, in seconds (Stripe's default).
pub const WEBHOOK_TOLERANCE_S: u64 = 300;

/// The `Stripe-Signature` header for `payload` sent at `t` (unix seconds):
/// `t=T,v1=HEX(HMAC-SHA256(secret, "T.payload"))`.
pub fn sign_webhook(secret: &str, payload: &[u8], t: u64) -> String {
    format!("t={t},v1={}", hex(&mac(secret, t, payload)))
}

fn mac(secret: &str, t: u64, payload: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(payload);
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a `Stripe-Signature` header's time is near `now` (unix seconds):
/// checked before a body is read, so a stale or timeless header costs
/// nothing. [`verify_webhook`] checks it again with the payload.
pub fn fresh_signature(header: &str, now: u64) -> Result<(), String> {
    let t = header
        .split(',')
        .find_map(|part| part.trim().strip_prefix("t="))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("the signature has no time (t=)")?;
    if now.abs_diff(t) > WEBHOOK_TOLERANCE_S {
        return Err(format!(
            "the signature is from {t}, more than {WEBHOOK_TOLERANCE_S} s from now"
        ));
    }
    Ok(())
}

/// Checks a webhook's `Stripe-Signature` header against `payload` at `now`
/// (unix seconds) and reads the event: a forged, altered or replayed-late
/// webhook is refused with a reason.
pub fn verify_webhook(
    secret: &str,
    payload: &[u8],
    header: &str,
    now: u64,
) -> Result<WebhookEvent, String> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t = t.ok_or("the signature has no time (t=)")?;
    if now.abs_diff(t) > WEBHOOK_TOLERANCE_S {
        return Err(format!(
            "the signature is from {t}, more than {WEBHOOK_TOLERANCE_S} s from now"
        ));
    }
    let expected = hex(&mac(secret, t, payload));
    // Compared in full whatever the first difference (no early exit).
    let same = |s: &str| {
        s.len() == expected.len()
            && s.bytes()
                .zip(expected.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    };
    if !signatures.iter().any(|s| same(s)) {
        return Err("the signature does not match the payload".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("the event is not one we read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_1", "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "amount": 9000, "currency": "eur", "status": "succeeded"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_signed_webhook_is_read_and_a_forged_altered_or_stale_one_refused() {
        let payload = event();
        let header = sign_webhook("whsec_test", &payload, 1000);
        let e = verify_webhook("whsec_test", &payload, &header, 1100).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.data.object.id.as_str()),
            ("payment_intent.succeeded", "pi_1")
        );
        // Another secret, another payload, too late, no time, garbage.
        assert!(verify_webhook("whsec_other", &payload, &header, 1100).is_err());
        let mut altered = payload.clone();
        altered[20] ^= 1;
        assert!(verify_webhook("whsec_test", &altered, &header, 1100).is_err());
        assert!(
            verify_webhook("whsec_test", &payload, &header, 1000 + 301)
                .unwrap_err()
                .contains("from")
        );
        let no_time = header.split(',').nth(1).unwrap();
        assert!(verify_webhook("whsec_test", &payload, no_time, 1000).is_err());
        assert!(verify_webhook("whsec_test", &payload, "", 1000).is_err());
        assert!(verify_webhook("whsec_test", &payload, "t=x,v1=,v1", 1000).is_err());
        // Stripe's scheme: several v1 values, any of them may match.
        let rolled = format!("{},v1=00", header);
        assert!(verify_webhook("whsec_test", &payload, &rolled, 1000).is_ok());
    }

    #[test]
    fn the_signature_matches_stripes_documented_construction() {
        // HMAC-SHA256 of "t.payload" keyed by the endpoint's secret, in hex,
        // as Python's hmac module computes it.
        assert_eq!(
            sign_webhook("whsec_x", b"{}", 1),
            "t=1,v1=36ee2f7498f0c1777d1312b2a7361947fe5ad31223be30d0c62421f4ca753401"
        );
    }
}
