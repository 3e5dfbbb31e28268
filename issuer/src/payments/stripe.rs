//! The client of a provider speaking Stripe's wire protocol: form-encoded
//! requests, a bearer secret key, `Idempotency-Key` on every write.

use std::time::Duration;

use serde::Deserialize;

use super::{Intent, PaymentFailure, Provider, Refund};

/// How long a call to the provider may take before it counts as not
/// answered (the payment is then looked up again, never charged twice).
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Stripe {
    base: String,
    secret_key: String,
    agent: ureq::Agent,
}

/// Stripe's error body: `{"error": {...}}`; a declined card's carries the
/// PaymentIntent as it ended.
#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Deserialize)]
struct StripeError {
    #[serde(default)]
    message: String,
    /// On a declined card: the PaymentIntent as it ended.
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
}

impl Stripe {
    /// A client of the provider at `base` (`https://api.stripe.com`, or a
    /// sandbox's address), with its secret key.
    pub fn new(base: &str, secret_key: &str) -> Stripe {
        Stripe::with_timeout(base, secret_key, TIMEOUT)
    }

    /// Connections to the provider kept open between calls.
    const MAX_IDLE: usize = 128;

    pub fn with_timeout(base: &str, secret_key: &str, timeout: Duration) -> Stripe {
        Stripe {
            base: base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                // As many connections kept open as calls may be under way
                // at once (else each opens its own), with buffers sized
                // for the provider's small answers (not 128 KiB each).
                .max_idle_connections(Self::MAX_IDLE)
                .max_idle_connections_per_host(Self::MAX_IDLE)
                .input_buffer_size(16 * 1024)
                .output_buffer_size(16 * 1024)
                .build()
                .into(),
        }
    }

    fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<T, PaymentFailure> {
        let response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.secret_key))
            .header("idempotency-key", idempotency_key)
            .send_form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        read(response)
    }
}

/// The provider's answer: `T`, or why not. A declined payment is an
/// answer (the intent, with its error), not a failure.
fn read<T: for<'de> Deserialize<'de>>(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, PaymentFailure> {
    let response = response.map_err(|e| PaymentFailure::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .map_err(|e| PaymentFailure::Unreachable(e.to_string()))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body)
            .map_err(|e| PaymentFailure::Refused(format!("an answer we cannot read: {e}")));
    }
    let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    match error {
        // A declined card: the intent as it ended, read as the answer.
        Some(ErrorBody {
            error:
                StripeError {
                    payment_intent: Some(intent),
                    ..
                },
        }) => serde_json::from_value(intent)
            .map_err(|e| PaymentFailure::Refused(format!("an answer we cannot read: {e}"))),
        Some(ErrorBody { error }) if status < 500 => Err(PaymentFailure::Refused(format!(
            "{status}: {}",
            error.message
        ))),
        _ => Err(PaymentFailure::Unreachable(format!("status {status}"))),
    }
}

impl Provider for Stripe {
    fn charge(
        &self,
        amount: u64,
        currency: &str,
        payment_method: &str,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<Intent, PaymentFailure> {
        let mut form = vec![
            ("amount".to_owned(), amount.to_string()),
            ("currency".to_owned(), currency.to_ascii_lowercase()),
            ("payment_method".to_owned(), payment_method.to_owned()),
            ("payment_method_types[]".to_owned(), "card".to_owned()),
            ("confirm".to_owned(), "true".to_owned()),
        ];
        for (k, v) in metadata {
            form.push((format!("metadata[{k}]"), (*v).to_owned()));
        }
        self.post("/v1/payment_intents", &form, idempotency_key)
    }

    fn intent(&self, id: &str) -> Result<Intent, PaymentFailure> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PaymentFailure::Refused(format!(
                "{id:?} is not a payment's id"
            )));
        }
        let response = self
            .agent
            .get(&format!("{}/v1/payment_intents/{id}", self.base))
            .header("authorization", &format!("Bearer {}", self.secret_key))
            .call();
        read(response)
    }

    fn refund(
        &self,
        intent_id: &str,
        amount: u64,
        idempotency_key: &str,
    ) -> Result<Refund, PaymentFailure> {
        let form = [
            ("payment_intent".to_owned(), intent_id.to_owned()),
            ("amount".to_owned(), amount.to_string()),
        ];
        self.post("/v1/refunds", &form, idempotency_key)
    }
}
