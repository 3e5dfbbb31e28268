//! Lower-case hex for the short identifiers in the spec (key ids, ticket ids).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Lower-case hex of `bytes` (at most 32) written into `buf`, without
/// allocating: what the JSON serialiser of an identifier writes.
pub fn encode_into<'a>(bytes: &[u8], buf: &'a mut [u8; 64]) -> &'a str {
    let n = bytes.len().min(32);
    for (i, b) in bytes[..n].iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[..2 * n]).unwrap_or_default()
}

/// Decodes exactly `N` bytes of hex (either case); `None` for anything else.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let raw = text.as_bytes();
    if raw.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Serialises an identifier (a tuple struct of at most 32 bytes) as its hex
/// text, and parses it back through `FromStr`: the form every JSON document
/// of the project uses.
macro_rules! serde_as_hex {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; 64];
                s.serialize_str($crate::hex::encode_into(&self.0, &mut buf))
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_hex;

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_bad_digits() {
        assert_eq!(super::encode(&[0x21, 0xfe, 0x31, 0xdf]), "21fe31df");
        assert_eq!(super::encode(&[0x00, 0x0a, 0xa0, 0xff]), "000aa0ff");
        let mut buf = [0u8; 64];
        assert_eq!(
            super::encode_into(&[0x00, 0x0a, 0xa0, 0xff], &mut buf),
            "000aa0ff"
        );
        assert_eq!(
            super::decode::<4>("21FE31df"),
            Some([0x21, 0xfe, 0x31, 0xdf])
        );
        assert_eq!(super::decode::<4>("21fe31d"), None);
        assert_eq!(super::decode::<4>("21fe31dg"), None);
    }
}
