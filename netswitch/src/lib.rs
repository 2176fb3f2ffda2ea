//! In-process L2 switch and a host endpoint built on smoltcp.
//!
//! Limitations: nothing is implemented yet.
#![forbid(unsafe_code)]
