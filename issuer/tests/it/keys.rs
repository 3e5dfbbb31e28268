//! Key management: secrets stay secret, keysets name the right keys.

use std::os::unix::fs::PermissionsExt;

use crate::Env;

#[test]
fn generated_key_is_mode_0600_and_never_printed() {
    let env = Env::new();
    let out = env.ok(&["keys", "generate"]);
    let key_id = out.split_whitespace().nth(1).unwrap();
    let path = env.data().join("keys").join(format!("{key_id}.key"));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let seed = std::fs::read(&path).unwrap();
    assert_eq!(seed.len(), 32);
    let hex = shared::hex::encode(&seed);
    let listed = env.ok(&["keys", "list"]);
    for text in [&out, &listed] {
        assert!(!text.contains(&hex), "the secret was printed");
    }
    assert!(
        listed.contains(key_id) && listed.contains("active"),
        "{listed}"
    );
}

#[test]
fn exported_keyset_holds_the_active_key_for_the_named_events() {
    let env = Env::new();
    let key_id = env.generate_key();
    let keyset = env.keyset(&[1001, 1002]);
    assert_eq!(keyset.len(), 1);
    let entry = keyset.entries().next().unwrap();
    assert_eq!(entry.key_id.to_string(), key_id);
    assert_eq!(
        entry.event_ids.iter().copied().collect::<Vec<_>>(),
        vec![1001, 1002]
    );
}

#[test]
fn export_refuses_an_unknown_event_and_a_store_without_keys() {
    let env = Env::new();
    let err = env.fails(&["keys", "export-keyset", "--event", "1001"]);
    assert!(err.contains("no active signing key"), "{err}");
    env.generate_key();
    let err = env.fails(&[
        "keys",
        "export-keyset",
        "--event",
        "1001",
        "--event",
        "4242",
    ]);
    assert!(err.contains("event 4242 is not known"), "{err}");
}

#[test]
fn retired_key_signs_nothing_new_but_stays_for_its_tickets_until_the_event_ends() {
    let env = Env::new();
    // An event long over, and the fixtures' events in 2030.
    env.ok(&[
        "events",
        "add",
        "--id",
        "7",
        "--name",
        "Last year",
        "--starts",
        "2020-05-01T18:00:00Z",
        "--ends",
        "2020-05-01T23:00:00Z",
    ]);
    let old = env.generate_key();
    for (event, out) in [("7", "past"), ("1001", "future")] {
        env.ok(&[
            "tickets",
            "issue",
            "--event",
            event,
            "--category",
            "1",
            "--count",
            "2",
            "--out",
            env.path(out).to_str().unwrap(),
        ]);
    }
    env.ok(&["keys", "retire", &old]);
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "1",
        "--key",
        &old,
        "--out",
        env.path("x").to_str().unwrap(),
    ]);
    assert!(err.contains("retired"), "{err}");
    let err = env.fails(&[
        "tickets",
        "issue",
        "--event",
        "1001",
        "--category",
        "1",
        "--count",
        "1",
        "--out",
        env.path("y").to_str().unwrap(),
    ]);
    assert!(err.contains("no active signing key"), "{err}");

    let new = env.generate_key();
    let ids = |events: &[u64]| -> Vec<(String, Vec<u64>)> {
        env.keyset(events)
            .entries()
            .map(|e| (e.key_id.to_string(), e.event_ids.iter().copied().collect()))
            .collect()
    };
    // Event 1001 is still to come: its tickets from the retired key must still verify.
    let mut future = ids(&[1001]);
    future.sort();
    let mut want = vec![(old.clone(), vec![1001]), (new.clone(), vec![1001])];
    want.sort();
    assert_eq!(future, want);
    // Event 7 is over: the retired key is gone, the active one remains.
    assert_eq!(ids(&[7]), vec![(new.clone(), vec![7])]);
    // Event 1002 got no tickets from the retired key.
    assert_eq!(ids(&[1002]), vec![(new, vec![1002])]);
}
