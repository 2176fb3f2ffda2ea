//! One module per `vmm` subcommand.
