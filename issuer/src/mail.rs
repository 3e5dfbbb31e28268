//! Messages to buyers: the storage queues them (the outbox, written with
//! the change that gives cause to them), and [`Mailer::run`] composes each
//! with `lettre` and delivers it: as `.eml` files in the data directory by
//! default, by SMTP when configured. A delivery that fails is tried again,
//! after a pause that doubles each time (1 s, 2 s, ... at most an hour); a
//! message that cannot be made (an address no server takes) is given up at
//! once, one that keeps failing after a day or so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Message, Transport as _};

use crate::storage::{Mail, MailKind, Storage, StorageError};

/// How long a worker keeps a message it took before another (another
/// process) may take it: long enough to send every message of a claim, one
/// after another, each as slowly as the SMTP server may answer.
const LEASE_MS: u64 = CLAIM as u64 * SMTP_TIMEOUT.as_secs() * 1000 + 60_000;

/// Messages taken from the outbox at a time.
const CLAIM: usize = 20;
/// The pause between looks at the outbox when it was found empty, or not.
const IDLE_PAUSE: Duration = Duration::from_secs(1);
const BUSY_PAUSE: Duration = Duration::from_millis(100);
/// Deliveries tried before a message is given up.
const MAX_ATTEMPTS: u32 = 30;
/// How long an SMTP server may take to answer.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where messages go.
pub enum Transport {
    /// `.eml` files in a directory (the data directory's `mail/`).
    Files(PathBuf),
    Smtp(Box<lettre::SmtpTransport>),
}

impl Transport {
    /// An SMTP server by URL (`smtp://host:port`, `smtp://host?tls=required`
    /// for STARTTLS, `smtps://host`), with a user name in the URL and its
    /// password given apart (read from a file: never on the command line).
    pub fn smtp(url: &str, password: Option<String>) -> Result<Transport, String> {
        // The user, if any: between `//` and `@`, before the host.
        let authority = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
        let user = authority.rsplit_once('@').map(|(user, _)| user);
        if user.is_some_and(|u| u.contains(':')) {
            return Err("the SMTP URL carries no password: give it in a file".into());
        }
        let mut builder = lettre::SmtpTransport::from_url(url)
            .map_err(|e| format!("the SMTP URL: {e}"))?
            .timeout(Some(SMTP_TIMEOUT));
        match (user, password) {
            (Some(user), Some(password)) => {
                builder =
                    builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                        user.to_owned(),
                        password,
                    ));
            }
            (None, Some(_)) => return Err("a password, but no user in the SMTP URL".into()),
            _ => {}
        }
        Ok(Transport::Smtp(Box::new(builder.build())))
    }
}

/// Why a message did not go.
#[derive(Debug)]
enum Failure {
    /// Try again later.
    Transient(String),
    /// Never: it cannot be made, or the server refuses it for good.
    Permanent(String),
}

/// Composes and delivers buyers' messages.
pub struct Mailer {
    pub transport: Transport,
    /// Who the messages are from.
    pub from: Mailbox,
    /// The address buyers reach the API at, for the order links.
    pub public_url: String,
    /// Makes order links' secrets.
    pub link_key: [u8; 32],
    /// Signs a paid order's tickets if no one has yet.
    pub signer: Option<Arc<crate::keys::ActiveSigner>>,
}

impl Mailer {
    /// Delivers what is due until the process ends, looking every second,
    /// or every tenth of a second while messages wait (after an on-sale,
    /// thousands do: up to 200 a second go out, about a tenth of a core).
    pub async fn run(self: Arc<Self>, storage: Arc<dyn Storage>) {
        let warn = crate::http::OncePerSecond::default();
        let mut pause = IDLE_PAUSE;
        loop {
            tokio::time::sleep(pause).await;
            pause = IDLE_PAUSE;
            let s = storage.clone();
            let due = match tokio::task::spawn_blocking(move || {
                s.claim_mail(crate::http::holds::now_ms(), LEASE_MS, CLAIM)
            })
            .await
            {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    if warn.allow() {
                        tracing::warn!(error = %e, "mail: reading the outbox");
                    }
                    continue;
                }
                Err(_) => continue,
            };
            if due.len() == CLAIM {
                pause = BUSY_PAUSE;
            }
            for mail in due {
                let (me, s) = (self.clone(), storage.clone());
                let done = tokio::task::spawn_blocking(move || me.deliver(&*s, mail)).await;
                if let Ok(Err(e)) = done
                    && warn.allow()
                {
                    tracing::warn!(error = %e, "mail: recording a delivery");
                }
            }
        }
    }

    /// Composes, sends and records one message.
    fn deliver(&self, db: &dyn Storage, mail: Mail) -> Result<(), StorageError> {
        let now = crate::http::holds::now_ms;
        let sent = self
            .compose(db, &mail)
            .and_then(|message| self.send(&message));
        let attempt = mail.attempts + 1;
        match sent {
            Ok(()) => {
                tracing::info!(order = %mail.order.code, kind = mail.kind.as_str(), "mail sent");
                db.mail_sent(mail.id, now())
            }
            Err(Failure::Transient(e)) if attempt < MAX_ATTEMPTS => {
                let pause = 1000u64 << attempt.min(12);
                let retry = now() + pause.min(3_600_000);
                tracing::warn!(order = %mail.order.code, attempt, error = %e, "mail not sent; trying again");
                db.mail_failed(mail.id, &e, now(), Some(retry))
            }
            Err(Failure::Transient(e) | Failure::Permanent(e)) => {
                tracing::warn!(order = %mail.order.code, error = %e, "mail given up");
                db.mail_failed(mail.id, &e, now(), None)
            }
        }
    }

    fn send(&self, message: &Message) -> Result<(), Failure> {
        match &self.transport {
            Transport::Files(dir) => lettre::FileTransport::new(dir)
                .send(message)
                .map(|_| ())
                .map_err(|e| Failure::Transient(format!("writing {}: {e}", dir.display()))),
            Transport::Smtp(smtp) => smtp.send(message).map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    Failure::Permanent(format!("the SMTP server refused it: {e}"))
                } else {
                    Failure::Transient(format!("SMTP: {e}"))
                }
            }),
        }
    }

    /// The message, as the buyer will read it.
    fn compose(&self, db: &dyn Storage, mail: &Mail) -> Result<Message, Failure> {
        let transient = |e: StorageError| Failure::Transient(e.to_string());
        let order = &mail.order;
        let to = order
            .email
            .parse()
            .map(|address| Mailbox::new(Some(order.name.clone()), address))
            .map_err(|e| Failure::Permanent(format!("the buyer's address: {e}")))?;
        let event = db.event(order.event_id, None).map_err(transient)?;
        let (venue, city) = db.venue_name(event.info.venue_id).map_err(transient)?;
        let when = crate::time::format(event.info.starts_at);
        let amount = money(order.amount, &order.currency);
        let builder = Message::builder().from(self.from.clone()).to(to).date_now();
        let hello = format!("Hello {},\n\n", order.name);
        let (subject, text, tickets) = match mail.kind {
            MailKind::Tickets => {
                if order.state != crate::domain::order::OrderState::Paid {
                    return Err(Failure::Permanent(format!(
                        "the order is {} now: its tickets are not sent",
                        order.state.as_str()
                    )));
                }
                if let Some(signer) = &self.signer {
                    let signer = signer
                        .get()
                        .map_err(|e| Failure::Transient(format!("the signing key: {e}")))?;
                    crate::issue::sign_order(
                        db,
                        &signer,
                        &order.code,
                        crate::http::holds::now_ms(),
                    )
                    .map_err(transient)?;
                }
                let tickets = db.tickets_of_order(&order.code).map_err(transient)?;
                if tickets.is_empty() {
                    return Err(Failure::Transient(
                        "the order's tickets are not signed yet".into(),
                    ));
                }
                let secret = crate::http::orders::link_secret(&self.link_key, &order.code);
                let mut text = format!(
                    "{hello}thank you for your order {code}: {n} ticket{s} for {name}, \
                     {when} (UTC), at {venue}, {city}. Paid: {amount}.\n\n",
                    code = order.code,
                    n = tickets.len(),
                    s = if tickets.len() == 1 { "" } else { "s" },
                    name = event.info.name,
                );
                for t in &tickets {
                    let place = t.seat.as_deref().unwrap_or("standing");
                    text.push_str(&format!("- {place} (ticket {})\n", t.ticket_id));
                }
                text.push_str(&format!(
                    "\nYour tickets are attached, one QR code each: show them at the entrance, \
                     on your phone or printed. Your order and its tickets are also at\n\n\
                     {}/api/v1/orders/{}?secret={secret}\n\n\
                     Keep this link to yourself: whoever has it can see your tickets.\n",
                    self.public_url.trim_end_matches('/'),
                    order.code,
                ));
                (
                    format!("Your tickets: {} (order {})", event.info.name, order.code),
                    text,
                    tickets,
                )
            }
            MailKind::Refund => (
                format!("Order {} cancelled: {amount} paid back", order.code),
                format!(
                    "{hello}your order {} for {}, {when} (UTC), was cancelled, and {amount} \
                     is paid back to the card you paid with. Its tickets are no longer valid.\n",
                    order.code, event.info.name
                ),
                Vec::new(),
            ),
            MailKind::LateRefund => (
                format!(
                    "Order {}: your payment came too late and is paid back",
                    order.code
                ),
                format!(
                    "{hello}your payment for order {} ({}, {when} UTC) arrived after your hold \
                     of the places had ended, and they could no longer be sold to you. {amount} \
                     is paid back to the card you paid with; no tickets were issued.\n",
                    order.code, event.info.name
                ),
                Vec::new(),
            ),
        };
        let builder = builder.subject(subject);
        let made = if tickets.is_empty() {
            builder.singlepart(SinglePart::plain(text))
        } else {
            let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(text));
            for (i, t) in tickets.iter().enumerate() {
                let picture = crate::qr::encode(&t.code)
                    .and_then(|symbol| crate::qr::png(&symbol, 8))
                    .map_err(|e| Failure::Transient(format!("drawing a ticket: {e}")))?;
                let name = match &t.seat {
                    Some(seat) => format!("ticket-{}-{seat}.png", i + 1),
                    None => format!("ticket-{}.png", i + 1),
                };
                parts = parts.singlepart(Attachment::new(name).body(
                    picture,
                    ContentType::parse("image/png").unwrap_or(ContentType::TEXT_PLAIN),
                ));
            }
            builder.multipart(parts)
        };
        made.map_err(|e| Failure::Permanent(format!("composing the message: {e}")))
    }
}

/// An amount in minor units, as a buyer reads it: `45.00 EUR`.
fn money(minor: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, minor % 100)
}
