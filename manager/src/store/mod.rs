//! The cluster's state as every manager holds it in memory: the objects of
//! the model (stacks, services, tasks, nodes, networks, volumes, the cluster
//! record) by id, plus the Raft index of the last entry applied to them.
//!
//! The store changes only through [`Store::apply`], which is fed the
//! `StoreBatch`es of committed Raft entries in log order. `apply` must be
//! deterministic: every manager applies the same entries and must end with
//! the same bytes. So this module must never do I/O, read the clock, draw
//! random numbers or iterate a hash map in a way that affects the result;
//! timestamps travel inside the objects, set by the proposer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_proto::v1::{
    store_action, ClusterInfo, Event, Meta, Network, Node, Service, Stack, StoreBatch,
    StoreSnapshot, Task, Timestamp, Volume,
};

#[cfg(test)]
mod tests;

/// Version of the stored state this binary writes and the newest it reads.
///
/// Bump it when the meaning of stored objects changes, and add the step
/// from the previous version to [`migrate`].
pub const STORE_FORMAT: u32 = 1;

/// Why a batch was refused. A refused batch changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "version conflict on {kind} {id:?}: the batch expected version {expected}, the store has {actual} (0 = absent)"
    )]
    VersionConflict {
        kind: &'static str,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("action {position} of the batch carries no object")]
    MissingObject { position: usize },
    #[error("action {position} of the batch: {kind} has an empty id")]
    EmptyId { position: usize, kind: &'static str },
    #[error("action {position} of the batch has unknown kind {value}")]
    UnknownKind { position: usize, value: i32 },
    #[error("entry {index} applied out of order: the store is already at index {applied}")]
    OutOfOrder { index: u64, applied: u64 },
    #[error("entry {index} could not be decoded as a StoreBatch: {message}")]
    Undecodable { index: u64, message: String },
}

/// Why a snapshot could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state written by a newer Flotilla (format {found}), this binary reads up to {supported}"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("snapshot holds {kind} {id:?} twice")]
    Duplicate { kind: &'static str, id: String },
    #[error("snapshot holds a {kind} with an empty id")]
    EmptyId { kind: &'static str },
}

/// An object kept in one of the store's maps.
trait Stored: Clone {
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn meta(&self) -> Option<&Meta>;
    fn meta_mut(&mut self) -> &mut Option<Meta>;
    /// (stack, service name) for events.
    fn scope(&self) -> (String, String);
}

macro_rules! stored {
    ($ty:ty, $kind:literal, |$o:ident| $scope:expr) => {
        impl Stored for $ty {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> Option<&Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut Option<Meta> {
                &mut self.meta
            }
            fn scope(&self) -> (String, String) {
                let $o = self;
                $scope
            }
        }
    };
}

stored!(Stack, "stack", |s| (s.id.clone(), String::new()));
stored!(Service, "service", |s| (
    s.stack.clone(),
    s.spec
        .as_ref()
        .map(|spec| spec.name.clone())
        .unwrap_or_default()
));
stored!(Task, "task", |t| (t.stack.clone(), t.service_name.clone()));
stored!(Node, "node", |_n| (String::new(), String::new()));
stored!(Network, "network", |n| (n.stack.clone(), String::new()));
stored!(Volume, "volume", |v| (v.stack.clone(), String::new()));
stored!(ClusterInfo, "cluster", |_c| (String::new(), String::new()));

fn version_of<T: Stored>(o: Option<&T>) -> u64 {
    o.and_then(|o| o.meta()).map_or(0, |m| m.version)
}

fn updated_at<T: Stored>(o: &T) -> Option<Timestamp> {
    o.meta().and_then(|m| m.updated_at)
}

/// The replicated state. See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    applied: u64,
    cluster: Option<ClusterInfo>,
    stacks: BTreeMap<String, Stack>,
    services: BTreeMap<String, Service>,
    tasks: BTreeMap<String, Task>,
    nodes: BTreeMap<String, Node>,
    networks: BTreeMap<String, Network>,
    volumes: BTreeMap<String, Volume>,
    // Secondary indexes, (owner id, object id); rebuilt on restore.
    tasks_by_service: BTreeSet<(String, String)>,
    tasks_by_node: BTreeSet<(String, String)>,
    services_by_stack: BTreeSet<(String, String)>,
}

/// What one validated action will do.
enum Op<'a> {
    Put(&'a store_action::Object),
    Delete(&'a store_action::Object),
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one batch as the entry at `index`.
    ///
    /// For every written object sets `meta.version = index`; keeps the
    /// object's `created_at` (taken from the stored copy when the new one
    /// has none, or from `updated_at` on creation) and `updated_at` as the
    /// proposer set them. If any action's `expected_version` (non-zero)
    /// differs from the object's current version (0 when absent), or an
    /// action is malformed, the whole batch is refused and nothing changes
    /// except that `index` counts as consumed (`applied_index() == index`),
    /// because the Raft entry was.
    ///
    /// Events: `kind` = stack|service|task|node|network|volume|cluster,
    /// `action` = create|update|remove, and `state` for a task whose
    /// observed state changed; `service` is the service's name within its
    /// stack; task events carry a copy of the task.
    pub fn apply(&mut self, index: u64, batch: &StoreBatch) -> Result<Vec<Event>, ApplyError> {
        if index <= self.applied {
            return Err(ApplyError::OutOfOrder {
                index,
                applied: self.applied,
            });
        }
        let ops = match self.validate(index, batch) {
            Ok(ops) => ops,
            Err(e) => {
                self.applied = index;
                return Err(e);
            }
        };
        self.applied = index;
        let mut events = Vec::new();
        for op in ops {
            if let Some(e) = self.execute(index, op) {
                events.push(e);
            }
        }
        Ok(events)
    }

    /// Marks `index` as applied without changing objects (Raft's empty and
    /// configuration entries).
    pub fn skip(&mut self, index: u64) -> Result<(), ApplyError> {
        if index <= self.applied {
            return Err(ApplyError::OutOfOrder {
                index,
                applied: self.applied,
            });
        }
        self.applied = index;
        Ok(())
    }

    /// Checks every action against the state as the earlier actions of the
    /// same batch leave it, so a batch may create and then update an object.
    fn validate<'a>(&self, index: u64, batch: &'a StoreBatch) -> Result<Vec<Op<'a>>, ApplyError> {
        use store_action::{Kind, Object};
        // (kind, id) -> version after the earlier actions of this batch; the
        // value is only looked up, never iterated, so a HashMap is fine.
        let mut touched: HashMap<(&'static str, &str), u64> = HashMap::new();
        let mut ops = Vec::with_capacity(batch.actions.len());
        for (position, action) in batch.actions.iter().enumerate() {
            let kind = Kind::try_from(action.kind).map_err(|_| ApplyError::UnknownKind {
                position,
                value: action.kind,
            })?;
            let object = action
                .object
                .as_ref()
                .ok_or(ApplyError::MissingObject { position })?;
            let (kind_name, id, current) = match object {
                Object::Stack(o) => (
                    Stack::KIND,
                    o.id.as_str(),
                    version_of(self.stacks.get(&o.id)),
                ),
                Object::Service(o) => (
                    Service::KIND,
                    o.id.as_str(),
                    version_of(self.services.get(&o.id)),
                ),
                Object::Task(o) => (Task::KIND, o.id.as_str(), version_of(self.tasks.get(&o.id))),
                Object::Node(o) => (Node::KIND, o.id.as_str(), version_of(self.nodes.get(&o.id))),
                Object::Network(o) => (
                    Network::KIND,
                    o.id.as_str(),
                    version_of(self.networks.get(&o.id)),
                ),
                Object::Volume(o) => (
                    Volume::KIND,
                    o.id.as_str(),
                    version_of(self.volumes.get(&o.id)),
                ),
                // The cluster record is a singleton: its id is informative.
                Object::Cluster(_) => (ClusterInfo::KIND, "", version_of(self.cluster.as_ref())),
            };
            if id.is_empty() && kind_name != ClusterInfo::KIND {
                return Err(ApplyError::EmptyId {
                    position,
                    kind: kind_name,
                });
            }
            let current = touched.get(&(kind_name, id)).copied().unwrap_or(current);
            if action.expected_version != 0 && action.expected_version != current {
                return Err(ApplyError::VersionConflict {
                    kind: kind_name,
                    id: id.to_string(),
                    expected: action.expected_version,
                    actual: current,
                });
            }
            // Later actions on the same object see it as this one leaves it.
            match kind {
                Kind::Put => {
                    touched.insert((kind_name, id), index);
                    ops.push(Op::Put(object));
                }
                Kind::Delete => {
                    touched.insert((kind_name, id), 0);
                    ops.push(Op::Delete(object));
                }
            }
        }
        Ok(ops)
    }

    fn execute(&mut self, index: u64, op: Op<'_>) -> Option<Event> {
        use store_action::Object;
        match op {
            Op::Put(object) => match object {
                Object::Stack(o) => Some(put(&mut self.stacks, index, o.clone())),
                Object::Service(o) => {
                    if let Some(old) = self.services.get(&o.id) {
                        self.services_by_stack
                            .remove(&(old.stack.clone(), old.id.clone()));
                    }
                    self.services_by_stack
                        .insert((o.stack.clone(), o.id.clone()));
                    Some(put(&mut self.services, index, o.clone()))
                }
                Object::Task(o) => {
                    let old_state = self.tasks.get(&o.id).map(|old| {
                        self.tasks_by_service
                            .remove(&(old.service_id.clone(), old.id.clone()));
                        self.tasks_by_node
                            .remove(&(old.node_id.clone(), old.id.clone()));
                        old.status.as_ref().map(|s| s.state)
                    });
                    self.tasks_by_service
                        .insert((o.service_id.clone(), o.id.clone()));
                    self.tasks_by_node.insert((o.node_id.clone(), o.id.clone()));
                    let mut ev = put(&mut self.tasks, index, o.clone());
                    if let Some(old_state) = old_state {
                        if old_state != o.status.as_ref().map(|s| s.state) {
                            ev.action = "state".to_string();
                        }
                    }
                    ev.task = self.tasks.get(&o.id).cloned();
                    Some(ev)
                }
                Object::Node(o) => Some(put(&mut self.nodes, index, o.clone())),
                Object::Network(o) => Some(put(&mut self.networks, index, o.clone())),
                Object::Volume(o) => Some(put(&mut self.volumes, index, o.clone())),
                Object::Cluster(o) => {
                    let mut c = o.clone();
                    let action = stamp(index, &mut c, self.cluster.as_ref());
                    let ev = event(index, &c, action);
                    self.cluster = Some(c);
                    Some(ev)
                }
            },
            Op::Delete(object) => match object {
                Object::Stack(o) => remove(&mut self.stacks, index, o),
                Object::Service(o) => {
                    let old = self.services.get(&o.id)?;
                    self.services_by_stack
                        .remove(&(old.stack.clone(), old.id.clone()));
                    remove(&mut self.services, index, o)
                }
                Object::Task(o) => {
                    let old = self.tasks.get(&o.id)?;
                    self.tasks_by_service
                        .remove(&(old.service_id.clone(), old.id.clone()));
                    self.tasks_by_node
                        .remove(&(old.node_id.clone(), old.id.clone()));
                    let task = old.clone();
                    let mut ev = remove(&mut self.tasks, index, o)?;
                    ev.task = Some(task);
                    Some(ev)
                }
                Object::Node(o) => remove(&mut self.nodes, index, o),
                Object::Network(o) => remove(&mut self.networks, index, o),
                Object::Volume(o) => remove(&mut self.volumes, index, o),
                Object::Cluster(o) => {
                    let old = self.cluster.take()?;
                    let mut ev = event(index, &old, "remove");
                    ev.time = updated_at(o).or(ev.time);
                    Some(ev)
                }
            },
        }
    }

    /// A point-in-time copy of every object, objects sorted by id.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            format: STORE_FORMAT,
            cluster: self.cluster.clone(),
            stacks: self.stacks.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            networks: self.networks.values().cloned().collect(),
            volumes: self.volumes.values().cloned().collect(),
        }
    }

    /// Loads a snapshot (migrating older formats). The applied index is 0:
    /// the Raft layer, which knows the snapshot's index, sets it.
    pub fn restore(snap: StoreSnapshot) -> Result<Self, StoreError> {
        let snap = migrate(snap)?;
        let mut s = Store {
            cluster: snap.cluster,
            ..Store::default()
        };
        fill(&mut s.stacks, snap.stacks)?;
        fill(&mut s.services, snap.services)?;
        fill(&mut s.tasks, snap.tasks)?;
        fill(&mut s.nodes, snap.nodes)?;
        fill(&mut s.networks, snap.networks)?;
        fill(&mut s.volumes, snap.volumes)?;
        for t in s.tasks.values() {
            s.tasks_by_service
                .insert((t.service_id.clone(), t.id.clone()));
            s.tasks_by_node.insert((t.node_id.clone(), t.id.clone()));
        }
        for svc in s.services.values() {
            s.services_by_stack
                .insert((svc.stack.clone(), svc.id.clone()));
        }
        Ok(s)
    }

    /// Like [`Store::restore`] for a snapshot taken at Raft index `index`.
    pub fn restore_at(snap: StoreSnapshot, index: u64) -> Result<Self, StoreError> {
        let mut s = Self::restore(snap)?;
        s.applied = index;
        Ok(s)
    }

    /// Raft index of the last entry applied (or refused).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    pub fn cluster(&self) -> Option<&ClusterInfo> {
        self.cluster.as_ref()
    }
    pub fn stacks(&self) -> impl Iterator<Item = &Stack> {
        self.stacks.values()
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }
    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.values()
    }
    pub fn stack(&self, id: &str) -> Option<&Stack> {
        self.stacks.get(id)
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }
    pub fn volume(&self, id: &str) -> Option<&Volume> {
        self.volumes.get(id)
    }

    /// Tasks whose `service_id` is `service_id`, by task id.
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> {
        owned_by(&self.tasks_by_service, &self.tasks, service_id)
    }
    /// Tasks whose `node_id` is `node_id` (`""`: not assigned), by task id.
    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> {
        owned_by(&self.tasks_by_node, &self.tasks, node_id)
    }
    /// Services whose `stack` is `stack`, by service id.
    pub fn services_of_stack<'a>(&'a self, stack: &str) -> impl Iterator<Item = &'a Service> {
        owned_by(&self.services_by_stack, &self.services, stack)
    }
}

fn owned_by<'a, T>(
    index: &'a BTreeSet<(String, String)>,
    objects: &'a BTreeMap<String, T>,
    owner: &str,
) -> impl Iterator<Item = &'a T> {
    let owner = owner.to_string();
    index
        .range((owner.clone(), String::new())..)
        .take_while(move |(o, _)| *o == owner)
        .filter_map(move |(_, id)| objects.get(id))
}

/// Sets the bookkeeping of an object about to be written; returns the
/// event action.
fn stamp<T: Stored>(index: u64, o: &mut T, old: Option<&T>) -> &'static str {
    let old_meta = old.and_then(|o| o.meta()).cloned();
    stamp_meta(index, o, old.is_some(), old_meta.as_ref())
}

fn stamp_meta<T: Stored>(
    index: u64,
    o: &mut T,
    existed: bool,
    old_meta: Option<&Meta>,
) -> &'static str {
    let old_created = old_meta.and_then(|m| m.created_at);
    let meta = o.meta_mut().get_or_insert_with(Meta::default);
    meta.version = index;
    if meta.created_at.is_none() {
        meta.created_at = old_created.or(meta.updated_at);
    }
    if existed {
        "update"
    } else {
        "create"
    }
}

fn event<T: Stored>(index: u64, o: &T, action: &str) -> Event {
    let (stack, service) = o.scope();
    Event {
        time: updated_at(o),
        kind: T::KIND.to_string(),
        action: action.to_string(),
        id: o.id().to_string(),
        stack,
        service,
        attributes: Default::default(),
        task: None,
        raft_index: index,
    }
}

fn put<T: Stored>(map: &mut BTreeMap<String, T>, index: u64, mut o: T) -> Event {
    let old = map.get(o.id()).and_then(|old| old.meta()).cloned();
    let existed = map.contains_key(o.id());
    let action = stamp_meta(index, &mut o, existed, old.as_ref());
    let ev = event(index, &o, action);
    map.insert(o.id().to_string(), o);
    ev
}

/// Removes `o.id`; no event when it was absent. The event's time is the
/// delete request's `updated_at` (the proposer's clock), else the object's.
fn remove<T: Stored>(map: &mut BTreeMap<String, T>, index: u64, o: &T) -> Option<Event> {
    let old = map.remove(o.id())?;
    let mut ev = event(index, &old, "remove");
    ev.time = updated_at(o).or(ev.time);
    Some(ev)
}

fn fill<T: Stored>(map: &mut BTreeMap<String, T>, objects: Vec<T>) -> Result<(), StoreError> {
    for o in objects {
        if o.id().is_empty() {
            return Err(StoreError::EmptyId { kind: T::KIND });
        }
        let id = o.id().to_string();
        if map.insert(id.clone(), o).is_some() {
            return Err(StoreError::Duplicate { kind: T::KIND, id });
        }
    }
    Ok(())
}

/// Brings a snapshot of an older format up to [`STORE_FORMAT`], one step
/// at a time; refuses formats newer than this binary knows.
pub fn migrate(mut snap: StoreSnapshot) -> Result<StoreSnapshot, StoreError> {
    check_format(snap.format)?;
    // Format 0 is a snapshot written before the field existed; its objects
    // mean the same as in format 1.
    if snap.format == 0 {
        snap.format = 1;
    }
    Ok(snap)
}

/// Refuses a stored format newer than [`STORE_FORMAT`].
pub fn check_format(found: u32) -> Result<(), StoreError> {
    if found > STORE_FORMAT {
        return Err(StoreError::TooNew {
            found,
            supported: STORE_FORMAT,
        });
    }
    Ok(())
}
