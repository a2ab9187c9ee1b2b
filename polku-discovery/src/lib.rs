//! POLKU plugin discovery: where plugins that register themselves are tracked.
//!
//! [`Registry`] serves `polku.v1.PluginRegistry` (Register, Heartbeat,
//! Unregister): it checks who is calling (a bearer token, or a loopback peer),
//! that the plugin's address is on an allowed host, that the plugin answers
//! and is what it says it is (it calls `Info`), and then asks the gateway,
//! through [`polku_core::PluginHost`], to add it to the running pipeline.
//! Plugins that stop sending heartbeats are removed.
//!
//! Addresses work with or without a scheme:
//!
//! ```
//! use polku_discovery::normalize_address;
//!
//! assert_eq!(normalize_address("localhost:9001").unwrap(), "http://localhost:9001");
//! ```

mod registry;

pub use polku_core::address::{AddressError, normalize_address};
pub use registry::{PluginSummary, Registry, RegistryConfig, RegistryService};
