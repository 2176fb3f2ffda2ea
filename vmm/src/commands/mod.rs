//! One module per `vmm` subcommand.

pub mod boot;
pub mod bootstrap;
pub mod floppy;
pub mod guest;
pub mod revive;
pub mod run;
pub mod smbd;
pub mod snapshot;
