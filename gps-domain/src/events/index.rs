//! The spatial index over one tenant's fences: an R-tree of their bounding boxes (a fence over
//! the antimeridian is entered as its two halves), so that the cost of a fix grows with the
//! fences whose box holds it, not with all the tenant's fences.

use super::Fence;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;
use std::collections::HashMap;
use uuid::Uuid;

type Entry = GeomWithData<Rectangle<[f64; 2]>, usize>;

/// A tenant's fences, indexed by id and by bounding box.
#[derive(Debug, Clone)]
pub struct FenceIndex {
    fences: Vec<Fence>,
    by_id: HashMap<Uuid, usize>,
    tree: RTree<Entry>,
}

impl Default for FenceIndex {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl FenceIndex {
    /// Index `fences` (bulk-loaded: building costs about `n log n`).
    pub fn new(fences: Vec<Fence>) -> Self {
        let mut entries = Vec::with_capacity(fences.len());
        for (i, fence) in fences.iter().enumerate() {
            let b = fence.shape.bbox();
            let (south, north) = (b.min_lat(), b.max_lat());
            if b.crosses_antimeridian() {
                entries.push(entry(b.min_lon(), south, 180.0, north, i));
                entries.push(entry(-180.0, south, b.max_lon(), north, i));
            } else {
                entries.push(entry(b.min_lon(), south, b.max_lon(), north, i));
            }
        }
        let by_id = fences.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        Self {
            fences,
            by_id,
            tree: RTree::bulk_load(entries),
        }
    }

    /// The fence with this id.
    pub fn get(&self, id: Uuid) -> Option<&Fence> {
        self.by_id.get(&id).map(|&i| &self.fences[i])
    }

    /// Number of fences.
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether there are no fences.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// The fences whose bounding box holds the point (a superset of those containing it),
    /// each once.
    pub fn candidates(&self, lat: f64, lon: f64) -> Vec<&Fence> {
        let mut hits: Vec<usize> = self
            .tree
            .locate_all_at_point(&[lon, lat])
            .map(|e| e.data)
            .collect();
        // A point on ±180° can hit both halves of a crossing fence.
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter().map(|i| &self.fences[i]).collect()
    }

    /// The fences that contain the point (geometry only: groups and schedules aside).
    pub fn containing(&self, lat: f64, lon: f64) -> Vec<&Fence> {
        self.candidates(lat, lon)
            .into_iter()
            .filter(|f| f.shape.contains(lat, lon))
            .collect()
    }
}

fn entry(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64, i: usize) -> Entry {
    GeomWithData::new(
        Rectangle::from_corners([min_lon, min_lat], [max_lon, max_lat]),
        i,
    )
}
