//! Following the cluster directory: networks created or deleted on other
//! hosts, and every overlay network's tunnel table, DNS zone and the
//! tunnel's accepted sources, re-derived after each change.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_overlay::Vni;

use crate::api::types::SubnetRequest;
use crate::driver::NetworkDriver;
use crate::error_chain::error_chain;
use crate::model::{DriverKind, Network};
use crate::overlay_driver::{self};

use super::records::network_from_record;
use super::Controller;

impl Controller {
    /// Follow the cluster directory until the daemon stops: after every
    /// change, [`Controller::sync_cluster`]. Returns at once without a
    /// cluster.
    pub async fn follow_cluster(self: Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut changes = cluster.subscribe();
        let mut members = std::collections::BTreeMap::new();
        let mut address = cluster.underlay_ip();
        loop {
            self.sync_cluster().await;
            // This host moved (`--listen 0.0.0.0:PORT`): the tunnels it
            // accepted point at its old address.
            let now_at = cluster.underlay_ip();
            if now_at != address {
                address = now_at;
                if let Err(e) = self.datapath.underlay_moved() {
                    tracing::warn!(error = %e, "telling the data path this host moved");
                }
            }
            // Membership as events (`weft events`).
            let now: std::collections::BTreeMap<String, (String, String)> = cluster
                .members()
                .into_iter()
                .map(|m| {
                    let description = format!("{} {} {}", m.name, m.id, m.address);
                    (m.id, (description, m.state.to_owned()))
                })
                .collect();
            for event in crate::events::member_changes(&members, &now) {
                self.events.emit(event);
            }
            members = now;
            if changes.changed().await.is_err() {
                return;
            }
            // Let a burst of changes (a joiner's whole directory) settle
            // into one sync.
            tokio::time::sleep(SYNC_COALESCE).await;
        }
    }

    /// Bring this host in line with the cluster directory: make the cluster
    /// networks created elsewhere, remove those deleted elsewhere (unless
    /// they still have endpoints here), give every overlay network its
    /// tunnel table and DNS names, and the tunnel its accepted sources.
    pub async fn sync_cluster(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut inner = self.inner.lock().await;
        let records = cluster.networks();
        let mut changed = false;
        for (id, record) in &records {
            if inner.state.networks.iter().any(|n| n.id == id.0) {
                continue;
            }
            if let Some(local) = inner.network(&record.name) {
                tracing::warn!(network = record.name, local_driver = %local.driver, "cluster network not made here: a local network has its name");
                continue;
            }
            let network = network_from_record(id, record);
            let subnet = [SubnetRequest {
                subnet: record.subnet,
                gateway: record.gateway,
                ip_range: None,
            }];
            let subnets = match inner.add_subnets(&network.name, &subnet) {
                Ok(subnets) => subnets,
                Err(e) => {
                    inner.state.ipam.remove_network(&network.name);
                    tracing::warn!(network = network.name, error = %error_chain(&e), "cluster network not made here");
                    continue;
                }
            };
            let network = Network { subnets, ..network };
            if let Err(e) = inner.overlay.create_network(&network) {
                inner.state.ipam.remove_network(&network.name);
                tracing::error!(network = network.name, error = %error_chain(&e), "cluster network not made here");
                continue;
            }
            tracing::info!(
                network = network.name,
                vni = network.vni.map(Vni::get),
                "cluster network appeared"
            );
            inner.state.networks.push(network);
            changed = true;
        }
        let gone: Vec<Network> = inner
            .state
            .networks
            .iter()
            .filter(|n| {
                n.driver == DriverKind::Overlay && !records.iter().any(|(id, _)| id.0 == n.id)
            })
            .cloned()
            .collect();
        for network in gone {
            if inner
                .state
                .endpoints
                .iter()
                .any(|e| e.network == network.name)
            {
                tracing::warn!(network = network.name, "cluster network deleted elsewhere but it has endpoints here: kept until they disconnect");
                continue;
            }
            if let Err(e) = inner.overlay.delete_network(&network) {
                tracing::error!(network = network.name, error = %error_chain(&e), "removing a cluster network");
            }
            inner.state.networks.retain(|n| n.name != network.name);
            inner.state.ipam.remove_network(&network.name);
            tracing::info!(
                network = network.name,
                "cluster network removed (deleted on another host)"
            );
            changed = true;
        }
        if changed {
            if let Err(e) = inner.save() {
                tracing::error!(error = %error_chain(&e), "saving the state after a cluster change");
            }
        }
        let mut sources: Vec<IpAddr> = cluster.member_ips();
        for network in inner.state.networks.clone() {
            if network.driver != DriverKind::Overlay {
                continue;
            }
            sources.extend(overlay_driver::static_peers(&network));
            if let Err(e) = inner.overlay.refresh(&network) {
                tracing::error!(network = network.name, error = %error_chain(&e), "tunnel table not updated");
            }
            inner.publish_names(&network);
        }
        sources.sort();
        sources.dedup();
        if let Err(e) = self.datapath.set_tunnel_peers(sources) {
            tracing::error!(error = %e, "tunnel sources not updated");
        }
    }
}

/// How long the cluster sync waits after a change before it runs, so a
/// burst of changes is one sync.
pub(super) const SYNC_COALESCE: Duration = Duration::from_millis(20);
