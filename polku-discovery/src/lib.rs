//! POLKU plugin discovery: where plugins that register themselves are tracked.
//!
//! The registry service itself (Register, Heartbeat, Unregister from
//! plugin.proto) is not built yet. What this crate holds so far is the piece
//! every plugin connection needs, turning the address a plugin gives
//! (`localhost:9001`, `http://127.0.0.1:9001`) into a URI to dial; it lives in
//! `polku-core` so that the plugin components of `polku-ingest` and
//! `polku-emit` share it.
//!
//! ```
//! use polku_discovery::normalize_address;
//!
//! assert_eq!(normalize_address("localhost:9001").unwrap(), "http://localhost:9001");
//! ```

pub use polku_core::address::{AddressError, normalize_address};
