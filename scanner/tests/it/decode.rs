//! `scanner decode`: real pictures from the issuer round-trip to codes that verify.

use issuer::{Store, events, issue, keys};

use crate::{json_lines, scanner};

/// Issues `count` tickets for fixture event 1001 into `dir/out` and writes the keyset.
fn issue_batch(dir: &std::path::Path, count: usize) -> (std::path::PathBuf, String) {
    let mut store = Store::open(&dir.join("data")).unwrap();
    events::import(&mut store, fixtures::EVENTS_JSON).unwrap();
    keys::generate(&store, 1_800_000_000).unwrap();
    let out = dir.join("out");
    let req = issue::Request {
        event_id: 1001,
        category_id: 4,
        count: Some(count),
        seats: None,
        valid_from: None,
        valid_until: None,
        multi_entry: false,
        out: out.clone(),
        svg: false,
        scale: 4,
        key_id: None,
    };
    issue::issue(&mut store, &req, 1_800_000_000, &|_| {}).unwrap();
    let keyset = dir.join("keyset.json");
    std::fs::write(
        &keyset,
        keys::export_keyset(&store, &[1001], 1_800_000_000)
            .unwrap()
            .to_json(),
    )
    .unwrap();
    (out, keyset.to_str().unwrap().to_owned())
}

#[test]
fn issued_pngs_decode_and_verify_through_the_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, keyset) = issue_batch(tmp.path(), 5);
    let csv = std::fs::read_to_string(out.join("tickets.csv")).unwrap();
    let mut pngs = Vec::new();
    let mut codes = Vec::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        pngs.push(
            out.join(format!("{}.png", fields[0]))
                .to_str()
                .unwrap()
                .to_owned(),
        );
        codes.push(fields[3].to_owned());
    }
    let mut args = vec!["decode"];
    args.extend(pngs.iter().map(String::as_str));
    let decoded = scanner(&args, b"");
    assert!(decoded.status.success());
    let texts: Vec<String> = String::from_utf8(decoded.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(texts, codes, "each picture gives its code, in order");
    let verified = scanner(
        &[
            "verify",
            "--keyset",
            &keyset,
            "--now",
            "1900000000",
            "--json",
            "-",
        ],
        &decoded.stdout,
    );
    assert!(verified.status.success());
    let lines = json_lines(&verified);
    assert_eq!(lines.len(), 5);
    assert!(
        lines
            .iter()
            .all(|l| l["result"] == "ok" && l["category_id"] == 4)
    );
}

#[test]
fn unreadable_pictures_are_named_and_the_others_still_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = issue_batch(tmp.path(), 1);
    let csv = std::fs::read_to_string(out.join("tickets.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let good = out.join(format!("{}.png", row[0]));
    let png = std::fs::read(&good).unwrap();
    let truncated = tmp.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "this is not a picture").unwrap();
    let blank = tmp.path().join("blank.png");
    image::GrayImage::from_pixel(64, 64, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let paths = [
        &truncated,
        &text,
        &blank,
        &tmp.path().join("missing.png"),
        &good,
    ];
    let mut args = vec!["decode"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let out = scanner(&args, b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        row[3],
        "the good picture still decodes"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "truncated.png: cannot open picture",
        "notes.png: cannot open picture",
        "blank.png: no QR code found",
        "missing.png: cannot open picture",
    ] {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
}

#[test]
fn dark_mode_codes_are_read_inverted() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = issue_batch(tmp.path(), 1);
    let csv = std::fs::read_to_string(out.join("tickets.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let mut img = image::open(out.join(format!("{}.png", row[0])))
        .unwrap()
        .into_luma8();
    image::imageops::invert(&mut img);
    let dark = tmp.path().join("dark.png");
    img.save(&dark).unwrap();
    let out = scanner(&["decode", dark.to_str().unwrap()], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), row[3]);
}

#[test]
fn scan_decodes_pictures_checks_and_records_and_goes_on_past_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, keyset) = issue_batch(tmp.path(), 1);
    let csv = std::fs::read_to_string(out.join("tickets.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let png = out.join(format!("{}.png", row[0]));
    let db = tmp.path().join("gate.db");
    let db = db.to_str().unwrap();
    let init = scanner(
        &[
            "--db",
            db,
            "init",
            "--keyset",
            &keyset,
            "--device-name",
            "kiosk",
            "--gate",
            "VIP",
        ],
        b"",
    );
    assert!(init.status.success());
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let args = [
        "--db",
        db,
        "scan",
        "--now",
        "1900000000",
        "--json",
        "--image",
        png.to_str().unwrap(),
        "--image",
        broken.to_str().unwrap(),
        "--image",
        png.to_str().unwrap(),
    ];
    let out = scanner(&args, b"");
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let results: Vec<&str> = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["ok", "already_redeemed"],
        "the same picture twice is one admission"
    );
    assert_eq!(lines[0]["ticket_id"], row[0]);
    assert_eq!(lines[1]["first_admission"]["gate"], "VIP");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg: cannot open picture"));
    let stats = scanner(&["--db", db, "stats", "--json"], b"");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["scans"], 2,
        "an unreadable picture records nothing: there was no code"
    );
}
