//! Several scanners and gate-sync nodes in one process, with random
//! partitions and heals: while partitioned, the same single-entry tickets are
//! presented at different gates, and multi-entry tickets go in and out. After
//! healing, every replica holds the same records, every double admission is
//! flagged on every replica, no in/out flow is flagged, and nothing is lost.
//! One device equivocates (writes two versions of an index to two nodes):
//! every replica, gates included, keeps the same version, flags the device,
//! and leaves honest devices' records as they were.
//!
//! The parts are the real ones (`scanner::gate::Gate` on SQLite files,
//! `gate_sync::store::Store`); only the network between them is a function
//! call that a partition can cut.

use std::collections::{BTreeMap, BTreeSet};

use scanner::gate::{Gate, Provision};
use shared::code::Signer;
use shared::device::DeviceSigner;
use shared::{
    DeviceId, Direction, Keyset, RecordHash, ResultCode, ScanLog, ScanRecord, TicketFields,
    TicketId,
};

use gate_sync::store::Store;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const SINGLE: [u8; 5] = [1, 2, 3, 4, 5];
const MULTI: [u8; 3] = [11, 12, 13];
const NODES: usize = 3;
/// Each scanner's home node.
const HOME: [usize; 4] = [0, 0, 1, 2];

fn code(signer: &Signer, ticket: u8, multi_entry: bool) -> String {
    signer
        .encode(&TicketFields {
            event_id: 1001,
            ticket_id: TicketId([ticket; 16]),
            category_id: 1,
            multi_entry,
            valid_from: 1_900_000_000,
            valid_until: 1_900_086_400,
            seat: String::new(),
        })
        .unwrap()
}

fn scanner_sync(gate: &mut Gate, node: &mut Store, now_ms: u64) {
    let mine = gate.unpushed(10_000).unwrap();
    assert_eq!(node.check_push(&mine).unwrap(), None);
    node.add(&mine, now_ms).unwrap();
    if let Some(last) = mine.last() {
        gate.mark_pushed(last.idx).unwrap();
    }
    let missing = node.log().missing_for(&gate.version_vector().unwrap());
    let conflicts: Vec<ScanRecord> = node.log().conflicts().cloned().collect();
    gate.merge_remote(&missing, &conflicts).unwrap();
}

/// What a peer exchange does: each node gets what it lacks by version
/// vector, every version of a device whose log forked from its own, and
/// both versions of every index written twice.
fn node_sync(a: &mut Store, b: &mut Store, now_ms: u64) {
    pull(a, b, now_ms);
    pull(b, a, now_ms);
}

fn pull(to: &mut Store, from: &Store, now_ms: u64) {
    let (vv, digests) = (to.log().version_vector(), to.log().digests());
    let missing = from.log().missing_for(&vv);
    let extra: Vec<ScanRecord> = from
        .log()
        .conflicts()
        .chain(from.log().diverging(&vv, &digests))
        .cloned()
        .collect();
    to.add_authentic(&missing, &extra, now_ms).unwrap();
}

/// A faulty or hostile device that forks its log while the nodes are
/// partitioned: one version of an index to one node, another to another.
struct Rogue {
    signer: DeviceSigner,
    forks: [Vec<ScanRecord>; 2],
}

impl Rogue {
    /// Writes record `idx` on fork `f` (an admission of ticket 99, or a
    /// refusal) and pushes it, and what that node lacks of the fork, to `node`.
    fn write(
        &mut self,
        f: usize,
        admit: bool,
        node: &mut Store,
        issuer: &Signer,
        now_ms: u64,
    ) -> ScanRecord {
        let idx = self.forks[f].len() as u64 + 1;
        let mut r = ScanRecord {
            device_id: self.signer.id(),
            idx,
            ticket: admit.then_some((1001, TicketId([99; 16]))),
            multi_entry: false,
            category_id: if admit { 1 } else { 0 },
            seat: String::new(),
            direction: Direction::Entry,
            result: if admit {
                ResultCode::Ok
            } else {
                ResultCode::Invalid
            },
            reason: if admit {
                String::new()
            } else {
                format!("fork {f}")
            },
            wall_ms: now_ms,
            hlc: shared::Hlc(now_ms << 16),
            gate: "rogue".into(),
            device_name: "rogue".into(),
            proof: admit.then(|| shared::parse(&code(issuer, 99, false)).unwrap().signature()),
            prev: RecordHash::FIRST,
            device_key: None,
            sig: shared::DeviceSig::NONE,
        };
        self.signer.seal(&mut r, self.forks[f].last());
        self.forks[f].push(r.clone());
        node.add_authentic(&self.forks[f], &[], now_ms).unwrap();
        r
    }
}

/// Runs one seeded schedule; returns (tickets flagged, multi-entry exits admitted).
fn run(seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let tmp = tempfile::tempdir().unwrap();
    let signer = Signer::new(ed25519_dalek::SigningKey::from_bytes(&[42; 32]));
    let mut keyset = Keyset::new();
    keyset.insert(signer.verifying_key(), [1001]);
    let mut gates: Vec<Gate> = (0..HOME.len())
        .map(|i| {
            let p = Provision {
                keyset_json: keyset.to_json(),
                device_name: format!("tablet-{i}"),
                gate: format!("gate-{i}"),
                events: vec![1001],
                skew_secs: 300,
            };
            Gate::init(&tmp.path().join(format!("scanner-{i}.db")), &p, 0).unwrap()
        })
        .collect();
    let mut nodes: Vec<Store> = (0..NODES)
        .map(|i| Store::open(&tmp.path().join(format!("node-{i}.db"))).unwrap())
        .collect();
    let mut made: Vec<ScanRecord> = Vec::new();
    // Where each multi-entry holder really is: they move in and out in turn.
    let mut holder_inside: BTreeMap<u8, bool> = MULTI.iter().map(|&t| (t, false)).collect();
    let mut links_up = vec![false; HOME.len() + NODES];
    let mut now_ms = 1_900_003_600_000u64;
    let mut rogue = Rogue {
        signer: DeviceSigner::from_seed(&[77; 32]),
        forks: [Vec::new(), Vec::new()],
    };

    for step in 0..80 {
        now_ms += 1000;
        // The rogue: record 1 alike on both forks, then index 2 an admission
        // to node 0 and a refusal to node 1, then a third on each.
        match step {
            5 => {
                let first = rogue.write(0, false, &mut nodes[0], &signer, now_ms);
                rogue.forks[1].push(first.clone());
                made.push(first);
            }
            30 | 50 => {
                let a = rogue.write(0, step == 30, &mut nodes[0], &signer, now_ms);
                let b = rogue.write(1, false, &mut nodes[1], &signer, now_ms + 7);
                made.extend([a, b]);
            }
            _ => {}
        }
        if step % 8 == 0 {
            for up in links_up.iter_mut() {
                *up = rng.chance(40);
            }
        }
        let g = rng.below(HOME.len() as u64) as usize;
        if rng.chance(60) {
            let t = SINGLE[rng.below(SINGLE.len() as u64) as usize];
            let checked = gates[g]
                .check(&code(&signer, t, false), Direction::Entry, now_ms)
                .unwrap();
            made.push(checked.record);
        } else {
            let t = MULTI[rng.below(MULTI.len() as u64) as usize];
            let inside = holder_inside[&t];
            let direction = if inside {
                Direction::Exit
            } else {
                Direction::Entry
            };
            let checked = gates[g]
                .check(&code(&signer, t, true), direction, now_ms)
                .unwrap();
            if checked.record.result == ResultCode::Ok {
                holder_inside.insert(t, !inside);
            }
            made.push(checked.record);
        }
        // Sync over whichever links are up.
        for (i, gate) in gates.iter_mut().enumerate() {
            if links_up[i] {
                scanner_sync(gate, &mut nodes[HOME[i]], now_ms);
            }
        }
        for n in 0..NODES {
            if links_up[HOME.len() + n] {
                let m = (n + 1) % NODES;
                let (a, b) = if n < m {
                    nodes.split_at_mut(m)
                } else {
                    nodes.split_at_mut(n)
                };
                let (x, y) = if n < m {
                    (&mut a[n], &mut b[0])
                } else {
                    (&mut b[0], &mut a[m])
                };
                node_sync(x, y, now_ms);
            }
        }
    }

    // Heal: every link up, rounds until nothing moves.
    for _ in 0..3 {
        for (i, gate) in gates.iter_mut().enumerate() {
            scanner_sync(gate, &mut nodes[HOME[i]], now_ms);
        }
        for n in 0..NODES {
            for m in n + 1..NODES {
                let (a, b) = nodes.split_at_mut(m);
                node_sync(&mut a[n], &mut b[0], now_ms);
            }
        }
    }
    for (i, gate) in gates.iter_mut().enumerate() {
        scanner_sync(gate, &mut nodes[HOME[i]], now_ms);
    }

    let reference = nodes[0].log().clone();
    // Nothing lost: every scan made anywhere is held, and nothing else.
    let all: ScanLog = made.iter().cloned().collect();
    assert_eq!(
        reference, all,
        "seed {seed}: node 0 holds exactly the scans made"
    );
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.log(), &reference, "seed {seed}: node {i} differs");
    }
    let kept: Vec<ScanRecord> = reference.records().cloned().collect();
    for (i, gate) in gates.iter().enumerate() {
        assert_eq!(
            gate.log().unwrap(),
            kept,
            "seed {seed}: scanner {i} differs"
        );
    }
    // The rogue wrote indexes 2 and 3 twice: flagged on every replica,
    // gates included, which all keep its admission; honest records stand.
    let rogue_id = rogue.signer.id();
    let flagged_everywhere = BTreeMap::from([(rogue_id, 2)]);
    for node in &nodes {
        assert_eq!(node.log().flagged(), flagged_everywhere, "seed {seed}");
    }
    for gate in &gates {
        let flagged = gate.flagged().unwrap();
        assert_eq!(
            flagged,
            BTreeMap::from([(rogue_id.to_string(), 2)]),
            "seed {seed}"
        );
    }
    assert_eq!(
        reference.get(&rogue_id, 2).map(|r| r.result),
        Some(ResultCode::Ok),
        "seed {seed}: a second version never erases an admission"
    );
    for r in made.iter().filter(|r| r.device_id != rogue_id) {
        assert_eq!(reference.get(&r.device_id, r.idx), Some(r), "seed {seed}");
    }
    // Every double admission is flagged, on every replica alike.
    let dups = reference.duplicates(None);
    let flagged: BTreeSet<TicketId> = dups.iter().map(|d| d.ticket_id).collect();
    for &t in &SINGLE {
        let admissions = made
            .iter()
            .filter(|r| r.ticket == Some((1001, TicketId([t; 16]))) && r.result == ResultCode::Ok)
            .count();
        assert_eq!(
            flagged.contains(&TicketId([t; 16])),
            admissions > 1,
            "seed {seed}: ticket {t} admitted {admissions} times"
        );
    }
    for &t in &MULTI {
        assert!(
            !flagged.contains(&TicketId([t; 16])),
            "seed {seed}: an in/out flow was flagged"
        );
    }
    for node in &nodes {
        assert_eq!(node.log().duplicates(None), dups);
        // What the node serves, from the tickets admitted twice, is the same.
        assert_eq!(node.duplicates(None), dups);
        assert_eq!(node.duplicates(Some(1001)), dups);
        assert!(node.duplicates(Some(1002)).is_empty());
    }
    for gate in &gates {
        let held: ScanLog = gate.log().unwrap().into_iter().collect();
        assert_eq!(held.duplicates(None), dups);
    }
    // The dashboard's counts, kept as records arrived in each node's own
    // order, are those of the whole log walked at once, on every node; and
    // inside now is who is really inside.
    let walked = walk_counts(&reference);
    for (i, node) in nodes.iter().enumerate() {
        let kept: BTreeMap<_, _> = node
            .counts()
            .per_gate(None)
            .into_iter()
            .map(|(k, c)| (k, (c.admitted, c.inside)))
            .collect();
        assert_eq!(kept, walked, "seed {seed}: node {i}'s counts");
    }
    let inside: u64 = walked.values().map(|c| c.1).sum();
    // The rogue's kept admission of ticket 99 counts as inside too.
    let really_inside = 1
        + holder_inside.values().filter(|&&i| i).count()
        + SINGLE
            .iter()
            .filter(|&&t| {
                reference
                    .first_admission((1001, TicketId([t; 16])))
                    .is_some()
            })
            .count();
    assert_eq!(inside, really_inside as u64, "seed {seed}: inside now");
    let exits = made
        .iter()
        .filter(|r| r.direction == Direction::Exit && r.result == ResultCode::Ok)
        .count();
    (dups.len(), exits)
}

/// Admitted and inside per (gate, device), from the whole log at once: each
/// ticket's last admitted movement (greatest order key) says where it is.
fn walk_counts(log: &ScanLog) -> BTreeMap<(String, DeviceId), (u64, u64)> {
    let mut counts: BTreeMap<(String, DeviceId), (u64, u64)> = BTreeMap::new();
    let mut last: BTreeMap<(u64, TicketId), &ScanRecord> = BTreeMap::new();
    for r in log.records().filter(|r| r.result == ResultCode::Ok) {
        let Some(ticket) = r.ticket else { continue };
        if r.direction == Direction::Entry {
            counts.entry((r.gate.clone(), r.device_id)).or_default().0 += 1;
        }
        let held = last.entry(ticket).or_insert(r);
        if r.order_key() > held.order_key() {
            *held = r;
        }
    }
    for r in last.values().filter(|r| r.direction == Direction::Entry) {
        counts.entry((r.gate.clone(), r.device_id)).or_default().1 += 1;
    }
    counts
}

#[test]
fn partitioned_gates_and_nodes_converge_and_flag_every_double_admission() {
    let (mut flagged, mut exits) = (0, 0);
    for seed in 1..=12 {
        let (f, e) = run(seed);
        flagged += f;
        exits += e;
    }
    // The schedules really did admit tickets twice and move holders in and out.
    assert!(flagged > 0 && exits > 0, "flagged {flagged}, exits {exits}");
}
