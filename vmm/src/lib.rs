//! `vmm`: a KVM virtual machine monitor for reproducible builds.
//!
//! It boots guests, freezes them into snapshots and revives them to run one
//! command each, with the build's inputs and outputs on SMB shares served by
//! the process itself over an in-process switch.
//!
//! Limitations: see each module's own list.

pub mod acpi;
pub mod base;
pub mod boot;
pub mod bus;
pub mod console;
pub mod controller;
pub mod cpuid;
pub mod devices;
pub mod guest;
pub mod kvm;
pub mod layout;
pub mod machine;
pub mod net;
pub mod snapshot;
pub mod spec;
pub mod vcpu;
pub mod vm;
