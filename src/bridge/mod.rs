//! The governed topic bridge: topics relayed from an agent DDS domain to the robot's, each
//! agent → robot message decided by the gate before it is republished.

pub(crate) mod builtin;
pub mod cdr;
pub mod config;
pub mod msgdef;
