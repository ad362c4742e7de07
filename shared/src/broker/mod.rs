//! The broker side: connections and confirmed publishing ([`amqp`]), the one declaration
//! of the namespace's exchange and queues ([`topology`]), and the headers of retries and
//! dead letters ([`deadletter`]).

pub mod amqp;
pub mod deadletter;
pub mod topology;
