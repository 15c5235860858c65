//! How a delivery is signed, and how a receiver checks it: HMAC-SHA256 with the webhook's
//! secret over `"{timestamp}.{body}"`, sent as `X-GPS-Signature: v1=<hex>` beside
//! `X-GPS-Timestamp` (Unix seconds). Signing the timestamp with the body lets a receiver refuse
//! a replayed request by its age; the `v1=` prefix leaves room for another scheme (or a second
//! signature during a secret rotation) without breaking receivers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Unix seconds at which the delivery was signed.
pub const TIMESTAMP_HEADER: &str = "x-gps-timestamp";
/// `v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-gps-signature";
/// The event's id: the receiver's idempotency key (the same on every retry and redelivery).
pub const EVENT_ID_HEADER: &str = "x-gps-event-id";
/// The event's type.
pub const EVENT_TYPE_HEADER: &str = "x-gps-event-type";
/// The delivery's id (one per webhook and event), as in the delivery log.
pub const DELIVERY_HEADER: &str = "x-gps-delivery";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-GPS-Signature` value of `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// The receiver's check: `signature_header` holds a `v1=` signature of `body` at
/// `timestamp_header`, made with `secret`, and the timestamp is within `tolerance_secs` of
/// `now` (a replay of an old request fails). Compared in constant time.
pub fn verify(
    secret: &str,
    timestamp_header: &str,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let Ok(timestamp) = timestamp_header.trim().parse::<i64>() else {
        return false;
    };
    if (now - timestamp).abs() > tolerance_secs {
        return false;
    }
    signature_header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_sig| hex::decode(hex_sig).ok())
        .any(|sig| mac(secret, timestamp, body).verify_slice(&sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_fresh_timestamp() {
        let secret = "0123456789abcdef-secret";
        let body = br#"{"id":"x"}"#;
        let sig = signature(secret, 1_700_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64, "{sig}");
        assert!(verify(secret, "1700000000", body, &sig, 1_700_000_100, 300));
        assert!(!verify(
            "another-secret-0000",
            "1700000000",
            body,
            &sig,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            secret,
            "1700000000",
            br#"{"id":"y"}"#,
            &sig,
            1_700_000_000,
            300
        ));
        assert!(!verify(
            secret,
            "1700000001",
            body,
            &sig,
            1_700_000_000,
            300
        ));
        assert!(
            !verify(secret, "1700000000", body, &sig, 1_700_000_301, 300),
            "too old"
        );
        assert!(!verify(secret, "soon", body, &sig, 1_700_000_000, 300));
        assert!(!verify(
            secret,
            "1700000000",
            body,
            "v1=zz",
            1_700_000_000,
            300
        ));
        // A header with two signatures (a rotation) verifies when one matches.
        let both = format!("v1=00, {sig}");
        assert!(verify(
            secret,
            "1700000000",
            body,
            &both,
            1_700_000_000,
            300
        ));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            signature("key", 1, b"{}"),
            "v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }
}
