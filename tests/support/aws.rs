//! AWS helpers: SDK clients for the environment's moto server, each test in
//! an AWS account of its own so tests running in parallel never see each
//! other's resources.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;

use super::env::TestEnv;

/// SDK configuration pointing at moto, in a fresh account.
///
/// moto keys its state by account, and takes a 12-digit access key id as the
/// account id, so a new id gives this test an empty account: the isolation a
/// server-wide reset would give, without disturbing tests running alongside.
pub async fn sdk_config(env: &TestEnv) -> SdkConfig {
    sdk_config_for_account(env, &fresh_account_id()).await
}

/// SDK configuration pointing at moto, in the given (12-digit) account.
pub async fn sdk_config_for_account(env: &TestEnv, account: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(env.aws_endpoint())
        .credentials_provider(Credentials::new(
            account,
            "testing",
            None,
            None,
            "ferrylb-tests",
        ))
        .load()
        .await
}

/// A 12-digit account id not used before by this test binary.
pub fn fresh_account_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:07}{:05}", std::process::id() % 10_000_000, n % 100_000)
}
