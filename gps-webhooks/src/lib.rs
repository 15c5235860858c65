//! Webhook delivery of events (issue 16): which URLs may be called (SSRF policy), how a delivery
//! is signed, and the worker that delivers the rows of `webhook_deliveries`.
//!
//! Reading order: [`policy`] (the one URL rule, for the API at creation and the worker at
//! delivery), [`signing`] (what a receiver verifies), [`client`] (the pinned, policy-resolving
//! HTTP client and one capped POST), [`worker`] (claim, deliver, record, retry). The settings are
//! [`config`]; the processor runs the worker (`processor::run`), the query API manages webhooks
//! (`query-api/src/routes/webhooks.rs`). Receivers: docs/events.md, "Webhooks".

pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod signing;
pub mod worker;

pub use config::{UrlPolicyArgs, WebhookArgs};
pub use error::WebhookError;
pub use metrics::Metrics;
pub use policy::{AddressClass, Cidr, CidrList, Refusal, UrlPolicy};
pub use worker::{redeliver, run};
