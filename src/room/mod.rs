//! Rooms and their members: the registry that owns all room state, and the outbound queue
//! through which it reaches each client.

pub mod outbox;
pub mod registry;
