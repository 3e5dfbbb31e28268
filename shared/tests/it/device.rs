//! Devices sign what they write: a chain of records holds with one
//! signature checked, and any change by anyone but the device is refused.

use std::collections::BTreeMap;

use shared::device::{DeviceSigner, Held, authentic, authenticate_all, verify_enrollment};
use shared::{
    DeviceId, DeviceKey, DeviceSig, Direction, Hlc, RecordHash, ResultCode, ScanLog, ScanRecord,
};

fn blank(idx: u64, reason: &str) -> ScanRecord {
    ScanRecord {
        device_id: DeviceId([0; 16]),
        idx,
        ticket: None,
        multi_entry: false,
        category_id: 0,
        seat: String::new(),
        direction: Direction::Entry,
        result: ResultCode::Invalid,
        reason: reason.into(),
        wall_ms: 1_900_000_000_000 + idx,
        hlc: Hlc((1_900_000_000_000 + idx) << 16),
        gate: "North".into(),
        device_name: "t1".into(),
        proof: None,
        prev: RecordHash::FIRST,
        device_key: None,
        sig: DeviceSig::NONE,
    }
}

/// `n` records of `signer`, chained as a gate writes them.
fn chain(signer: &DeviceSigner, n: u64) -> Vec<ScanRecord> {
    let mut out: Vec<ScanRecord> = Vec::new();
    for idx in 1..=n {
        let mut r = blank(idx, "unreadable");
        signer.seal(&mut r, out.last());
        out.push(r);
    }
    out
}

/// Holds nothing.
struct Nothing;

impl Held for Nothing {
    fn hashes(&self, _: &DeviceId, _: u64) -> Vec<RecordHash> {
        Vec::new()
    }
    fn key(&self, _: &DeviceId) -> Option<DeviceKey> {
        None
    }
}

#[test]
fn a_chain_holds_and_any_change_by_another_is_refused() {
    let signer = DeviceSigner::from_seed(&[1; 32]);
    let records = chain(&signer, 50);
    assert_eq!(records[0].device_key, Some(signer.public_key()));
    assert!(records[1..].iter().all(|r| r.device_key.is_none()));
    authenticate_all(&records, &Nothing).unwrap();
    // Later records, given what is held, hold too.
    let held: ScanLog = records[..20].iter().cloned().collect();
    authenticate_all(&records[20..], &held).unwrap();
    // Any field changed, anywhere in the chain: refused from that record on.
    for at in [0, 17, 49] {
        let mut forged = records.clone();
        forged[at].reason = "admitted, honest".into();
        let err = authenticate_all(&forged, &Nothing).unwrap_err();
        assert!(err.idx <= at as u64 + 1, "{err}");
        let (kept, refused) = authentic(&forged, &Nothing);
        assert_eq!(refused.len(), 1);
        assert!(kept.len() <= at, "nothing from the change on is taken");
    }
    // Another key signing for this device's id: refused.
    let mut impostor = records[20].clone();
    DeviceSigner::from_seed(&[2; 32]).sign(&mut impostor);
    impostor.device_id = signer.id();
    assert!(authenticate_all(&[impostor], &held).is_err());
    // A made-up id with someone's key: refused.
    let mut renamed = records.clone();
    renamed[0].device_id = DeviceId([9; 16]);
    assert!(authenticate_all(&renamed[..1], &Nothing).is_err());
    // The later records, without the first (and its key): refused.
    assert!(authenticate_all(&records[1..], &Nothing).is_err());
}

#[test]
fn enrollment_is_signed_by_the_key_of_the_id() {
    let signer = DeviceSigner::from_seed(&[3; 32]);
    let sig = signer.sign_enrollment("gs_token");
    verify_enrollment(&signer.public_key(), signer.id(), "gs_token", &sig).unwrap();
    assert!(verify_enrollment(&signer.public_key(), signer.id(), "gs_other", &sig).is_err());
    assert!(verify_enrollment(&signer.public_key(), DeviceId([3; 16]), "gs_token", &sig).is_err());
    let other = DeviceSigner::from_seed(&[4; 32]);
    assert!(verify_enrollment(&other.public_key(), signer.id(), "gs_token", &sig).is_err());
}

#[test]
fn two_versions_of_an_index_end_alike_on_every_replica_and_flag_the_device() {
    let signer = DeviceSigner::from_seed(&[5; 32]);
    let base = chain(&signer, 3);
    // Three versions of index 2, each signed by the device.
    let versions: Vec<ScanRecord> = ["a", "b", "c"]
        .iter()
        .map(|reason| {
            let mut r = blank(2, reason);
            signer.seal(&mut r, Some(&base[0]));
            r
        })
        .collect();
    let mut admitted = blank(2, "");
    admitted.result = ResultCode::Ok;
    admitted.direction = Direction::Entry;
    admitted.ticket = base[0].ticket; // None: the log does not check proofs
    signer.seal(&mut admitted, Some(&base[0]));
    let mut all = vec![
        base[0].clone(),
        base[1].clone(),
        base[2].clone(),
        admitted.clone(),
    ];
    all.extend(versions);
    // Every order of arrival, split over two replicas merged at the end.
    let mut ends = Vec::new();
    for rotation in 0..all.len() {
        let mut order = all.clone();
        order.rotate_left(rotation);
        if rotation % 2 == 1 {
            order.reverse();
        }
        let (x, y) = order.split_at(rotation.min(order.len()));
        let mut a: ScanLog = x.iter().cloned().collect();
        let b: ScanLog = y.iter().cloned().collect();
        a.merge(&b);
        ends.push(a);
    }
    assert!(
        ends.windows(2).all(|w| w[0] == w[1]),
        "every replica ends alike"
    );
    let log = &ends[0];
    assert_eq!(
        log.get(&signer.id(), 2),
        Some(&admitted),
        "the admission is kept"
    );
    assert_eq!(log.flagged(), BTreeMap::from([(signer.id(), 1)]));
    assert_eq!(log.conflicts().count(), 2, "the kept version and the proof");
    // A replica that got only the pair learns the same.
    let pair: ScanLog = log
        .conflicts()
        .cloned()
        .chain(base.iter().cloned())
        .collect();
    assert_eq!(pair.get(&signer.id(), 2), Some(&admitted));
    assert_eq!(pair.flagged(), log.flagged());
}
