//! The SQL of the tables that more than one service reads, in one place so that every service
//! applies the same rule: device and API-key credentials ([`credentials`]), the principal behind
//! a bearer credential ([`principal`]), single-use live tickets ([`tickets`]), which devices a
//! principal may read ([`visibility`]), the bounding-box predicate over stored positions
//! ([`geo`]), the `positions` / `last_positions` row codec ([`positions`]), the `device_status`
//! row ([`status`]), and the audit log's one insert with its failure count ([`audit`]).
//!
//! Pure rules and types (roles, permissions, `Principal`, `Visibility`, `BBox`) live in
//! `gps-domain`; this crate adds only the queries around them. Tenancy rule: every lookup is
//! scoped by the caller's tenant (credential lookups are how the tenant is found); another
//! tenant's object is indistinguishable from a missing one.

pub mod audit;
pub mod credentials;
pub mod events;
pub mod geo;
pub mod positions;
pub mod principal;
pub mod status;
pub mod tickets;
pub mod visibility;
