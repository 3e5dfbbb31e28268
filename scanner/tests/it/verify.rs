//! `scanner verify`: the spec's results through the command line.

use serde_json::Value;

use crate::{json_lines, scanner, vector_keyset};

fn vector_cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn every_spec_vector_gives_its_result_and_fields_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let keyset = vector_keyset(tmp.path());
    for case in vector_cases() {
        let now = case["now"].to_string();
        let code = case["code"].as_str().unwrap();
        let out = scanner(
            &["verify", "--keyset", &keyset, "--now", &now, "--json", code],
            b"",
        );
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{case}");
        let got = &lines[0];
        let expect = case["expect"].as_object().unwrap();
        for (key, want) in expect {
            assert_eq!(&got[key], want, "case {}: field {key}", case["name"]);
        }
        assert_eq!(
            out.status.success(),
            expect["result"] == "ok",
            "exit status of {}",
            case["name"]
        );
        if expect["result"] != "ok" {
            assert!(
                got["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "a refusal says why"
            );
        }
    }
}

#[test]
fn standard_input_is_answered_line_by_line_and_garbage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keyset = vector_keyset(tmp.path());
    let good = vector_cases()[0]["code"].as_str().unwrap().to_owned();
    // A wedge scanner types CR LF; a damaged line may not even be UTF-8.
    let mut input = format!("{good}\r\n\r\nnot a ticket\n").into_bytes();
    input.extend_from_slice(b"VT1:\xff\xfe\n");
    input.extend_from_slice(good.as_bytes());
    let out = scanner(
        &[
            "verify",
            "--keyset",
            &keyset,
            "--now",
            "1900003600",
            "--json",
            "-",
        ],
        &input,
    );
    let results: Vec<String> = json_lines(&out)
        .iter()
        .map(|l| l["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results, vec!["ok", "invalid", "invalid", "ok"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one refusal makes the exit status 1"
    );
}

#[test]
fn event_filter_and_skew_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let keyset = vector_keyset(tmp.path());
    let good = vector_cases()[0]["code"].as_str().unwrap().to_owned();
    let out = scanner(
        &[
            "verify",
            "--keyset",
            &keyset,
            "--now",
            "1900003600",
            "--event",
            "1002",
            "--json",
            &good,
        ],
        b"",
    );
    assert_eq!(json_lines(&out)[0]["result"], "wrong_event");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no key in the keyset vouches for event 1002"),
        "{stderr}"
    );
    // 100 s before valid_from: fine with the default skew, not with 10 s.
    let out = scanner(
        &[
            "verify",
            "--keyset",
            &keyset,
            "--now",
            "1899999900",
            "--skew",
            "10",
            "--json",
            &good,
        ],
        b"",
    );
    assert_eq!(json_lines(&out)[0]["result"], "not_yet_valid");
}

#[test]
fn a_keyset_with_a_bad_entry_is_refused_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.json");
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let bad = v["keyset"].to_string().replace("21fe31df", "21fe31d0");
    std::fs::write(&path, bad).unwrap();
    let out = scanner(
        &["verify", "--keyset", path.to_str().unwrap(), "VT1:x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("21fe31d0 does not match its public key"),
        "{stderr}"
    );
    let out = scanner(
        &["verify", "--keyset", "/nonexistent/keyset.json", "VT1:x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading keyset"));
}

#[test]
fn human_output_leads_with_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let keyset = vector_keyset(tmp.path());
    let good = vector_cases()[0]["code"].as_str().unwrap().to_owned();
    let out = scanner(
        &[
            "verify",
            "--keyset",
            &keyset,
            "--now",
            "1900003600",
            &good,
            "VT1:AAAA",
        ],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("OK  event 1001  seat A-12-7  category 3"),
        "{text}"
    );
    assert!(lines[1].starts_with("INVALID  "), "{text}");
}

/// `init` and `verify` given a keyset that is not one: one line naming the
/// file, the reason said once (not once per error in the chain), and what to do.
#[test]
fn a_malformed_keyset_is_refused_with_its_reason_once_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let mismatched = v["keyset"].to_string().replace("21fe31df", "21fe31d0");
    for (content, reason, todo) in [
        (
            "garbage".to_owned(),
            "expected value at line 1 column 1",
            "issuer keys export-keyset",
        ),
        (
            "{\"keys\": 5}".to_owned(),
            "invalid type: integer `5`",
            "issuer keys export-keyset",
        ),
        (
            mismatched,
            "21fe31d0 does not match its public key",
            "re-export the keyset",
        ),
    ] {
        let path = tmp.path().join("bad.json");
        std::fs::write(&path, &content).unwrap();
        let path = path.to_str().unwrap();
        let db = tmp.path().join("gate.db");
        let init = [
            "--db",
            db.to_str().unwrap(),
            "init",
            "--keyset",
            path,
            "--device-name",
            "t",
        ];
        let verify = ["verify", "--keyset", path, "VT1:x"];
        for args in [&init[..], &verify[..]] {
            let out = scanner(args, b"");
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.matches(reason).count(), 1, "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with(&format!("error: keyset {path} refused: ")),
                "{stderr}"
            );
            assert!(stderr.contains(todo), "{stderr}");
        }
        assert!(!db.exists(), "a refused keyset provisions nothing");
    }
}
