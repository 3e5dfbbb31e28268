//! Anti-entropy with other gate-sync nodes. Each round, for each peer: pull
//! the records we lack (sending our version vector), then send the records
//! the peer lacks (from the version vector it answered with). Rounds are
//! idempotent, so a lost message is repaired by the next round.

use std::time::Duration;

use shared::protocol::{self, MERGE, PULL, PullPage, PullRequest};

use crate::AppState;

/// One exchange with `peer` (its base URL); returns (received, sent) records
/// that were new to their receiver. Both ways go a page at a time.
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
    let (ours, digests) = state.read(|s| (s.log().version_vector(), s.log().digests()));
    let mut received = 0;
    let mut after = None;
    let theirs = loop {
        let request = PullRequest {
            version_vector: ours.clone(),
            after,
            limit: None,
            // On every page: a forked device's versions come a page at a time.
            digests: digests.clone(),
        };
        let sent = agent
            .post(&format!("{peer}{PULL}"))
            .header("authorization", &auth)
            .send_json(&request);
        let pulled: PullPage = answer(sent).map_err(|e| format!("pull from {peer}: {e}"))?;
        // A peer is checked as any sender is: a bad page is refused whole.
        protocol::check_records(&pulled.records)
            .and_then(|()| protocol::check_records(&pulled.conflicts))
            .and_then(|()| protocol::check_devices(&pulled.devices))
            .map_err(|e| format!("pull from {peer}: {e}"))?;
        let now = crate::unix_now_ms();
        received += state
            .lock(|s| {
                s.merge_device_auth(&pulled.devices)?;
                s.add_authentic(&pulled.records, &pulled.conflicts, now)
            })
            .inspect(|_| state.forget_tokens())
            .map_err(|e| e.to_string())?;
        match pulled.next {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            Some(_) => {
                return Err(format!(
                    "pull from {peer}: its next page does not move forward"
                ));
            }
            None => break pulled.version_vector,
        }
    };
    // Our enrolled devices go with the first page, even when no record
    // does; both versions of every index written twice go with the pages,
    // beside the records of the same indexes.
    let devices = state.read(|s| {
        let devices = s.device_auth().map_err(|e| e.to_string())?;
        serde_json::to_vec(&devices).map_err(|e| e.to_string())
    })?;
    let mut devices = Some(devices);
    let mut sent = 0;
    let mut after = None;
    let nothing = Default::default();
    loop {
        let page = state.read(|s| {
            s.page_after(
                br#"{"records":"#,
                &theirs,
                &nothing,
                after,
                protocol::PULL_PAGE,
            )
        });
        if page.is_empty() && devices.is_none() {
            break;
        }
        let devices = devices.take().unwrap_or_else(|| b"[]".to_vec());
        let merged = agent
            .post(&format!("{peer}{MERGE}"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(
                [
                    &page.records.to_vec()[..],
                    br#","devices":"#,
                    &devices,
                    br#","conflicts":"#,
                    &page.conflicts,
                    b"}",
                ]
                .concat(),
            );
        let stored: protocol::Stored =
            answer(merged).map_err(|e| format!("send to {peer}: {e}"))?;
        sent += stored.stored;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok((received, sent))
}

/// A peer's answer: its message when 200, its refusal otherwise.
fn answer<T: serde::de::DeserializeOwned>(
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, String> {
    let mut resp = sent.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(protocol::MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    if status != 200 {
        let why: Option<protocol::ErrorBody> = serde_json::from_slice(&body).ok();
        return Err(format!(
            "refused ({status}): {}",
            why.map_or("no reason given".to_owned(), |w| w.error)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("an unreadable answer: {e}"))
}

/// A peer as named on the command line: `URL`, or `URL#FINGERPRINT` for a
/// node serving TLS, whose certificate is then pinned. Plain HTTP only to
/// this machine.
pub fn parse_peer(text: &str) -> Result<(String, Option<String>), String> {
    let (url, pin) = crate::tls::split_pinned_url(text)?;
    if url.starts_with("https://") && pin.is_none() {
        return Err(format!(
            "peer {url}: add the node's certificate fingerprint as {url}#FINGERPRINT \
             (`gate-sync tls fingerprint` on that node prints it)"
        ));
    }
    if !url.starts_with("https://") && !crate::tls::plain_allowed(&url) {
        return Err(format!(
            "peer {url}: use https://HOST:PORT#FINGERPRINT; plain http is only for this machine"
        ));
    }
    Ok((url, pin))
}

/// Exchanges with every peer every `every`, forever, on a thread of its own.
pub fn spawn(state: AppState, peers: Vec<(String, Option<String>)>, every: Duration) {
    if peers.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        let agents: Vec<(String, ureq::Agent)> = peers
            .into_iter()
            .map(|(url, pin)| {
                let agent = crate::tls::agent(pin.as_deref(), Duration::from_secs(30));
                (url, agent)
            })
            .collect();
        loop {
            for (peer, agent) in &agents {
                match exchange(&state, peer, agent) {
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
