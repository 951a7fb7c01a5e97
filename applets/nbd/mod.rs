//! `nbd`: a Network Block Device server with qemu-nbd's command line.
//!
//! Modules: `proto` (wire format), `negotiate` (handshake), `transmission`
//! (request loop), `server` (listeners, limits, shutdown), `export` (what
//! one export offers, and the server's list of them), `export_spec`
//! (`--export NAME=FILE,...`), `backend` (raw file and offset window,
//! qcow2, snapshot overlay), `partition` (MBR/GPT), `client` and `kernel`
//! (the client side: `-L`, `--connect`).

pub mod backend;
pub mod client;
pub mod export;
pub mod export_spec;
pub mod kernel;
pub mod negotiate;
pub mod objects;
pub mod options;
pub mod partition;
pub mod proto;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transmission;
pub mod x509_name;

pub use options::parse;
