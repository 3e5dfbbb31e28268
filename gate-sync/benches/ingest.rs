//! Ingest and pull through the real HTTP API on 127.0.0.1.
//!
//! The server is the real `gate-sync serve`, in a process of its own; the
//! clients are threads of this one.
//!
//! 1. 200 enrolled devices push 5,000 records each (1,000,000 in all),
//!    signed and chained as gates write them, in batches of 1,000 (each
//!    device's in order), 8 requests at a time: time to ingest, with every
//!    signature and proof checked, and the server's peak memory.
//! 2. Each device lacks the last 5 records of every device (1,000 records:
//!    a few seconds of a busy venue). One device pulls 100 times alone, then
//!    200 devices pull at once, 20 rounds (4,000 pulls): latency of each
//!    pull, p50 and p99, and the CPU time server and clients used per pull.
//!    Each gate is a thread for all rounds, and each pull a new connection
//!    (as each sync of a scanner is), written and read with plain HTTP/1.1
//!    on a socket: the clients share the server's two cores here, and are
//!    kept as lean as can be.
//! 3. `GET /v1/stats` and `/v1/duplicates` over the whole log, as the
//!    dashboard polls them, and a restart of the node holding every record.
//! 4. The floor: the same records inserted straight into SQLite, no HTTP.
//!
//!     cargo bench -p gate-sync --bench ingest [-- DEVICES RECORDS_PER_DEVICE]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shared::device::DeviceSigner;
use shared::{
    DeviceId, DeviceSig, Direction, Hlc, RecordHash, ResultCode, ScanRecord, TicketId,
    VersionVector,
};

/// Device `device`'s key (from a seed made of its number).
fn signer(device: u16) -> DeviceSigner {
    let mut seed = [7u8; 32];
    seed[..2].copy_from_slice(&device.to_be_bytes());
    DeviceSigner::from_seed(&seed)
}

fn device_id(device: u16) -> DeviceId {
    signer(device).id()
}

/// The issuer of the benchmark's tickets.
fn issuer() -> shared::code::Signer {
    shared::code::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[42; 32]))
}

/// Every record of `device`, 1 to `n`, chained and signed as a gate does.
fn records_of(device: u16, n: u64) -> Vec<ScanRecord> {
    let (signer, issuer) = (signer(device), issuer());
    let mut out: Vec<ScanRecord> = Vec::with_capacity(n as usize);
    for idx in 1..=n {
        let mut r = record(device, idx, &issuer);
        signer.seal(&mut r, out.last());
        out.push(r);
    }
    out
}

/// Scan `idx` of `device`: a ticket of its own, admitted. One scan in
/// 1,000 admits the ticket the device before it admitted one index earlier,
/// as a screenshot shown at two gates would: about 1,000 double admissions.
fn record(device: u16, idx: u64, issuer: &shared::code::Signer) -> ScanRecord {
    let (owner, at) = if idx.is_multiple_of(1000) && device > 0 {
        (device - 1, idx - 1)
    } else {
        (device, idx)
    };
    let mut t = [0u8; 16];
    t[..2].copy_from_slice(&owner.to_be_bytes());
    t[8..].copy_from_slice(&at.to_be_bytes());
    let wall_ms = 1_900_000_000_000 + idx * 250;
    let proof = issuer
        .encode(&shared::TicketFields {
            event_id: 1001,
            ticket_id: TicketId(t),
            category_id: 1,
            multi_entry: false,
            valid_from: 1_900_000_000,
            valid_until: 1_900_086_400,
            seat: String::new(),
        })
        .expect("a code");
    let proof = shared::parse(&proof).expect("a code").signature();
    ScanRecord {
        device_id: device_id(device),
        idx,
        ticket: Some((1001, TicketId(t))),
        multi_entry: false,
        category_id: 1,
        seat: String::new(),
        direction: Direction::Entry,
        result: ResultCode::Ok,
        reason: String::new(),
        wall_ms,
        hlc: Hlc(wall_ms << 16),
        gate: format!("gate-{}", device % 12),
        device_name: format!("tablet-{device}"),
        proof: Some(proof),
        prev: RecordHash::FIRST,
        device_key: None,
        sig: DeviceSig::NONE,
    }
}

/// The peak resident memory of process `pid`, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The CPU time process `pid` has used, user and system, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's name, which ends with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    (ticks(11) + ticks(12)) * 1000.0 / 100.0
}

/// Runs the real `gate-sync serve` on a free port; returns it and its address.
fn start_server(db: &std::path::Path) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gate-sync"))
        .arg("--db")
        .arg(db)
        // Every client is on 127.0.0.1 here; on a venue's network each gate
        // has an address of its own.
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--conns-per-address",
            "512",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gate-sync starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("address=")
                .map(|(_, a)| a.split_whitespace().next().unwrap_or_default().to_owned())
        })
        .expect("gate-sync logs the address it serves on");
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(200) as u16;
    let per_device = args.get(1).copied().unwrap_or(5_000);
    let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let db = tmp.path().join("bench.db");
    // Enroll every device through the store (the HTTP enrollment is tested
    // elsewhere), then hand the database to the server.
    let tokens: Vec<String> = {
        let mut store = gate_sync::store::Store::open(&db).unwrap();
        (0..devices)
            .map(|d| {
                let t = store.create_enrollment("bench", 0).unwrap();
                store.enroll(&t, device_id(d), 0).unwrap()
            })
            .collect()
    };
    let (mut server, addr) = start_server(&db);
    let addr = addr.as_str();

    // Records are signed and bodies built before the clock starts: the
    // server's work is measured. (Signing a million records and their
    // tickets' codes takes a while: on every core.)
    let batch = 1000u64;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u16;
    let all: Vec<Vec<ScanRecord>> = std::thread::scope(|s| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..devices)
                        .filter(|d| d % threads == t)
                        .map(|d| (d, records_of(d, per_device)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(u16, Vec<ScanRecord>)> =
            parts.into_iter().flat_map(|p| p.join().unwrap()).collect();
        all.sort_by_key(|(d, _)| *d);
        all.into_iter().map(|(_, r)| r).collect()
    });
    // Per device, its batches in order, as a gate pushes them (a batch
    // above a gap is refused).
    let jobs: Vec<Vec<String>> = all
        .iter()
        .map(|records| {
            records
                .chunks(batch as usize)
                .map(|chunk| json!({ "records": chunk }).to_string())
                .collect()
        })
        .collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let agent = ureq::Agent::new_with_defaults();
                loop {
                    let d = next.fetch_add(1, Ordering::Relaxed);
                    let Some(bodies) = jobs.get(d) else { break };
                    for body in bodies {
                        agent
                            .post(&format!(
                                "http://{addr}/v1/devices/{}/records",
                                device_id(d as u16)
                            ))
                            .header("authorization", &format!("Bearer {}", tokens[d]))
                            .header("content-type", "application/json")
                            .send(body.as_str())
                            .unwrap();
                    }
                }
            });
        }
    });
    let ingest = start.elapsed();
    let total = u64::from(devices) * per_device;
    drop(jobs);
    let stats: serde_json::Value = ureq::get(&format!("http://{addr}/v1/stats"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(stats["records"].as_u64(), Some(total), "every record held");
    println!(
        "ingest {total} records from {devices} devices over HTTP: {:.2} s ({:.0} records/s), server peak memory {:.0} MiB",
        ingest.as_secs_f64(),
        total as f64 / ingest.as_secs_f64(),
        peak_rss_mib(server.id())
    );

    // The pulls are measured on a settled node: the million records'
    // writing-out (the node's checkpoints, the kernel's writeback of the
    // database) is the ingest's cost, not a pull's, and at a venue's rate
    // (hundreds of scans a second, not 100,000) it never piles up.
    let settle = Instant::now();
    let _ = std::process::Command::new("sync").status();
    loop {
        let before = cpu_ms(server.id());
        std::thread::sleep(Duration::from_millis(250));
        if cpu_ms(server.id()) - before < 10.0 || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    println!(
        "settled after ingest (checkpoints, writeback) in {:.1} s",
        settle.elapsed().as_secs_f64()
    );
    // Every device lacks the last 5 records of every device.
    let mut vv = VersionVector::default();
    for d in 0..devices {
        vv.0.insert(device_id(d), per_device.saturating_sub(5));
    }
    let body = json!({ "version_vector": vv }).to_string();
    let each = u64::from(devices) * 5.min(per_device);
    // A gate reads the answer into memory it keeps; each pull is a new
    // connection, as each sync of a scanner is. The client is plain HTTP/1.1
    // on a socket, as lean as can be: on a venue's network each gate has a
    // processor of its own, here every gate shares the server's two cores.
    let pull = |token: &str, buf: &mut Vec<u8>| {
        use std::io::{Read, Write};
        let t = Instant::now();
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        write!(
            conn,
            "POST /v1/pull HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // The head, then as many bytes as it says, into `buf` as it is
        // (written over, as a gate's buffer would be, not zeroed first).
        let mut head = Vec::with_capacity(16 << 10);
        let mut chunk = [0u8; 16 << 10];
        let (head_end, length) = loop {
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0, "an answer");
            head.extend_from_slice(&chunk[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "pulled: {head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a length");
                break (end + 4, length);
            }
        };
        let have = &head[head_end..];
        if buf.len() < length {
            buf.resize(length, 0);
        }
        buf[..have.len()].copy_from_slice(have);
        conn.read_exact(&mut buf[have.len()..length]).unwrap();
        assert!(length as u64 > each * 100, "every lacking record came back");
        t.elapsed()
    };
    let pct = |lat: &mut Vec<Duration>, p: f64| {
        lat.sort();
        lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    // One device alone: the cost of a pull without contention.
    let mut buf = Vec::with_capacity(4 << 20);
    let mut alone: Vec<Duration> = (0..100).map(|_| pull(&tokens[0], &mut buf)).collect();
    // Every device at once, released by a barrier, round after round: a
    // thread per gate, for every round.
    let rounds = 20;
    let cpu_before = (cpu_ms(server.id()), cpu_ms(std::process::id()));
    let barrier = std::sync::Barrier::new(devices as usize);
    let per_gate: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..devices as usize)
            .map(|d| {
                let (barrier, tokens, pull) = (&barrier, &tokens, &pull);
                s.spawn(move || {
                    // Touched before the clock starts, as a gate's memory is.
                    let mut buf = vec![1u8; 1 << 20];
                    (0..rounds)
                        .map(|_| {
                            barrier.wait();
                            pull(&tokens[d], &mut buf)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // By round.
    let mut lat: Vec<Duration> = (0..rounds as usize)
        .flat_map(|round| per_gate.iter().map(move |gate| gate[round]))
        .collect();
    let cpu = (
        cpu_ms(server.id()) - cpu_before.0,
        cpu_ms(std::process::id()) - cpu_before.1,
    );
    // Before `pct` sorts them: the samples are in rounds.
    let slowest: Vec<String> = lat
        .chunks(devices as usize)
        .map(|round| {
            let mut round = round.to_vec();
            round.sort();
            let at = |p: f64| round[((round.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
            // BENCH_ROUNDS=1: how each round went, to stderr.
            if std::env::var_os("BENCH_ROUNDS").is_some() {
                eprintln!(
                    "round: p10 {:.1} p50 {:.1} p90 {:.1} p98 {:.1} max {:.1}",
                    at(0.1),
                    at(0.5),
                    at(0.9),
                    at(0.98),
                    at(1.0)
                );
            }
            format!("{:.1}", at(1.0))
        })
        .collect();
    println!(
        "pull by one device alone, {each} records: p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut alone, 0.5),
        pct(&mut alone, 0.99),
    );
    println!(
        "pull by {devices} devices at once ({rounds} rounds), {each} records each: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    println!("slowest pull of each round, ms: {}", slowest.join(" "));
    let pulls = f64::from(rounds) * f64::from(devices);
    println!(
        "CPU per pull at once: server {:.2} ms, client {:.2} ms",
        cpu.0 / pulls,
        cpu.1 / pulls
    );
    // What the organizer's dashboard asks every 2 s, over the whole log.
    for path in ["/v1/stats", "/v1/duplicates"] {
        let mut body = String::new();
        let took: Vec<String> = (0..5)
            .map(|_| {
                let t = Instant::now();
                body = ureq::get(&format!("http://{addr}{path}"))
                    .call()
                    .unwrap()
                    .body_mut()
                    .with_config()
                    .limit(u64::MAX)
                    .read_to_string()
                    .unwrap();
                format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3)
            })
            .collect();
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listed = answer["duplicates"].as_array().map_or(String::new(), |d| {
            format!(" ({} duplicates listed)", d.len())
        });
        println!(
            "GET {path} over {total} records{listed}: {}",
            took.join(", ")
        );
    }
    let _ = server.kill();
    let _ = server.wait();

    // A node restarted mid-event: it loads every record before it serves.
    let start = Instant::now();
    let (mut server, _) = start_server(&db);
    println!(
        "restart with {total} records: serving after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let _ = server.kill();
    let _ = server.wait();

    // The floor, measured in the same run: the same records written straight
    // into SQLite (WAL, synchronous=FULL, one transaction per 1,000), with
    // no HTTP, no parsing and no in-memory log.
    // The node's schema, made by the node's code.
    let floor = tmp.path().join("floor.db");
    drop(gate_sync::store::Store::open(&floor).unwrap());
    let conn = rusqlite::Connection::open(&floor).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let bodies: Vec<(String, u64, String)> = all
        .iter()
        .flatten()
        .map(|r| {
            (
                r.device_id.to_string(),
                r.idx,
                serde_json::to_string(&r).unwrap(),
            )
        })
        .collect();
    let start = Instant::now();
    for chunk in bodies.chunks(batch as usize) {
        let tx = rusqlite::Connection::unchecked_transaction(&conn).unwrap();
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO records (device_id, idx, body, received_at) VALUES (?1, ?2, ?3, 0)",
            )
            .unwrap();
        for (device, idx, body) in chunk {
            insert
                .execute(rusqlite::params![device, *idx as i64, body])
                .unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    println!(
        "floor: the same {total} records inserted straight into SQLite: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}
