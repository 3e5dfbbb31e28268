//! Decode rate and speed of `scanner::decode::decode_luma` on a picture set made by
//! `make_set.py` (a directory with `manifest.json` listing file, kind and text).
//!
//!     python3 scanner/benches/qr-bench/make_set.py SET_DIR --per-kind 20
//!     cargo bench -p scanner --bench decode -- SET_DIR
//!
//! Prints lines shaped like `scanner/benches/qr-bench/score_peers.py`'s: pictures
//! decoded to the exact text, the median time per picture (decode only: every picture
//! is loaded to greyscale before timing starts), per-kind counts in manifest order,
//! then a line per kind with its count and median. An "empty" picture (text "") is
//! read right when no code is found. Two passes: `scanner` is the thorough path
//! (`decode_luma`, as `decode_file` and `scan --image` use), `scan-live` the fast
//! path for camera frames (`Effort::Live`, as `frames.rs` uses).
//!
//! `DECODE_BENCH_VERBOSE=1` prints every picture's time and result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use scanner::decode::{Effort, decode_luma_with};

struct Picture {
    file: String,
    kind: String,
    text: String,
    width: usize,
    height: usize,
    luma: Vec<u8>,
}

fn load(dir: &Path) -> Result<Vec<Picture>, String> {
    let manifest = dir.join("manifest.json");
    let raw = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    let items: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| format!("parsing {}: {e}", manifest.display()))?;
    let items = items
        .as_array()
        .ok_or_else(|| format!("{}: expected a list", manifest.display()))?;
    let mut pictures = Vec::with_capacity(items.len());
    for item in items {
        let field = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: entry without \"{name}\"", manifest.display()))
        };
        let (file, kind, text) = (field("file")?, field("kind")?, field("text")?);
        let path = dir.join(&file);
        let img = image::open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?
            .into_luma8();
        pictures.push(Picture {
            file,
            kind,
            text,
            width: img.width() as usize,
            height: img.height() as usize,
            luma: img.into_raw(),
        });
    }
    Ok(pictures)
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    match times.len() {
        0 => 0.0,
        n if n % 2 == 1 => times[n / 2].as_secs_f64() * 1000.0,
        n => (times[n / 2 - 1] + times[n / 2]).as_secs_f64() * 500.0,
    }
}

/// Decodes every picture with `effort` and prints the totals and a line per kind.
fn run(name: &str, effort: Effort, pictures: &[Picture], verbose: bool) {
    let mut times: Vec<Duration> = Vec::with_capacity(pictures.len());
    let mut ok = 0usize;
    // Kind, pictures read right, pictures, times.
    let mut by_kind: Vec<(String, usize, usize, Vec<Duration>)> = Vec::new();
    for p in pictures {
        let start = Instant::now();
        let texts = decode_luma_with(p.width, p.height, &p.luma, effort);
        let spent = start.elapsed();
        times.push(spent);
        // An empty-frame picture (text "") is read right when nothing is found.
        let hit = if p.text.is_empty() {
            texts.is_empty()
        } else {
            texts.contains(&p.text)
        };
        ok += usize::from(hit);
        if verbose {
            eprintln!(
                "{name:<10} {:<26} {:>7.2} ms  {}",
                p.file,
                spent.as_secs_f64() * 1000.0,
                if hit { "ok" } else { "MISS" }
            );
        }
        match by_kind.iter_mut().find(|(k, ..)| *k == p.kind) {
            Some(entry) => {
                entry.1 += usize::from(hit);
                entry.2 += 1;
                entry.3.push(spent);
            }
            None => by_kind.push((p.kind.clone(), usize::from(hit), 1, vec![spent])),
        }
    }
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, hit, n, _)| format!("{k}:{hit}/{n}"))
        .collect();
    println!(
        "{:<10} {:>3}/{} decoded  median {:.1} ms  | {}",
        name,
        ok,
        pictures.len(),
        median_ms(&mut times),
        kinds.join(" ")
    );
    for (kind, hit, n, times) in &mut by_kind {
        println!(
            "{name:<10}   {kind:<20} {hit:>3}/{n:<3} median {:>7.2} ms",
            median_ms(times)
        );
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; any other flag is ignored too.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let verbose = std::env::var_os("DECODE_BENCH_VERBOSE").is_some();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cargo bench -p scanner --bench decode -- SET_DIR");
        return ExitCode::from(2);
    };
    let pictures = match load(&dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, effort) in [("scanner", Effort::Thorough), ("scan-live", Effort::Live)] {
        run(name, effort, &pictures, verbose);
    }
    ExitCode::SUCCESS
}
