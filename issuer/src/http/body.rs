//! A JSON body, bounded, in the API's error shape when it is not one.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Most bytes of a request body, but a venue's.
pub const MAX_BODY: usize = 64 << 10;
/// Most bytes of a venue (a plan of 100,000 seats).
pub const MAX_VENUE_BODY: usize = 8 << 20;

/// `T` from a JSON body of at most `LIMIT` bytes.
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is larger than {LIMIT} bytes, or was cut off"),
                )
            })?;
        let refused = |e: serde_json::Error| {
            ApiError::bad_request(format!("the body is not what was expected: {e}"))
        };
        match serde_json::from_slice(&bytes) {
            Ok(t) => Ok(JsonBody(t)),
            // JSON (and JSON Schema) reads `3.0` as the integer 3, serde as
            // a float that no integer field takes: read again with such
            // numbers made integers. Only refused bodies pay for this.
            Err(e) => {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(refused)?;
                if !integral_floats_as_integers(&mut value) {
                    return Err(refused(e));
                }
                serde_json::from_value(value).map(JsonBody).map_err(refused)
            }
        }
    }
}

/// Makes every float of `value` with no fraction (`3.0`, `1e3`) the
/// integer it is, where a 64-bit integer holds it; says whether any was.
fn integral_floats_as_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Below 2^64 and 2^63 (exclusive: the casts saturate).
            let int = if f.fract() != 0.0 {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(Value::from(f as u64))
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                Some(Value::from(f as i64))
            } else {
                None
            };
            int.map(|i| *value = i).is_some()
        }
        Value::Array(items) => {
            // Every item, not only up to the first changed.
            let mut any = false;
            for v in items {
                any |= integral_floats_as_integers(v);
            }
            any
        }
        Value::Object(fields) => {
            let mut any = false;
            for v in fields.values_mut() {
                any |= integral_floats_as_integers(v);
            }
            any
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn integral_floats_are_read_as_the_integers_they_are() {
        let mut v = json!({"a": 3.0, "b": [1.5, 2e3, -4.0], "c": "5.0", "d": 1e300, "e": 7});
        assert!(super::integral_floats_as_integers(&mut v));
        assert_eq!(
            v,
            json!({"a": 3, "b": [1.5, 2000, -4], "c": "5.0", "d": 1e300, "e": 7})
        );
        let mut none = json!({"a": 1.5, "b": [2, "x"]});
        assert!(!super::integral_floats_as_integers(&mut none));
    }
}
