//! The three CSI clients on one connection to a daemon's CSI socket, made once the daemon
//! answers Probe as ready.

use std::time::{Duration, Instant};

use berth::csi::proto::ProbeRequest;
use berth::csi::proto::controller_client::ControllerClient;
use berth::csi::proto::identity_client::IdentityClient;
use berth::csi::proto::node_client::NodeClient;
use tonic::transport::Channel;

/// The three CSI clients on one connection.
#[derive(Clone)]
pub struct Clients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

/// Connects to `endpoint` (`unix://...`) once Probe says ready, retrying for `within`;
/// on time-out panics with `log()` (the daemon's log).
pub async fn connect_ready(endpoint: &str, within: Duration, log: impl Fn() -> String) -> Clients {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(channel) = berth::csi::connect(endpoint).await {
            let mut identity = IdentityClient::new(channel.clone());
            if let Ok(probe) = identity.probe(ProbeRequest {}).await
                && probe.into_inner().ready == Some(true)
            {
                return Clients {
                    identity,
                    controller: ControllerClient::new(channel.clone()),
                    node: NodeClient::new(channel),
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "berth did not become ready on {endpoint}; its log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
