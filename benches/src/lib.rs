//! Shared pieces of the benches and the load generator: sample data that looks like real traffic.

use gps_domain::{Fix, FixEnvelope, Protocol};
use uuid::Uuid;

/// An envelope of `n` plausible fixes of one device, one second apart.
pub fn sample_envelope(n: usize) -> FixEnvelope {
    let fixes = (0..n)
        .map(|i| {
            let mut fix = Fix::new(
                1_700_000_000_000 + i as i64 * 1000,
                52.52 + i as f64 * 1e-4,
                13.40,
            );
            fix.speed_mps = Some(13.9);
            fix.heading_deg = Some(90.0);
            fix.accuracy_m = Some(5.0);
            fix.battery_pct = Some(80.0);
            fix
        })
        .collect();
    FixEnvelope::new(
        Uuid::new_v4(),
        Uuid::new_v4(),
        "358240051111110",
        Protocol::Json,
        1_700_000_100_000,
        fixes,
    )
}
