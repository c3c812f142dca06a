//! Support shared by the integration tests: the environment of real servers
//! (kube-apiserver, etcd, moto, haproxy), clients for them, and helpers that
//! wait with deadlines and clean up after themselves.
#![allow(dead_code)] // each test binary uses a different part of it

pub mod aws;
pub mod controller;
pub mod env;
pub mod faults;
pub mod haproxy;
pub mod harness;
pub mod kube;
pub mod lab;
pub mod process;
pub mod recording;
pub mod traffic;
pub mod wait;
