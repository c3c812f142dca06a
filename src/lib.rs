//! FerryLB: Kubernetes `type: LoadBalancer` Services on AWS (ELBv2 Network
//! Load Balancers) and bare metal (HAProxy).
#![forbid(unsafe_code)]

pub mod bgp_events;
pub mod cli;
pub mod controller;
pub mod drain_events;
pub mod gc;
pub mod leader;
pub mod mirror;
pub mod plan;
pub mod spec;
pub mod telemetry;
pub mod uninstall;
