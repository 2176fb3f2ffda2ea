//! One module per `vmm` subcommand.

pub mod boot;
pub mod guest;
pub mod floppy;
pub mod smbd;
