//! The merged scan log: merge is a join (commutative, associative,
//! idempotent), derived duplicates do not depend on the order of merges, and
//! the version vector tells a peer exactly what it lacks.

use proptest::prelude::*;
use shared::{
    DeviceId, DeviceSig, Direction, Hlc, RecordHash, RecordKey, ResultCode, ScanLog, ScanRecord,
    TicketId, VersionVector,
};

fn record(
    device: u8,
    idx: u64,
    ticket: u8,
    multi: bool,
    direction: Direction,
    result: ResultCode,
    hlc: u64,
) -> ScanRecord {
    ScanRecord {
        device_id: DeviceId([device; 16]),
        idx,
        ticket: Some((1001, TicketId([ticket; 16]))),
        multi_entry: multi,
        category_id: 1,
        seat: String::new(),
        direction,
        result,
        reason: String::new(),
        wall_ms: hlc >> 16,
        hlc: Hlc(hlc),
        gate: format!("gate-{device}"),
        device_name: format!("tablet-{device}"),
        proof: None,
        prev: RecordHash::FIRST,
        device_key: None,
        sig: DeviceSig::NONE,
    }
}

/// Logs of up to 4 devices scanning up to 5 tickets; tickets 0 and 1 are
/// multi-entry. Stamps grow with each device's index, and collide across
/// devices now and then, to exercise the tie-break.
fn logs() -> impl Strategy<Value = Vec<ScanRecord>> {
    let scan = (
        0u8..5,
        any::<bool>(),
        prop::sample::select(vec![
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::AlreadyRedeemed,
        ]),
        0u64..4,
    );
    prop::collection::vec(prop::collection::vec(scan, 0..12), 1..5).prop_map(|devices| {
        let mut out = Vec::new();
        for (d, scans) in devices.into_iter().enumerate() {
            let mut hlc = 1_000u64 << 16;
            for (i, (ticket, exit, result, step)) in scans.into_iter().enumerate() {
                hlc += step << 16;
                let direction = if exit {
                    Direction::Exit
                } else {
                    Direction::Entry
                };
                out.push(record(
                    d as u8,
                    i as u64 + 1,
                    ticket,
                    ticket < 2,
                    direction,
                    result,
                    hlc,
                ));
            }
        }
        out
    })
}

/// Splits `records` into three replicas that each saw a random part.
fn replicas() -> impl Strategy<Value = (Vec<ScanRecord>, [ScanLog; 3])> {
    logs()
        .prop_flat_map(|records| {
            let n = records.len();
            (Just(records), prop::collection::vec(0u8..8, n))
        })
        .prop_map(|(records, masks)| {
            let mut parts = [ScanLog::new(), ScanLog::new(), ScanLog::new()];
            for (r, mask) in records.iter().zip(masks) {
                for (i, part) in parts.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        part.insert(r.clone());
                    }
                }
            }
            (records, parts)
        })
}

fn merged(a: &ScanLog, b: &ScanLog) -> ScanLog {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent((_, [a, b, c]) in replicas()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab);
    }

    #[test]
    fn duplicates_do_not_depend_on_the_order_of_merges((records, [a, b, c]) in replicas()) {
        let full: ScanLog = records.into_iter().collect();
        // Every replica, once it has merged the others in any order, holds
        // everything that was seen and derives the same duplicates.
        let orders = [[&a, &b, &c], [&c, &a, &b], [&b, &c, &a], [&c, &b, &a]];
        let union = merged(&merged(&a, &b), &c);
        for [x, y, z] in orders {
            let m = merged(&merged(x, y), z);
            prop_assert_eq!(m.duplicates(None), union.duplicates(None));
            prop_assert_eq!(m, union.clone());
        }
        // When the replicas saw everything between them, the merged answer is the whole log's.
        if union.len() == full.len() {
            prop_assert_eq!(union.duplicates(None), full.duplicates(None));
        }
    }

    #[test]
    fn what_a_peer_lacks_is_what_it_is_sent((_, [a, b, _]) in replicas()) {
        let mut peer = b.clone();
        for r in a.missing_for(&b.version_vector()) {
            peer.insert(r);
        }
        prop_assert_eq!(peer, merged(&a, &b));
    }

    #[test]
    fn paging_what_a_peer_lacks_sends_each_record_once_in_order(
        (_, [a, b, _]) in replicas(),
        page in 1usize..7,
    ) {
        // Pages of `page` records, each starting after the last one sent,
        // with the same version vector: together, exactly `missing_for`.
        let vv = b.version_vector();
        let mut sent = Vec::new();
        let mut after = None;
        loop {
            let got: Vec<ScanRecord> = a.missing_after(&vv, after).take(page).cloned().collect();
            let Some(last) = got.last() else { break };
            after = Some(RecordKey::of(last));
            sent.extend(got);
        }
        prop_assert_eq!(sent, a.missing_for(&vv));
    }

    #[test]
    fn a_record_written_by_hand_is_the_json_serde_writes(
        r in logs().prop_filter("a record", |l| !l.is_empty()).prop_map(|l| l[0].clone()),
        seat in ".{0,6}",
        reason in any::<String>(),
        gate in "[a-z\\\\\"\u{0}-\u{1f}\u{7f}é€😀 ]{0,8}",
        no_ticket in any::<bool>(),
    ) {
        let mut r = r;
        r.seat = seat;
        r.reason = reason;
        r.gate = gate;
        if no_ticket {
            r.ticket = None;
        }
        let mut by_hand = Vec::new();
        r.write_json(&mut by_hand);
        let by_hand = String::from_utf8(by_hand).unwrap();
        prop_assert_eq!(&by_hand, &serde_json::to_string(&r).unwrap());
        prop_assert_eq!(serde_json::from_str::<ScanRecord>(&by_hand).unwrap(), r);
    }

    #[test]
    fn derived_duplicates_hold_no_multi_entry_in_out_flow(moves in prop::collection::vec(0u8..3, 1..20)) {
        // One multi-entry ticket going in and out through different gates,
        // every movement in order: never a duplicate.
        let mut log = ScanLog::new();
        let mut inside = false;
        for (i, device) in moves.into_iter().enumerate() {
            let direction = if inside { Direction::Exit } else { Direction::Entry };
            inside = !inside;
            log.insert(record(device, i as u64 + 1, 0, true, direction, ResultCode::Ok, (i as u64 + 1) << 16));
        }
        prop_assert!(log.duplicates(None).is_empty());
    }
}

#[test]
fn a_single_entry_ticket_admitted_at_two_offline_gates_is_one_duplicate_with_both_scans() {
    use Direction::*;
    let north = record(1, 1, 7, false, Entry, ResultCode::Ok, 5_000 << 16);
    let south = record(2, 1, 7, false, Entry, ResultCode::Ok, 5_010 << 16);
    let refused = record(
        2,
        2,
        7,
        false,
        Entry,
        ResultCode::AlreadyRedeemed,
        5_020 << 16,
    );
    let log: ScanLog = [south.clone(), refused.clone(), north.clone()]
        .into_iter()
        .collect();
    let dups = log.duplicates(Some(1001));
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].ticket_id, TicketId([7; 16]));
    assert_eq!(dups[0].extra_admissions, 1);
    assert_eq!(dups[0].scans, vec![north.clone(), south, refused]);
    assert_eq!(log.first_admission((1001, TicketId([7; 16]))), Some(&north));
    assert!(log.duplicates(Some(1002)).is_empty());
}

#[test]
fn first_admission_ties_break_by_device_then_index() {
    let a = record(2, 4, 3, false, Direction::Entry, ResultCode::Ok, 9 << 16);
    let b = record(1, 8, 3, false, Direction::Entry, ResultCode::Ok, 9 << 16);
    let log: ScanLog = [a, b.clone()].into_iter().collect();
    assert_eq!(log.first_admission((1001, TicketId([3; 16]))), Some(&b));
}

#[test]
fn multi_entry_entering_twice_without_an_exit_is_flagged() {
    use Direction::*;
    let log: ScanLog = [
        record(1, 1, 0, true, Entry, ResultCode::Ok, 1 << 16),
        record(1, 2, 0, true, Exit, ResultCode::Ok, 2 << 16),
        record(2, 1, 0, true, Entry, ResultCode::Ok, 3 << 16),
        record(3, 1, 0, true, Entry, ResultCode::Ok, 4 << 16),
    ]
    .into_iter()
    .collect();
    assert_eq!(log.duplicates(None).len(), 1);
}

#[test]
fn version_vector_stops_at_the_first_gap() {
    let log: ScanLog = [1, 2, 3, 5, 6]
        .into_iter()
        .map(|i| {
            record(
                4,
                i,
                1,
                false,
                Direction::Entry,
                ResultCode::Invalid,
                i << 16,
            )
        })
        .collect();
    let vv = log.version_vector();
    assert_eq!(vv.get(&DeviceId([4; 16])), 3);
    // A peer at 3 is sent 5 and 6 (4 is missing everywhere, still to come).
    let sent: Vec<u64> = log.missing_for(&vv).iter().map(|r| r.idx).collect();
    assert_eq!(sent, vec![5, 6]);
    assert_eq!(log.missing_for(&VersionVector::default()).len(), 5);
}

#[test]
fn a_long_log_with_gaps_filled_out_of_turn_reads_back_by_index_and_range() {
    // Thousands of indexes (past the log's inner chunks of 1,024), a gap
    // left open at 3,000, and records arriving above gaps before the gaps
    // fill, as they do from a peer.
    let scan = |i: u64| {
        record(
            7,
            i,
            1,
            false,
            Direction::Entry,
            ResultCode::Invalid,
            i << 16,
        )
    };
    let held: Vec<u64> = (1..=2999).chain(3001..=3100).collect();
    let mut order = held.clone();
    // Every index above 1,500 arrives before 1,000..=1,500.
    order.sort_by_key(|i| ((1000..=1500).contains(i), *i));
    let mut log = ScanLog::new();
    for &i in &order {
        assert!(log.insert(scan(i)), "{i} is new");
        assert!(!log.insert(scan(i)), "{i} again changes nothing");
    }
    let device = DeviceId([7; 16]);
    assert_eq!(log.len(), held.len());
    assert_eq!(log.version_vector().get(&device), 2999);
    for i in [1, 1023, 1024, 1025, 2048, 2049, 2999, 3001, 3100] {
        assert_eq!(log.get(&device, i).map(|r| r.idx), Some(i));
    }
    for i in [0, 3000, 3101, u64::MAX] {
        assert!(log.get(&device, i).is_none(), "{i} is not held");
    }
    let range =
        |from: u64, to: u64| -> Vec<u64> { log.range(&device, from..=to).map(|r| r.idx).collect() };
    let expect = |from: u64, to: u64| -> Vec<u64> {
        held.iter()
            .copied()
            .filter(|i| (from..=to).contains(i))
            .collect()
    };
    for (from, to) in [
        (0, u64::MAX),
        (1, 1),
        (1020, 1030),
        (1024, 1024),
        (1025, 2049),
        (2990, 3010),
        (3000, 3000),
        (3050, 5000),
        (5, 4),
    ] {
        assert_eq!(range(from, to), expect(from, to), "{from}..={to}");
    }
    let missing: Vec<u64> = log
        .missing_for(&VersionVector([(device, 2047)].into()))
        .iter()
        .map(|r| r.idx)
        .collect();
    assert_eq!(missing, expect(2048, u64::MAX));
    // The same records in key order make an equal log.
    let sorted: ScanLog = held.iter().map(|&i| scan(i)).collect();
    assert_eq!(sorted, log);
    // Filling the gap joins the records above it to the run.
    log.insert(scan(3000));
    assert_eq!(log.version_vector().get(&device), 3100);
    assert_eq!(log.range(&device, 2999..=3001).count(), 3);
    assert_ne!(sorted, log);
}

#[test]
fn a_conflicting_record_resolves_the_same_on_every_replica() {
    let one = record(1, 1, 1, false, Direction::Entry, ResultCode::Ok, 10 << 16);
    let mut other = one.clone();
    other.gate = "forged".into();
    let a: ScanLog = [one.clone()].into_iter().collect();
    let b: ScanLog = [other].into_iter().collect();
    assert_eq!(merged(&a, &b), merged(&b, &a));
    assert_eq!(merged(&a, &b).len(), 1);
}
