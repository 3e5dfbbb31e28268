//! The one integration-test binary of `scanner`: the real binary, fed the
//! spec's vectors, real pictures from the issuer, and garbage.

mod attacks;
mod check;
mod crash;
mod decode;
mod frames;
mod station;
mod sync;
mod verify;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `scanner` with `args`, feeding `stdin`.
pub fn scanner(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scanner"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Parses JSON lines.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes the spec vectors' keyset into `dir` and returns its path.
pub fn vector_keyset(dir: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let path = dir.join("keyset.json");
    std::fs::write(&path, v["keyset"].to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}
