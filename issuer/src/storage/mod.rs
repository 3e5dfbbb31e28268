//! Storage behind traits: what the services need of a database, one trait
//! per aggregate, and one implementation per engine ([`sqlite`] now). SQL
//! lives only in the implementations. Every implementation passes the same
//! contract suite (`tests/it/contract.rs`).
//!
//! The traits are object safe (`Arc<dyn Storage>`). Most methods block:
//! the HTTP layer calls them from tokio's blocking pool. The changes of the
//! buying path (hold, release, order, payment) are [`Pending`]: they take
//! owned arguments and return a future, so no thread waits on them; their
//! blocking forms [`wait`] on it. Whatever decides between
//! buyers (a seat sold once, a quota never exceeded) is decided by the
//! database, in one transaction, never by one process's memory.

pub mod holding;
pub mod postgres;
pub mod rows;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::Invalid;
use crate::domain::catalogue::{
    Category, Event, EventStatus, Genre, NewCategory, NewEvent, NewVenue,
};
use crate::domain::hold::{Hold, HoldRequest};
use crate::domain::order::{Buyer, Order};
use shared::TicketFields;

pub type OrganizerId = u64;

/// Most events one listing returns.
pub const MAX_LIST: usize = 200;

/// The keyset (JSON) scanners of `events` need at `now` (unix seconds),
/// from the data directory `dir`: the keys are kept there, whatever the
/// backend, and only public keys are read.
pub(crate) fn keyset_in(dir: &std::path::Path, events: &[u64], now: u64) -> Result<String> {
    let store = crate::Store::open(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
    let keyset = crate::keys::export_keyset(&store, events, now).map_err(keyset_error)?;
    Ok(keyset.to_json())
}

/// [`keyset_in`] with what the shop's database knows of the events.
pub(crate) fn keyset_of(
    dir: &std::path::Path,
    events: &[crate::keys::EventKeys],
    now: u64,
) -> Result<String> {
    let store = crate::Store::open(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
    let keys = crate::keys::list(&store).map_err(keyset_error)?;
    let keyset = crate::keys::keyset_of(&keys, events, now).map_err(keyset_error)?;
    Ok(keyset.to_json())
}

fn keyset_error(e: crate::Error) -> StorageError {
    match e {
        crate::Error::Invalid(m) => StorageError::Invalid(m),
        e => StorageError::Backend(e.to_string()),
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    /// Not there, or not the caller's to see: an organizer is never told
    /// whether another's event exists.
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Backend(String),
    /// The database cannot be reached or is busy now: nothing was
    /// changed, and the same request may be tried again shortly.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl From<Invalid> for StorageError {
    fn from(e: Invalid) -> StorageError {
        StorageError::Invalid(e.0)
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A venue as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Venue {
    pub id: u64,
    pub organizer_id: OrganizerId,
    #[serde(flatten)]
    pub info: NewVenue,
}

/// What a buyer browses by; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub genre: Option<Genre>,
    /// Compared without regard to case.
    pub city: Option<String>,
    /// Events starting at or after this (unix seconds).
    pub start_from: Option<u64>,
    /// Events starting before this.
    pub start_until: Option<u64>,
    /// Events with a category whose base price is within the range (minor
    /// units).
    pub min_price: Option<u64>,
    pub max_price: Option<u64>,
    /// The cursor: events after this (start, id), in that order.
    pub after: Option<(u64, u64)>,
    pub limit: usize,
    /// Drafts are listed to their organizer only.
    pub viewer: Option<OrganizerId>,
}

/// Venues, events and ticket categories, and the organizers who own them.
pub trait Catalogue: Send + Sync {
    /// Adds an organizer with its first API token (its SHA-256).
    fn add_organizer(&self, name: &str, token_hash: &[u8; 32], now: u64) -> Result<OrganizerId>;

    /// Whether any organizer sells here (a new shop has none).
    fn has_organizers(&self) -> Result<bool>;

    /// The organizer a token (by its SHA-256) belongs to, if it is valid.
    fn organizer_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<OrganizerId>>;

    fn add_venue(&self, by: OrganizerId, venue: &NewVenue) -> Result<Venue>;

    fn venue(&self, id: u64) -> Result<Venue>;
    /// A venue's name and city, without its plan (for messages).
    fn venue_name(&self, id: u64) -> Result<(String, String)>;

    /// A venue as `viewer` may see it: its organizer always, everyone once
    /// an event there is no longer a draft (venues are numbered in order:
    /// nothing is learnt of one not yet shown).
    fn venue_shown(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Venue>;

    /// Adds an event, as a draft, at one of the organizer's venues.
    fn add_event(&self, by: OrganizerId, event: &NewEvent) -> Result<Event>;

    /// Changes an event of the organizer's.
    fn update_event(&self, by: OrganizerId, id: u64, event: &NewEvent) -> Result<Event>;

    /// Moves an event of the organizer's to `status`, if it may go there.
    fn set_status(&self, by: OrganizerId, id: u64, status: EventStatus) -> Result<Event>;

    /// An event, as `viewer` may see it: a draft only by its organizer.
    fn event(&self, id: u64, viewer: Option<OrganizerId>) -> Result<Event>;

    /// Events by start, then id, after the query's cursor.
    fn events(&self, query: &EventQuery) -> Result<Vec<Event>>;

    /// Events matching every word of `query` (each as a prefix) in their
    /// name, performers, venue, city or description, best first; drafts
    /// only for their organizer.
    fn search(&self, query: &str, limit: usize, viewer: Option<OrganizerId>) -> Result<Vec<Event>>;

    /// Adds a ticket category to an event of the organizer's.
    fn add_category(
        &self,
        by: OrganizerId,
        event_id: u64,
        category: &NewCategory,
    ) -> Result<Category>;

    fn categories(&self, event_id: u64) -> Result<Vec<Category>>;

    /// The keyset (JSON) scanners of events of organizer `by`'s need at
    /// `now` (unix seconds): the public keys only.
    fn keyset(&self, by: OrganizerId, events: &[u64], now: u64) -> Result<String>;
}

/// What is left of a category, now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CategoryAvailability {
    pub category_id: u64,
    pub name: String,
    pub capacity: u64,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
    /// What one place costs if held now (minor units).
    pub price: u64,
    pub currency: String,
}

impl CategoryAvailability {
    /// What is left of category `c`: `capacity` places, `sold` of them
    /// sold and `held` held, priced as at `now_s` (unix seconds).
    pub fn of(c: Category, capacity: u64, sold: u64, held: u64, now_s: u64) -> Self {
        CategoryAvailability {
            category_id: c.id,
            price: c.info.pricing.price_at(now_s, sold, capacity),
            currency: c.info.pricing.currency,
            name: c.info.name,
            capacity,
            available: capacity.saturating_sub(sold + held),
            held,
            sold,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaceState {
    Available,
    Held,
    Sold,
}

/// An event's places now: every category's counts, every seat's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Availability {
    pub event_id: u64,
    /// The number of the last change this includes ([`PlaceChange::seq`]):
    /// the live feed goes on from there.
    pub seq: u64,
    pub categories: Vec<CategoryAvailability>,
    /// Seat key, category, state; in the plan's order.
    pub seats: Vec<(String, u64, PlaceState)>,
}

/// How places changed, as the live feed tells it. Each kind moves places
/// from one state to another: held (available to held), released and
/// expired (held to available), sold (held to sold), refunded (sold to
/// available). A place taken by a hold whose time passed is first told
/// expired, so the moves add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Held,
    Released,
    Expired,
    Sold,
    Refunded,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Held => "held",
            ChangeKind::Released => "released",
            ChangeKind::Expired => "expired",
            ChangeKind::Sold => "sold",
            ChangeKind::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        [
            ChangeKind::Held,
            ChangeKind::Released,
            ChangeKind::Expired,
            ChangeKind::Sold,
            ChangeKind::Refunded,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The states a place moves between.
    pub fn moves(self) -> (PlaceState, PlaceState) {
        match self {
            ChangeKind::Held => (PlaceState::Available, PlaceState::Held),
            ChangeKind::Released | ChangeKind::Expired => (PlaceState::Held, PlaceState::Available),
            ChangeKind::Sold => (PlaceState::Held, PlaceState::Sold),
            ChangeKind::Refunded => (PlaceState::Sold, PlaceState::Available),
        }
    }
}

/// One change of an event's places, numbered 1, 2, ... per event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlaceChange {
    pub event_id: u64,
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    pub kind: ChangeKind,
    /// The seats that moved, by key.
    pub seats: Vec<String>,
    /// How many places of each category moved, seats included.
    pub places: Vec<CategoryCount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CategoryCount {
    pub category_id: u64,
    pub count: u64,
}

/// A change on its way to the database: resolves once it is made, or
/// refused. Awaiting it holds no thread. Dropped before it resolves, a
/// hold or an order may be left unmade (no one is left to be told of it);
/// a release or a payment is made all the same.
pub type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

/// Waits for a pending change (or any storage future), blocking this
/// thread: for tests, the command line and the blocking pool, never for an
/// async task.
pub fn wait<T>(pending: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut pending = std::pin::pin!(pending);
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(out) = pending.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// A buyer's address, and the most places of one event it may hold at
/// once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub address: String,
    pub most: u32,
}

/// Places: held, let go, and what is left. Times are unix milliseconds,
/// passed in: a hold ends when its time passes, with nothing run then.
pub trait Inventory: Send + Sync {
    /// Takes every place asked for, or none (the first place that cannot
    /// be taken says why), for `ttl_ms`, at prices fixed now. The hold is
    /// known by its token's SHA-256.
    /// Blocks this thread until the hold is made ([`Inventory::hold_pending`]).
    fn hold(
        &self,
        request: &HoldRequest,
        token_hash: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Hold> {
        wait(self.hold_pending(request.clone(), *token_hash, now_ms, ttl_ms, None))
    }

    /// [`Inventory::hold`] without a thread waiting, for a client that may
    /// hold at most so many places of one event at once, paid ones aside.
    fn hold_pending(
        &self,
        request: HoldRequest,
        token_hash: [u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        client: Option<Client>,
    ) -> Pending<Hold>;

    /// A hold, as it stands at `now_ms`.
    fn hold_of(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold>;

    /// Lets a hold's places go at once (again: nothing changes). Blocks
    /// this thread ([`Inventory::release_pending`]).
    fn release(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
        wait(self.release_pending(*token_hash, now_ms))
    }

    /// [`Inventory::release`] without a thread waiting.
    fn release_pending(&self, token_hash: [u8; 32], now_ms: u64) -> Pending<Hold>;

    /// What an event (not a draft) has left at `now_ms`, with the number
    /// of the last change it includes.
    fn availability(&self, event_id: u64, now_ms: u64) -> Result<Availability>;

    /// An event's changes numbered after `after`, at most `limit`, in order.
    fn changes(&self, event_id: u64, after: u64, limit: usize) -> Result<Vec<PlaceChange>>;

    /// Every event's changes after `cursor` in the order they were made, at
    /// most `limit`, and the cursor after them (for fanning them out).
    fn changes_after(&self, cursor: u64, limit: usize) -> Result<(u64, Vec<PlaceChange>)>;

    /// The cursor of the newest change: [`Inventory::changes_after`] from it
    /// returns only changes made later.
    fn change_cursor(&self) -> Result<u64>;

    /// Tells the feed of every hold whose time has passed by `now_ms`
    /// (nothing waits on this: an expired hold stops counting anyway).
    /// Returns how many holds it told of.
    fn announce_expired(&self, now_ms: u64) -> Result<usize>;

    /// Says to the other processes on this database, if any, that places
    /// changed here (they look at the feed at once rather than at their
    /// next pass). Never waits.
    fn tell_others(&self) {}

    /// Wakes `wake` whenever another process says places changed
    /// ([`Inventory::tell_others`]), for as long as the process runs.
    fn wake_on_others(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let _ = wake;
    }
}

/// What makes a new order.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub hold_hash: [u8; 32],
    pub code: String,
    pub secret_hash: [u8; 32],
    pub buyer: Buyer,
    /// The `Idempotency-Key` and the SHA-256 of the request it came with.
    pub idempotency: Option<(String, [u8; 32])>,
    /// The provider's payment method (`pm_...`).
    pub payment_method: Option<String>,
}

/// What a new order came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New(Order),
    /// The same request was made before with this idempotency key.
    Again(Order),
}

/// Tickets signed before their order's payment is settled: the signing
/// key's id, and each ticket's fields with its code.
#[derive(Clone, Debug)]
pub struct Signed {
    pub key_id: String,
    pub tickets: Vec<(TicketFields, String)>,
}

/// What a payment that succeeded came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Paid now: its places are sold (held again if the hold had expired
    /// and they were still free).
    Paid(Order),
    /// Paid before: the same news again.
    Already(Order),
    /// Its places are gone, or the order was given up: the money goes back
    /// ([`Orders::mark_refunded`] once it has).
    MustRefund(Order),
}

/// Orders, from the hold to payment and refund.
pub trait Orders: Send + Sync {
    /// Makes a pending order of an active hold's places; one live order
    /// per hold. Blocks this thread ([`Orders::create_order_pending`]).
    fn create_order(&self, new: &NewOrder, now_ms: u64) -> Result<Created> {
        wait(self.create_order_pending(new.clone(), now_ms))
    }

    /// [`Orders::create_order`] without a thread waiting.
    fn create_order_pending(&self, new: NewOrder, now_ms: u64) -> Pending<Created>;

    /// The order with `code`, if `secret_hash` is its link's.
    fn order(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Order>;

    /// The order paid by a payment.
    fn order_by_intent(&self, intent: &str) -> Result<Order>;

    /// Notes the payment charging an order.
    fn set_intent(&self, code: &str, intent: &str, now_ms: u64) -> Result<Order>;

    /// Settles a payment that succeeded ([`crate::domain::order::settle_payment`]).
    fn settle_paid(&self, code: &str, now_ms: u64) -> Result<Settled>;

    /// Notes the payment charging an order and settles it as succeeded
    /// ([`Orders::set_intent`] then [`Orders::settle_paid`]), in one change.
    /// If that made the order paid, the change records its tickets
    /// `signed` ahead too ([`Orders::tickets_to_sign_ahead`]); tickets that
    /// cannot be recorded leave the payment settled all the same, with no
    /// tickets yet.
    fn pay_pending(
        &self,
        code: String,
        intent: String,
        now_ms: u64,
        signed: Option<Signed>,
    ) -> Pending<Settled>;

    /// A payment refused: the order failed (its hold stands until its time).
    fn mark_failed(&self, code: &str, why: &str, now_ms: u64) -> Result<Order>;

    /// The money went back.
    fn mark_refunded(&self, code: &str, refund: &str, why: &str, now_ms: u64) -> Result<Order>;

    /// What a paid order's tickets say, if they are still to be signed:
    /// one a place, with a fresh random id each.
    fn tickets_to_sign(&self, code: &str) -> Result<Option<Vec<TicketFields>>>;

    /// What an order's tickets will say once it is paid, whatever its
    /// state now (`None` once they are signed): so they can be signed
    /// before its payment is settled ([`Orders::pay_pending`]).
    fn tickets_to_sign_ahead(&self, code: &str) -> Result<Option<Vec<TicketFields>>>;

    /// Records a paid order's signed tickets (`(fields, code)`), signed by
    /// `key_id`; once (a second time changes nothing).
    fn record_tickets(
        &self,
        code: &str,
        key_id: &str,
        tickets: &[(TicketFields, String)],
        now_ms: u64,
    ) -> Result<()>;

    /// A paid order's tickets, if `secret_hash` is its link's.
    fn order_tickets(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Vec<IssuedTicket>>;

    /// The signed code of ticket `ticket_id` (32 hex digits), if it was
    /// issued to an order whose link's secret is `secret_hash`.
    fn ticket_code(&self, ticket_id: &str, secret_hash: &[u8; 32]) -> Result<String>;

    /// An order of an event of organizer `by`'s.
    fn organizer_order(&self, by: OrganizerId, code: &str) -> Result<Order>;

    /// Pending orders last changed at or before `before_ms` and made after
    /// `since_ms`, oldest change first, with their payment method: the
    /// ones whose payment's outcome is to be asked of the provider. Each
    /// is noted as changed at `now_ms`, so that no one else (another
    /// process) asks about it until `before_ms` passes it again.
    fn claim_unsettled(
        &self,
        before_ms: u64,
        since_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Order, Option<String>)>>;

    /// An order by its code alone, with its payment method: for the
    /// issuer's own use (never for answering a request unchecked).
    fn order_by_code(&self, code: &str) -> Result<(Order, Option<String>)>;

    /// A paid ticket of an order of organizer `by`'s event, as it would
    /// be issued again: the same place and validity, a fresh random id.
    fn ticket_to_reissue(
        &self,
        by: OrganizerId,
        code: &str,
        ticket_id: &str,
    ) -> Result<TicketFields>;

    /// Replaces ticket `old` of the order with `new` (its fields and signed
    /// code, by `key_id`): the old one is void and revoked, the new one is
    /// the order's.
    fn reissue_ticket(
        &self,
        by: OrganizerId,
        code: &str,
        old: &str,
        key_id: &str,
        new: &(TicketFields, String),
        now_ms: u64,
    ) -> Result<IssuedTicket>;

    /// Gives up a pending order (its places are free again once its hold's
    /// time is past, or at once if the hold is let go).
    fn cancel_pending(&self, code: &str, now_ms: u64) -> Result<Order>;

    /// An event of organizer `by`'s sales at `now_ms`.
    fn figures(&self, by: OrganizerId, event_id: u64, now_ms: u64) -> Result<Figures>;

    /// Revoked tickets of events of organizer `by`'s, after `since` in the
    /// feed's order.
    fn revocations(
        &self,
        by: OrganizerId,
        events: &[u64],
        since: u64,
        limit: usize,
    ) -> Result<Vec<Revocation>>;
}

/// An event's sales, for its organizer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Figures {
    pub event_id: u64,
    pub currency: String,
    /// Paid orders' amounts, in minor units.
    pub revenue: u64,
    /// Orders by state.
    pub orders: std::collections::BTreeMap<String, u64>,
    /// Holds whose time has not passed, not let go, not yet paid.
    pub active_holds: u64,
    pub categories: Vec<CategoryFigures>,
    /// Places sold and revenue by UTC day the orders were paid.
    pub by_day: Vec<DayFigures>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CategoryFigures {
    pub category_id: u64,
    pub name: String,
    pub capacity: u64,
    pub sold: u64,
    pub held: u64,
    pub revenue: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DayFigures {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub places: u64,
    pub revenue: u64,
}

/// A ticket no longer good, in the order revocations were made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    pub seq: u64,
    pub event_id: u64,
    /// 32 hex digits.
    pub ticket_id: String,
    /// Unix milliseconds.
    pub revoked_at: u64,
    pub reason: String,
}

/// A ticket issued to an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedTicket {
    /// 32 hex digits.
    pub ticket_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seat: Option<String>,
    pub category: u16,
    /// The signed code the QR picture holds.
    pub code: String,
}

/// What a message to a buyer is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// The order is paid: its tickets.
    Tickets,
    /// The order was cancelled and paid back.
    Refund,
    /// The payment came after the places were gone: paid back.
    LateRefund,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Tickets => "tickets",
            MailKind::Refund => "refund",
            MailKind::LateRefund => "late_refund",
        }
    }

    pub fn parse(s: &str) -> Option<MailKind> {
        [MailKind::Tickets, MailKind::Refund, MailKind::LateRefund]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A message owed to a buyer, taken by a mail worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    pub id: u64,
    pub kind: MailKind,
    pub order: Order,
    /// Deliveries tried before this one.
    pub attempts: u32,
}

/// Messages owed to buyers. The storage queues them itself, in the
/// transaction that gives cause to them: an order paid (its tickets), an
/// order paid back (cancelled, or paid too late).
pub trait Outbox: Send + Sync {
    /// Takes messages due at `now_ms`, at most `limit`, for `lease_ms`:
    /// until then no other worker takes them.
    fn claim_mail(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<Vec<Mail>>;

    /// A message was delivered.
    fn mail_sent(&self, id: u64, now_ms: u64) -> Result<()>;

    /// A delivery failed: tried again from `retry_at`, or given up (`None`).
    fn mail_failed(&self, id: u64, error: &str, now_ms: u64, retry_at: Option<u64>) -> Result<()>;

    /// An order's tickets, for the message to its own buyer.
    fn tickets_of_order(&self, code: &str) -> Result<Vec<IssuedTicket>>;
}

/// Everything the issuer stores.
pub trait Storage: Catalogue + Inventory + Orders + Outbox {}

impl<T: Catalogue + Inventory + Orders + Outbox> Storage for T {}
