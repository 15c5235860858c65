//! The SQL of events (issue 16): the tenant's fences for the evaluator, the per-device event
//! state, and the insert of events with their webhook deliveries, in the caller's transaction.
