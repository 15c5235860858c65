//! Fix validation with reason codes (used by the processor), pure and per-tenant configurable.
