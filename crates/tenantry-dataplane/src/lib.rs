//! Tenantry's data plane: a reverse proxy on hyper that serves many tenants on their own
//! hosts. See `docs/request-lifecycle.md` for the phases a request goes through.
//!
//! Entry points: [`Gateway`] (shared state, reload), [`server::serve`] (listeners and
//! connections), [`upgrade`] (socket handover), [`demo`] (sample backends).

pub mod accesslog;
pub mod admission;
pub mod body;
pub mod deadline;
pub mod demo;
pub mod errors;
pub mod forward;
pub mod gateway;
pub mod h1;
pub mod h1server;
pub mod health;
pub mod lb;
pub mod linger;
pub mod llm;
pub mod metrics;
pub mod proxy;
pub mod reqid;
pub mod server;
pub mod table;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod waf;

pub use gateway::{
    ApiHandler, ApiRequest, BoxFuture, ConfigSource, Gateway, ReloadError, ReloadReport,
};
pub use server::{Listeners, StopMode, Stopper, serve, stopper};
