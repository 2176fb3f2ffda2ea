//! One module per `vmm` subcommand.

pub mod boot;
pub mod floppy;
pub mod guest;
pub mod revive;
pub mod smbd;
pub mod snapshot;
