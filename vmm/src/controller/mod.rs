//! The controller: what the old pipeline's Linux "controller" VM did, in
//! process. It runs commands in the guest over SSH and exports the shares.

pub mod link;
pub mod ssh;
