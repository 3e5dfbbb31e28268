//! Who is asking, from `Authorization: Bearer TOKEN`, checked before any
//! body is read (extractors of the request's head run first).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::storage::OrganizerId;

/// Longest token looked up: longer ones are not ours.
const MAX_TOKEN: usize = 200;

/// A new organizer API token, and the hash the store keeps of it.
pub fn new_token() -> (String, [u8; 32]) {
    new_secret("org_")
}

/// A new random token starting with `prefix`, and its hash.
pub fn new_secret(prefix: &str) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The bearer token of a request, if it has one.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not `Bearer TOKEN`"))
}

async fn organizer_of(state: &AppState, token: &str) -> Result<OrganizerId, ApiError> {
    let hash = token_hash(token);
    state
        .db(move |db| db.organizer_by_token(&hash))
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token is not an organizer's, or was revoked"))
}

/// An organizer, by its API token: required.
pub struct Organizer(pub OrganizerId);

impl FromRequestParts<AppState> for Organizer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthorized("an organizer's token is needed: `Bearer TOKEN`")
        })?;
        Ok(Organizer(organizer_of(state, token).await?))
    }
}

/// An organizer if a token is given (a buyer gives none): what public
/// reads take, so an organizer also sees its drafts.
pub struct MaybeOrganizer(pub Option<OrganizerId>);

impl FromRequestParts<AppState> for MaybeOrganizer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(token) => Ok(MaybeOrganizer(Some(organizer_of(state, token).await?))),
            None => Ok(MaybeOrganizer(None)),
        }
    }
}
