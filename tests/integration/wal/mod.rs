//! The write-ahead log: damage, recovery, repair, write failures and crashes.

mod crash;
mod damage;
mod failures;
mod recovery;
