//! End-to-end tests of the dashboard (`web/`, served by the query API at `/`) in a real headless
//! Chromium driven over WebDriver (`chromedriver`), with ingest, the processor, fanout and the
//! query API started in-process against the local stack. The tests live in `tests/it`; this
//! library is empty. Run with `cargo test -p web-tests` after `dev/stack up` (which installs
//! `chromium`, `chromium-driver` and the page's npm packages).
