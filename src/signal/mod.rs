//! WebSocket signaling: one session task per socket, speaking the contract in `protocol`.

pub mod rate_limit;
pub mod session;
