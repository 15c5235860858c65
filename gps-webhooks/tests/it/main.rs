//! Integration tests of webhook delivery against the real PostgreSQL and a real HTTP receiver.

mod delivery;
mod support;
