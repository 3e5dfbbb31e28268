//! Anti-entropy with other gate-sync nodes. Each round, for each peer: pull
//! the records we lack (sending our version vector), then send the records
//! the peer lacks (from the version vector it answered with). Rounds are
//! idempotent, so a lost message is repaired by the next round.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use shared::{ScanRecord, VersionVector};

use crate::AppState;

#[derive(Deserialize)]
struct Pulled {
    records: Vec<ScanRecord>,
    version_vector: VersionVector,
}

/// One exchange with `peer` (its base URL); returns (received, sent) records
/// that were new to their receiver.
pub fn exchange(
    state: &AppState,
    peer: &str,
    agent: &ureq::Agent,
) -> Result<(usize, usize), String> {
    let peer = peer.trim_end_matches('/');
    let token = state
        .peer_token()
        .ok_or("no --peer-token: peers cannot be reached")?;
    let auth = format!("Bearer {token}");
    let ours = state.lock(|s| s.log().version_vector());
    let pulled: Pulled = agent
        .post(&format!("{peer}/v1/pull"))
        .header("authorization", &auth)
        .send_json(json!({ "version_vector": ours }))
        .map_err(|e| format!("pull from {peer}: {e}"))?
        .body_mut()
        .read_json()
        .map_err(|e| format!("pull from {peer}: {e}"))?;
    let now = crate::unix_now_ms();
    let received = state
        .lock(|s| s.add(&pulled.records, now))
        .map_err(|e| e.to_string())?;
    let missing = state.lock(|s| s.log().missing_for(&pulled.version_vector));
    let mut sent = 0;
    for chunk in missing.chunks(5000) {
        let answer: serde_json::Value = agent
            .post(&format!("{peer}/v1/merge"))
            .header("authorization", &auth)
            .send_json(json!({ "records": chunk }))
            .map_err(|e| format!("send to {peer}: {e}"))?
            .body_mut()
            .read_json()
            .map_err(|e| format!("send to {peer}: {e}"))?;
        sent += answer["stored"].as_u64().unwrap_or(0) as usize;
    }
    Ok((received, sent))
}

/// Exchanges with every peer every `every`, forever, on a thread of its own.
pub fn spawn(state: AppState, peers: Vec<String>, every: Duration) {
    if peers.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        loop {
            for peer in &peers {
                match exchange(&state, peer, &agent) {
                    Ok((0, 0)) => {}
                    Ok((received, sent)) => {
                        tracing::info!(%peer, received, sent, "exchanged with peer")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "peer exchange failed; next round retries")
                    }
                }
            }
            std::thread::sleep(every);
        }
    });
}
