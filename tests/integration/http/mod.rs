//! The HTTP front end and the `tool.http_get` executor.

mod api;
mod downgrade;
mod get;
mod limits;
pub(crate) mod metrics;
mod openapi;
