//! The services' dependency graph (`depends_on`): start order in levels,
//! reverse order for stopping, dependency closures, and cycle detection that
//! names the cycle in order.
//!
//! Works on a finished `StackSpec` only; it must never read files.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::v1::StackSpec;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("building the dependency graph: service {service:?} depends on unknown service {dependency:?}")]
    UnknownService { service: String, dependency: String },
    #[error("building the dependency graph: dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("no such service: {0:?}")]
    NoSuchService(String),
}

/// Edges point from a service to what it depends on.
#[derive(Debug, Clone)]
pub struct DependencyGraph {
    graph: DiGraph<String, ()>,
    index: BTreeMap<String, NodeIndex>,
}

impl DependencyGraph {
    /// Builds the graph; fails on unknown dependencies and on cycles.
    pub fn new(spec: &StackSpec) -> Result<Self, GraphError> {
        let g = Self::build(spec)?;
        if let Some(cycle) = g.find_cycle() {
            return Err(GraphError::Cycle(cycle));
        }
        Ok(g)
    }

    fn build(spec: &StackSpec) -> Result<Self, GraphError> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for s in &spec.services {
            index.insert(s.name.clone(), graph.add_node(s.name.clone()));
        }
        for s in &spec.services {
            let from = index[&s.name];
            for d in &s.depends_on {
                let Some(&to) = index.get(&d.service) else {
                    return Err(GraphError::UnknownService {
                        service: s.name.clone(),
                        dependency: d.service.clone(),
                    });
                };
                graph.update_edge(from, to, ());
            }
        }
        Ok(DependencyGraph { graph, index })
    }

    /// A cycle, named in dependency order and closed (`a -> b -> a`),
    /// starting from its alphabetically first service. `None` if acyclic.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        let mut best: Option<Vec<String>> = None;
        for scc in petgraph::algo::tarjan_scc(&self.graph) {
            let single_self_loop = scc.len() == 1 && self.graph.contains_edge(scc[0], scc[0]);
            if scc.len() < 2 && !single_self_loop {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let Some(&start) = scc.iter().min_by_key(|n| &self.graph[**n]) else {
                continue;
            };
            if let Some(path) = self.path_back(start, &members) {
                let names: Vec<String> = path.iter().map(|n| self.graph[*n].clone()).collect();
                if best.as_ref().is_none_or(|b| names[0] < b[0]) {
                    best = Some(names);
                }
            }
        }
        best
    }

    /// Shortest path from `start` back to itself inside one component,
    /// visiting neighbours in name order so the answer is deterministic.
    fn path_back(&self, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Option<Vec<NodeIndex>> {
        let mut prev: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        while let Some(n) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self.graph.neighbors(n).collect();
            next.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            for m in next {
                if m == start {
                    let mut path = vec![start];
                    let mut cur = n;
                    while cur != start {
                        path.push(cur);
                        cur = prev[&cur];
                    }
                    path[1..].reverse();
                    path.push(start);
                    return Some(path);
                }
                if members.contains(&m) && seen.insert(m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        None
    }

    /// Levels to start in: every service's dependencies are in earlier
    /// levels; names sorted inside a level.
    pub fn start_order(&self) -> Vec<Vec<String>> {
        let mut remaining: BTreeMap<NodeIndex, usize> = self
            .graph
            .node_indices()
            .map(|n| {
                (
                    n,
                    self.graph
                        .neighbors_directed(n, Direction::Outgoing)
                        .count(),
                )
            })
            .collect();
        let mut levels = Vec::new();
        while !remaining.is_empty() {
            let mut ready: Vec<NodeIndex> = remaining
                .iter()
                .filter(|(_, c)| **c == 0)
                .map(|(n, _)| *n)
                .collect();
            if ready.is_empty() {
                // Only reachable for a cyclic graph, which `new` refuses.
                break;
            }
            for n in &ready {
                remaining.remove(n);
                for dependent in self.graph.neighbors_directed(*n, Direction::Incoming) {
                    if let Some(c) = remaining.get_mut(&dependent) {
                        *c -= 1;
                    }
                }
            }
            ready.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            levels.push(ready.into_iter().map(|n| self.graph[n].clone()).collect());
        }
        levels
    }

    /// Levels to stop in: dependents before their dependencies.
    pub fn stop_order(&self) -> Vec<Vec<String>> {
        let mut l = self.start_order();
        l.reverse();
        l
    }

    /// Direct dependencies of `service`, sorted.
    pub fn dependencies(&self, service: &str) -> Result<Vec<String>, GraphError> {
        self.neighbours(service, Direction::Outgoing)
    }

    /// Services that depend directly on `service`, sorted.
    pub fn dependents(&self, service: &str) -> Result<Vec<String>, GraphError> {
        self.neighbours(service, Direction::Incoming)
    }

    fn neighbours(&self, service: &str, dir: Direction) -> Result<Vec<String>, GraphError> {
        let n = *self
            .index
            .get(service)
            .ok_or_else(|| GraphError::NoSuchService(service.to_string()))?;
        let mut v: Vec<String> = self
            .graph
            .neighbors_directed(n, dir)
            .map(|m| self.graph[m].clone())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// `services` plus everything they depend on, transitively, sorted.
    pub fn with_dependencies(&self, services: &[String]) -> Result<Vec<String>, GraphError> {
        let mut out = BTreeSet::new();
        let mut stack = Vec::new();
        for s in services {
            let n = *self
                .index
                .get(s)
                .ok_or_else(|| GraphError::NoSuchService(s.clone()))?;
            stack.push(n);
        }
        while let Some(n) = stack.pop() {
            if out.insert(self.graph[n].clone()) {
                stack.extend(self.graph.neighbors(n));
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Start order of a stack's services, in levels (see [`DependencyGraph`]).
pub fn start_order(spec: &StackSpec) -> Result<Vec<Vec<String>>, GraphError> {
    Ok(DependencyGraph::new(spec)?.start_order())
}

/// Stop order: the start order reversed.
pub fn stop_order(spec: &StackSpec) -> Result<Vec<Vec<String>>, GraphError> {
    Ok(DependencyGraph::new(spec)?.stop_order())
}

/// Finds a dependency cycle even when dependencies name unknown services
/// (those edges are skipped), for the loader's own checks.
pub(crate) fn cycle_ignoring_unknown(spec: &StackSpec) -> Option<Vec<String>> {
    let mut s = spec.clone();
    let names: BTreeSet<String> = s.services.iter().map(|x| x.name.clone()).collect();
    for svc in &mut s.services {
        svc.depends_on.retain(|d| names.contains(&d.service));
    }
    DependencyGraph::build(&s).ok()?.find_cycle()
}
