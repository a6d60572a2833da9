//! Everything of this crate that touches the kernel: TAP devices and the
//! batched writes to them. The sans-IO core never imports this module; the
//! event loop that drives these fds is `weft-datapath`.

pub mod tap;
pub mod write_batch;
