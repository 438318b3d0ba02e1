//! Kept for existing callers: the host buffer recycler became the CPU half of
//! [`memory`](crate::memory), the pool with a budget and statistics.

pub use crate::memory::set_poison;
