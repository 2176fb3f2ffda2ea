//! One module per `vmm` subcommand.

pub mod floppy;
pub mod smbd;
pub mod guest;
