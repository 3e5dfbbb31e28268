//! The VT1 byte layout: building, signing and parsing ticket codes.
//!
//! Text form `VT1:<base64url(payload || signature)>`, unpadded; the payload is
//! 41 fixed bytes plus the seat label, and the Ed25519 signature covers
//! `"VT1" || payload`. Parsing checks every rule of the layout but trusts
//! nothing: only [`crate::Verifier`] looks at the signature.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::hex;

/// The text prefix, compared case-sensitively.
pub const PREFIX: &str = "VT1:";
/// The payload version this crate reads and writes.
pub const VERSION: u8 = 0x01;
/// Bytes put in front of the payload before signing, so a VT1 signature can
/// never be replayed as a signature over some other message format.
pub const SIGNING_DOMAIN: &[u8; 3] = b"VT1";
/// Longest seat label, in bytes of UTF-8.
pub const MAX_SEAT_LEN: usize = 32;
/// Bytes of payload before the seat label.
pub const FIXED_LEN: usize = 41;
/// Bytes of signature at the end of the body.
pub const SIGNATURE_LEN: usize = 64;

const FLAG_MULTI_ENTRY: u8 = 0x01;

/// First four bytes of SHA-256 of an issuer public key; names the key that
/// signed a ticket so a scanner can pick it out of its keyset.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl KeyId {
    /// The key id of `key`, as the spec defines it.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        KeyId([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;

    /// Accepts exactly 8 lower-case hex digits, the only form the spec writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("key id {s:?} must be lower-case hex"));
        }
        hex::decode::<4>(s)
            .map(KeyId)
            .ok_or_else(|| format!("key id {s:?} is not 8 hex digits"))
    }
}

/// The 16 random bytes that are a ticket's identity within its event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId(pub [u8; 16]);

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({self})")
    }
}

impl FromStr for TicketId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode::<16>(s)
            .map(TicketId)
            .ok_or_else(|| format!("ticket id {s:?} is not 32 hex digits"))
    }
}

/// What a ticket states, apart from the key that signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketFields {
    pub event_id: u64,
    pub ticket_id: TicketId,
    /// The ticket category (VIP, general admission, ...), as the issuer numbers them.
    pub category_id: u16,
    /// Whether the holder may leave and come back in.
    pub multi_entry: bool,
    /// Unix seconds; a scanner refuses the ticket earlier than this, less its skew.
    pub valid_from: u32,
    /// Unix seconds; a scanner refuses the ticket later than this, plus its skew.
    pub valid_until: u32,
    /// Seat label such as `A-12-7`; empty for general admission.
    pub seat: String,
}

/// Why a ticket could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("seat label {seat:?} is {len} bytes of UTF-8; VT1 allows at most 32")]
    SeatTooLong { seat: String, len: usize },
    #[error("valid_until ({until}) is before valid_from ({from})")]
    ValidityReversed { from: u32, until: u32 },
}

/// Why a text is not a well-formed VT1 code. Every variant means the result
/// `invalid`; the message says which rule broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty code")]
    Empty,
    #[error("does not start with \"VT1:\"")]
    MissingPrefix,
    #[error("not canonical unpadded base64url: {0}")]
    Base64(String),
    #[error("body is {len} bytes; a VT1 body is at least {min}")]
    TooShort { len: usize, min: usize },
    #[error("payload version {0} is not supported (this scanner reads version 1)")]
    Version(u8),
    #[error("reserved flag bits are set (flags {0:#04x})")]
    ReservedFlags(u8),
    #[error("seat length {0} is over the limit of 32")]
    SeatTooLong(u8),
    #[error("body is {len} bytes; with this seat length it must be {expected}")]
    Length { len: usize, expected: usize },
    #[error("seat label is not UTF-8")]
    SeatNotUtf8,
    #[error("valid_until ({until}) is before valid_from ({from})")]
    ValidityReversed { from: u32, until: u32 },
}

/// A code whose layout is sound but whose signature nobody has checked yet.
#[derive(Clone, Debug)]
pub struct UnverifiedTicket {
    pub(crate) key_id: KeyId,
    pub(crate) fields: TicketFields,
    /// `"VT1" || payload`, the exact bytes the signature covers.
    pub(crate) signed_message: Vec<u8>,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

impl UnverifiedTicket {
    /// The key the code claims signed it (not yet checked).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// What the code claims (not yet checked).
    /// The signature the code carries (not yet checked).
    pub fn signature(&self) -> crate::TicketSig {
        crate::TicketSig(self.signature)
    }

    pub fn claimed(&self) -> &TicketFields {
        &self.fields
    }
}

/// An issuer's signing key with its key id worked out once.
pub struct Signer {
    key: SigningKey,
    key_id: KeyId,
}

impl Signer {
    pub fn new(key: SigningKey) -> Signer {
        let key_id = KeyId::of(&key.verifying_key());
        Signer { key, key_id }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `fields` into the `VT1:` text.
    pub fn encode(&self, fields: &TicketFields) -> Result<String, EncodeError> {
        encode(fields, self)
    }
}

/// Signs `fields` with `signer` and returns the `VT1:` text.
pub fn encode(fields: &TicketFields, signer: &Signer) -> Result<String, EncodeError> {
    let message = signed_message(signer.key_id, fields)?;
    let signature = signer.key.sign(&message).to_bytes();
    let mut body = message;
    body.drain(..SIGNING_DOMAIN.len());
    body.extend_from_slice(&signature);
    let mut text = String::with_capacity(PREFIX.len() + body.len().div_ceil(3) * 4);
    text.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(&body, &mut text);
    Ok(text)
}

/// `"VT1" || payload` for these fields.
fn signed_message(key_id: KeyId, fields: &TicketFields) -> Result<Vec<u8>, EncodeError> {
    let seat = fields.seat.as_bytes();
    if seat.len() > MAX_SEAT_LEN {
        return Err(EncodeError::SeatTooLong {
            seat: fields.seat.clone(),
            len: seat.len(),
        });
    }
    if fields.valid_until < fields.valid_from {
        return Err(EncodeError::ValidityReversed {
            from: fields.valid_from,
            until: fields.valid_until,
        });
    }
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + FIXED_LEN + seat.len() + SIGNATURE_LEN);
    out.extend_from_slice(SIGNING_DOMAIN);
    out.push(VERSION);
    out.extend_from_slice(&key_id.0);
    out.extend_from_slice(&fields.event_id.to_be_bytes());
    out.extend_from_slice(&fields.ticket_id.0);
    out.extend_from_slice(&fields.category_id.to_be_bytes());
    out.push(if fields.multi_entry {
        FLAG_MULTI_ENTRY
    } else {
        0
    });
    out.extend_from_slice(&fields.valid_from.to_be_bytes());
    out.extend_from_slice(&fields.valid_until.to_be_bytes());
    // Checked against MAX_SEAT_LEN above, so it fits in a byte.
    out.push(seat.len() as u8);
    out.extend_from_slice(seat);
    Ok(out)
}

/// Reads a code's layout. Leading and trailing ASCII whitespace is ignored
/// (keyboard-wedge scanners send CR/LF); nothing else is forgiven.
pub fn parse(text: &str) -> Result<UnverifiedTicket, ParseError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let encoded = text.strip_prefix(PREFIX).ok_or(ParseError::MissingPrefix)?;
    let body = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| ParseError::Base64(e.to_string()))?;
    parse_body(&body)
}

/// Reads the decoded body: payload followed by the 64-byte signature.
pub fn parse_body(body: &[u8]) -> Result<UnverifiedTicket, ParseError> {
    let min = FIXED_LEN + SIGNATURE_LEN;
    if let Some(&version) = body.first()
        && version != VERSION
    {
        return Err(ParseError::Version(version));
    }
    if body.len() < min {
        return Err(ParseError::TooShort {
            len: body.len(),
            min,
        });
    }
    let flags = body[31];
    if flags & !FLAG_MULTI_ENTRY != 0 {
        return Err(ParseError::ReservedFlags(flags));
    }
    let seat_len = body[40];
    if usize::from(seat_len) > MAX_SEAT_LEN {
        return Err(ParseError::SeatTooLong(seat_len));
    }
    let payload_len = FIXED_LEN + usize::from(seat_len);
    if body.len() != payload_len + SIGNATURE_LEN {
        return Err(ParseError::Length {
            len: body.len(),
            expected: payload_len + SIGNATURE_LEN,
        });
    }
    let (payload, signature) = body.split_at(payload_len);
    let seat = std::str::from_utf8(&payload[FIXED_LEN..]).map_err(|_| ParseError::SeatNotUtf8)?;
    let be32 = |at: usize| u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let valid_from = be32(32);
    let valid_until = be32(36);
    if valid_until < valid_from {
        return Err(ParseError::ValidityReversed {
            from: valid_from,
            until: valid_until,
        });
    }
    let mut event_id = [0u8; 8];
    event_id.copy_from_slice(&payload[5..13]);
    let mut ticket_id = [0u8; 16];
    ticket_id.copy_from_slice(&payload[13..29]);
    let mut sig = [0u8; SIGNATURE_LEN];
    sig.copy_from_slice(signature);
    let mut signed_message = Vec::with_capacity(SIGNING_DOMAIN.len() + payload_len);
    signed_message.extend_from_slice(SIGNING_DOMAIN);
    signed_message.extend_from_slice(payload);
    Ok(UnverifiedTicket {
        key_id: KeyId([payload[1], payload[2], payload[3], payload[4]]),
        fields: TicketFields {
            event_id: u64::from_be_bytes(event_id),
            ticket_id: TicketId(ticket_id),
            category_id: u16::from_be_bytes([payload[29], payload[30]]),
            multi_entry: flags & FLAG_MULTI_ENTRY != 0,
            valid_from,
            valid_until,
            seat: seat.to_owned(),
        },
        signed_message,
        signature: sig,
    })
}

/// Decodes the body of a code without checking its layout; for tests and tools
/// that need the raw bytes.
pub fn decode_body(text: &str) -> Result<Vec<u8>, ParseError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let encoded = text.strip_prefix(PREFIX).ok_or(ParseError::MissingPrefix)?;
    URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| ParseError::Base64(e.to_string()))
}

/// The `VT1:` text of a raw body; the inverse of [`decode_body`].
pub fn encode_body(body: &[u8]) -> String {
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
}

hex::serde_as_hex!(KeyId);
hex::serde_as_hex!(TicketId);
