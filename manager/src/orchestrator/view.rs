//! A read-only view of the cluster state, the input of every pure decision
//! function (reconcile, schedule, IPAM, assignment sets).
//!
//! The decision functions take a `&impl StoreView` instead of the store type
//! itself so they can be unit-tested from a plain [`StoreSnapshot`] table and
//! run unchanged over the live [`crate::store::Store`]. A view must never be
//! written through: decisions come back as `StoreAction`s.

use crate::store::Store;
use flotilla_proto::v1::{ClusterInfo, Network, Node, Service, Stack, StoreSnapshot, Task, Volume};

/// Read access to the objects of the store.
pub trait StoreView {
    fn get_stack(&self, id: &str) -> Option<&Stack>;
    fn get_service(&self, id: &str) -> Option<&Service>;
    fn get_task(&self, id: &str) -> Option<&Task>;
    fn get_node(&self, id: &str) -> Option<&Node>;
    fn get_network(&self, id: &str) -> Option<&Network>;
    fn all_stacks(&self) -> Vec<&Stack>;
    fn all_services(&self) -> Vec<&Service>;
    fn all_tasks(&self) -> Vec<&Task>;
    fn all_nodes(&self) -> Vec<&Node>;
    fn all_networks(&self) -> Vec<&Network>;
    fn all_volumes(&self) -> Vec<&Volume>;
    fn cluster_info(&self) -> Option<&ClusterInfo>;
    /// Raft index of the last applied entry (0 for a table).
    fn last_applied(&self) -> u64;

    fn services_in_stack(&self, stack: &str) -> Vec<&Service> {
        self.all_services()
            .into_iter()
            .filter(|s| s.stack == stack)
            .collect()
    }
    fn tasks_in_service(&self, service_id: &str) -> Vec<&Task> {
        self.all_tasks()
            .into_iter()
            .filter(|t| t.service_id == service_id)
            .collect()
    }
    fn tasks_in_stack(&self, stack: &str) -> Vec<&Task> {
        self.all_tasks()
            .into_iter()
            .filter(|t| t.stack == stack)
            .collect()
    }
    fn tasks_on(&self, node_id: &str) -> Vec<&Task> {
        self.all_tasks()
            .into_iter()
            .filter(|t| t.node_id == node_id)
            .collect()
    }
    fn networks_in_stack(&self, stack: &str) -> Vec<&Network> {
        self.all_networks()
            .into_iter()
            .filter(|n| n.stack == stack)
            .collect()
    }
}

impl StoreView for StoreSnapshot {
    fn get_stack(&self, id: &str) -> Option<&Stack> {
        self.stacks.iter().find(|o| o.id == id)
    }
    fn get_service(&self, id: &str) -> Option<&Service> {
        self.services.iter().find(|o| o.id == id)
    }
    fn get_task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|o| o.id == id)
    }
    fn get_node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|o| o.id == id)
    }
    fn get_network(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|o| o.id == id)
    }
    fn all_stacks(&self) -> Vec<&Stack> {
        self.stacks.iter().collect()
    }
    fn all_services(&self) -> Vec<&Service> {
        self.services.iter().collect()
    }
    fn all_tasks(&self) -> Vec<&Task> {
        self.tasks.iter().collect()
    }
    fn all_nodes(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }
    fn all_networks(&self) -> Vec<&Network> {
        self.networks.iter().collect()
    }
    fn all_volumes(&self) -> Vec<&Volume> {
        self.volumes.iter().collect()
    }
    fn cluster_info(&self) -> Option<&ClusterInfo> {
        self.cluster.as_ref()
    }
    fn last_applied(&self) -> u64 {
        0
    }
}

impl StoreView for Store {
    fn get_stack(&self, id: &str) -> Option<&Stack> {
        self.stack(id)
    }
    fn get_service(&self, id: &str) -> Option<&Service> {
        self.service(id)
    }
    fn get_task(&self, id: &str) -> Option<&Task> {
        self.task(id)
    }
    fn get_node(&self, id: &str) -> Option<&Node> {
        self.node(id)
    }
    fn get_network(&self, id: &str) -> Option<&Network> {
        self.network(id)
    }
    fn all_stacks(&self) -> Vec<&Stack> {
        self.stacks().collect()
    }
    fn all_services(&self) -> Vec<&Service> {
        self.services().collect()
    }
    fn all_tasks(&self) -> Vec<&Task> {
        self.tasks().collect()
    }
    fn all_nodes(&self) -> Vec<&Node> {
        self.nodes().collect()
    }
    fn all_networks(&self) -> Vec<&Network> {
        self.networks().collect()
    }
    fn all_volumes(&self) -> Vec<&Volume> {
        self.volumes().collect()
    }
    fn cluster_info(&self) -> Option<&ClusterInfo> {
        self.cluster()
    }
    fn last_applied(&self) -> u64 {
        self.applied_index()
    }
    fn services_in_stack(&self, stack: &str) -> Vec<&Service> {
        self.services_of_stack(stack).collect()
    }
    fn tasks_in_service(&self, service_id: &str) -> Vec<&Task> {
        self.tasks_of_service(service_id).collect()
    }
    fn tasks_on(&self, node_id: &str) -> Vec<&Task> {
        self.tasks_on_node(node_id).collect()
    }
}
