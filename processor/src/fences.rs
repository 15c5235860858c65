//! Every tenant's geofences, loaded off the batch path: [`FenceCache`] holds each tenant's
//! `FenceIndex` with the [`FenceVersion`] it was loaded at; [`refresher`] looks at all versions
//! every `PROCESSOR_FENCE_REFRESH_MS` (one grouped query) and reloads only the tenants whose
//! fences changed, so a batch never waits for a tenant's fences to load (10,000 fences take
//! ~200 ms to read, validate and index here) or for the version query. The service loads them
//! all before its first batch; a pipeline without the service (`replay`, tests) loads them at
//! its first batch ([`FenceCache::ensure_loaded`]): events are never folded against fences not
//! yet read.

use gps_domain::events::FenceIndex;
use gps_runtime::service::CancellationToken;
use gps_store::events::{self as store, FenceVersion};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Tenants' fences as last loaded, shared by the batch path and the refresher.
#[derive(Debug, Clone, Default)]
pub struct FenceCache {
    inner: Arc<RwLock<Loaded>>,
}

#[derive(Debug, Default)]
struct Loaded {
    /// False until the first refresh completed.
    ready: bool,
    tenants: HashMap<Uuid, (FenceVersion, Arc<FenceIndex>)>,
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Tenants whose fences were (re)loaded.
    pub loaded: usize,
    /// Tenants whose fences are all gone.
    pub dropped: usize,
    /// Fences in the cache after it.
    pub fences: usize,
}

impl FenceCache {
    /// The fences of `tenant` (`None`: it had none at the last refresh).
    pub fn get(&self, tenant: Uuid) -> Option<Arc<FenceIndex>> {
        self.read().tenants.get(&tenant).map(|(_, f)| f.clone())
    }

    /// Refresh once unless a refresh already completed (the first batch after start).
    pub async fn ensure_loaded(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if !self.read().ready {
            self.refresh(pool).await?;
        }
        Ok(())
    }

    /// Read every tenant's fence version and reload the tenants whose fences changed.
    pub async fn refresh(&self, pool: &PgPool) -> Result<Refreshed, sqlx::Error> {
        let versions = store::all_fence_versions(pool).await?;
        let changed: Vec<(Uuid, FenceVersion)> = {
            let loaded = self.read();
            versions
                .iter()
                .filter(|(tenant, version)| {
                    loaded.tenants.get(tenant).map(|(v, _)| v) != Some(version)
                })
                .map(|(tenant, version)| (*tenant, *version))
                .collect()
        };
        // Loaded without the lock: batches go on with the fences they had meanwhile.
        let mut fresh = Vec::with_capacity(changed.len());
        for (tenant, version) in changed {
            let started = Instant::now();
            let index = store::load_fences(pool, tenant).await?;
            tracing::debug!(%tenant, fences = index.len(), ms = started.elapsed().as_millis(), "tenant geofences loaded");
            fresh.push((tenant, version, Arc::new(index)));
        }
        let mut loaded = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = loaded.tenants.len();
        loaded
            .tenants
            .retain(|tenant, _| versions.contains_key(tenant));
        let dropped = before - loaded.tenants.len();
        let reloaded = fresh.len();
        for (tenant, version, index) in fresh {
            loaded.tenants.insert(tenant, (version, index));
        }
        loaded.ready = true;
        Ok(Refreshed {
            loaded: reloaded,
            dropped,
            fences: loaded.tenants.values().map(|(_, f)| f.len()).sum(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A panic while holding the lock leaves a whole map behind: keep using it.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refresh `cache` every `period` until `stop`; a failed refresh keeps the fences it had and is
/// tried again next period.
pub async fn refresher(cache: FenceCache, pool: PgPool, period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if let Err(error) = cache.refresh(&pool).await {
            tracing::warn!(%error, "geofence refresh failed; keeping the fences loaded before");
        }
    }
}
