//! Decode rate and speed of `scanner::decode::decode_luma` on a picture set made by
//! `make_set.py` (a directory with `manifest.json` listing file, kind and text).
//!
//!     cargo bench -p scanner --bench decode -- SET_DIR
//!
//! Prints one line shaped like `score_peers.py`'s: pictures decoded to the exact text,
//! the median time per picture (decode only: every picture is loaded to greyscale
//! before timing starts), and per-kind counts in manifest order.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    let mut times: Vec<Duration> = Vec::with_capacity(pictures.len());
    let mut ok = 0usize;
    let mut by_kind: Vec<(String, usize, usize)> = Vec::new();
    for p in &pictures {
        let start = Instant::now();
        let texts = scanner::decode::decode_luma(p.width, p.height, &p.luma);
        let spent = start.elapsed();
        times.push(spent);
        let hit = texts.contains(&p.text);
        ok += usize::from(hit);
        if verbose {
            eprintln!(
                "{:<24} {:>7.2} ms  {}",
                p.file,
                spent.as_secs_f64() * 1000.0,
                if hit { "ok" } else { "MISS" }
            );
        }
        match by_kind.iter_mut().find(|(k, _, _)| *k == p.kind) {
            Some(entry) => {
                entry.1 += usize::from(hit);
                entry.2 += 1;
            }
            None => by_kind.push((p.kind.clone(), usize::from(hit), 1)),
        }
    }
    times.sort_unstable();
    let median_ms = match times.len() {
        0 => 0.0,
        n if n % 2 == 1 => times[n / 2].as_secs_f64() * 1000.0,
        n => (times[n / 2 - 1] + times[n / 2]).as_secs_f64() * 500.0,
    };
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, hit, n)| format!("{k}:{hit}/{n}"))
        .collect();
    println!(
        "{:<10} {:>3}/{} decoded  median {:.1} ms  | {}",
        "scanner",
        ok,
        pictures.len(),
        median_ms,
        kinds.join(" ")
    );
    ExitCode::SUCCESS
}
