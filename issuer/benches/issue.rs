//! Issued tickets per second, from signing to PNG files on disk, on all cores;
//! signing alone is measured in the same run for comparison.
//!
//!     cargo bench -p issuer --bench issue [-- COUNT]

use std::time::Instant;

use issuer::{Store, events, issue, keys};

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(&tmp.path().join("data")).unwrap();
    events::import(&mut store, fixtures::EVENTS_JSON).unwrap();
    keys::generate(&store, 1_800_000_000).unwrap();

    let signer = keys::signer(&store, None).unwrap();
    let fields = shared::TicketFields {
        event_id: 1001,
        ticket_id: shared::TicketId([1; 16]),
        category_id: 1,
        multi_entry: false,
        valid_from: 1_900_000_000,
        valid_until: 1_900_086_400,
        seat: "A-12-7".into(),
    };
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(signer.encode(&fields).unwrap());
    }
    let sign_rate = count as f64 / start.elapsed().as_secs_f64();

    let code = signer.encode(&fields).unwrap();
    let n = 500;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(issuer::qr::encode(&code).unwrap());
    }
    let qr_rate = n as f64 / start.elapsed().as_secs_f64();
    let symbol = issuer::qr::encode(&code).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(issuer::qr::png(&symbol, issue::DEFAULT_SCALE).unwrap());
    }
    let png_rate = n as f64 / start.elapsed().as_secs_f64();

    let req = issue::Request {
        event_id: 1001,
        category_id: 1,
        count: Some(count),
        seats: None,
        valid_from: None,
        valid_until: None,
        multi_entry: false,
        out: tmp.path().join("out"),
        svg: false,
        scale: issue::DEFAULT_SCALE,
        key_id: None,
    };
    let start = Instant::now();
    issue::issue(&mut store, &req, 1_800_000_000, &|_| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("sign only, one core              {sign_rate:>8.0} tickets/s");
    println!("QR symbol only, one core         {qr_rate:>8.0} tickets/s");
    println!("PNG only, one core               {png_rate:>8.0} tickets/s");
    println!(
        "issue {count} (sign + record + QR + PNG + write), {cores} cores: {:>8.0} tickets/s ({secs:.2} s)",
        count as f64 / secs
    );
}
