//! The live message: what the processor publishes to Redis after the database commit, and what
//! fanout routes to WebSocket subscribers.
//!
//! Channel per tenant: [`channel_for`] (`gps.live.<tenant uuid>`), so fanout can subscribe with
//! one pattern ([`CHANNEL_PATTERN`]) and a tenant's traffic never reaches another tenant's
//! routing table. One Redis message carries every accepted fix of one tenant from one database
//! batch ([`LiveBatch`]), because a PUBLISH per fix would cost more than the write itself.
//! Documented in `docs/live.md`.

use crate::fix::{EpochMillis, Fix, Protocol};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the live message this build writes and reads.
pub const LIVE_VERSION: u32 = 1;

/// Redis channel prefix; the tenant id follows.
pub const CHANNEL_PREFIX: &str = "gps.live.";

/// Pattern matching every tenant's live channel.
pub const CHANNEL_PATTERN: &str = "gps.live.*";

/// The Redis channel carrying a tenant's accepted fixes.
pub fn channel_for(tenant: Uuid) -> String {
    format!("{CHANNEL_PREFIX}{tenant}")
}

/// The tenant a live channel belongs to, if the name is one.
pub fn tenant_of_channel(channel: &str) -> Option<Uuid> {
    channel.strip_prefix(CHANNEL_PREFIX)?.parse().ok()
}

/// One accepted fix of one device, as published live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveFix {
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier.
    pub uid: String,
    /// Protocol it arrived over.
    pub proto: Protocol,
    /// When ingest received it (UTC ms); lets consumers measure ingest-to-live latency.
    pub rx: EpochMillis,
    /// The fix itself, SI units.
    pub fix: Fix,
}

/// The accepted fixes of one tenant from one committed database batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveBatch {
    /// Message version, [`LIVE_VERSION`].
    pub v: u32,
    /// The tenant (also in the channel name).
    pub tenant: Uuid,
    /// The fixes, in commit order; a device's fixes are in fix-time order.
    pub fixes: Vec<LiveFix>,
}

impl LiveBatch {
    /// A batch for one tenant.
    pub fn new(tenant: Uuid, fixes: Vec<LiveFix>) -> Self {
        Self {
            v: LIVE_VERSION,
            tenant,
            fixes,
        }
    }

    /// Serialize for PUBLISH.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("live batch serializes")
    }

    /// Parse a published message.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_tenant() {
        let tenant = Uuid::new_v4();
        let channel = channel_for(tenant);
        assert!(channel.starts_with("gps.live."));
        assert_eq!(tenant_of_channel(&channel), Some(tenant));
        assert_eq!(tenant_of_channel("gps.live.nope"), None);
        assert_eq!(tenant_of_channel("other"), None);
    }

    #[test]
    fn batch_round_trips() {
        let batch = LiveBatch::new(
            Uuid::new_v4(),
            vec![LiveFix {
                device: Uuid::new_v4(),
                uid: "dev-1".into(),
                proto: Protocol::Udp,
                rx: 5,
                fix: Fix::new(4, 1.5, 2.5),
            }],
        );
        assert_eq!(LiveBatch::decode(&batch.encode()).unwrap(), batch);
    }
}
