//! Everything that touches the kernel: TAP devices and the data-path event
//! loop. The sans-IO core never imports this module.

pub mod datapath;
pub mod publish;
pub mod tap;
pub mod write_batch;
