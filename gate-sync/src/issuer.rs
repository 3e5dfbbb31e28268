//! Following the issuer: whenever it can be reached, the node fetches the
//! keyset and the revoked tickets of its events (with an organizer's
//! token) and hands them to the gates at their next sync, so a refund
//! reaches the doors without anyone carrying a file. The node speaks to
//! the issuer over HTTP only: it never links the issuer's code.

use std::time::Duration;

use crate::http::AppState;

/// Where the issuer is and what to ask it for.
#[derive(Clone, Debug)]
pub struct Feed {
    /// `http://127.0.0.1:8080` or `https://host:port` (pinned by `pin`).
    pub url: String,
    pub pin: Option<String>,
    pub token: String,
    pub events: Vec<u64>,
}

/// Most bytes of a keyset or revocation list taken from the issuer.
const MAX_ANSWER: u64 = 16 << 20;

/// Reads `--issuer URL[#FINGERPRINT]`: https with a pinned certificate,
/// or plain http to this machine.
pub fn parse(text: &str) -> Result<(String, Option<String>), String> {
    let (url, pin) = crate::tls::split_pinned_url(text)?;
    if url.starts_with("https://") && pin.is_none() {
        return Err(format!(
            "issuer {url}: add its certificate's fingerprint as {url}#FINGERPRINT"
        ));
    }
    if !url.starts_with("https://") && !crate::tls::plain_allowed(&url) {
        return Err(format!(
            "issuer {url}: use https://HOST:PORT#FINGERPRINT; plain http is only for this machine"
        ));
    }
    Ok((url.trim_end_matches('/').to_owned(), pin))
}

/// Fetches `path` from the issuer: its body, or why not.
fn fetch(agent: &ureq::Agent, feed: &Feed, path: &str) -> Result<String, String> {
    let events: Vec<String> = feed.events.iter().map(u64::to_string).collect();
    let url = format!("{}/api/v1/{path}?events={}", feed.url, events.join(","));
    let response = agent
        .get(&url)
        .header("authorization", &format!("Bearer {}", feed.token))
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    match status {
        200 => Ok(body),
        401 => Err(format!("{url}: the issuer refused the token (401)")),
        _ => Err(format!(
            "{url}: status {status}: {}",
            body.chars().take(200).collect::<String>()
        )),
    }
}

/// One round: the keyset and revocations, each stored if it changed.
/// Returns (keyset changed, revoked tickets now, if the list changed).
pub fn follow_once(
    state: &AppState,
    agent: &ureq::Agent,
    feed: &Feed,
) -> Result<(bool, Option<usize>), String> {
    let keyset = fetch(agent, feed, "keyset")?;
    let revocations = fetch(agent, feed, "revocations.txt")?;
    let now = crate::unix_now_ms();
    state.read(|store| {
        let held = |name: &str| store.distribution(name).map(|d| d.map(|(body, _)| body));
        let mut changed = (false, None);
        if held("keyset").map_err(|e| e.to_string())?.as_deref() != Some(keyset.as_str()) {
            store
                .set_keyset(&keyset, now)
                .map_err(|e| format!("the issuer's keyset: {e}"))?;
            changed.0 = true;
        }
        if held("revocations").map_err(|e| e.to_string())?.as_deref() != Some(revocations.as_str())
        {
            let n = store
                .set_revocations(&revocations, now)
                .map_err(|e| format!("the issuer's revocations: {e}"))?;
            changed.1 = Some(n);
        }
        Ok(changed)
    })
}

/// Follows the issuer every `every`, forever, on a thread of its own.
pub fn spawn(state: AppState, feed: Feed, every: Duration) {
    std::thread::spawn(move || {
        let agent = crate::tls::agent(feed.pin.as_deref(), Duration::from_secs(30));
        loop {
            match follow_once(&state, &agent, &feed) {
                Ok((false, None)) => {}
                Ok((keyset, revoked)) => {
                    tracing::info!(keyset_changed = keyset, ?revoked, "took the issuer's news")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the issuer could not be followed; next round retries")
                }
            }
            std::thread::sleep(every);
        }
    });
}
