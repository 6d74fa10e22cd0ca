//! The reconcile function: from stored desired state (stacks, services) and
//! observed state (tasks as agents reported them) to the task changes that
//! bring them together.
//!
//! Pure: reads a [`StoreView`], returns `StoreAction`s. It must never wait,
//! talk to a node or keep state between calls: everything it needs to
//! remember (back-off deadlines, slot addresses) is written into the store.
//!
//! Decisions, per service of a stack:
//! - Replicated and job services have slots `1..=replicas` (global services
//!   are approximated as one slot per ready node, spread by the scheduler);
//!   a slot has at most one *live* task (not terminal, on a node that is not
//!   down); its current task is the newest one not desired Shutdown.
//! - depends_on gating: a slot that never had a task gets none until every
//!   required dependency holds (started = a task Running or Complete;
//!   healthy = Running and Healthy; completed_successfully = Complete with
//!   exit 0). The task is simply not created yet (no placeholder task), so a
//!   gated service shows no task. Restarts and replacements are not gated,
//!   as in Compose.
//! - A current task that ended (or whose node is down) while desired Running
//!   is replaced per the restart policy (none: never; on-failure: exit code
//!   not 0, failed, rejected or orphaned; any/unless-stopped: always; job
//!   services never restart a task that completed with 0), at most
//!   `max_attempts` times, after a back-off (`delay_ms`, else 0 for the first
//!   restart then 100ms doubling up to 10s) recorded in `restart_not_before`.
//!   With `window_ms`, a task that ran at least that long resets the count
//!   (and the back-off): only quick successive failures use up attempts.
//! - `depends_on` with `restart: true`: when the dependency's current task
//!   is a restart or recreation (generation > 0) made after the dependent's
//!   task, the dependent's task is replaced too.
//! - A spec change (spec_hash differs) retires the current task (desired
//!   Shutdown) and creates the new one once the old one is no longer live,
//!   so the slot's IP is never used twice at once.
//! - Scale down: tasks of slots above `replicas` get desired Shutdown, are
//!   deleted once no longer live, and then the slot's addresses are released.
//! - Service desired Stopped: tasks desired Shutdown; Paused: desired Paused;
//!   Created: tasks desired Created (made, not started).
//! - Removal: a stack (or service) whose meta carries [`LABEL_REMOVING`] has
//!   its tasks desired Shutdown; tasks are deleted once terminal, never
//!   placed, or on a down node; when none is left the services, networks,
//!   the stack and (with [`LABEL_REMOVE_VOLUMES`]) its volumes are deleted.
//! - History: at most [`HISTORY_PER_SLOT`] retired tasks are kept per slot.
//! - Reverse dependency order: while a service that depends on another is
//!   itself going down (stopped or removed) and still has a live task, the
//!   dependency's tasks are not told to shut down yet.
//! - `rm`: tasks desired Remove are deleted once their node removed the
//!   container; they are never part of a slot again. A slot listed in the
//!   service's `removed_slots` (`rm` of one replica while others run) gets
//!   no new task until a deploy clears the list.
//! - One-off tasks (`run`, meta [`LABEL_ONEOFF`]) live outside the slots:
//!   made desired Created, turned Running once their dependencies hold (or
//!   at once with [`LABEL_NO_DEPS`]), never restarted; with `auto_remove`
//!   removed [`AUTO_REMOVE_AFTER_MS`] after they ended.

use super::view::StoreView;
use crate::ipam::{self, AddressBook};
use flotilla_proto::v1::{
    store_action, DependencyCondition, HealthState, Meta, NodeState, RestartCondition, Service,
    ServiceDesired, ServiceMode, ServiceSpec, Stack, StoreAction, Task, TaskState, TaskStatus,
    Timestamp,
};
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};

/// Meta label marking a stack or service as being removed.
pub const LABEL_REMOVING: &str = "flotilla.removing";
/// Meta label on a removed stack: delete its volumes too.
pub const LABEL_REMOVE_VOLUMES: &str = "flotilla.remove-volumes";
/// Meta label marking a one-off task made by `run`.
pub const LABEL_ONEOFF: &str = "flotilla.oneoff";
/// Meta label on a one-off task: start it without waiting for dependencies.
pub const LABEL_NO_DEPS: &str = "flotilla.no-deps";
/// How long a finished `run --rm` task is kept for its CLI to read its logs
/// before the orchestrator removes it on its own.
pub const AUTO_REMOVE_AFTER_MS: u64 = 30_000;
/// First slot number of one-off tasks (far above any replica count).
pub const ONEOFF_SLOT_BASE: u32 = 100_000;
/// Retired (desired Shutdown, ended) tasks kept per slot for `ps -a`.
pub const HISTORY_PER_SLOT: usize = 2;
/// Cap of the exponential restart back-off.
pub const MAX_BACKOFF_MS: u64 = 10_000;
/// First step of the exponential restart back-off.
pub const BASE_BACKOFF_MS: u64 = 100;

/// Hash of the spec fields whose change recreates tasks. Replicas, the
/// dependency list, update configs, profiles and the source position are left
/// out (changing them does not recreate containers). Map fields are hashed in
/// key order, since their encoding order is not stable.
pub fn spec_hash(spec: &ServiceSpec) -> String {
    let mut s = spec.clone();
    s.replicas = None;
    s.depends_on.clear();
    s.source = None;
    s.profiles.clear();
    s.update_config = None;
    s.rollback_config = None;
    let logging_opts = s
        .logging
        .as_mut()
        .map(|l| std::mem::take(&mut l.options))
        .unwrap_or_default();
    let maps = [
        std::mem::take(&mut s.environment),
        std::mem::take(&mut s.labels),
        std::mem::take(&mut s.sysctls),
        std::mem::take(&mut s.annotations),
        std::mem::take(&mut s.storage_opt),
        logging_opts,
    ];
    let mut h = Sha256::new();
    h.update(s.encode_to_vec());
    for (i, m) in maps.into_iter().enumerate() {
        let sorted: BTreeMap<String, String> = m.into_iter().collect();
        for (k, v) in sorted {
            h.update([i as u8]);
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    hex::encode(&h.finalize()[..16])
}

fn has_label(meta: &Option<Meta>, key: &str) -> bool {
    meta.as_ref()
        .and_then(|m| m.labels.get(key))
        .is_some_and(|v| v == "true")
}

/// True when a stack is being removed.
pub fn stack_removing(s: &Stack) -> bool {
    has_label(&s.meta, LABEL_REMOVING)
}

/// True when a service is being removed (itself or its stack).
pub fn service_removing(s: &Service) -> bool {
    has_label(&s.meta, LABEL_REMOVING)
}

fn state_of(t: &Task) -> TaskState {
    t.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

fn version_of(meta: &Option<Meta>) -> u64 {
    meta.as_ref().map(|m| m.version).unwrap_or(0)
}

/// The decisions of one pass, at most one action per object.
struct Out {
    actions: Vec<StoreAction>,
    now: Timestamp,
}

impl Out {
    fn put_task(&mut self, orig: &Task, mut t: Task) {
        let m = t.meta.get_or_insert_with(Meta::default);
        m.updated_at = Some(self.now);
        self.actions.push(StoreAction {
            kind: store_action::Kind::Put as i32,
            object: Some(store_action::Object::Task(t)),
            expected_version: version_of(&orig.meta),
        });
    }
    fn new_task(&mut self, t: Task) {
        self.actions.push(StoreAction {
            kind: store_action::Kind::Put as i32,
            object: Some(store_action::Object::Task(t)),
            expected_version: 0,
        });
    }
    fn delete(&mut self, object: store_action::Object) {
        self.actions.push(StoreAction {
            kind: store_action::Kind::Delete as i32,
            object: Some(object),
            expected_version: 0,
        });
    }
    fn put_service(&mut self, orig: &Service, s: Service) {
        self.actions.push(StoreAction {
            kind: store_action::Kind::Put as i32,
            object: Some(store_action::Object::Service(s)),
            expected_version: version_of(&orig.meta),
        });
    }
}

struct Ctx<'a, V: StoreView> {
    view: &'a V,
    now: Timestamp,
}

impl<V: StoreView> Ctx<'_, V> {
    /// The task's node is gone or down: whatever it reported last is stale.
    fn node_gone(&self, t: &Task) -> bool {
        if t.node_id.is_empty() {
            return false;
        }
        match self.view.get_node(&t.node_id) {
            None => true,
            Some(n) => n.status.as_ref().map(|s| s.state()) == Some(NodeState::Down),
        }
    }

    /// Still occupies its slot (and its IP).
    fn live(&self, t: &Task) -> bool {
        if state_of(t).is_terminal() || self.node_gone(t) {
            return false;
        }
        // Never placed and no longer wanted: nothing runs it.
        !(t.node_id.is_empty() && t.desired_state() == TaskState::Shutdown)
    }
}

/// Computes the task, service, network and stack changes that bring the
/// store's observed state towards its desired state.
pub fn reconcile(view: &impl StoreView, now: Timestamp) -> Vec<StoreAction> {
    let ctx = Ctx { view, now };
    let mut out = Out {
        actions: Vec::new(),
        now,
    };
    let mut book = AddressBook::from_view(view);

    let mut stacks = view.all_stacks();
    stacks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut known_services: HashSet<&str> = HashSet::new();
    for stack in stacks {
        let span = tracing::debug_span!("reconcile", stack = %stack.id);
        let _g = span.enter();
        let removing = stack_removing(stack);
        let mut services = view.services_in_stack(&stack.id);
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let mut tasks_left = 0usize;
        let mut services_left = 0usize;
        for svc in services {
            known_services.insert(&svc.id);
            if removing || service_removing(svc) {
                let held = going_down_dependent(&ctx, stack, svc);
                if let Some(d) = &held {
                    tracing::debug!(service = %svc.id, dependent = %d, "shutdown waits for a dependent");
                }
                let left = drain_gated(
                    &ctx,
                    &mut out,
                    view.tasks_in_service(&svc.id),
                    held.is_none(),
                );
                if left == 0 {
                    tracing::info!(service = %svc.id, "service removed");
                    out.delete(store_action::Object::Service(svc.clone()));
                } else {
                    services_left += 1;
                }
                tasks_left += left;
                continue;
            }
            services_left += 1;
            reconcile_service(&ctx, &mut out, &mut book, stack, svc);
        }
        if removing && tasks_left == 0 && services_left == 0 {
            // Tasks of the stack whose service is already gone.
            if drain(&ctx, &mut out, orphans(view, &stack.id, &known_services)) > 0 {
                continue;
            }
            for n in view.networks_in_stack(&stack.id) {
                out.delete(store_action::Object::Network(n.clone()));
            }
            if has_label(&stack.meta, LABEL_REMOVE_VOLUMES) {
                for v in view
                    .all_volumes()
                    .into_iter()
                    .filter(|v| v.stack == stack.id)
                {
                    out.delete(store_action::Object::Volume(v.clone()));
                }
            }
            tracing::info!("stack removed");
            out.delete(store_action::Object::Stack(stack.clone()));
        }
    }
    // Tasks whose service no longer exists (not part of a stack being removed).
    let stray: Vec<&Task> = view
        .all_tasks()
        .into_iter()
        .filter(|t| {
            view.get_service(&t.service_id).is_none()
                && view.get_stack(&t.stack).is_none_or(|s| !stack_removing(s))
        })
        .collect();
    drain(&ctx, &mut out, stray);
    out.actions
}

fn orphans<'a>(view: &'a impl StoreView, stack: &str, known: &HashSet<&str>) -> Vec<&'a Task> {
    view.tasks_in_stack(stack)
        .into_iter()
        .filter(|t| !known.contains(t.service_id.as_str()))
        .collect()
}

/// Shuts down `tasks`, has their nodes remove the containers of those that
/// no longer run (desired Remove), and deletes them once removed. Returns
/// how many are left.
fn drain<V: StoreView>(ctx: &Ctx<'_, V>, out: &mut Out, tasks: Vec<&Task>) -> usize {
    drain_gated(ctx, out, tasks, true)
}

/// [`drain`], where live tasks are told to shut down only when `stop_live`
/// (reverse dependency order: a dependency waits for its dependents).
fn drain_gated<V: StoreView>(
    ctx: &Ctx<'_, V>,
    out: &mut Out,
    tasks: Vec<&Task>,
    stop_live: bool,
) -> usize {
    let mut left = 0;
    for t in tasks {
        if !ctx.live(t) {
            // Deleted only once its node removed the container (or the node
            // is gone): `down` returning means the containers are gone.
            let cleaned =
                t.node_id.is_empty() || ctx.node_gone(t) || state_of(t) == TaskState::Remove;
            if cleaned {
                out.delete(store_action::Object::Task(t.clone()));
            } else {
                left += 1;
                if t.desired_state() != TaskState::Remove {
                    let mut n = t.clone();
                    n.desired_state = TaskState::Remove as i32;
                    out.put_task(t, n);
                }
            }
            continue;
        }
        left += 1;
        if stop_live && !matches!(t.desired_state(), TaskState::Shutdown | TaskState::Remove) {
            let mut n = t.clone();
            n.desired_state = TaskState::Shutdown as i32;
            out.put_task(t, n);
        }
    }
    left
}

/// A service of the stack that depends on `svc`, is itself going down
/// (stopped, or being removed) and still has a live task: `svc`'s tasks are
/// shut down only once it has none (`down`/`stop` in reverse dependency
/// order, each dependent given its whole grace period first).
fn going_down_dependent<V: StoreView>(
    ctx: &Ctx<'_, V>,
    stack: &Stack,
    svc: &Service,
) -> Option<String> {
    let name = svc.spec.as_ref().map(|s| s.name.as_str())?;
    let stack_going = stack_removing(stack);
    ctx.view
        .services_in_stack(&stack.id)
        .into_iter()
        .filter(|d| d.id != svc.id)
        .filter(|d| {
            d.spec
                .as_ref()
                .is_some_and(|sp| sp.depends_on.iter().any(|x| x.service == name))
        })
        .filter(|d| stack_going || service_removing(d) || d.desired() == ServiceDesired::Stopped)
        .find(|d| {
            ctx.view
                .tasks_in_service(&d.id)
                .into_iter()
                .any(|t| ctx.live(t))
        })
        .map(|d| d.id.clone())
}

/// True for a one-off task made by `run` (not one of the service's slots).
pub fn is_oneoff(t: &Task) -> bool {
    has_label(&t.meta, LABEL_ONEOFF)
}

/// One-off tasks (`run`): started once their dependencies hold (unless
/// `--no-deps`), never restarted, removed after they exit when `--rm` asked
/// for it (the CLI removes them itself at once; this is the fallback when
/// it went away).
fn reconcile_oneoff<V: StoreView>(
    ctx: &Ctx<'_, V>,
    out: &mut Out,
    stack: &Stack,
    spec: &ServiceSpec,
    t: &Task,
) {
    let state = state_of(t);
    if t.desired_state() == TaskState::Created && !state.is_terminal() {
        let gated = !has_label(&t.meta, LABEL_NO_DEPS)
            && spec
                .depends_on
                .iter()
                .any(|d| dependency_holds(ctx.view, &stack.id, d).is_err());
        if !gated {
            set_desired(out, t, TaskState::Running);
        }
        return;
    }
    if t.auto_remove && state.is_terminal() && t.desired_state() != TaskState::Remove {
        let ended = t
            .status
            .as_ref()
            .and_then(|s| s.finished_at.or(s.timestamp))
            .map_or(0, |e| e.unix_nanos);
        let after = i64::try_from(AUTO_REMOVE_AFTER_MS * 1_000_000).unwrap_or(i64::MAX);
        if ctx.now.unix_nanos.saturating_sub(ended) >= after {
            set_desired(out, t, TaskState::Remove);
        }
    }
}

fn slots_wanted<V: StoreView>(ctx: &Ctx<'_, V>, spec: &ServiceSpec) -> u32 {
    match spec.mode() {
        ServiceMode::Global => ctx
            .view
            .all_nodes()
            .into_iter()
            .filter(|n| {
                n.availability() == flotilla_proto::v1::NodeAvailability::Active
                    && n.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready)
            })
            .count() as u32,
        _ => spec.replicas.unwrap_or(1),
    }
}

fn reconcile_service<V: StoreView>(
    ctx: &Ctx<'_, V>,
    out: &mut Out,
    book: &mut AddressBook,
    stack: &Stack,
    svc: &Service,
) {
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let span = tracing::debug_span!("service", service = %svc.id);
    let _g = span.enter();
    let mut svc_new = svc.clone();
    let atts = ipam::service_attachments(&stack.id, stack.spec.as_ref(), spec);
    if let Err(e) = ipam::ensure_vips(book, &mut svc_new, &atts) {
        tracing::warn!(error = %e, "cannot allocate the service's VIPs");
    }

    let replicas = slots_wanted(ctx, spec);
    let mut by_slot: BTreeMap<u32, Vec<&Task>> = BTreeMap::new();
    let mut oneoff_slots: HashSet<u32> = HashSet::new();
    for t in ctx.view.tasks_in_service(&svc.id) {
        if t.desired_state() == TaskState::Remove {
            // `rm`, or a finished `run --rm`: gone once its node removed the
            // container (or never had one, or the node is gone).
            if !ctx.live(t)
                && (t.node_id.is_empty() || ctx.node_gone(t) || state_of(t) == TaskState::Remove)
            {
                out.delete(store_action::Object::Task(t.clone()));
            } else if is_oneoff(t) {
                oneoff_slots.insert(t.slot);
            }
            continue;
        }
        if is_oneoff(t) {
            oneoff_slots.insert(t.slot);
            reconcile_oneoff(ctx, out, stack, spec, t);
            continue;
        }
        by_slot.entry(t.slot).or_default().push(t);
    }
    for ts in by_slot.values_mut() {
        ts.sort_by_key(|t| {
            (
                t.generation,
                t.meta
                    .as_ref()
                    .and_then(|m| m.created_at)
                    .map(|c| c.unix_nanos),
            )
        });
    }

    // Scale down: slots above replicas (and slot 0, which replicated
    // services never use).
    let extra: Vec<u32> = by_slot
        .keys()
        .copied()
        .filter(|s| *s > replicas || *s == 0)
        .collect();
    for slot in extra {
        let tasks = by_slot.remove(&slot).unwrap_or_default();
        if drain(ctx, out, tasks) == 0 {
            ipam::release_slot(book, &mut svc_new, slot);
        }
    }
    let stale_addr_slots: Vec<u32> = svc_new
        .slot_addresses
        .iter()
        .map(|s| s.slot)
        .filter(|s| *s > replicas && !by_slot.contains_key(s) && !oneoff_slots.contains(s))
        .collect();
    for slot in stale_addr_slots {
        ipam::release_slot(book, &mut svc_new, slot);
    }

    match svc.desired() {
        ServiceDesired::Stopped => {
            let held = going_down_dependent(ctx, stack, svc);
            for ts in by_slot.values() {
                for t in ts {
                    // Reverse dependency order: wait for stopping dependents.
                    if held.is_none() || !ctx.live(t) {
                        set_desired(out, t, TaskState::Shutdown);
                    }
                }
                prune_history(ctx, out, ts, None);
            }
        }
        ServiceDesired::Paused => {
            for ts in by_slot.values() {
                for t in ts {
                    if t.desired_state() == TaskState::Running && ctx.live(t) {
                        set_desired(out, t, TaskState::Paused);
                    }
                }
            }
        }
        d @ (ServiceDesired::Running | ServiceDesired::Created) => {
            let target = if d == ServiceDesired::Running {
                TaskState::Running
            } else {
                TaskState::Created
            };
            for slot in 1..=replicas {
                let tasks = by_slot.get(&slot).cloned().unwrap_or_default();
                if tasks.is_empty() && svc.removed_slots.contains(&slot) {
                    // `rm` removed it: not made again until the next deploy.
                    continue;
                }
                reconcile_slot(
                    ctx,
                    out,
                    book,
                    stack,
                    svc,
                    &mut svc_new,
                    &atts,
                    slot,
                    &tasks,
                    target,
                );
            }
        }
    }

    if svc_new != *svc {
        out.put_service(svc, svc_new);
    }
}

fn set_desired(out: &mut Out, t: &Task, d: TaskState) {
    if t.desired_state() != d {
        let mut n = t.clone();
        n.desired_state = d as i32;
        out.put_task(t, n);
    }
}

/// Deletes retired tasks of a slot beyond the history limit (and retired
/// tasks that never ran). `current` is not touched.
fn prune_history<V: StoreView>(
    ctx: &Ctx<'_, V>,
    out: &mut Out,
    tasks: &[&Task],
    current: Option<&str>,
) {
    let mut kept = 0usize;
    for t in tasks.iter().rev() {
        if Some(t.id.as_str()) == current || t.desired_state() != TaskState::Shutdown || ctx.live(t)
        {
            continue;
        }
        if t.node_id.is_empty() || kept >= HISTORY_PER_SLOT {
            out.delete(store_action::Object::Task((*t).clone()));
        } else {
            kept += 1;
        }
    }
}

/// The restart back-off before restart number `restart_count + 1`.
pub fn restart_delay_ms(delay_ms: Option<u64>, restart_count: u32) -> u64 {
    if let Some(d) = delay_ms {
        return d;
    }
    if restart_count == 0 {
        return 0;
    }
    let shift = (restart_count - 1).min(16);
    (BASE_BACKOFF_MS << shift).min(MAX_BACKOFF_MS)
}

/// Whether an ended task of a service is restarted.
fn should_restart(spec: &ServiceSpec, t: &Task, node_gone: bool) -> bool {
    let state = state_of(t);
    let exit = t.status.as_ref().and_then(|s| s.exit_code);
    let succeeded = state == TaskState::Complete && exit.unwrap_or(0) == 0 && !node_gone;
    if spec.mode() == ServiceMode::Job && succeeded {
        return false;
    }
    let policy = spec.restart_policy.unwrap_or_default();
    let wanted = match policy.condition() {
        RestartCondition::None => false,
        RestartCondition::OnFailure => !succeeded,
        RestartCondition::Any | RestartCondition::UnlessStopped => true,
    };
    wanted
        && policy
            .max_attempts
            .is_none_or(|m| m == 0 || attempts_so_far(spec, t) < m)
}

/// The restarts that count against `max_attempts` and the back-off: with a
/// `window`, a task that ran at least that long was a successful start, so
/// the count starts again from zero (Swarm's window, Docker's reset after a
/// successful run).
pub fn attempts_so_far(spec: &ServiceSpec, t: &Task) -> u32 {
    let window_ms = spec.restart_policy.and_then(|p| p.window_ms).unwrap_or(0);
    if window_ms == 0 {
        return t.restart_count;
    }
    let ran_ms = t.status.as_ref().and_then(|s| {
        let (start, end) = (s.started_at?, s.finished_at?);
        Some(end.unix_nanos.saturating_sub(start.unix_nanos) / 1_000_000)
    });
    match ran_ms {
        Some(ms) if ms >= 0 && ms as u64 >= window_ms => 0,
        _ => t.restart_count,
    }
}

/// A dependency declared with `restart: true` whose current task was
/// restarted or recreated after `t` started: `t` must be restarted too.
fn restarted_dependency(
    view: &impl StoreView,
    stack: &str,
    spec: &ServiceSpec,
    t: &Task,
) -> Option<String> {
    let created = |x: &Task| {
        x.meta
            .as_ref()
            .and_then(|m| m.created_at)
            .map(|c| c.unix_nanos)
    };
    let mine = created(t)?;
    spec.depends_on.iter().filter(|d| d.restart).find_map(|d| {
        let dep_id = format!("{stack}_{}", d.service);
        view.tasks_in_service(&dep_id)
            .into_iter()
            .filter(|x| !matches!(x.desired_state(), TaskState::Shutdown | TaskState::Remove))
            .any(|x| x.generation > 0 && created(x).is_some_and(|c| c > mine))
            .then(|| d.service.clone())
    })
}

/// Whether a dependency of a service holds (`Ok`) or why not (`Err`).
pub fn dependency_holds(
    view: &impl StoreView,
    stack: &str,
    dep: &flotilla_proto::v1::Dependency,
) -> Result<(), String> {
    let dep_id = format!("{stack}_{}", dep.service);
    let Some(ds) = view.get_service(&dep_id) else {
        return if dep.required {
            Err(format!("dependency {} does not exist", dep.service))
        } else {
            Ok(())
        };
    };
    let tasks: Vec<&Task> = view
        .tasks_in_service(&ds.id)
        .into_iter()
        .filter(|t| !is_oneoff(t))
        .collect();
    let ok = |t: &&Task| {
        let st = t.status.as_ref();
        let state = state_of(t);
        match dep.condition() {
            DependencyCondition::Started => {
                matches!(state, TaskState::Running | TaskState::Complete)
            }
            DependencyCondition::Healthy => {
                state == TaskState::Running && st.map(|s| s.health()) == Some(HealthState::Healthy)
            }
            DependencyCondition::CompletedSuccessfully => {
                state == TaskState::Complete && st.and_then(|s| s.exit_code) == Some(0)
            }
        }
    };
    if tasks.iter().any(ok) {
        return Ok(());
    }
    if !dep.required && !tasks.is_empty() && tasks.iter().all(|t| state_of(t).is_terminal()) {
        // An optional dependency that failed does not block.
        return Ok(());
    }
    let what = match dep.condition() {
        DependencyCondition::Started => "started",
        DependencyCondition::Healthy => "healthy",
        DependencyCondition::CompletedSuccessfully => "completed successfully",
    };
    Err(format!("waiting for {} to be {what}", dep.service))
}

#[allow(clippy::too_many_arguments)]
fn reconcile_slot<V: StoreView>(
    ctx: &Ctx<'_, V>,
    out: &mut Out,
    book: &mut AddressBook,
    stack: &Stack,
    svc: &Service,
    svc_new: &mut Service,
    atts: &[ipam::ServiceAttachment],
    slot: u32,
    tasks: &[&Task],
    target: TaskState,
) {
    let spec = svc.spec.clone().unwrap_or_default();
    let current = tasks
        .iter()
        .rev()
        .find(|t| !matches!(t.desired_state(), TaskState::Shutdown | TaskState::Remove))
        .copied();
    prune_history(ctx, out, tasks, current.map(|t| t.id.as_str()));

    // What the replacement inherits (None: no replacement wanted now).
    let replace: Option<(u32, u64)>;
    match current {
        Some(c) if c.spec_hash != svc.spec_hash => {
            tracing::info!(task = %c.id, slot, "spec changed: replacing task");
            set_desired(out, c, TaskState::Shutdown);
            replace = Some((0, c.generation + 1));
        }
        Some(c) if !state_of(c).is_terminal() && !ctx.node_gone(c) => {
            match restarted_dependency(ctx.view, &stack.id, &spec, c) {
                Some(dep) => {
                    tracing::info!(task = %c.id, slot, dependency = %dep, "dependency restarted: restarting dependent");
                    set_desired(out, c, TaskState::Shutdown);
                    replace = Some((c.restart_count, c.generation + 1));
                }
                None => {
                    // A created (`create`, `up --no-start`) task starts only
                    // once its dependencies hold, like a new one.
                    let gated = c.desired_state() == TaskState::Created
                        && target == TaskState::Running
                        && spec
                            .depends_on
                            .iter()
                            .any(|d| dependency_holds(ctx.view, &stack.id, d).is_err());
                    if c.desired_state() != target && !gated {
                        set_desired(out, c, target);
                    }
                    return;
                }
            }
        }
        Some(c) => {
            let gone = ctx.node_gone(c);
            if !should_restart(&spec, c, gone) {
                if gone && !state_of(c).is_terminal() {
                    let mut n = c.clone();
                    let st = n.status.get_or_insert_with(TaskStatus::default);
                    st.set_state(TaskState::Orphaned);
                    st.message = format!("node {} is down", c.node_id);
                    st.timestamp = Some(ctx.now);
                    out.put_task(c, n);
                }
                return;
            }
            let policy = spec.restart_policy.unwrap_or_default();
            let base = c
                .status
                .as_ref()
                .and_then(|s| s.finished_at.or(s.timestamp))
                .unwrap_or(ctx.now);
            let attempts = attempts_so_far(&spec, c);
            let delay = restart_delay_ms(policy.delay_ms, attempts);
            let not_before = Timestamp {
                unix_nanos: base.unix_nanos.saturating_add(
                    i64::try_from(delay.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
                ),
            };
            if ctx.now.unix_nanos < not_before.unix_nanos {
                if c.restart_not_before != Some(not_before) {
                    let mut n = c.clone();
                    n.restart_not_before = Some(not_before);
                    out.put_task(c, n);
                }
                return;
            }
            tracing::info!(task = %c.id, slot, restart = c.restart_count + 1, "restarting slot");
            let mut n = c.clone();
            n.desired_state = TaskState::Shutdown as i32;
            if gone && !state_of(c).is_terminal() {
                let st = n.status.get_or_insert_with(TaskStatus::default);
                st.set_state(TaskState::Orphaned);
                st.message = format!("node {} is down", c.node_id);
                st.timestamp = Some(ctx.now);
            }
            out.put_task(c, n);
            replace = Some((attempts + 1, c.generation + 1));
        }
        None => {
            let generation = tasks.iter().map(|t| t.generation + 1).max().unwrap_or(0);
            replace = Some((0, generation));
        }
    }
    let Some((restart_count, generation)) = replace else {
        return;
    };
    // One live task per slot: wait until older ones have stopped.
    if tasks.iter().any(|t| ctx.live(t)) {
        return;
    }
    // Created tasks are not started, so nothing to wait for yet.
    if tasks.is_empty() && target != TaskState::Created {
        for d in spec.depends_on.iter() {
            if let Err(why) = dependency_holds(ctx.view, &stack.id, d) {
                tracing::debug!(slot, reason = %why, "slot gated by depends_on");
                return;
            }
        }
    }
    if let Err(e) = ipam::ensure_slot_addresses(book, svc_new, slot, atts) {
        tracing::warn!(slot, error = %e, "cannot allocate the slot's addresses");
        return;
    }
    let name = if !spec.container_name.is_empty() && slot == 1 {
        spec.container_name.clone()
    } else {
        format!("{}-{}-{slot}", stack.id, spec.name)
    };
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        meta: Some(Meta {
            version: 0,
            created_at: Some(ctx.now),
            updated_at: Some(ctx.now),
            labels: Default::default(),
        }),
        stack: stack.id.clone(),
        service_id: svc.id.clone(),
        service_name: spec.name.clone(),
        slot,
        node_id: String::new(),
        spec: Some(spec.clone()),
        spec_hash: svc.spec_hash.clone(),
        spec_version: svc.spec_version,
        desired_state: target as i32,
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            timestamp: Some(ctx.now),
            message: "created".to_string(),
            ..Default::default()
        }),
        networks: ipam::with_v6(ipam::slot_attachments(svc_new, slot, atts), ctx.view),
        restart_count,
        restart_not_before: None,
        pending_reason: String::new(),
        name,
        generation,
        auto_remove: false,
    };
    tracing::info!(task = %task.id, slot, generation, "task created");
    out.new_task(task);
}
