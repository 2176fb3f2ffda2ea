//! One module per `vmm` subcommand.

pub mod boot;
pub mod guest;
pub mod floppy;
pub mod revive;
pub mod smbd;
pub mod snapshot;
