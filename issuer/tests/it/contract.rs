//! The storage contract: what every backend must do, run unchanged against
//! each (SQLite and PostgreSQL). A backend is made fresh for each test by
//! `backends()`.

use issuer::domain::catalogue::{EventStatus, Genre, NewCategory, NewEvent, NewVenue, Places};
use issuer::domain::hold::{HoldItem, HoldRequest, HoldState};
use issuer::domain::order::{Buyer, OrderState};
use issuer::domain::pricing::Pricing;
use issuer::domain::pricing::TimeTier;
use issuer::domain::venue::{Area, Row, Seat, SeatingPlan, Section};
use issuer::storage::{
    Client, Created, EventQuery, NewOrder, OrganizerId, PlaceState, Settled, Storage, StorageError,
    wait,
};

/// Every backend under test, each fresh and empty, with a name for
/// messages: the embedded one, and PostgreSQL where a server can be had
/// (`crate::pg`; under CI it must be).
fn backends() -> Vec<(&'static str, Box<dyn Storage>, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = issuer::storage::sqlite::SqliteStorage::open(&tmp.path().join("data")).unwrap();
    let mut all: Vec<(&'static str, Box<dyn Storage>, tempfile::TempDir)> =
        vec![("sqlite", Box::new(sqlite), tmp)];
    if let Some(url) = crate::pg::fresh_database() {
        let tmp = tempfile::tempdir().unwrap();
        let pg = open_postgres(&url, &tmp);
        all.push(("postgres", Box::new(pg), tmp));
    }
    all
}

fn open_postgres(url: &str, tmp: &tempfile::TempDir) -> issuer::storage::postgres::PgStorage {
    issuer::storage::postgres::PgStorage::open_blocking(url, &tmp.path().join("data")).unwrap()
}

/// A handle on PostgreSQL database `url`, with its data directory in
/// `tmp`: two of them stand for two processes.
fn postgres(url: &str, tmp: &tempfile::TempDir) -> std::sync::Arc<dyn Storage> {
    std::sync::Arc::new(open_postgres(url, tmp))
}

/// A fresh PostgreSQL database, and one handle on it (its data directory
/// kept while the third is), for tests of PostgreSQL alone; `None` where
/// no server can be had (`crate::pg`; under CI it must be).
fn one_postgres() -> Option<(String, std::sync::Arc<dyn Storage>, tempfile::TempDir)> {
    let url = crate::pg::fresh_database()?;
    let tmp = tempfile::tempdir().unwrap();
    let db = postgres(&url, &tmp);
    Some((url, db, tmp))
}

fn plan() -> SeatingPlan {
    let section = |id: &str| Section {
        id: id.into(),
        name: format!("Section {id}"),
        rows: (1..=3)
            .map(|r| Row {
                label: r.to_string(),
                seats: (1..=10)
                    .map(|n| Seat {
                        label: n.to_string(),
                        x: n as f32,
                        y: r as f32,
                    })
                    .collect(),
            })
            .collect(),
    };
    SeatingPlan {
        sections: vec![section("A"), section("B")],
        areas: vec![Area {
            id: "floor".into(),
            name: "Standing".into(),
            capacity: 500,
        }],
    }
}

fn venue(city: &str) -> NewVenue {
    NewVenue {
        name: format!("Hall of {city}"),
        city: city.into(),
        address: String::new(),
        plan: plan(),
    }
}

fn event(venue_id: u64, name: &str, genre: Genre, starts_at: u64) -> NewEvent {
    NewEvent {
        name: name.into(),
        description: String::new(),
        performers: vec![],
        genre,
        venue_id,
        starts_at,
        ends_at: starts_at + 3600,
        buyers_cancel_until: None,
    }
}

fn category(places: Places, price: u64) -> NewCategory {
    NewCategory {
        name: "Stalls".into(),
        pricing: Pricing {
            price,
            currency: "EUR".into(),
            time_tiers: vec![],
            demand_tiers: vec![],
        },
        places,
        sale_starts: 0,
        sale_ends: 2_000_000_000,
        per_order: 10,
    }
}

fn organizer(db: &dyn Storage, n: u8) -> OrganizerId {
    db.add_organizer(&format!("Promoter {n}"), &[n; 32], 1)
        .unwrap()
}

fn not_found<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::NotFound(_)))
}

#[test]
fn an_organizer_is_known_by_its_token_and_no_other() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let b = organizer(&*db, 2);
        assert_ne!(a, b, "{name}");
        assert_eq!(db.organizer_by_token(&[1; 32]).unwrap(), Some(a), "{name}");
        assert_eq!(db.organizer_by_token(&[2; 32]).unwrap(), Some(b), "{name}");
        assert_eq!(db.organizer_by_token(&[3; 32]).unwrap(), None, "{name}");
        // The same token twice is refused, not given to a second organizer.
        assert!(db.add_organizer("Copycat", &[1; 32], 1).is_err(), "{name}");
    }
}

#[test]
fn an_event_is_a_draft_seen_by_its_organizer_until_it_goes_on_sale() {
    for (name, db, _tmp) in backends() {
        let (a, b) = (organizer(&*db, 1), organizer(&*db, 2));
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        assert_eq!(db.venue(v.id).unwrap(), v, "{name}");
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap();
        assert_eq!(
            (e.status, e.city.as_str()),
            (EventStatus::Draft, "Lyon"),
            "{name}"
        );
        assert_eq!(db.event(e.id, Some(a)).unwrap(), e, "{name}");
        assert!(not_found(db.event(e.id, Some(b))), "{name}");
        assert!(not_found(db.event(e.id, None)), "{name}");
        let all = |viewer| {
            db.events(&EventQuery {
                limit: 50,
                viewer,
                ..Default::default()
            })
            .unwrap()
            .len()
        };
        assert_eq!((all(None), all(Some(b)), all(Some(a))), (0, 0, 1), "{name}");
        let on_sale = db.set_status(a, e.id, EventStatus::OnSale).unwrap();
        assert_eq!(db.event(e.id, None).unwrap(), on_sale, "{name}");
        assert_eq!(all(None), 1, "{name}");
        // Nothing comes back from cancelled.
        db.set_status(a, e.id, EventStatus::Cancelled).unwrap();
        assert!(matches!(
            db.set_status(a, e.id, EventStatus::OnSale),
            Err(StorageError::Conflict(_))
        ));
    }
}

#[test]
fn an_organizer_touches_only_its_own_venues_and_events() {
    for (name, db, _tmp) in backends() {
        let (a, b) = (organizer(&*db, 1), organizer(&*db, 2));
        let va = db.add_venue(a, &venue("Lyon")).unwrap();
        let vb = db.add_venue(b, &venue("Nice")).unwrap();
        let e = db
            .add_event(a, &event(va.id, "Night", Genre::Concert, 1000))
            .unwrap();
        // B cannot sell at A's venue, change A's event, or add to it.
        assert!(
            not_found(db.add_event(b, &event(va.id, "Squat", Genre::Other, 5))),
            "{name}"
        );
        assert!(not_found(db.update_event(
            b,
            e.id,
            &event(vb.id, "Mine", Genre::Other, 5)
        )));
        assert!(
            not_found(db.set_status(b, e.id, EventStatus::Cancelled)),
            "{name}"
        );
        let seats = Places::Seats {
            sections: vec!["A".into()],
        };
        assert!(not_found(db.add_category(
            b,
            e.id,
            &category(seats.clone(), 100)
        )));
        // Nor move A's event to its own venue, through A's id.
        assert!(not_found(db.update_event(
            a,
            e.id,
            &event(vb.id, "Night", Genre::Concert, 1000)
        )));
        // A's event is as it was.
        assert_eq!(db.event(e.id, Some(a)).unwrap(), e, "{name}");
        assert!(db.categories(e.id).unwrap().is_empty(), "{name}");
        // A may change it.
        let mut changed = event(va.id, "Late night", Genre::Comedy, 2000);
        changed.performers = vec!["Someone".into()];
        let e2 = db.update_event(a, e.id, &changed).unwrap();
        assert_eq!(e2.info, changed, "{name}");
    }
}

#[test]
fn categories_sell_sections_or_quotas_the_venue_has_each_section_once() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap();
        let seats = |s: &[&str]| Places::Seats {
            sections: s.iter().map(|s| s.to_string()).collect(),
        };
        let c = db
            .add_category(a, e.id, &category(seats(&["A"]), 4500))
            .unwrap();
        let invalid = |places: Places| {
            matches!(
                db.add_category(a, e.id, &category(places, 100)),
                Err(StorageError::Invalid(_))
            )
        };
        assert!(invalid(seats(&["A"])), "{name}: section A twice");
        assert!(invalid(seats(&["Z"])), "{name}: no section Z");
        assert!(invalid(Places::Quota {
            area: "floor".into(),
            places: 501
        }));
        assert!(invalid(Places::Quota {
            area: "roof".into(),
            places: 1
        }));
        let q = db
            .add_category(
                a,
                e.id,
                &category(
                    Places::Quota {
                        area: "floor".into(),
                        places: 500,
                    },
                    2000,
                ),
            )
            .unwrap();
        assert_eq!(db.categories(e.id).unwrap(), vec![c, q], "{name}");
        // With categories on sale there, the venue cannot change.
        let other = db.add_venue(a, &venue("Nice")).unwrap();
        assert!(matches!(
            db.update_event(a, e.id, &event(other.id, "Night", Genre::Concert, 1000)),
            Err(StorageError::Conflict(_))
        ));
    }
}

#[test]
fn browsing_filters_by_genre_city_dates_and_price_and_pages_by_cursor() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let lyon = db.add_venue(a, &venue("Lyon")).unwrap();
        let nice = db.add_venue(a, &venue("Nice")).unwrap();
        let mut ids = Vec::new();
        for i in 0..30u64 {
            let (v, genre) = match i % 3 {
                0 => (&lyon, Genre::Concert),
                1 => (&nice, Genre::Theatre),
                _ => (&lyon, Genre::Sports),
            };
            // Two events at each start, to page through ties.
            let e = db
                .add_event(a, &event(v.id, &format!("E{i}"), genre, 1000 + i / 2))
                .unwrap();
            let seats = Places::Seats {
                sections: vec!["A".into()],
            };
            db.add_category(a, e.id, &category(seats, 1000 * (i + 1)))
                .unwrap();
            db.set_status(a, e.id, EventStatus::OnSale).unwrap();
            ids.push(e.id);
        }
        let list =
            |q: EventQuery| -> Vec<u64> { db.events(&q).unwrap().iter().map(|e| e.id).collect() };
        let q = || EventQuery {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(list(q()), ids, "{name}: by start, then id");
        let concerts = list(EventQuery {
            genre: Some(Genre::Concert),
            ..q()
        });
        assert_eq!(
            concerts,
            ids.iter().copied().step_by(3).collect::<Vec<_>>(),
            "{name}"
        );
        let in_nice = list(EventQuery {
            city: Some("NICE".into()),
            ..q()
        });
        assert_eq!(
            in_nice,
            ids.iter().copied().skip(1).step_by(3).collect::<Vec<_>>()
        );
        let window = list(EventQuery {
            start_from: Some(1005),
            start_until: Some(1007),
            ..q()
        });
        assert_eq!(window, ids[10..14].to_vec(), "{name}: starts 1005 and 1006");
        let priced = list(EventQuery {
            min_price: Some(5000),
            max_price: Some(7000),
            ..q()
        });
        assert_eq!(priced, ids[4..7].to_vec(), "{name}: 5000 to 7000");
        // Pages of 7 by cursor hold every event once, in order.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = db
                .events(&EventQuery {
                    limit: 7,
                    after,
                    ..Default::default()
                })
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.info.starts_at, last.id));
            paged.extend(page.iter().map(|e| e.id));
        }
        assert_eq!(paged, ids, "{name}");
    }
}

#[test]
fn what_a_buyer_or_organizer_cannot_mean_is_refused_and_nothing_is_stored() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let mut bad = venue("Lyon");
        bad.plan.sections[1].id = "A".into();
        assert!(
            matches!(db.add_venue(a, &bad), Err(StorageError::Invalid(_))),
            "{name}"
        );
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        let mut backwards = event(v.id, "Night", Genre::Concert, 1000);
        backwards.ends_at = 10;
        assert!(matches!(
            db.add_event(a, &backwards),
            Err(StorageError::Invalid(_))
        ));
        assert!(not_found(
            db.add_event(a, &event(v.id + 100, "Nowhere", Genre::Other, 1))
        ));
        assert!(not_found(db.venue(v.id + 100)), "{name}");
        assert!(not_found(db.event(u64::MAX, Some(a))), "{name}");
        let list = db
            .events(&EventQuery {
                limit: 10,
                viewer: Some(a),
                ..Default::default()
            })
            .unwrap();
        assert!(list.is_empty(), "{name}: nothing was stored");
    }
}

#[test]
fn search_finds_words_by_prefix_best_match_first_and_follows_changes() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let lyon = db.add_venue(a, &venue("Lyon")).unwrap();
        let nice = db.add_venue(a, &venue("Nice")).unwrap();
        let add = |v: u64, title: &str, performers: &[&str], description: &str, live: bool| {
            let mut e = event(v, title, Genre::Concert, 1000);
            e.performers = performers.iter().map(|p| p.to_string()).collect();
            e.description = description.into();
            let e = db.add_event(a, &e).unwrap();
            if live {
                db.set_status(a, e.id, EventStatus::OnSale).unwrap();
            }
            e.id
        };
        let punk = add(lyon.id, "Around the World", &["Daft Punk"], "", true);
        let hamlet = add(
            nice.id,
            "Hamlet",
            &[],
            "Shakespeare's tragedy, with punk music",
            true,
        );
        let beguin = add(nice.id, "Chansons", &["Béguin"], "", true);
        let draft = add(lyon.id, "Secret Punk Show", &[], "", false);
        let found = |q: &str, viewer| -> Vec<u64> {
            db.search(q, 20, viewer)
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(
            found("daf", None),
            vec![punk],
            "{name}: a performer by prefix"
        );
        assert_eq!(
            found("shakesp", None),
            vec![hamlet],
            "{name}: the description"
        );
        assert_eq!(
            found("beguin", None),
            vec![beguin],
            "{name}: without accents"
        );
        assert_eq!(
            found("nice chans", None),
            vec![beguin],
            "{name}: every word"
        );
        // A performer's name ranks above a word in a description; a draft
        // is found by its organizer only.
        assert_eq!(found("punk", None), vec![punk, hamlet], "{name}");
        assert_eq!(found("punk", Some(a)), vec![draft, punk, hamlet], "{name}");
        assert_eq!(
            found("hall lyon", None),
            vec![punk],
            "{name}: the venue and city"
        );
        // Nothing typed is read as a query language.
        for q in ["", "\"", "*", "punk OR", "NEAR(punk)", "name:punk", "-punk"] {
            let _ = db.search(q, 20, None).unwrap();
        }
        assert!(found("\"*", None).is_empty(), "{name}");
        // A renamed event is found by its new name only.
        let mut renamed = event(nice.id, "Macbeth", Genre::Theatre, 1000);
        renamed.description = "Another tragedy".into();
        db.update_event(a, hamlet, &renamed).unwrap();
        assert!(found("hamlet", None).is_empty(), "{name}");
        assert_eq!(found("macb", None), vec![hamlet], "{name}");
    }
}

/// An event on sale at a venue of sections A and B (3 rows of 10 seats)
/// and a standing floor: category "seats" sells A, "floor" a quota of
/// `quota`. Returns (event, seats category, floor category).
fn on_sale(db: &dyn Storage, quota: u32) -> (u64, u64, u64) {
    let a = organizer(db, 1);
    let v = db.add_venue(a, &venue("Lyon")).unwrap();
    let e = db
        .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
        .unwrap();
    let seats = Places::Seats {
        sections: vec!["A".into()],
    };
    let s = db.add_category(a, e.id, &category(seats, 4500)).unwrap();
    let floor = Places::Quota {
        area: "floor".into(),
        places: quota,
    };
    let f = db.add_category(a, e.id, &category(floor, 2000)).unwrap();
    db.set_status(a, e.id, EventStatus::OnSale).unwrap();
    (e.id, s.id, f.id)
}

fn seats(event_id: u64, keys: &[&str]) -> HoldRequest {
    HoldRequest {
        event_id,
        items: vec![HoldItem::Seats {
            seats: keys.iter().map(|k| k.to_string()).collect(),
        }],
    }
}

/// A hold of `n` places of category `c` (a quota) of event `e`.
fn quantity_of(e: u64, c: u64, n: u32) -> HoldRequest {
    HoldRequest {
        event_id: e,
        items: vec![HoldItem::Quantity {
            category_id: c,
            quantity: n,
        }],
    }
}

/// The state of seat `key` at `now`.
fn seat_state(db: &dyn Storage, event: u64, key: &str, now: u64) -> PlaceState {
    db.availability(event, now)
        .unwrap()
        .seats
        .into_iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, _, s)| s)
        .unwrap()
}

/// The live feed adds up: every change of the event from the first,
/// applied to the event with every place free, gives what its availability
/// says at `now`, seat by seat and count by count.
fn feed_adds_up(db: &dyn Storage, e: u64, now: u64, name: &str) {
    let a = db.availability(e, now).unwrap();
    let changes = db.changes(e, 0, 10_000).unwrap();
    assert_eq!(
        changes.len() as u64,
        a.seq,
        "{name}: numbered 1 to {}",
        a.seq
    );
    let mut seats: std::collections::HashMap<String, PlaceState> = a
        .seats
        .iter()
        .map(|(k, _, _)| (k.clone(), PlaceState::Available))
        .collect();
    let mut counts: std::collections::BTreeMap<u64, [i64; 3]> = a
        .categories
        .iter()
        .map(|c| (c.category_id, [c.capacity as i64, 0, 0]))
        .collect();
    let slot = |s: PlaceState| match s {
        PlaceState::Available => 0,
        PlaceState::Held => 1,
        PlaceState::Sold => 2,
    };
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1, "{name}");
        let (from, to) = c.kind.moves();
        for k in &c.seats {
            let state = seats.get_mut(k).unwrap();
            assert_eq!(*state, from, "{name}: {k} in change {c:?}");
            *state = to;
        }
        for p in &c.places {
            let n = counts.get_mut(&p.category_id).unwrap();
            n[slot(from)] -= p.count as i64;
            n[slot(to)] += p.count as i64;
        }
    }
    for (k, _, state) in &a.seats {
        assert_eq!(seats[k], *state, "{name}: seat {k}");
    }
    for c in &a.categories {
        let told = [c.available as i64, c.held as i64, c.sold as i64];
        assert_eq!(
            counts[&c.category_id], told,
            "{name}: category {}",
            c.category_id
        );
    }
}

const MIN: u64 = 60_000;
const T0: u64 = 1_000_000_000;

#[test]
fn a_hold_takes_every_seat_asked_for_or_none_and_ends_by_itself() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 10);
        let h = db
            .hold(&seats(e, &["A-1-1", "A-1-2"]), &[1; 32], T0, 10 * MIN)
            .unwrap();
        assert_eq!(
            (h.state, h.total, h.places.len()),
            (HoldState::Active, 9000, 2),
            "{name}"
        );
        assert_eq!(seat_state(&*db, e, "A-1-1", T0), PlaceState::Held, "{name}");
        // One seat of the second request is taken: nothing of it is held.
        let clash = db.hold(&seats(e, &["A-1-3", "A-1-2"]), &[2; 32], T0 + 1, 10 * MIN);
        assert!(
            matches!(&clash, Err(StorageError::Conflict(m)) if m.contains("A-1-2")),
            "{name}: {clash:?}"
        );
        assert_eq!(
            seat_state(&*db, e, "A-1-3", T0 + 1),
            PlaceState::Available,
            "{name}"
        );
        assert!(not_found(db.hold_of(&[2; 32], T0 + 1)), "{name}");
        // Ten minutes on, the hold stopped counting, with nothing run.
        let later = T0 + 10 * MIN;
        assert_eq!(
            db.hold_of(&[1; 32], later).unwrap().state,
            HoldState::Expired,
            "{name}"
        );
        assert_eq!(
            seat_state(&*db, e, "A-1-2", later),
            PlaceState::Available,
            "{name}"
        );
        db.hold(&seats(e, &["A-1-2"]), &[3; 32], later, 10 * MIN)
            .unwrap();
        assert_eq!(
            seat_state(&*db, e, "A-1-2", later),
            PlaceState::Held,
            "{name}"
        );
    }
}

#[test]
fn a_released_hold_frees_its_places_at_once_and_releasing_again_changes_nothing() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 4);
        let req = HoldRequest {
            event_id: e,
            items: vec![
                HoldItem::Quantity {
                    category_id: floor,
                    quantity: 4,
                },
                HoldItem::Seats {
                    seats: vec!["A-2-5".into()],
                },
            ],
        };
        db.hold(&req, &[1; 32], T0, 10 * MIN).unwrap();
        let left = |t| {
            db.availability(e, t)
                .unwrap()
                .categories
                .iter()
                .find(|c| c.category_id == floor)
                .map(|c| c.available)
                .unwrap()
        };
        assert_eq!(left(T0), 0, "{name}");
        let released = db.release(&[1; 32], T0 + 5).unwrap();
        assert_eq!(released.state, HoldState::Released, "{name}");
        assert_eq!(left(T0 + 5), 4, "{name}");
        assert_eq!(seat_state(&*db, e, "A-2-5", T0 + 5), PlaceState::Available);
        assert_eq!(
            db.release(&[1; 32], T0 + 6).unwrap().state,
            HoldState::Released
        );
        assert!(not_found(db.release(&[9; 32], T0)), "{name}");
        feed_adds_up(&*db, e, T0 + 20 * MIN, name);
    }
}

#[test]
fn a_quota_is_never_held_beyond_its_places() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 5);
        let q = |n| HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: n,
            }],
        };
        db.hold(&q(3), &[1; 32], T0, MIN).unwrap();
        let short = db.hold(&q(3), &[2; 32], T0, MIN);
        assert!(
            matches!(&short, Err(StorageError::Conflict(m)) if m.contains("2 places left")),
            "{name}: {short:?}"
        );
        db.hold(&q(2), &[3; 32], T0, MIN).unwrap();
        assert!(matches!(
            db.hold(&q(1), &[4; 32], T0, MIN),
            Err(StorageError::Conflict(_))
        ));
        let c = db.availability(e, T0).unwrap().categories;
        let floor_now = c.iter().find(|c| c.category_id == floor).unwrap();
        assert_eq!(
            (floor_now.held, floor_now.available, floor_now.capacity),
            (5, 0, 5)
        );
    }
}

#[test]
fn best_seats_sit_together_leaving_no_lone_seat_when_they_can() {
    for (name, db, _tmp) in backends() {
        let (e, s, _) = on_sale(&*db, 1);
        // Row 1 keeps seats 1 to 3 free: two there would leave one alone.
        let taken: Vec<String> = (4..=10).map(|n| format!("A-1-{n}")).collect();
        let keys: Vec<&str> = taken.iter().map(String::as_str).collect();
        db.hold(&seats(e, &keys), &[1; 32], T0, 10 * MIN).unwrap();
        let best = |n, token: u8| best_of(&*db, e, s, n, token, T0, 10 * MIN);
        let got = best(2, 2).unwrap();
        assert_eq!(got.len(), 2, "{name}");
        assert!(got.iter().all(|k| k.starts_with("A-2-")), "{name}: {got:?}");
        // Three fit exactly in row 1.
        let got = best(3, 3).unwrap();
        assert_eq!(got, ["A-1-1", "A-1-2", "A-1-3"], "{name}");
        // No row has 11.
        assert!(matches!(
            best(11, 4),
            Err(StorageError::Invalid(_) | StorageError::Conflict(_))
        ));
    }
}

/// The seats a hold of the best `n` of category `s` got, or why not.
fn best_of(
    db: &dyn Storage,
    e: u64,
    s: u64,
    n: u32,
    token: u8,
    now: u64,
    ttl: u64,
) -> Result<Vec<String>, StorageError> {
    let hold = db.hold(
        &HoldRequest {
            event_id: e,
            items: vec![HoldItem::Best {
                category_id: s,
                quantity: n,
            }],
        },
        &[token; 32],
        now,
        ttl,
    )?;
    Ok(hold.places.into_iter().filter_map(|p| p.seat).collect())
}

#[test]
fn best_seats_are_chosen_from_the_seats_as_they_are_after_every_kind_of_change() {
    for (name, db, _tmp) in backends() {
        let (e, s, _) = on_sale(&*db, 5);
        let middle = ["A-1-5", "A-1-6"];
        // Row 1's middle pair, empty hall.
        assert_eq!(
            best_of(&*db, e, s, 2, 1, T0, MIN).unwrap(),
            middle,
            "{name}"
        );
        // Let go: the same pair again.
        db.release(&[1; 32], T0).unwrap();
        assert_eq!(
            best_of(&*db, e, s, 2, 2, T0, MIN).unwrap(),
            middle,
            "{name}"
        );
        // Lapsed: the same pair again, to whoever asks after.
        let t1 = T0 + 2 * MIN;
        assert_eq!(
            best_of(&*db, e, s, 2, 3, t1, 10 * MIN).unwrap(),
            middle,
            "{name}"
        );
        // Taken: the next best, beside it.
        let beside = best_of(&*db, e, s, 2, 4, t1, MIN).unwrap();
        assert!(
            beside
                .iter()
                .all(|k| k.starts_with("A-1-") && !middle.contains(&k.as_str())),
            "{name}: {beside:?}"
        );
        // A request refused whole, after hold 4 lapsed untold: the lapse
        // it told and the seats it took go back with it.
        let t2 = t1 + 2 * MIN;
        let refused = db.hold(
            &HoldRequest {
                event_id: e,
                items: vec![
                    HoldItem::Best {
                        category_id: s,
                        quantity: 2,
                    },
                    HoldItem::Seats {
                        seats: vec!["A-1-5".into()],
                    },
                ],
            },
            &[5; 32],
            t2,
            MIN,
        );
        assert!(
            matches!(refused, Err(StorageError::Conflict(_))),
            "{name}: {refused:?}"
        );
        // Another change takes the number the refused one's lapse had.
        db.release(&[3; 32], t2).unwrap();
        assert_eq!(
            best_of(&*db, e, s, 2, 6, t2, MIN).unwrap(),
            middle,
            "{name}"
        );
        // Sold: the next best; paid back: the same pair again.
        created(
            db.create_order(&new_order(6, "BOARD00001", None), t2)
                .unwrap(),
        );
        assert!(
            matches!(db.settle_paid("BOARD00001", t2).unwrap(), Settled::Paid(_)),
            "{name}"
        );
        let next = best_of(&*db, e, s, 2, 7, t2, MIN).unwrap();
        assert!(
            next.iter().all(|k| !middle.contains(&k.as_str())),
            "{name}: {next:?}"
        );
        db.release(&[7; 32], t2).unwrap();
        db.mark_refunded("BOARD00001", "re_1", "cancelled", t2)
            .unwrap();
        assert_eq!(
            best_of(&*db, e, s, 2, 8, t2, MIN).unwrap(),
            middle,
            "{name}"
        );
        // Seats held by key are passed over; a category added later is
        // chosen from as well.
        db.release(&[8; 32], t2).unwrap();
        db.hold(&seats(e, &["A-1-5"]), &[9; 32], t2, MIN).unwrap();
        let around = best_of(&*db, e, s, 2, 10, t2, MIN).unwrap();
        assert!(!around.contains(&"A-1-5".to_string()), "{name}: {around:?}");
        let a = db.organizer_by_token(&[1; 32]).unwrap().unwrap();
        let b = db
            .add_category(
                a,
                e,
                &category(
                    Places::Seats {
                        sections: vec!["B".into()],
                    },
                    3000,
                ),
            )
            .unwrap();
        assert_eq!(
            best_of(&*db, e, b.id, 2, 11, t2, MIN).unwrap(),
            ["B-1-5", "B-1-6"],
            "{name}"
        );
        feed_adds_up(&*db, e, t2, name);
    }
}

#[test]
fn best_seats_asked_beside_other_items_of_one_hold_pass_over_the_seats_it_took() {
    for (name, db, _tmp) in backends() {
        let (e, s, _) = on_sale(&*db, 5);
        let best = HoldItem::Best {
            category_id: s,
            quantity: 2,
        };
        // A first look at the seats (the backend may keep what it saw).
        assert_eq!(
            best_of(&*db, e, s, 2, 9, T0, MIN).unwrap(),
            ["A-1-5", "A-1-6"],
            "{name}"
        );
        db.release(&[9; 32], T0).unwrap();
        let seats_of = |h: issuer::domain::hold::Hold| -> Vec<String> {
            h.places.into_iter().filter_map(|p| p.seat).collect()
        };
        let one = db
            .hold(
                &HoldRequest {
                    event_id: e,
                    items: vec![
                        HoldItem::Seats {
                            seats: vec!["A-1-5".into()],
                        },
                        best.clone(),
                    ],
                },
                &[1; 32],
                T0,
                MIN,
            )
            .unwrap();
        let one = seats_of(one);
        assert_eq!(one.len(), 3, "{name}: {one:?}");
        assert_eq!(
            one.iter().filter(|k| *k == "A-1-5").count(),
            1,
            "{name}: {one:?}"
        );
        let two = db
            .hold(
                &HoldRequest {
                    event_id: e,
                    items: vec![best.clone(), best],
                },
                &[2; 32],
                T0,
                MIN,
            )
            .unwrap();
        let two = seats_of(two);
        let unique: std::collections::HashSet<&String> = two.iter().chain(&one).collect();
        assert_eq!((two.len(), unique.len()), (4, 7), "{name}: {one:?} {two:?}");
        feed_adds_up(&*db, e, T0, name);
    }
}

#[test]
fn a_hold_sees_the_event_as_another_program_changed_it() {
    for (name, db, tmp) in backends() {
        let (e, _, f) = on_sale(&*db, 5);
        let two = |token: u8| {
            db.hold(
                &HoldRequest {
                    event_id: e,
                    items: vec![HoldItem::Quantity {
                        category_id: f,
                        quantity: 2,
                    }],
                },
                &[token; 32],
                T0,
                MIN,
            )
        };
        two(1).unwrap();
        // Another program (an operator's SQL, another issuer) stops the
        // sale and changes the limit behind this one's back.
        if name == "sqlite" {
            let other = rusqlite::Connection::open(tmp.path().join("data/issuer.db")).unwrap();
            other
                .execute(
                    "UPDATE events SET status = 'cancelled' WHERE id = ?1",
                    [e as i64],
                )
                .unwrap();
            assert!(matches!(two(2), Err(StorageError::Conflict(_))), "{name}");
            other
                .execute(
                    "UPDATE events SET status = 'on_sale' WHERE id = ?1",
                    [e as i64],
                )
                .unwrap();
            other
                .execute(
                    "UPDATE categories SET per_order = 1 WHERE id = ?1",
                    [f as i64],
                )
                .unwrap();
            assert!(matches!(two(3), Err(StorageError::Invalid(_))), "{name}");
        }
    }
}

#[test]
fn a_hold_for_what_is_not_on_sale_or_too_much_is_refused_and_takes_nothing() {
    for (name, db, _tmp) in backends() {
        let (e, s, floor) = on_sale(&*db, 5);
        let refused = |req: HoldRequest| {
            let r = db.hold(&req, &[7; 32], T0, MIN);
            assert!(r.is_err(), "{name}: {req:?} was held");
            r.unwrap_err()
        };
        assert!(matches!(
            refused(seats(e, &["Z-9-9"])),
            StorageError::Invalid(_)
        ));
        assert!(
            matches!(refused(seats(e, &["B-1-1"])), StorageError::Invalid(_)),
            "B is not sold"
        );
        assert!(matches!(
            refused(seats(e + 100, &["A-1-1"])),
            StorageError::NotFound(_)
        ));
        let many: Vec<String> = (1..=10)
            .flat_map(|r| (1..=3).map(move |n| format!("A-{n}-{r}")))
            .collect();
        let keys: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(
            matches!(refused(seats(e, &keys[..11])), StorageError::Invalid(m) if m.contains("at most 10")),
            "{name}: per order"
        );
        let best_standing = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Best {
                category_id: floor,
                quantity: 2,
            }],
        };
        assert!(matches!(refused(best_standing), StorageError::Invalid(_)));
        let other_category = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: s + 1000,
                quantity: 1,
            }],
        };
        assert!(matches!(refused(other_category), StorageError::Invalid(_)));
        let a = db.availability(e, T0).unwrap();
        assert!(
            a.categories.iter().all(|c| c.held == 0),
            "{name}: nothing held"
        );
        // A cancelled event holds nothing.
        db.set_status(1, e, EventStatus::Cancelled).unwrap();
        assert!(matches!(
            refused(seats(e, &["A-1-1"])),
            StorageError::Conflict(_)
        ));
    }
}

#[test]
fn the_price_is_fixed_when_places_are_held() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap();
        let mut early = category(
            Places::Quota {
                area: "floor".into(),
                places: 10,
            },
            3000,
        );
        early.pricing.time_tiers = vec![TimeTier {
            until: T0 / 1000 + 60,
            price: 2000,
        }];
        let c = db.add_category(a, e.id, &early).unwrap();
        db.set_status(a, e.id, EventStatus::OnSale).unwrap();
        let q = HoldRequest {
            event_id: e.id,
            items: vec![HoldItem::Quantity {
                category_id: c.id,
                quantity: 2,
            }],
        };
        let bird = db.hold(&q, &[1; 32], T0, 10 * MIN).unwrap();
        assert_eq!(bird.total, 4000, "{name}: early-bird price");
        let late = db.hold(&q, &[2; 32], T0 + 2 * MIN, 10 * MIN).unwrap();
        assert_eq!(late.total, 6000, "{name}");
        assert_eq!(
            db.hold_of(&[1; 32], T0 + 3 * MIN).unwrap().total,
            4000,
            "{name}: kept"
        );
    }
}

#[test]
fn buyers_at_once_never_hold_one_place_twice_nor_a_quota_beyond_its_places() {
    for (name, db, _tmp) in backends() {
        let db: std::sync::Arc<dyn Storage> = db.into();
        let (e, s, floor) = on_sale(&*db, 50);
        // 16 buyers, 25 tries each: random seats of section A (30), the
        // best pair, or a few standing places; all at the same instant.
        let held: Vec<(u8, Vec<Option<String>>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16u8)
                .map(|buyer| {
                    let db = db.clone();
                    scope.spawn(move || {
                        let mut x = u64::from(buyer) * 7919 + 1;
                        let mut rnd = |n: u64| {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            (x >> 33) % n
                        };
                        let mut mine = Vec::new();
                        for t in 0..25u8 {
                            let item = match rnd(3) {
                                0 => HoldItem::Seats {
                                    seats: (0..=rnd(3))
                                        .map(|_| format!("A-{}-{}", 1 + rnd(3), 1 + rnd(10)))
                                        .collect::<std::collections::BTreeSet<_>>()
                                        .into_iter()
                                        .collect(),
                                },
                                1 => HoldItem::Best {
                                    category_id: s,
                                    quantity: 2,
                                },
                                _ => HoldItem::Quantity {
                                    category_id: floor,
                                    quantity: 1 + rnd(4) as u32,
                                },
                            };
                            let token = [buyer, t, 0xAA, 0x55].repeat(8).try_into().unwrap();
                            let req = HoldRequest {
                                event_id: e,
                                items: vec![item],
                            };
                            match db.hold(&req, &token, T0, 10 * MIN) {
                                Ok(h) => {
                                    mine.push((t, h.places.into_iter().map(|p| p.seat).collect()))
                                }
                                Err(StorageError::Conflict(_)) => {}
                                Err(other) => panic!("{other:?}"),
                            }
                        }
                        (buyer, mine)
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    let (buyer, mine) = h.join().unwrap();
                    mine.into_iter().map(move |(_, places)| (buyer, places))
                })
                .collect()
        });
        let seats: Vec<&String> = held.iter().flat_map(|(_, p)| p.iter().flatten()).collect();
        let unique: std::collections::HashSet<&&String> = seats.iter().collect();
        assert_eq!(unique.len(), seats.len(), "{name}: a seat held twice");
        let standing = held
            .iter()
            .flat_map(|(_, p)| p.iter().filter(|s| s.is_none()))
            .count();
        assert!(
            standing <= 50,
            "{name}: {standing} standing places held of 50"
        );
        // What the store counts is what the buyers were answered.
        let a = db.availability(e, T0).unwrap();
        let count = |id| {
            a.categories
                .iter()
                .find(|c| c.category_id == id)
                .unwrap()
                .held as usize
        };
        assert_eq!(count(s), seats.len(), "{name}");
        assert_eq!(count(floor), standing, "{name}");
        assert!(
            seats.len() > 5 && standing > 5,
            "{name}: the buyers held something"
        );
        feed_adds_up(&*db, e, T0, name);
        feed_adds_up(&*db, e, T0 + 11 * MIN, name);
    }
}

fn new_order(hold: u8, code: &str, key: Option<(&str, u8)>) -> NewOrder {
    NewOrder {
        hold_hash: [hold; 32],
        code: code.into(),
        secret_hash: [0xEE; 32],
        buyer: Buyer {
            email: "ana@example.org".into(),
            name: "Ana".into(),
        },
        idempotency: key.map(|(k, h)| (k.to_owned(), [h; 32])),
        payment_method: Some("pm_card_visa".into()),
    }
}

fn created(c: Created) -> issuer::domain::order::Order {
    match c {
        Created::New(o) => o,
        Created::Again(o) => panic!("{} was made before", o.code),
    }
}

#[test]
fn an_order_of_a_hold_is_paid_once_and_its_places_are_sold() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-1-1", "A-1-2"]), &[1; 32], T0, 10 * MIN)
            .unwrap();
        let order = created(
            db.create_order(&new_order(1, "ORDER00001", None), T0 + 1)
                .unwrap(),
        );
        assert_eq!(
            (order.state, order.amount, order.places.len()),
            (OrderState::Pending, 9000, 2)
        );
        // A second order of the same hold while the first is live.
        assert!(matches!(
            db.create_order(&new_order(1, "ORDER00002", None), T0 + 2),
            Err(StorageError::Conflict(_))
        ));
        let paid = db.settle_paid("ORDER00001", T0 + 3).unwrap();
        assert!(
            matches!(&paid, Settled::Paid(o) if o.state == OrderState::Paid),
            "{name}: {paid:?}"
        );
        assert!(matches!(
            db.settle_paid("ORDER00001", T0 + 4).unwrap(),
            Settled::Already(_)
        ));
        // Sold, and no longer held: not even once the hold's time is past,
        // nor when the hold is let go.
        db.release(&[1; 32], T0 + 5).unwrap();
        for t in [T0 + 5, T0 + 60 * MIN] {
            assert_eq!(seat_state(&*db, e, "A-1-1", t), PlaceState::Sold, "{name}");
        }
        assert!(matches!(
            db.hold(&seats(e, &["A-1-2"]), &[2; 32], T0 + 60 * MIN, MIN),
            Err(StorageError::Conflict(_))
        ));
        // The buyer reads it with the link's secret only.
        assert_eq!(
            db.order("ORDER00001", &[0xEE; 32]).unwrap().state,
            OrderState::Paid
        );
        assert!(not_found(db.order("ORDER00001", &[0xEF; 32])), "{name}");
        assert!(not_found(db.order("NOSUCH0000", &[0xEE; 32])), "{name}");
    }
}

#[test]
fn a_retried_order_is_the_first_and_a_key_reused_for_another_is_refused() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 5);
        let q = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: 2,
            }],
        };
        db.hold(&q, &[1; 32], T0, 10 * MIN).unwrap();
        db.hold(&q, &[2; 32], T0, 10 * MIN).unwrap();
        let first = created(
            db.create_order(&new_order(1, "RETRY00001", Some(("k1", 7))), T0)
                .unwrap(),
        );
        let again = db
            .create_order(&new_order(1, "RETRY00002", Some(("k1", 7))), T0 + 1)
            .unwrap();
        assert_eq!(again, Created::Again(first.clone()), "{name}");
        assert!(matches!(
            db.create_order(&new_order(2, "RETRY00003", Some(("k1", 8))), T0 + 2),
            Err(StorageError::Conflict(m)) if m.contains("Idempotency-Key")
        ));
        // A failed payment leaves the hold to be ordered again.
        db.mark_failed("RETRY00001", "insufficient_funds", T0 + 3)
            .unwrap();
        let retry = created(
            db.create_order(&new_order(1, "RETRY00004", Some(("k2", 9))), T0 + 4)
                .unwrap(),
        );
        assert_eq!(retry.state, OrderState::Pending, "{name}");
        assert_eq!(
            db.order("RETRY00001", &[0xEE; 32]).unwrap().note.as_deref(),
            Some("insufficient_funds")
        );
    }
}

#[test]
fn a_payment_after_the_hold_expired_is_kept_if_the_places_are_free_else_refunded() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-3-1"]), &[1; 32], T0, MIN).unwrap();
        db.hold(&seats(e, &["A-3-2"]), &[2; 32], T0, MIN).unwrap();
        created(
            db.create_order(&new_order(1, "LATE000001", None), T0 + 1)
                .unwrap(),
        );
        created(
            db.create_order(&new_order(2, "LATE000002", None), T0 + 1)
                .unwrap(),
        );
        let late = T0 + 2 * MIN;
        // A-3-1 is still free: held again, paid.
        assert!(
            matches!(
                db.settle_paid("LATE000001", late).unwrap(),
                Settled::Paid(_)
            ),
            "{name}"
        );
        assert_eq!(seat_state(&*db, e, "A-3-1", late), PlaceState::Sold);
        // A-3-2 went to someone else meanwhile: the money goes back.
        db.hold(&seats(e, &["A-3-2"]), &[3; 32], late, 10 * MIN)
            .unwrap();
        let settled = db.settle_paid("LATE000002", late + 1).unwrap();
        assert!(
            matches!(&settled, Settled::MustRefund(o) if o.state == OrderState::Pending),
            "{name}"
        );
        let refunded = db
            .mark_refunded("LATE000002", "re_1", "the places were taken", late + 2)
            .unwrap();
        assert_eq!(refunded.state, OrderState::Refunded, "{name}");
        // The other buyer's hold is untouched.
        assert_eq!(
            db.hold_of(&[3; 32], late + 3).unwrap().state,
            HoldState::Active
        );
        assert_eq!(
            seat_state(&*db, e, "A-3-2", late + 3),
            PlaceState::Held,
            "{name}"
        );
        // An expired or let-go hold cannot be ordered.
        db.hold(&seats(e, &["A-3-5"]), &[4; 32], T0, MIN).unwrap();
        assert!(matches!(
            db.create_order(&new_order(4, "LATE000003", None), late),
            Err(StorageError::Conflict(_))
        ));
        db.release(&[3; 32], late + 4).unwrap();
        assert!(matches!(
            db.create_order(&new_order(3, "LATE000004", None), late + 5),
            Err(StorageError::Conflict(_))
        ));
        feed_adds_up(&*db, e, late + 6, name);
    }
}

#[test]
fn a_refunded_order_puts_its_places_on_sale_again() {
    for (name, db, tmp) in backends() {
        let store = issuer::Store::open(&tmp.path().join("data")).unwrap();
        let key = issuer::keys::generate(&store, 1_000_000)
            .unwrap()
            .key_id
            .to_string();
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-2-2"]), &[1; 32], T0, MIN).unwrap();
        created(
            db.create_order(&new_order(1, "REFUND0001", None), T0)
                .unwrap(),
        );
        db.settle_paid("REFUND0001", T0).unwrap();
        sign(&*db, "REFUND0001", &key);
        let o = db
            .mark_refunded("REFUND0001", "re_9", "cancelled by the organizer", T0 + 1)
            .unwrap();
        assert_eq!(o.state, OrderState::Refunded, "{name}");
        assert_eq!(
            seat_state(&*db, e, "A-2-2", T0 + 1),
            PlaceState::Available,
            "{name}"
        );
        // A late success of a refunded order changes nothing.
        assert!(matches!(
            db.settle_paid("REFUND0001", T0 + 2).unwrap(),
            Settled::Already(_)
        ));
        assert_eq!(
            seat_state(&*db, e, "A-2-2", T0 + 2),
            PlaceState::Available,
            "{name}"
        );
        // Sold again, to someone else, with a ticket of its own; the old
        // one stays revoked.
        db.hold(&seats(e, &["A-2-2"]), &[2; 32], T0 + 3, MIN)
            .unwrap();
        created(
            db.create_order(&new_order(2, "REFUND0002", None), T0 + 3)
                .unwrap(),
        );
        assert!(matches!(
            db.settle_paid("REFUND0002", T0 + 4).unwrap(),
            Settled::Paid(_)
        ));
        sign(&*db, "REFUND0002", &key);
        let revoked = db.revocations(1, &[e], 0, 100).unwrap();
        assert_eq!(revoked.len(), 1, "{name}");
        feed_adds_up(&*db, e, T0 + 5, name);
    }
}

/// Records a paid order's tickets, with stand-in codes.
fn sign(db: &dyn Storage, code: &str, key: &str) {
    let fields = db.tickets_to_sign(code).unwrap().unwrap();
    let tickets: Vec<_> = fields
        .into_iter()
        .map(|f| {
            let stand_in = format!("VT1.{}", shared::hex::encode(&f.ticket_id.0));
            (f, stand_in)
        })
        .collect();
    db.record_tickets(code, key, &tickets, T0).unwrap();
}

#[test]
fn buyers_at_once_never_buy_one_seat_twice_nor_more_than_capacity() {
    for (name, db, _tmp) in backends() {
        let db: std::sync::Arc<dyn Storage> = db.into();
        let (e, s, floor) = on_sale(&*db, 40);
        // 16 buyers, 20 tries each: hold, order, pay; a third of holds
        // expire before payment (paid late), so late payments race fresh
        // holds for the same places.
        let paid: Vec<Vec<Option<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16u8)
                .map(|buyer| {
                    let db = db.clone();
                    scope.spawn(move || {
                        let mut x = u64::from(buyer) * 104_729 + 7;
                        let mut rnd = |n: u64| {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            (x >> 33) % n
                        };
                        let mut bought = Vec::new();
                        for t in 0..20u8 {
                            let now = T0 + u64::from(t) * MIN;
                            let item = match rnd(3) {
                                0 => HoldItem::Best {
                                    category_id: s,
                                    quantity: 1 + rnd(3) as u32,
                                },
                                1 => HoldItem::Seats {
                                    seats: vec![format!("A-{}-{}", 1 + rnd(3), 1 + rnd(10))],
                                },
                                _ => HoldItem::Quantity {
                                    category_id: floor,
                                    quantity: 1 + rnd(3) as u32,
                                },
                            };
                            let token: [u8; 32] =
                                [buyer, t, 0x11, 0x22].repeat(8).try_into().unwrap();
                            let req = HoldRequest {
                                event_id: e,
                                items: vec![item],
                            };
                            if db.hold(&req, &token, now, MIN).is_err() {
                                continue;
                            }
                            let code = format!("B{buyer:02}T{t:02}XXXX");
                            let mut order = new_order(0, &code, None);
                            order.hold_hash = token;
                            let Ok(Created::New(_)) = db.create_order(&order, now) else {
                                continue;
                            };
                            // Paid at once, or after the hold's time.
                            let at = if rnd(3) == 0 { now + 2 * MIN } else { now + 1 };
                            match db.settle_paid(&code, at).unwrap() {
                                Settled::Paid(o) => bought
                                    .push(o.places.into_iter().map(|p| p.seat).collect::<Vec<_>>()),
                                Settled::MustRefund(_) => {
                                    db.mark_refunded(&code, "re", "taken", at).unwrap();
                                }
                                Settled::Already(o) => panic!("{} paid twice", o.code),
                            }
                        }
                        bought
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let seats: Vec<&String> = paid.iter().flatten().flatten().collect();
        let unique: std::collections::HashSet<&&String> = seats.iter().collect();
        assert_eq!(unique.len(), seats.len(), "{name}: a seat sold twice");
        let standing = paid.iter().flatten().filter(|p| p.is_none()).count();
        assert!(
            standing <= 40,
            "{name}: {standing} of 40 standing places sold"
        );
        let a = db.availability(e, T0 + 1000 * MIN).unwrap();
        let sold = |id| {
            a.categories
                .iter()
                .find(|c| c.category_id == id)
                .unwrap()
                .sold as usize
        };
        assert_eq!(
            (sold(s), sold(floor)),
            (seats.len(), standing),
            "{name}: sold as answered"
        );
        assert!(
            seats.len() > 5 && standing > 5,
            "{name}: the buyers bought something"
        );
        feed_adds_up(&*db, e, T0 + 1000 * MIN, name);
    }
}

#[test]
fn an_organizer_sees_revenue_orders_places_and_sales_by_day() {
    for (name, db, _tmp) in backends() {
        let (e, s, floor) = on_sale(&*db, 10);
        let day = 1_900_000_000_000; // 2030-03-17
        db.hold(&seats(e, &["A-1-1", "A-1-2"]), &[1; 32], day, MIN)
            .unwrap();
        let q = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: 2,
            }],
        };
        db.hold(&q, &[2; 32], day, MIN).unwrap();
        db.hold(&seats(e, &["A-1-3"]), &[3; 32], day, MIN).unwrap();
        db.hold(&seats(e, &["A-1-4"]), &[4; 32], day + 1, 10 * MIN)
            .unwrap();
        for (hold, code) in [(1, "FIG0000001"), (2, "FIG0000002"), (3, "FIG0000003")] {
            created(db.create_order(&new_order(hold, code, None), day).unwrap());
        }
        db.settle_paid("FIG0000001", day + 5).unwrap();
        db.settle_paid("FIG0000002", day + 5).unwrap();
        db.mark_failed("FIG0000003", "card_declined", day + 5)
            .unwrap();
        let f = db.figures(1, e, day + 10).unwrap();
        assert_eq!(
            (f.revenue, f.currency.as_str()),
            (2 * 4500 + 2 * 2000, "EUR"),
            "{name}"
        );
        assert_eq!(f.orders.get("paid"), Some(&2), "{name}");
        assert_eq!(f.orders.get("failed"), Some(&1), "{name}");
        // Holds 3 (its order failed) and 4 are under way.
        assert_eq!(f.active_holds, 2, "{name}");
        let seated = f.categories.iter().find(|c| c.category_id == s).unwrap();
        assert_eq!(
            (seated.capacity, seated.sold, seated.held, seated.revenue),
            (30, 2, 2, 9000)
        );
        let standing = f
            .categories
            .iter()
            .find(|c| c.category_id == floor)
            .unwrap();
        assert_eq!((standing.sold, standing.revenue), (2, 4000), "{name}");
        assert_eq!(f.by_day.len(), 1, "{name}");
        assert_eq!(
            (
                f.by_day[0].day.as_str(),
                f.by_day[0].places,
                f.by_day[0].revenue
            ),
            ("2030-03-17", 4, 13000)
        );
        // Not another organizer's to see.
        let other = organizer(&*db, 9);
        assert!(not_found(db.figures(other, e, day)), "{name}");
    }
}

#[test]
fn a_standing_area_is_never_sold_twice_over_by_several_quotas() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap();
        let quota = |places| Places::Quota {
            area: "floor".into(),
            places,
        };
        db.add_category(a, e.id, &category(quota(300), 2000))
            .unwrap();
        let over = db.add_category(a, e.id, &category(quota(201), 3000));
        assert!(
            matches!(&over, Err(StorageError::Invalid(m)) if m.contains("1 to 200")),
            "{name}: {over:?}"
        );
        db.add_category(a, e.id, &category(quota(200), 3000))
            .unwrap();
        db.set_status(a, e.id, EventStatus::OnSale).unwrap();
        let a = db.availability(e.id, T0).unwrap();
        let total: u64 = a.categories.iter().map(|c| c.capacity).sum();
        assert_eq!(total, 500, "{name}: the area's 500 places, once");
    }
}

#[test]
fn a_cancelled_event_takes_no_order_and_a_payment_landing_then_goes_back() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-1-1"]), &[1; 32], T0, 10 * MIN)
            .unwrap();
        db.hold(&seats(e, &["A-1-2"]), &[2; 32], T0, 10 * MIN)
            .unwrap();
        created(
            db.create_order(&new_order(1, "CANCEL0001", None), T0)
                .unwrap(),
        );
        db.set_status(1, e, EventStatus::Cancelled).unwrap();
        let refused = db.create_order(&new_order(2, "CANCEL0002", None), T0 + 1);
        assert!(
            matches!(&refused, Err(StorageError::Conflict(m)) if m.contains("cancelled")),
            "{name}: {refused:?}"
        );
        // The first order's payment lands after the event was cancelled.
        assert!(
            matches!(
                db.settle_paid("CANCEL0001", T0 + 2).unwrap(),
                Settled::MustRefund(_)
            ),
            "{name}"
        );
        assert_ne!(
            seat_state(&*db, e, "A-1-1", T0 + 2),
            PlaceState::Sold,
            "{name}"
        );
    }
}

#[test]
fn one_address_holds_at_most_so_many_places_of_an_event_paid_ones_aside() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 50);
        let q = |n| HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: n,
            }],
        };
        let client = |address: &str| Client {
            address: address.into(),
            most: 5,
        };
        let hold_for = |req: HoldRequest, hash: u8, now: u64, address: &str| {
            wait(db.hold_pending(req, [hash; 32], now, MIN, Some(client(address))))
        };
        hold_for(q(3), 1, T0, "10.0.0.1").unwrap();
        let more = hold_for(q(3), 2, T0, "10.0.0.1");
        assert!(
            matches!(&more, Err(StorageError::Conflict(m)) if m.contains("holds 3 places")),
            "{name}: {more:?}"
        );
        hold_for(q(2), 3, T0, "10.0.0.1").unwrap();
        // Another address is not held back.
        hold_for(q(5), 4, T0, "10.0.0.2").unwrap();
        // Paid places do not count; expired holds do not either.
        created(
            db.create_order(&new_order(1, "BOTORDER01", None), T0)
                .unwrap(),
        );
        db.settle_paid("BOTORDER01", T0).unwrap();
        hold_for(q(3), 5, T0, "10.0.0.1").unwrap();
        hold_for(q(5), 6, T0 + MIN, "10.0.0.1").unwrap();
    }
}

#[test]
fn the_last_seats_a_refused_hold_chose_go_to_the_next_buyer_at_once() {
    for (name, db, _tmp) in backends() {
        let (e, s, _) = on_sale(&*db, 1);
        // All of section A but its last two seats.
        let taken: Vec<String> = (1..=3)
            .flat_map(|r| (1..=10).map(move |n| format!("A-{r}-{n}")))
            .filter(|k| k != "A-3-9" && k != "A-3-10")
            .collect();
        let keys: Vec<&str> = taken.iter().map(String::as_str).collect();
        for (i, some) in keys.chunks(10).enumerate() {
            db.hold(&seats(e, some), &[10 + i as u8; 32], T0, 10 * MIN)
                .unwrap();
        }
        let best_two = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Best {
                category_id: s,
                quantity: 2,
            }],
        };
        // An address allowed one place at a time asks for two: its hold is
        // refused once it has chosen them.
        let one = Client {
            address: "10.0.0.1".into(),
            most: 1,
        };
        let refused = wait(db.hold_pending(best_two.clone(), [2; 32], T0, MIN, Some(one)));
        assert!(
            matches!(&refused, Err(StorageError::Conflict(m)) if m.contains("at most 1")),
            "{name}: {refused:?}"
        );
        // The next buyer, at once, gets them: they were never taken.
        let hold = wait(db.hold_pending(best_two, [3; 32], T0, MIN, None)).unwrap();
        let got: Vec<String> = hold.places.into_iter().filter_map(|p| p.seat).collect();
        assert_eq!(got, ["A-3-9", "A-3-10"], "{name}");
    }
}

#[test]
fn paid_and_paid_back_orders_queue_one_message_each_taken_by_one_worker_at_a_time() {
    use issuer::storage::MailKind;
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-1-1"]), &[1; 32], T0, MIN).unwrap();
        created(
            db.create_order(&new_order(1, "MAIL000001", None), T0)
                .unwrap(),
        );
        assert!(
            db.claim_mail(T0, MIN, 10).unwrap().is_empty(),
            "{name}: nothing yet"
        );
        db.settle_paid("MAIL000001", T0 + 1).unwrap();
        // News of the same payment again queues nothing more.
        db.settle_paid("MAIL000001", T0 + 2).unwrap();
        let taken = db.claim_mail(T0 + 3, MIN, 10).unwrap();
        assert_eq!(taken.len(), 1, "{name}");
        assert_eq!(
            (
                taken[0].kind,
                taken[0].order.code.as_str(),
                taken[0].attempts
            ),
            (MailKind::Tickets, "MAIL000001", 0)
        );
        // Taken: no other worker gets it during the lease; after it, yes.
        assert!(db.claim_mail(T0 + 4, MIN, 10).unwrap().is_empty(), "{name}");
        let again = db.claim_mail(T0 + 3 + MIN, MIN, 10).unwrap();
        assert_eq!((again.len(), again[0].attempts), (1, 1), "{name}");
        // Failed: tried again from the time given; then sent, never again.
        db.mail_failed(
            again[0].id,
            "connection refused",
            T0 + MIN,
            Some(T0 + 5 * MIN),
        )
        .unwrap();
        assert!(
            db.claim_mail(T0 + 4 * MIN, MIN, 10).unwrap().is_empty(),
            "{name}"
        );
        let third = db.claim_mail(T0 + 5 * MIN, MIN, 10).unwrap();
        assert_eq!(third.len(), 1, "{name}");
        db.mail_sent(third[0].id, T0 + 5 * MIN).unwrap();
        assert!(
            db.claim_mail(T0 + 60 * MIN, MIN, 10).unwrap().is_empty(),
            "{name}"
        );
        // Paid back: its own message; a message given up is not taken again.
        db.mark_refunded("MAIL000001", "re_1", "cancelled", T0 + 61 * MIN)
            .unwrap();
        let refund = db.claim_mail(T0 + 61 * MIN, MIN, 10).unwrap();
        assert_eq!(refund.len(), 1, "{name}");
        assert_eq!(refund[0].kind, MailKind::Refund, "{name}");
        db.mail_failed(refund[0].id, "no such mailbox", T0 + 61 * MIN, None)
            .unwrap();
        assert!(
            db.claim_mail(T0 + 600 * MIN, MIN, 10).unwrap().is_empty(),
            "{name}"
        );
        // A payment too late for its places: told so.
        db.hold(&seats(e, &["A-1-2"]), &[2; 32], T0, MIN).unwrap();
        created(
            db.create_order(&new_order(2, "MAIL000002", None), T0)
                .unwrap(),
        );
        db.hold(&seats(e, &["A-1-2"]), &[3; 32], T0 + 2 * MIN, MIN)
            .unwrap();
        assert!(matches!(
            db.settle_paid("MAIL000002", T0 + 2 * MIN + 1).unwrap(),
            Settled::MustRefund(_)
        ));
        db.mark_refunded("MAIL000002", "re_2", "too late", T0 + 2 * MIN + 2)
            .unwrap();
        let late = db.claim_mail(T0 + 601 * MIN, MIN, 10).unwrap();
        assert_eq!(late.len(), 1, "{name}");
        assert_eq!(
            (late[0].kind, late[0].order.code.as_str()),
            (MailKind::LateRefund, "MAIL000002")
        );
    }
}

#[test]
fn the_feed_adds_up_when_more_holds_lapse_at_once_than_are_told_in_one_go() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let mut big = venue("Lyon");
        big.plan.areas[0].capacity = 3000;
        let v = db.add_venue(a, &big).unwrap();
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap()
            .id;
        let standing = Places::Quota {
            area: "floor".into(),
            places: 3000,
        };
        let floor = db.add_category(a, e, &category(standing, 2000)).unwrap().id;
        db.set_status(a, e, EventStatus::OnSale).unwrap();
        let one = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: 1,
            }],
        };
        let lapsing = |round: u8, at: u64| {
            for i in 0..1500u32 {
                let mut token = [round; 32];
                token[..4].copy_from_slice(&i.to_le_bytes());
                db.hold(&one, &token, at, MIN).unwrap();
            }
        };
        // All lapse, and someone looks.
        lapsing(1, T0);
        feed_adds_up(&*db, e, T0 + 2 * MIN, name);
        // All lapse again, and the next buyer takes places they had.
        lapsing(2, T0 + 3 * MIN);
        let many = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: 10,
            }],
        };
        db.hold(&many, &[0xEE; 32], T0 + 5 * MIN, MIN).unwrap();
        feed_adds_up(&*db, e, T0 + 5 * MIN, name);
    }
}

#[test]
fn a_venue_is_shown_to_everyone_once_an_event_there_is_and_before_to_its_organizer_only() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let b = organizer(&*db, 2);
        let v = db.add_venue(a, &venue("Lyon")).unwrap();
        assert!(
            not_found(db.venue_shown(v.id, None)),
            "{name}: no event yet"
        );
        assert!(not_found(db.venue_shown(v.id, Some(b))), "{name}");
        assert_eq!(db.venue_shown(v.id, Some(a)).unwrap(), v, "{name}");
        let e = db
            .add_event(a, &event(v.id, "Night", Genre::Concert, 1000))
            .unwrap();
        assert!(not_found(db.venue_shown(v.id, None)), "{name}: a draft");
        let seats = Places::Seats {
            sections: vec!["A".into()],
        };
        db.add_category(a, e.id, &category(seats, 4500)).unwrap();
        db.set_status(a, e.id, EventStatus::OnSale).unwrap();
        assert_eq!(db.venue_shown(v.id, None).unwrap(), v, "{name}");
        assert_eq!(db.venue_shown(v.id, Some(b)).unwrap(), v, "{name}");
        assert!(not_found(db.venue_shown(v.id + 100, Some(a))), "{name}");
    }
}

#[test]
fn changes_older_than_a_day_are_cleared_but_numbering_goes_on() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        db.hold(&seats(e, &["A-1-1"]), &[1; 32], T0, MIN).unwrap();
        db.hold(&seats(e, &["A-1-2"]), &[2; 32], T0, MIN).unwrap();
        db.release(&[2; 32], T0 + 1).unwrap();
        assert_eq!(db.changes(e, 0, 100).unwrap().len(), 3, "{name}");
        // Two days on: the old ones go, the newest stays.
        let later = T0 + 2 * 24 * 60 * MIN;
        db.announce_expired(later).unwrap();
        let kept = db.changes(e, 0, 100).unwrap();
        let seqs: Vec<u64> = kept.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![4], "{name}: the expiry told now, numbered on");
        db.hold(&seats(e, &["A-1-3"]), &[3; 32], later, MIN)
            .unwrap();
        let seqs: Vec<u64> = db
            .changes(e, 0, 100)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, vec![4, 5], "{name}");
        assert_eq!(db.availability(e, later).unwrap().seq, 5, "{name}");
    }
}

#[test]
fn a_hold_given_up_before_its_turn_is_not_made() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 500);
        let q = |n| HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: n,
            }],
        };
        // Buyers ahead keep the database busy a while.
        let ahead: Vec<_> = (0..200u16)
            .map(|i| {
                let mut hash = [0xAA; 32];
                hash[..2].copy_from_slice(&i.to_be_bytes());
                db.hold_pending(q(1), hash, T0, MIN, None)
            })
            .collect();
        // A buyer who hangs up at once (its request's future dropped,
        // never polled): no one can be given its token.
        drop(db.hold_pending(q(5), [7; 32], T0, MIN, None));
        for pending in ahead {
            wait(pending).unwrap();
        }
        assert!(
            not_found(db.hold_of(&[7; 32], T0)),
            "{name}: a hold nobody awaits was made: {:?}",
            db.hold_of(&[7; 32], T0)
        );
        let floor_left = db
            .availability(e, T0)
            .unwrap()
            .categories
            .into_iter()
            .find(|c| c.category_id == floor)
            .unwrap();
        assert_eq!(floor_left.held, 200, "{name}");
    }
}

/// Holds asked for at the same moment, as a stampede's are (PostgreSQL
/// makes them together, in one transaction): each is made or refused on
/// its own, by its own fault only, and what is left adds up.
#[test]
fn holds_asked_at_once_are_each_made_or_refused_on_their_own() {
    for (name, db, _tmp) in backends() {
        let (e, s, floor) = on_sale(&*db, 10);
        let q = |n| quantity_of(e, floor, n);
        let best = || HoldRequest {
            event_id: e,
            items: vec![HoldItem::Best {
                category_id: s,
                quantity: 2,
            }],
        };
        let limited = Some(Client {
            address: "10.0.0.9".into(),
            most: 3,
        });
        let asked: Vec<(HoldRequest, Option<Client>)> = vec![
            // Two ahead, that keep the database busy while the rest gather.
            (seats(e, &["A-3-9"]), None),
            (seats(e, &["A-3-10"]), None),
            // 16 standing places asked of 10.
            (q(4), None),
            (q(4), None),
            (q(3), None),
            (q(1), None),
            (q(2), limited.clone()),
            (q(2), limited),
            // One seat asked twice.
            (seats(e, &["A-1-1"]), None),
            (seats(e, &["A-1-1"]), None),
            // No such seat: the other one asked with it stays free.
            (seats(e, &["A-2-5", "Z-9-9"]), None),
            (seats(e, &["A-2-6\u{0}"]), None),
            (best(), None),
            (best(), None),
            (best(), None),
            // The best of a standing area.
            (
                HoldRequest {
                    event_id: e,
                    items: vec![HoldItem::Best {
                        category_id: floor,
                        quantity: 1,
                    }],
                },
                None,
            ),
        ];
        let pending: Vec<_> = asked
            .iter()
            .enumerate()
            .map(|(i, (r, client))| {
                db.hold_pending(r.clone(), [i as u8 + 1; 32], T0, MIN, client.clone())
            })
            .collect();
        let got = wait(async { Ok(futures_util::future::join_all(pending).await) }).unwrap();
        let a = db.availability(e, T0).unwrap();
        let left = |id| {
            a.categories
                .iter()
                .find(|c| c.category_id == id)
                .unwrap()
                .clone()
        };
        // Standing: never beyond the quota, each hold made whole, and no
        // buyer refused while enough places were left (nothing was let go).
        let mut standing = 0;
        let mut limited_made = 0;
        for (i, ((r, client), out)) in asked.iter().zip(&got).enumerate().skip(2).take(6) {
            let HoldItem::Quantity { quantity, .. } = r.items[0] else {
                unreachable!()
            };
            match out {
                Ok(h) => {
                    assert_eq!(h.places.len(), quantity as usize, "{name}: hold {i}");
                    standing += quantity as u64;
                    limited_made += u32::from(client.is_some());
                }
                Err(StorageError::Conflict(m)) if m.contains("at most 3") => {
                    assert!(client.is_some(), "{name}: {m}")
                }
                Err(StorageError::Conflict(m)) => assert!(
                    left(floor).available < u64::from(quantity),
                    "{name}: hold {i} refused ({m}) with {} places left",
                    left(floor).available
                ),
                other => panic!("{name}: hold {i}: {other:?}"),
            }
        }
        assert!(standing <= 10, "{name}: {standing} standing places held");
        assert_eq!(left(floor).held, standing, "{name}");
        assert!(limited_made <= 1, "{name}: the address held 4 places");
        // One seat, one buyer.
        let a11: Vec<_> = got[8..10].iter().map(|r| r.is_ok()).collect();
        assert!(
            a11 == [true, false] || a11 == [false, true],
            "{name}: {:?}",
            &got[8..10]
        );
        assert!(
            got[8..10]
                .iter()
                .any(|r| matches!(r, Err(StorageError::Conflict(m)) if m.contains("A-1-1"))),
            "{name}: {:?}",
            &got[8..10]
        );
        assert!(
            matches!(&got[10], Err(StorageError::Invalid(m)) if m.contains("Z-9-9")),
            "{name}: {:?}",
            got[10]
        );
        assert_eq!(
            seat_state(&*db, e, "A-2-5", T0),
            PlaceState::Available,
            "{name}"
        );
        assert!(
            matches!(&got[11], Err(StorageError::Invalid(_))),
            "{name}: {:?}",
            got[11]
        );
        assert!(
            matches!(&got[15], Err(StorageError::Invalid(_))),
            "{name}: {:?}",
            got[15]
        );
        // Best pairs: side by side, none shared.
        let mut seen = std::collections::HashSet::new();
        for out in &got[12..15] {
            let h = out.as_ref().unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let keys: Vec<String> = h.places.iter().filter_map(|p| p.seat.clone()).collect();
            assert_eq!(keys.len(), 2, "{name}");
            let parts: Vec<Vec<&str>> = keys.iter().map(|k| k.split('-').collect()).collect();
            assert_eq!(parts[0][1], parts[1][1], "{name}: one row: {keys:?}");
            let (x, y): (u32, u32) = (parts[0][2].parse().unwrap(), parts[1][2].parse().unwrap());
            assert_eq!(x.abs_diff(y), 1, "{name}: side by side: {keys:?}");
            for k in keys {
                assert!(seen.insert(k.clone()), "{name}: {k} held twice");
            }
        }
        assert!(
            got[..2].iter().all(|r| r.is_ok()),
            "{name}: {:?}",
            &got[..2]
        );
        assert_eq!(left(s).held, 2 + 1 + 6, "{name}");
        feed_adds_up(&*db, e, T0, name);
    }
}

#[test]
fn a_pending_order_is_asked_about_once_a_pass_and_only_while_pending() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 5);
        for (i, seat) in ["A-1-1", "A-1-2", "A-1-3"].iter().enumerate() {
            let n = i as u8 + 1;
            db.hold(&seats(e, &[seat]), &[n; 32], T0, 10 * MIN).unwrap();
            created(
                db.create_order(
                    &new_order(n, &format!("ASK0000{n}XX"), None),
                    T0 + u64::from(n),
                )
                .unwrap(),
            );
        }
        db.settle_paid("ASK00003XX", T0 + 10).unwrap();
        let codes = |v: Vec<(issuer::domain::order::Order, Option<String>)>| {
            v.into_iter().map(|(o, _)| o.code).collect::<Vec<_>>()
        };
        // Too recent to ask about.
        assert!(
            db.claim_unsettled(T0, 0, T0 + MIN, 10).unwrap().is_empty(),
            "{name}"
        );
        // Due, oldest first, with the payment method; the paid one is not.
        let due = db.claim_unsettled(T0 + MIN, 0, T0 + 2 * MIN, 1).unwrap();
        assert_eq!(due[0].1.as_deref(), Some("pm_card_visa"), "{name}");
        assert_eq!(codes(due), ["ASK00001XX"], "{name}: at most the limit");
        assert_eq!(
            codes(db.claim_unsettled(T0 + MIN, 0, T0 + 2 * MIN, 10).unwrap()),
            ["ASK00002XX"],
            "{name}: each once a pass"
        );
        // Asked at T0 + 2 min: due again a pass later; too old, never.
        assert!(
            db.claim_unsettled(T0 + MIN, 0, T0 + 3 * MIN, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            codes(
                db.claim_unsettled(T0 + 2 * MIN, 0, T0 + 3 * MIN, 10)
                    .unwrap()
            )
            .len(),
            2,
            "{name}"
        );
        assert!(
            db.claim_unsettled(T0 + 9 * MIN, T0 + 5, T0 + 9 * MIN, 10)
                .unwrap()
                .is_empty(),
            "{name}: made before since_ms"
        );
    }
}

/// Tables that grow with every sale: a plan that reads one of them whole
/// slows every sale as the shop grows.
const GROWING: [&str; 9] = [
    "places",
    "holds",
    "hold_items",
    "orders",
    "batches",
    "tickets",
    "revocations",
    "place_changes",
    "outbox",
];

/// The plans kept on `pg`'s connections that read a growing table from
/// end to end (a scan of its rows or of an index of them with no
/// condition): (statement, what they read).
fn reading_whole_tables(pg: &issuer::storage::postgres::PgStorage) -> Vec<(String, Vec<String>)> {
    fn whole(node: &serde_json::Value, found: &mut Vec<String>) {
        let kind = node["Node Type"].as_str().unwrap_or("");
        let index = node["Index Name"].as_str().unwrap_or("");
        // A bitmap index scan names its index only: its table's name
        // begins it.
        let table = match node["Relation Name"].as_str() {
            Some(table) => table,
            None => GROWING
                .iter()
                .find(|t| index.starts_with(&format!("{t}_")))
                .copied()
                .unwrap_or(""),
        };
        // Indexes of only the rows waiting for work (changes to number,
        // messages to send, payments to ask about, holds to tell expired)
        // are read in their order, as far as needed.
        let waiting = [
            "place_changes_to_number",
            "outbox_due",
            "orders_pending",
            "holds_unannounced",
        ];
        let unbounded = match kind {
            "Seq Scan" => true,
            "Index Scan" | "Index Only Scan" | "Bitmap Index Scan" => {
                node.get("Index Cond").is_none() && !waiting.contains(&index)
            }
            _ => false,
        };
        if unbounded && GROWING.contains(&table) {
            found.push(format!("{kind} on {table} {index}"));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            whole(child, found);
        }
    }
    let plans = pg.kept_plans().unwrap();
    assert!(plans.len() > 40, "only {} statements kept", plans.len());
    plans
        .into_iter()
        .filter_map(|(sql, plan)| {
            let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
            let mut found = Vec::new();
            whole(&plan[0]["Plan"], &mut found);
            (!found.is_empty()).then_some((sql, found))
        })
        .collect()
}

/// On PostgreSQL a statement runs by one plan a connection, made without
/// its arguments' values, first made when a new shop's sales tables are
/// empty and never analyzed. Each plan must find rows by their keys all
/// the same: a sale's every step, on a new shop of 40,000 places, leaves
/// no plan that reads a table growing with sales from end to end. And
/// again once the tables have been analyzed, full.
#[test]
fn a_new_shops_statements_find_rows_by_key() {
    let Some(url) = crate::pg::fresh_database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = issuer::Store::open(&tmp.path().join("data")).unwrap();
    let key = issuer::keys::generate(&store, 1_000_000)
        .unwrap()
        .key_id
        .to_string();
    let pg = open_postgres(&url, &tmp);
    let db: &dyn Storage = &pg;
    // Another event, of 40,000 places: the event on sale is a part of
    // the shop, as events are, not all of it.
    let other = organizer(db, 2);
    let mut arena = venue("Nantes");
    arena.plan.areas[0].capacity = 40_000;
    let v = db.add_venue(other, &arena).unwrap();
    let big = db
        .add_event(other, &event(v.id, "Arena", Genre::Concert, 1000))
        .unwrap();
    let floor_of = |places| Places::Quota {
        area: "floor".into(),
        places,
    };
    db.add_category(other, big.id, &category(floor_of(40_000), 2000))
        .unwrap();
    db.set_status(other, big.id, EventStatus::OnSale).unwrap();
    let (e, s, floor) = on_sale(db, 500);
    let a = db.organizer_by_token(&[1; 32]).unwrap().unwrap();
    let sell = |round: u8, at: u64| {
        let code = |n: u8| format!("PLAN{round:02}{n:04}");
        // Browsing and search.
        db.events(&EventQuery {
            limit: 50,
            ..Default::default()
        })
        .unwrap();
        db.search("night", 10, None).unwrap();
        db.event(e, None).unwrap();
        db.categories(e).unwrap();
        // Holds of every kind; one let go, one lapsed, one by a client.
        let hold = |n: u8, item: HoldItem| {
            let req = HoldRequest {
                event_id: e,
                items: vec![item],
            };
            db.hold(&req, &[round * 16 + n; 32], at, 10 * MIN).unwrap();
        };
        hold(
            1,
            HoldItem::Seats {
                seats: vec![format!("A-{}-1", 1 + round)],
            },
        );
        hold(
            2,
            HoldItem::Best {
                category_id: s,
                quantity: 2,
            },
        );
        hold(
            3,
            HoldItem::Quantity {
                category_id: floor,
                quantity: 3,
            },
        );
        let req = HoldRequest {
            event_id: e,
            items: vec![HoldItem::Quantity {
                category_id: floor,
                quantity: 2,
            }],
        };
        for n in [4, 5, 6, 7] {
            let client = Client {
                address: "10.0.0.1".into(),
                most: 10,
            };
            wait(db.hold_pending(req.clone(), [round * 16 + n; 32], at, MIN, Some(client)))
                .unwrap();
        }
        db.hold_of(&[round * 16 + 1; 32], at).unwrap();
        db.release(&[round * 16 + 4; 32], at + 1).unwrap();
        // Again (read as it is), and a hold there is not.
        db.release(&[round * 16 + 4; 32], at + 1).unwrap();
        db.release(&[0xEE; 32], at + 1).unwrap_err();
        db.availability(e, at + 1).unwrap();
        // Orders: paid at once, paid by the payment's answer with tickets
        // signed ahead, refused, given up, refunded, reissued.
        let order = |n: u8, idempotent: bool| {
            let mut o = new_order(0, &code(n), idempotent.then_some(("key", n)));
            if let Some((k, _)) = &mut o.idempotency {
                *k = code(n);
            }
            o.hold_hash = [round * 16 + n; 32];
            created(db.create_order(&o, at + 2).unwrap());
        };
        order(1, true);
        db.settle_paid(&code(1), at + 3).unwrap();
        sign(db, &code(1), &key);
        order(2, false);
        db.set_intent(&code(2), &format!("pi_{round}_2"), at + 3)
            .unwrap();
        db.order_by_intent(&format!("pi_{round}_2")).unwrap();
        let fields = db.tickets_to_sign_ahead(&code(2)).unwrap().unwrap();
        let tickets = fields
            .into_iter()
            .map(|f| {
                let stand_in = format!("VT1.{}", shared::hex::encode(&f.ticket_id.0));
                (f, stand_in)
            })
            .collect();
        let signed = issuer::storage::Signed {
            key_id: key.clone(),
            tickets,
        };
        let paid =
            wait(db.pay_pending(code(2), format!("pi_{round}_2"), at + 4, Some(signed))).unwrap();
        assert!(matches!(paid, Settled::Paid(_)), "{paid:?}");
        let issued = db.order_tickets(&code(2), &[0xEE; 32]).unwrap();
        db.ticket_code(&issued[0].ticket_id, &[0xEE; 32]).unwrap();
        db.tickets_of_order(&code(2)).unwrap();
        let old = &issued[0].ticket_id;
        let again = db.ticket_to_reissue(a, &code(2), old).unwrap();
        let new_code = format!("VT1.{}", shared::hex::encode(&again.ticket_id.0));
        db.reissue_ticket(a, &code(2), old, &key, &(again, new_code), at + 5)
            .unwrap();
        order(3, false);
        db.mark_failed(&code(3), "card_declined", at + 5).unwrap();
        order(5, false);
        db.cancel_pending(&code(5), at + 5).unwrap();
        db.mark_refunded(&code(1), "re_1", "cancelled", at + 6)
            .unwrap();
        db.organizer_order(a, &code(2)).unwrap();
        db.order(&code(2), &[0xEE; 32]).unwrap();
        db.order_by_code(&code(3)).unwrap();
        db.figures(a, e, at + 6).unwrap();
        db.revocations(a, &[e], 0, 100).unwrap();
        db.keyset(a, &[e], at + 6).unwrap();
        for m in db.claim_mail(at + 7, MIN, 100).unwrap() {
            db.mail_sent(m.id, at + 7).unwrap();
        }
        db.claim_unsettled(at + 7, 0, at + 7, 10).unwrap();
        // Holds lapse; the feed is read as watchers read it.
        db.announce_expired(at + 11 * MIN).unwrap();
        let cursor = db.change_cursor().unwrap();
        db.changes_after(0, 100).unwrap();
        db.changes_after(cursor, 100).unwrap();
        db.changes(e, 0, 100).unwrap();
    };
    sell(0, T0);
    let whole = reading_whole_tables(&pg);
    assert!(whole.is_empty(), "on a new shop: {whole:#?}");
    // PostgreSQL plans again what it learned more of.
    for t in GROWING {
        issuer::storage::postgres::admin(&url, &format!("ANALYZE {t}")).unwrap();
    }
    sell(1, T0 + 60 * MIN);
    let whole = reading_whole_tables(&pg);
    assert!(whole.is_empty(), "once analyzed: {whole:#?}");
}

/// Two handles on one PostgreSQL database stand for two issuer processes:
/// the database decides between them.
#[test]
fn two_processes_on_one_database_share_keys_orders_mail_and_the_feed() {
    let Some(url) = crate::pg::fresh_database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (postgres(&url, &tmp), postgres(&url, &tmp));
    let (e, s, floor) = on_sale(&*one, 40);
    let cursor = two.change_cursor().unwrap();
    // A retry reaching the other process is answered the first order.
    one.hold(&seats(e, &["A-3-9"]), &[9; 32], T0, 10 * MIN)
        .unwrap();
    let first = created(
        one.create_order(&new_order(9, "TWOPROC001", Some(("key-9", 9))), T0)
            .unwrap(),
    );
    assert_eq!(
        two.create_order(&new_order(9, "TWOPROC002", Some(("key-9", 9))), T0 + 1)
            .unwrap(),
        Created::Again(first)
    );
    // Buyers on both at once: no place twice, the quota never beyond.
    let bought: Vec<(Vec<Option<String>>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u8)
            .map(|buyer| {
                let db = if buyer % 2 == 0 {
                    one.clone()
                } else {
                    two.clone()
                };
                scope.spawn(move || {
                    let (mut bought, mut orders) = (Vec::new(), 0);
                    for t in 0..12u8 {
                        let item = match (buyer + t) % 3 {
                            0 => HoldItem::Best {
                                category_id: s,
                                quantity: 2,
                            },
                            1 => HoldItem::Seats {
                                seats: vec![format!("A-{}-{}", 1 + t % 3, 1 + buyer)],
                            },
                            _ => HoldItem::Quantity {
                                category_id: floor,
                                quantity: 3,
                            },
                        };
                        let token = [buyer, t, 0x33, 0x44].repeat(8).try_into().unwrap();
                        let req = HoldRequest {
                            event_id: e,
                            items: vec![item],
                        };
                        if db.hold(&req, &token, T0 + 2, 10 * MIN).is_err() {
                            continue;
                        }
                        let code = format!("P{buyer:02}T{t:02}XXXXX");
                        let mut order = new_order(0, &code, None);
                        order.hold_hash = token;
                        created(db.create_order(&order, T0 + 3).unwrap());
                        match db.settle_paid(&code, T0 + 4).unwrap() {
                            Settled::Paid(o) => {
                                orders += 1;
                                bought.extend(o.places.into_iter().map(|p| p.seat));
                            }
                            other => panic!("{code}: {other:?}"),
                        }
                    }
                    (bought, orders)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let paid_orders: usize = bought.iter().map(|b| b.1).sum();
    let bought: Vec<Vec<Option<String>>> = bought.into_iter().map(|b| b.0).collect();
    let seats_sold: Vec<&String> = bought.iter().flatten().flatten().collect();
    let unique: std::collections::HashSet<&&String> = seats_sold.iter().collect();
    assert_eq!(unique.len(), seats_sold.len(), "a seat sold twice");
    let standing = bought.iter().flatten().filter(|p| p.is_none()).count();
    assert!(standing <= 40, "{standing} of 40 standing places sold");
    // Both see what the database says, and the feed adds up.
    let a = one.availability(e, T0 + 5).unwrap();
    let b = two.availability(e, T0 + 5).unwrap();
    assert_eq!(a, b);
    let sold: u64 = a.categories.iter().map(|c| c.sold).sum();
    assert_eq!(sold as usize, bought.iter().flatten().count());
    feed_adds_up(&*two, e, T0 + 5, "postgres");
    // A watcher's cursor on one process gets every change made by either.
    // (A transaction still writing anywhere on the server holds back what
    // it may precede: other tests' share this one.)
    let mut told = Vec::new();
    let mut at = cursor;
    for _ in 0..300 {
        let (next, more) = two.changes_after(at, 100_000).unwrap();
        told.extend(more);
        at = next;
        if told.len() as u64 >= a.seq {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Once each; in the order of the transactions that wrote them, which
    // a watcher puts in the event's order (a gap is read from the event).
    let mut seqs: Vec<u64> = told.iter().map(|c| c.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=a.seq).collect::<Vec<_>>(), "every change, once");
    // Each message and each pending order is taken by one of them.
    let mails = std::thread::scope(|scope| {
        let a = scope.spawn(|| one.claim_mail(T0 + 10, MIN, 1000).unwrap());
        let b = scope.spawn(|| two.claim_mail(T0 + 10, MIN, 1000).unwrap());
        let mut ids: Vec<u64> = a.join().unwrap().iter().map(|m| m.id).collect();
        ids.extend(b.join().unwrap().iter().map(|m| m.id));
        ids
    });
    let distinct: std::collections::HashSet<&u64> = mails.iter().collect();
    assert_eq!(distinct.len(), mails.len(), "a message taken twice");
    assert!(paid_orders > 10, "{paid_orders} orders paid");
    assert_eq!(mails.len(), paid_orders, "one message a paid order");
    let asked = std::thread::scope(|scope| {
        let a = scope.spawn(|| one.claim_unsettled(T0 + MIN, 0, T0 + 2 * MIN, 10).unwrap());
        let b = scope.spawn(|| two.claim_unsettled(T0 + MIN, 0, T0 + 2 * MIN, 10).unwrap());
        a.join().unwrap().len() + b.join().unwrap().len()
    });
    assert_eq!(asked, 1, "the one pending order, asked about once");
}

// ---- Review tests (adversarial): each should pass on every backend. ----

/// One address, many requests at the same instant (several processes, or
/// one process's pool): the cap on what one address holds must hold.
#[test]
fn one_address_holding_at_once_from_many_requests_holds_no_more_than_allowed() {
    for (name, db, _tmp) in backends() {
        let db: std::sync::Arc<dyn Storage> = db.into();
        let (e, _, floor) = on_sale(&*db, 400);
        let mut worst = 0;
        for round in 0..5u8 {
            let n = 16u8;
            let barrier = std::sync::Barrier::new(n as usize);
            let ok: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..n)
                    .map(|i| {
                        let db = db.clone();
                        let barrier = &barrier;
                        scope.spawn(move || {
                            let req = HoldRequest {
                                event_id: e,
                                items: vec![HoldItem::Quantity {
                                    category_id: floor,
                                    quantity: 1,
                                }],
                            };
                            barrier.wait();
                            let got = wait(db.hold_pending(
                                req,
                                [round * 16 + i + 1; 32],
                                T0,
                                10 * MIN,
                                Some(Client {
                                    address: format!("10.0.0.{round}"),
                                    most: 2,
                                }),
                            ));
                            match got {
                                Ok(_) => 1,
                                Err(StorageError::Conflict(_)) => 0,
                                Err(other) => panic!("{other:?}"),
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            worst = worst.max(ok);
        }
        assert!(
            worst <= 2,
            "{name}: one address came to hold {worst} places at once; at most 2 allowed"
        );
    }
}

/// Words with a modifier letter apostrophe (Hawaiian okina, Ukrainian
/// apostrophe) are letters to `search_terms`, and become a quote once
/// unaccented: a search must still be answered.
#[test]
fn a_search_with_a_modifier_letter_apostrophe_is_answered() {
    for (name, db, _tmp) in backends() {
        let a = organizer(&*db, 1);
        let v = db.add_venue(a, &venue("Honolulu")).unwrap();
        let e = db
            .add_event(a, &event(v.id, "Aloha Hawaiʻi", Genre::Concert, 1000))
            .unwrap();
        db.set_status(a, e.id, EventStatus::OnSale).unwrap();
        for q in ["Hawaiʻi", "ʼ", "subʼject", "xʼ⑴"] {
            let got = db.search(q, 10, None);
            assert!(got.is_ok(), "{name}: searching {q:?}: {got:?}");
        }
    }
}

/// A NUL in what a buyer sends is refused as such (400/409/404), never a
/// server failure (500).
#[test]
fn a_nul_in_a_buyers_input_is_refused_not_a_server_failure() {
    for (name, db, _tmp) in backends() {
        let (e, _, _) = on_sale(&*db, 10);
        let seat = db.hold(&seats(e, &["A-1-1\u{0}"]), &[9; 32], T0, MIN);
        let city = db.events(&EventQuery {
            city: Some("Ly\u{0}on".into()),
            limit: 10,
            ..Default::default()
        });
        let order = db.order("NOT\u{0}ANORDER", &[0; 32]);
        let failed: Vec<String> = [
            ("seat", seat.err()),
            ("city", city.err()),
            ("order", order.err()),
        ]
        .into_iter()
        .filter_map(|(what, e)| match e {
            Some(StorageError::Backend(m)) => Some(format!("{what}: {m}")),
            _ => None,
        })
        .collect();
        assert!(failed.is_empty(), "{name}: {failed:?}");
    }
}

/// Another process, frozen (or cut off by the network) in the middle of a
/// transaction: a session of its own that ran `sql` (its BEGIN, and what
/// it wrote or locked), then nothing more until [`Frozen::run`] or its
/// drop (which ends the session: the transaction is rolled back).
struct Frozen {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Frozen {
    fn new(url: &str, sql: &str) -> Frozen {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .unwrap();
        rt.spawn(conn);
        let frozen = Frozen { rt, client };
        frozen.run(sql);
        frozen
    }

    fn run(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap();
    }
}

/// Another process stalls (frozen, or cut off by the network) in the middle
/// of a transaction that numbered an event's change: every other process
/// must not wait on it for ever.
#[test]
fn a_process_stalled_mid_transaction_does_not_stall_an_events_sales() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 50);
    let q = quantity_of(e, floor, 1);
    db.hold(&q, &[1; 32], T0, 10 * MIN).unwrap();
    // The stalled process: it wrote a change of the event (taking the
    // event's feed lock, shared, as every such transaction does), then
    // froze before its commit. The changes are then numbered (which waits
    // for the commits in flight), and a buyer holds.
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT pg_advisory_xact_lock_shared({}, {e})",
            0x6665_6564
        ),
    );
    let numbering = db.clone();
    std::thread::spawn(move || numbering.changes_after(0, 10));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (tx, rx) = std::sync::mpsc::channel();
    let db2 = db.clone();
    std::thread::spawn(move || {
        let _ = tx.send(db2.hold(&q, &[2; 32], T0, 10 * MIN));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(20));
    drop(frozen);
    assert!(
        matches!(got, Ok(Ok(_))),
        "a hold waited more than 20 s behind another process's stalled transaction: {got:?}"
    );
}

/// A payment settling while the organizer cancels the event: the
/// cancellation waits for the settlement in flight (which found the event
/// on sale and keeps the payment), so no payment is kept for an event
/// cancelled before it was settled. (The settlement is held between its
/// look at the event and its commit by another session's uncommitted
/// outbox row, standing for any delay there.)
#[test]
fn a_cancellation_waits_for_the_payments_being_settled() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, _) = on_sale(&*db, 5);
    db.hold(&seats(e, &["A-1-1"]), &[1; 32], T0, 10 * MIN)
        .unwrap();
    created(
        db.create_order(&new_order(1, "RACE000001", None), T0)
            .unwrap(),
    );
    let frozen = Frozen::new(
        &url,
        "BEGIN; INSERT INTO outbox (order_code, kind, created_at, next_try_at)
         VALUES ('RACE000001', 'tickets', 0, 0)",
    );
    let db2 = db.clone();
    let settling = std::thread::spawn(move || db2.settle_paid("RACE000001", T0 + 1));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let db3 = db.clone();
    let cancelling = std::thread::spawn(move || db3.set_status(1, e, EventStatus::Cancelled));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        !cancelling.is_finished(),
        "the event was cancelled while a payment of it was being settled"
    );
    frozen.run("ROLLBACK");
    let settled = settling.join().unwrap().unwrap();
    assert!(matches!(settled, Settled::Paid(_)), "{settled:?}");
    cancelling.join().unwrap().unwrap();
    assert_eq!(db.event(e, None).unwrap().status, EventStatus::Cancelled);
    // Cancelled: nothing of it is held any more.
    db.hold(&seats(e, &["A-1-2"]), &[2; 32], T0, 10 * MIN)
        .map(|_| ())
        .unwrap_err();
}

/// A hold refused for its own fault after it took places (here it asks,
/// after them, for a seat the event does not sell) takes nothing from the
/// holds asked with it: no buyer is refused places that stay free.
#[test]
fn a_hold_refused_late_in_a_batch_takes_no_place_from_another() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 10);
        let quantity = |n| HoldItem::Quantity {
            category_id: floor,
            quantity: n,
        };
        let seat = |k: &str| HoldItem::Seats {
            seats: vec![k.into()],
        };
        let asked = [
            // Two ahead, that keep the database busy while the rest gather.
            seats(e, &["A-3-9"]),
            seats(e, &["A-3-10"]),
            // Five standing places, then a seat there is not: refused.
            HoldRequest {
                event_id: e,
                items: vec![quantity(5), seat("Z-9-9")],
            },
            // Eight of the ten: free, once the hold above is refused.
            HoldRequest {
                event_id: e,
                items: vec![quantity(8)],
            },
            // A-1-1, then a seat there is not: refused.
            HoldRequest {
                event_id: e,
                items: vec![seat("A-1-1"), seat("Z-9-8")],
            },
            // A standing place, then A-1-1: free, once the hold above is
            // refused.
            HoldRequest {
                event_id: e,
                items: vec![quantity(1), seat("A-1-1")],
            },
        ];
        let pending: Vec<_> = asked
            .iter()
            .enumerate()
            .map(|(i, r)| db.hold_pending(r.clone(), [i as u8 + 1; 32], T0, MIN, None))
            .collect();
        let got = wait(async { Ok(futures_util::future::join_all(pending).await) }).unwrap();
        assert!(
            got[..2].iter().all(|r| r.is_ok()),
            "{name}: {:?}",
            &got[..2]
        );
        assert!(
            matches!(&got[2], Err(StorageError::Invalid(m)) if m.contains("Z-9-9")),
            "{name}: {:?}",
            got[2]
        );
        assert!(
            matches!(&got[4], Err(StorageError::Invalid(m)) if m.contains("Z-9-8")),
            "{name}: {:?}",
            got[4]
        );
        assert_eq!(
            seat_state(&*db, e, "A-1-1", T0),
            if got[5].is_ok() {
                PlaceState::Held
            } else {
                PlaceState::Available
            },
            "{name}"
        );
        feed_adds_up(&*db, e, T0, name);
        let (eight, seat) = (got[3].as_ref(), got[5].as_ref());
        assert!(
            eight.is_ok_and(|h| h.places.len() == 8) && seat.is_ok_and(|h| h.places.len() == 2),
            "{name}: free places refused: eight of ten: {eight:?}; a standing place and A-1-1: {seat:?}"
        );
    }
}

/// Holds 1, 3 and 4 (a standing place each) and 2 (seat A-1-1) of a new
/// event, whose releases are asked for while another session, frozen
/// mid-transaction, keeps what `lock` locks of holds 1, 3 and 4 (their
/// rows, or their places): the release of hold 2, asked for beside
/// theirs, is made, and at once; how long it took, and what it came to.
fn a_release_beside_locked_ones(lock: &str) {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 10);
    for h in [1u8, 3, 4] {
        db.hold(&quantity_of(e, floor, 1), &[h; 32], T0, 10 * MIN)
            .unwrap();
    }
    db.hold(&seats(e, &["A-1-1"]), &[2; 32], T0, 10 * MIN)
        .unwrap();
    let hashes = ["01", "03", "04"]
        .map(|b| format!("'\\x{}'", b.repeat(32)))
        .join(", ");
    let frozen = Frozen::new(&url, &format!("BEGIN; {}", lock.replace("$HOLDS", &hashes)));
    // Their buyers let them go (asked now, made by tasks of their own),
    // then another buyer lets hold 2 go.
    let stuck: Vec<_> = [1u8, 3, 4]
        .iter()
        .map(|h| db.release_pending([*h; 32], T0 + 1))
        .collect();
    let started = std::time::Instant::now();
    let other = wait(db.release_pending([2; 32], T0 + 1));
    let took = started.elapsed();
    drop(frozen);
    drop(stuck);
    assert!(
        matches!(&other, Ok(h) if h.state == HoldState::Released),
        "a release beside ones waiting for locks ({lock}), after {took:?}: {other:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "a release waited {took:?} behind others' locks ({lock})"
    );
    assert_eq!(seat_state(&*db, e, "A-1-1", T0 + 1), PlaceState::Available);
}

/// A hold whose row another session keeps locked (a payment of it
/// settling in a process that froze) makes its own release wait, not
/// another buyer's: a release asked for beside it is made, and at once.
#[test]
fn a_release_waiting_for_a_locked_hold_does_not_fail_or_hold_up_others() {
    a_release_beside_locked_ones("SELECT 1 FROM holds WHERE token_hash IN ($HOLDS) FOR UPDATE");
}

/// A lapsed hold whose row another session keeps locked (a late payment
/// of it settling in a process that froze) holds up no buyer: its expiry
/// is told by a later look, and the holds asked meanwhile are made.
#[test]
fn a_hold_waiting_to_tell_of_a_locked_lapsed_hold_fails_no_other() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 50);
    let q = quantity_of(e, floor, 1);
    // Lapses at T0 + 1 s, locked meanwhile by the frozen session.
    db.hold(&q, &[99; 32], T0, 1000).unwrap();
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT 1 FROM holds WHERE token_hash = '\\x{}' FOR UPDATE",
            "63".repeat(32)
        ),
    );
    // Two ahead, before it lapses; then ten buyers at once, after.
    let mut pending: Vec<_> = (0..2u8)
        .map(|i| db.hold_pending(q.clone(), [i + 1; 32], T0 + 500, 10 * MIN, None))
        .collect();
    pending.extend(
        (0..10u8).map(|i| db.hold_pending(q.clone(), [i + 10; 32], T0 + 2000, 10 * MIN, None)),
    );
    let got = wait(async { Ok(futures_util::future::join_all(pending).await) }).unwrap();
    drop(frozen);
    let failed: Vec<_> = got[2..].iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 10 holds failed behind one locked lapsed hold: {:?}",
        failed.len(),
        failed.first()
    );
}

/// A payment being settled locks its hold's places, not the hold's row:
/// a release of another hold, asked for beside the releases of those, is
/// made at once, not after them.
#[test]
fn a_release_beside_one_whose_places_a_payment_locks_is_made_at_once() {
    // As `settle_in` locks them.
    a_release_beside_locked_ones(
        "SELECT 1 FROM hold_items i JOIN places p ON p.category_id = i.category_id AND p.n = i.n
         WHERE i.hold IN ($HOLDS) FOR UPDATE OF p",
    );
}

/// A late payment of a lapsed hold, being settled, locks its places, not
/// its row: the holds asked meanwhile, which tell of lapsed holds first,
/// pass it over and are made at once.
#[test]
fn holds_are_made_at_once_while_a_late_payment_locks_a_lapsed_holds_places() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 50);
    let q = quantity_of(e, floor, 1);
    db.hold(&q, &[99; 32], T0, 1000).unwrap();
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT 1 FROM hold_items i JOIN places p
                  ON p.category_id = i.category_id AND p.n = i.n
         WHERE i.hold = '\\x{}' FOR UPDATE OF p",
            "63".repeat(32)
        ),
    );
    let mut pending: Vec<_> = (0..2u8)
        .map(|i| db.hold_pending(q.clone(), [i + 1; 32], T0 + 500, 10 * MIN, None))
        .collect();
    pending.extend(
        (0..10u8).map(|i| db.hold_pending(q.clone(), [i + 10; 32], T0 + 2000, 10 * MIN, None)),
    );
    let started = std::time::Instant::now();
    let pending: Vec<_> = pending
        .into_iter()
        .map(|p| async move {
            let r = p.await;
            (
                r.as_ref().map(|_| ()).map_err(|e| e.clone()),
                started.elapsed(),
            )
        })
        .collect();
    let got = wait(async { Ok(futures_util::future::join_all(pending).await) }).unwrap();
    let took = started.elapsed();
    drop(frozen);
    assert!(got.iter().all(|r| r.0.is_ok()), "after {took:?}: {got:?}");
    assert!(
        took < std::time::Duration::from_secs(3),
        "holds waited {took:?} behind a late payment's locked places"
    );
}

/// What is left, as an event's seat states say, adds up with its feed
/// while a lapsed hold cannot be told of (another transaction has locked
/// it): its places are held until its expiry is told, in both.
#[test]
fn the_feed_adds_up_while_a_lapsed_hold_is_locked() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, _) = on_sale(&*db, 10);
    db.hold(&seats(e, &["A-1-1"]), &[99; 32], T0, 1000).unwrap();
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT 1 FROM holds WHERE token_hash = '\\x{}' FOR UPDATE",
            "63".repeat(32)
        ),
    );
    feed_adds_up(&*db, e, T0 + 2000, "postgres");
    drop(frozen);
}

/// A hold refused for want of places, places it took itself among them,
/// does not get a hold asked with it refused: the other buyer, whose hold
/// fits the places free, gets them.
#[test]
fn a_hold_short_by_its_own_fault_does_not_get_another_refused() {
    for (name, db, _tmp) in backends() {
        let (e, _, floor) = on_sale(&*db, 10);
        let quantity = |n| HoldItem::Quantity {
            category_id: floor,
            quantity: n,
        };
        let asked = [
            seats(e, &["A-3-9"]),
            seats(e, &["A-3-10"]),
            // Twelve of ten: refused, its own fault.
            HoldRequest {
                event_id: e,
                items: vec![quantity(6), quantity(6)],
            },
            // Eight of ten: to be made.
            HoldRequest {
                event_id: e,
                items: vec![quantity(8)],
            },
        ];
        let pending: Vec<_> = asked
            .iter()
            .enumerate()
            .map(|(i, r)| db.hold_pending(r.clone(), [i as u8 + 1; 32], T0, MIN, None))
            .collect();
        let got = wait(async { Ok(futures_util::future::join_all(pending).await) }).unwrap();
        assert!(got[2].is_err(), "{name}: {:?}", got[2]);
        assert!(
            got[3].as_ref().is_ok_and(|h| h.places.len() == 8),
            "{name}: eight of ten free refused: {:?}",
            got[3]
        );
    }
}

/// Releases passed over for a hold another session keeps locked wait a
/// few at a time: a buyer asking again and again to let it go does not
/// take every connection of the pool, and another buyer's hold is made at
/// once.
#[test]
fn releases_waiting_for_a_locked_hold_do_not_take_the_pool() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 10);
    let q = quantity_of(e, floor, 1);
    db.hold(&q, &[1; 32], T0, 10 * MIN).unwrap();
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT 1 FROM holds WHERE token_hash = '\\x{}' FOR UPDATE",
            "01".repeat(32)
        ),
    );
    let stuck: Vec<_> = (0..24)
        .map(|_| db.release_pending([1; 32], T0 + 1))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let other = db.hold(&q, &[2; 32], T0 + 1, 10 * MIN);
    let took = started.elapsed();
    drop(frozen);
    drop(stuck);
    assert!(other.is_ok(), "after {took:?}: {other:?}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "another buyer's hold waited {took:?} for a connection"
    );
}

/// A release asked for while its hold stands, made in a batch with one
/// asked for after the hold lapsed, is made at its own time at once: not
/// sent to wait, as the releases of holds another transaction has locked
/// are, behind those.
#[test]
fn a_release_passed_over_for_its_time_does_not_wait_behind_releases_of_locked_holds() {
    let Some((url, db, _tmp)) = one_postgres() else {
        return;
    };
    let (e, _, floor) = on_sale(&*db, 10);
    let a = db.organizer_by_token(&[1; 32]).unwrap().unwrap();
    let v = db.add_venue(a, &venue("Paris")).unwrap();
    let e2 = db
        .add_event(a, &event(v.id, "Day", Genre::Concert, 1000))
        .unwrap()
        .id;
    let floor2 = Places::Quota {
        area: "floor".into(),
        places: 10,
    };
    let f2 = db.add_category(a, e2, &category(floor2, 100)).unwrap().id;
    db.set_status(a, e2, EventStatus::OnSale).unwrap();
    let q = |e, c| quantity_of(e, c, 1);
    for h in [1u8, 3, 4] {
        db.hold(&q(e, floor), &[h; 32], T0, 10 * MIN).unwrap();
    }
    for h in [5u8, 6] {
        db.hold(&q(e2, f2), &[h; 32], T0, 10 * MIN).unwrap();
    }
    // Lapses at T0 + 1 s.
    db.hold(&seats(e, &["A-1-1"]), &[2; 32], T0, 1000).unwrap();
    // A payment of holds 1 and 3 being settled (frozen) locks their
    // places: their releases wait alone, taking both turns.
    let frozen = Frozen::new(
        &url,
        &format!(
            "BEGIN; SELECT 1 FROM hold_items i JOIN places p
                  ON p.category_id = i.category_id AND p.n = i.n
             WHERE i.hold IN ('\\x{}', '\\x{}') FOR UPDATE OF p",
            "01".repeat(32),
            "03".repeat(32)
        ),
    );
    let stuck: Vec<_> = [1u8, 3]
        .iter()
        .map(|h| db.release_pending([*h; 32], T0 + 1))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Two batches of releases in flight, held a moment by a reader of
    // event 2's state, so that the next two releases go in one batch.
    let reader = Frozen::new(
        &url,
        &format!("BEGIN; SELECT pg_advisory_xact_lock({}, {e2})", 0x6665_6564),
    );
    let others: Vec<_> = [5u8, 6]
        .iter()
        .map(|h| db.release_pending([*h; 32], T0 + 1))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Hold 2, let go while it stands, beside a release asked after it lapsed.
    let two = db.release_pending([2; 32], T0 + 900);
    let four = db.release_pending([4; 32], T0 + 1500);
    reader.run("ROLLBACK");
    let started = std::time::Instant::now();
    let four = wait(four);
    let two = wait(two);
    let took = started.elapsed();
    drop(frozen);
    drop(stuck);
    drop(others);
    assert!(
        matches!(&four, Ok(h) if h.state == HoldState::Released),
        "{four:?}"
    );
    assert!(
        matches!(&two, Ok(h) if h.state == HoldState::Released),
        "{two:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "the release of a hold nothing locks waited {took:?} behind releases waiting for others' locks"
    );
}
