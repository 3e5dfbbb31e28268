//! The Stripe-protocol client against the sandbox gateway, both real, on
//! 127.0.0.1: test cards, idempotency, timeouts, late confirmation by
//! signed webhook, refunds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use issuer::payments::sandbox::{self, Config, Sandbox};
use issuer::payments::stripe::Stripe;
use issuer::payments::{IntentStatus, PaymentFailure, Provider, WebhookEvent, verify_webhook};

type Received = Arc<Mutex<Vec<Result<WebhookEvent, String>>>>;

/// A sandbox whose webhooks go to a receiver that checks their signature;
/// the runtime must live as long as the test.
fn sandbox(late_after: Duration, hang: Duration) -> (tokio::runtime::Runtime, Sandbox, Received) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let received: Received = Default::default();
    let secret: Arc<Mutex<String>> = Default::default();
    let sb = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = (received.clone(), secret.clone());
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State((got, secret)): State<(Received, Arc<Mutex<String>>)>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let sig = headers
                            .get("stripe-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let key = secret.lock().unwrap().clone();
                        got.lock()
                            .unwrap()
                            .push(verify_webhook(&key, &body, &sig, now));
                    },
                ),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        sandbox::start(Config {
            late_after,
            hang,
            webhook_url: Some(url),
        })
        .await
        .unwrap()
    });
    *secret.lock().unwrap() = sb.webhook_secret.clone();
    (rt, sb, received)
}

/// Waits until `n` webhooks came (at most 10 s).
fn webhooks(received: &Received, n: usize) -> Vec<Result<WebhookEvent, String>> {
    for _ in 0..200 {
        if received.lock().unwrap().len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    received.lock().unwrap().clone()
}

#[test]
fn test_cards_succeed_or_are_declined_with_stripes_reasons_and_webhooks_are_signed() {
    let (_rt, sb, received) = sandbox(Duration::from_secs(1), Duration::from_secs(1));
    let stripe = Stripe::new(&sb.base_url(), &sb.secret_key);
    let paid = stripe
        .charge(
            9000,
            "EUR",
            "pm_card_visa",
            &[("order", "ABC")],
            "order-ABC",
        )
        .unwrap();
    assert_eq!(
        (paid.status, paid.amount, paid.currency.as_str()),
        (IntentStatus::Succeeded, 9000, "eur")
    );
    assert_eq!(paid.metadata.get("order").map(String::as_str), Some("ABC"));
    // A sandbox started again never gives a payment an id given before.
    let (_rt2, other, _) = sandbox(Duration::from_secs(1), Duration::from_secs(1));
    let elsewhere = Stripe::new(&other.base_url(), &other.secret_key)
        .charge(
            9000,
            "EUR",
            "pm_card_visa",
            &[("order", "ABC")],
            "order-ABC",
        )
        .unwrap();
    assert_ne!(paid.id, elsewhere.id);
    for (card, why) in [
        ("4000000000000002", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
    ] {
        let declined = stripe
            .charge(9000, "eur", card, &[], &format!("k-{card}"))
            .unwrap();
        assert_eq!(
            declined.status,
            IntentStatus::RequiresPaymentMethod,
            "{card}"
        );
        let error = declined.last_payment_error.unwrap();
        assert_eq!(
            (error.code.as_str(), error.decline_code.as_deref()),
            ("card_declined", Some(why))
        );
    }
    let events = webhooks(&received, 3);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| e.as_ref().unwrap().kind.clone())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "payment_intent.succeeded")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "payment_intent.payment_failed")
            .count(),
        2
    );
    // An unknown card, a wrong key: refused, not charged.
    assert!(matches!(
        stripe.charge(1, "eur", "pm_nope", &[], "k-x"),
        Err(PaymentFailure::Refused(_))
    ));
    let wrong = Stripe::new(&sb.base_url(), "sk_test_wrong");
    assert!(matches!(
        wrong.charge(1, "eur", "pm_card_visa", &[], "k-y"),
        Err(PaymentFailure::Refused(_))
    ));
}

#[test]
fn a_retried_charge_is_the_first_one_even_after_a_timeout() {
    let (_rt, sb, _) = sandbox(Duration::from_secs(1), Duration::from_millis(1500));
    let impatient =
        Stripe::with_timeout(&sb.base_url(), &sb.secret_key, Duration::from_millis(300));
    // The charge happens; its answer comes too late.
    let lost = impatient.charge(5000, "eur", "pm_card_timeout", &[], "order-T");
    assert!(
        matches!(lost, Err(PaymentFailure::Unreachable(_))),
        "{lost:?}"
    );
    // Asked again with the same key: the same payment, charged once.
    let stripe = Stripe::new(&sb.base_url(), &sb.secret_key);
    let again = stripe
        .charge(5000, "eur", "pm_card_timeout", &[], "order-T")
        .unwrap();
    let once_more = stripe
        .charge(5000, "eur", "pm_card_timeout", &[], "order-T")
        .unwrap();
    assert_eq!(again, once_more);
    assert_eq!(again.status, IntentStatus::Succeeded);
    // The same key with another amount is refused, as Stripe refuses it.
    assert!(matches!(
        stripe.charge(1, "eur", "pm_card_timeout", &[], "order-T"),
        Err(PaymentFailure::Refused(m)) if m.contains("same parameters")
    ));
}

#[test]
fn a_late_card_is_processing_then_succeeds_by_a_signed_webhook() {
    let (_rt, sb, received) = sandbox(Duration::from_millis(400), Duration::from_secs(1));
    let stripe = Stripe::new(&sb.base_url(), &sb.secret_key);
    let pending = stripe
        .charge(7000, "eur", "pm_card_late", &[], "order-L")
        .unwrap();
    assert_eq!(pending.status, IntentStatus::Processing);
    let events = webhooks(&received, 1);
    let event = events[0].as_ref().unwrap();
    assert_eq!(
        (event.kind.as_str(), event.data.object.id.as_str()),
        ("payment_intent.succeeded", pending.id.as_str())
    );
    assert_eq!(
        stripe.intent(&pending.id).unwrap().status,
        IntentStatus::Succeeded
    );
}

#[test]
fn a_refund_pays_back_at_most_what_was_paid_once_per_key() {
    let (_rt, sb, _) = sandbox(Duration::from_secs(1), Duration::from_secs(1));
    let stripe = Stripe::new(&sb.base_url(), &sb.secret_key);
    let paid = stripe
        .charge(9000, "eur", "pm_card_visa", &[], "order-R")
        .unwrap();
    let part = stripe.refund(&paid.id, 4000, "refund-1").unwrap();
    assert_eq!(
        stripe.refund(&paid.id, 4000, "refund-1").unwrap(),
        part,
        "same key, same refund"
    );
    assert!(matches!(
        stripe.refund(&paid.id, 6000, "refund-2"),
        Err(PaymentFailure::Refused(_))
    ));
    let rest = stripe.refund(&paid.id, 5000, "refund-3").unwrap();
    assert_eq!((rest.amount, rest.status.as_str()), (5000, "succeeded"));
    let declined = stripe
        .charge(9000, "eur", "pm_card_chargeDeclined", &[], "order-D")
        .unwrap();
    assert!(matches!(
        stripe.refund(&declined.id, 1, "refund-4"),
        Err(PaymentFailure::Refused(_))
    ));
}
