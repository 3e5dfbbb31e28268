//! Ingest and pull through the real HTTP API on 127.0.0.1.
//!
//! 1. 200 enrolled devices push 5,000 records each (1,000,000 in all) in
//!    batches of 1,000, 8 requests at a time: time to ingest, and the
//!    process's peak memory (server and clients, one process).
//! 2. 200 devices pull at once, each lacking the last 5 records of every
//!    device (1,000 records: a few seconds of a busy venue): latency of each
//!    pull, p50 and p99.
//!
//!     cargo bench -p gate-sync --bench ingest [-- DEVICES RECORDS_PER_DEVICE]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shared::{DeviceId, Direction, Hlc, ResultCode, ScanRecord, TicketId, VersionVector};

fn device_id(device: u16) -> DeviceId {
    let mut d = [0u8; 16];
    d[..2].copy_from_slice(&device.to_be_bytes());
    DeviceId(d)
}

fn record(device: u16, idx: u64) -> ScanRecord {
    let mut t = [0u8; 16];
    t[..2].copy_from_slice(&device.to_be_bytes());
    t[8..].copy_from_slice(&idx.to_be_bytes());
    let wall_ms = 1_900_000_000_000 + idx * 250;
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
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(200) as u16;
    let per_device = args.get(1).copied().unwrap_or(5_000);
    let tmp = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let store = gate_sync::store::Store::open(&tmp.path().join("bench.db")).unwrap();
    let state = gate_sync::AppState::new(store);
    // Enroll every device through the store (the HTTP enrollment is tested elsewhere).
    let tokens: Vec<String> = (0..devices)
        .map(|d| {
            state.lock(|s| {
                let t = s.create_enrollment("bench", 0).unwrap();
                s.enroll(&t, device_id(d), 0).unwrap()
            })
        })
        .collect();
    let addr = gate_sync::serve_in_background(state.clone(), "127.0.0.1:0").unwrap();

    // Bodies are built before the clock starts: the server's work is measured.
    let batch = 1000u64;
    let jobs: Vec<(u16, String)> = (0..devices)
        .flat_map(|d| (0..per_device.div_ceil(batch)).map(move |b| (d, b)))
        .map(|(d, b)| {
            let records: Vec<ScanRecord> = (b * batch + 1..=((b + 1) * batch).min(per_device))
                .map(|i| record(d, i))
                .collect();
            (d, json!({ "records": records }).to_string())
        })
        .collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let agent = ureq::Agent::new_with_defaults();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((d, body)) = jobs.get(i) else { break };
                    agent
                        .post(&format!(
                            "http://{addr}/v1/devices/{}/records",
                            device_id(*d)
                        ))
                        .header("authorization", &format!("Bearer {}", tokens[*d as usize]))
                        .header("content-type", "application/json")
                        .send(body.as_str())
                        .unwrap();
                }
            });
        }
    });
    let ingest = start.elapsed();
    let total = u64::from(devices) * per_device;
    assert_eq!(state.lock(|s| s.log().len()) as u64, total);
    drop(jobs);
    println!(
        "ingest {total} records from {devices} devices over HTTP: {:.2} s ({:.0} records/s), peak memory {:.0} MiB",
        ingest.as_secs_f64(),
        total as f64 / ingest.as_secs_f64(),
        peak_rss_mib()
    );

    // Every device lacks the last 5 records of every device.
    let mut vv = VersionVector::default();
    for d in 0..devices {
        vv.0.insert(device_id(d), per_device.saturating_sub(5));
    }
    let body = json!({ "version_vector": vv }).to_string();
    let barrier = std::sync::Barrier::new(devices as usize);
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..devices as usize)
            .map(|d| {
                let (barrier, body, tokens) = (&barrier, &body, &tokens);
                s.spawn(move || {
                    let agent = ureq::Agent::new_with_defaults();
                    barrier.wait();
                    let t = Instant::now();
                    let mut resp = agent
                        .post(&format!("http://{addr}/v1/pull"))
                        .header("authorization", &format!("Bearer {}", tokens[d]))
                        .header("content-type", "application/json")
                        .send(body.as_str())
                        .unwrap();
                    let _ = resp
                        .body_mut()
                        .with_config()
                        .limit(u64::MAX)
                        .read_to_vec()
                        .unwrap();
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "pull by {devices} devices at once, {} records each: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        u64::from(devices) * 5.min(per_device),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
