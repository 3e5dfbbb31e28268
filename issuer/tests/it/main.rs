//! The one integration-test binary of `issuer`: the real binary on a real data
//! directory, its pictures read back with a real QR decoder.

mod api;
mod contract;
mod issuance;
mod keys;
mod payments;
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh data directory with the fixture events loaded, and the shop's
/// database: the embedded one, or with `ISSUER_TEST_BACKEND=postgres` a
/// fresh PostgreSQL database (`pg`), which every command run is given.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub database: Option<String>,
}

/// A fresh database for the shop if the tests are to run on PostgreSQL.
pub fn shop_database() -> Option<String> {
    match std::env::var("ISSUER_TEST_BACKEND").as_deref() {
        Ok("postgres") => Some(
            pg::fresh_database()
                .expect("ISSUER_TEST_BACKEND=postgres, but no PostgreSQL server can be had"),
        ),
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("ISSUER_TEST_BACKEND={other:?}: sqlite or postgres"),
    }
}

/// `command` given the shop's database, or told to use the embedded one.
pub fn with_database<'a>(command: &'a mut Command, database: Option<&str>) -> &'a mut Command {
    match database {
        Some(url) => command.env("ISSUER_DATABASE_URL", url),
        None => command.env_remove("ISSUER_DATABASE_URL"),
    }
}

#[allow(clippy::new_without_default)]
impl Env {
    pub fn new() -> Env {
        let env = Env {
            tmp: tempfile::tempdir().unwrap(),
            database: shop_database(),
        };
        let events = env.tmp.path().join("events.json");
        std::fs::write(&events, fixtures::EVENTS_JSON).unwrap();
        env.ok(&["events", "import", events.to_str().unwrap()]);
        env
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_issuer"));
        with_database(&mut command, self.database.as_deref())
            .arg("--data")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and asserts success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "issuer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "issuer {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn keyset(&self, events: &[u64]) -> shared::Keyset {
        let mut args = vec!["keys".to_owned(), "export-keyset".to_owned()];
        for e in events {
            args.push("--event".into());
            args.push(e.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        shared::Keyset::from_json(&self.ok(&args)).unwrap()
    }

    /// The key id `keys generate` printed.
    pub fn generate_key(&self) -> String {
        let out = self.ok(&["keys", "generate"]);
        out.split_whitespace().nth(1).unwrap().to_owned()
    }
}

/// Rows of a batch's tickets.csv: (ticket_id, seat, category, code).
pub fn read_csv(dir: &Path) -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(dir.join("tickets.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ticket_id,seat,category,code"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 4, "{l}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

/// Every QR code in a picture, with its error correction level (0 is M).
pub fn decode_png(path: &Path) -> Vec<(String, u16)> {
    let img = image::open(path).unwrap().into_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        img.get_pixel(x as u32, y as u32).0[0]
    });
    prepared
        .detect_grids()
        .into_iter()
        .map(|g| {
            let (meta, text) = g.decode().unwrap();
            (text, meta.ecc_level)
        })
        .collect()
}
