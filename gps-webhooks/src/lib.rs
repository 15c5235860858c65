//! Webhook delivery of events (issue 16): which URLs may be called (SSRF policy), how a delivery
//! is signed, and the worker that delivers the rows of `webhook_deliveries`.
