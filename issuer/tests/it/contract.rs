//! The storage contract: what every backend must do, run unchanged against
//! each (SQLite now). A backend is made fresh for each test by `backends()`.

use issuer::domain::catalogue::{EventStatus, Genre, NewCategory, NewEvent, NewVenue, Places};
use issuer::domain::pricing::Pricing;
use issuer::domain::venue::{Area, Row, Seat, SeatingPlan, Section};
use issuer::storage::{EventQuery, OrganizerId, Storage, StorageError};

/// Every backend under test, each fresh and empty, with a name for messages.
fn backends() -> Vec<(&'static str, Box<dyn Storage>, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = issuer::storage::sqlite::SqliteStorage::open(&tmp.path().join("data")).unwrap();
    vec![("sqlite", Box::new(sqlite), tmp)]
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
