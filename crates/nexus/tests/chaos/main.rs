//! The chaos suite: faults injected into real engines under load. Every engine a test breaks is a
//! private instance it starts itself (its own PostgreSQL cluster, `nats-server`, or a TCP proxy in
//! front of RabbitMQ): the machine's shared services are never stopped. Each test bounds its own
//! time.

#[path = "../it/common/mod.rs"]
#[allow(dead_code)]
mod common;

mod engines;
mod proxy;

mod disk;
mod kills;
mod nats;
mod poison;
mod postgres;
mod rabbitmq;
