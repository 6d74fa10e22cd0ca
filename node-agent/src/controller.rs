//! A task's lifecycle on this node as one step function (swarmkit's
//! agent/exec idea): given what the manager wants (the task's desired state)
//! and what this node observes (its container, its last report), decide the
//! single next thing to do.
//!
//! Pure: no I/O, no clock. The executor performs the returned [`Step`] and
//! calls [`step`] again with what it then observes. It must never decide
//! what should run: only how to get this node's container to the desired
//! state (running, frozen for `pause`, created-not-started, stopped,
//! removed).

use flotilla_proto::v1::{Task, TaskState};

/// What the node currently sees of a task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// No container exists for the task.
    Absent,
    /// The container's process runs.
    Running,
    /// The container's processes are frozen (`pause`).
    Paused,
    /// The container exited with this code (`oom` when the kernel killed it
    /// for memory).
    Exited { code: i32, oom: bool },
}

/// The next thing to do for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until something changes.
    Wait,
    /// Resolve the image, set up the network endpoint, create and start the
    /// container.
    Start,
    /// Stop the running container (stop signal, grace period, then SIGKILL).
    Stop,
    /// Remove the stopped container and its network endpoint, then report
    /// the task removed (the manager deletes it only after that).
    Remove,
    /// Report this observed state (the container is as it should be, but the
    /// manager has not heard it yet).
    Report(TaskState, Option<i32>),
    /// Freeze the running container's processes (desired Paused).
    Pause,
    /// Thaw a paused container (desired Running again).
    Resume,
}

/// Decides the next step. `reported` is the state this agent last reported
/// for the task (`None` if never), which is how the agent avoids reporting
/// twice and never brings a terminal task back.
pub fn step(task: &Task, reported: Option<TaskState>, container: Container) -> Step {
    let desired = task.desired_state();
    let reported_terminal = reported.is_some_and(TaskState::is_terminal);
    let wants_running = matches!(desired, TaskState::Running);
    // Paused is "running, frozen": an exit is judged as if running.
    let wants_process = matches!(desired, TaskState::Running | TaskState::Paused);

    if desired == TaskState::Remove {
        return match (container, reported) {
            (_, Some(TaskState::Remove)) => Step::Wait,
            (Container::Running | Container::Paused, _) => Step::Stop,
            _ => Step::Remove,
        };
    }

    match container {
        Container::Paused => {
            return match desired {
                TaskState::Paused if reported != Some(TaskState::Paused) => {
                    Step::Report(TaskState::Paused, None)
                }
                TaskState::Paused => Step::Wait,
                TaskState::Running => Step::Resume,
                _ => Step::Stop,
            };
        }
        Container::Running if desired == TaskState::Paused => return Step::Pause,
        Container::Absent if desired == TaskState::Paused => {
            // Never started, or vanished while frozen: nothing to freeze.
            return if matches!(reported, Some(TaskState::Running | TaskState::Paused)) {
                Step::Report(TaskState::Failed, None)
            } else {
                Step::Wait
            };
        }
        Container::Absent if desired == TaskState::Created => {
            // `create`: made and placed, not started. The container itself
            // is made by the start that follows.
            return if reported.is_none_or(|r| !r.is_terminal() && r != TaskState::Created) {
                Step::Report(TaskState::Created, None)
            } else {
                Step::Wait
            };
        }
        _ => {}
    }

    match container {
        Container::Absent => {
            if wants_running && !reported_terminal {
                // A task that was running and whose container vanished (e.g.
                // removed behind our back, or lost in a reboot) failed.
                if reported == Some(TaskState::Running) {
                    return Step::Report(TaskState::Failed, None);
                }
                return Step::Start;
            }
            if !wants_running && !reported_terminal && desired.is_terminal() {
                return Step::Report(TaskState::Shutdown, None);
            }
            Step::Wait
        }
        Container::Running => {
            if !wants_running {
                return Step::Stop;
            }
            if reported != Some(TaskState::Running) {
                return Step::Report(TaskState::Running, None);
            }
            Step::Wait
        }
        Container::Paused => Step::Wait,
        Container::Exited { code, .. } => {
            if reported_terminal {
                return Step::Wait;
            }
            let state = if !wants_process {
                // Exited because it was told to stop (or while being stopped).
                TaskState::Shutdown
            } else if code == 0 {
                TaskState::Complete
            } else {
                TaskState::Failed
            };
            Step::Report(state, Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(desired: TaskState) -> Task {
        let mut t = Task {
            id: "t1".into(),
            ..Default::default()
        };
        t.set_desired_state(desired);
        t
    }

    #[test]
    fn lifecycle_table() {
        use Container::*;
        use TaskState as S;
        let cases: Vec<(S, Option<S>, Container, Step)> = vec![
            // desired running
            (S::Running, None, Absent, Step::Start),
            (S::Running, Some(S::Preparing), Absent, Step::Start),
            (S::Running, None, Running, Step::Report(S::Running, None)),
            (S::Running, Some(S::Running), Running, Step::Wait),
            (
                S::Running,
                Some(S::Running),
                Exited {
                    code: 0,
                    oom: false,
                },
                Step::Report(S::Complete, Some(0)),
            ),
            (
                S::Running,
                Some(S::Running),
                Exited {
                    code: 3,
                    oom: false,
                },
                Step::Report(S::Failed, Some(3)),
            ),
            (
                S::Running,
                Some(S::Failed),
                Exited {
                    code: 3,
                    oom: false,
                },
                Step::Wait,
            ),
            (S::Running, Some(S::Failed), Absent, Step::Wait),
            (
                S::Running,
                Some(S::Running),
                Absent,
                Step::Report(S::Failed, None),
            ),
            (S::Running, Some(S::Rejected), Absent, Step::Wait),
            // desired shutdown
            (S::Shutdown, Some(S::Running), Running, Step::Stop),
            (
                S::Shutdown,
                Some(S::Running),
                Exited {
                    code: 143,
                    oom: false,
                },
                Step::Report(S::Shutdown, Some(143)),
            ),
            (
                S::Shutdown,
                Some(S::Complete),
                Exited {
                    code: 0,
                    oom: false,
                },
                Step::Wait,
            ),
            (S::Shutdown, None, Absent, Step::Report(S::Shutdown, None)),
            (S::Shutdown, Some(S::Shutdown), Absent, Step::Wait),
            // desired remove: stop, then remove, then report removed
            (S::Remove, Some(S::Running), Running, Step::Stop),
            (
                S::Remove,
                Some(S::Shutdown),
                Exited {
                    code: 0,
                    oom: false,
                },
                Step::Remove,
            ),
            (S::Remove, Some(S::Shutdown), Absent, Step::Remove),
            (S::Remove, None, Absent, Step::Remove),
            (S::Remove, Some(S::Remove), Absent, Step::Wait),
            // created (`create`): reported, not started; `start` starts it
            (S::Created, None, Absent, Step::Report(S::Created, None)),
            (S::Created, Some(S::Created), Absent, Step::Wait),
            (S::Running, Some(S::Created), Absent, Step::Start),
            // pause / unpause
            (S::Paused, Some(S::Running), Running, Step::Pause),
            (
                S::Paused,
                Some(S::Running),
                Paused,
                Step::Report(S::Paused, None),
            ),
            (S::Paused, Some(S::Paused), Paused, Step::Wait),
            (S::Running, Some(S::Paused), Paused, Step::Resume),
            (
                S::Running,
                Some(S::Paused),
                Running,
                Step::Report(S::Running, None),
            ),
            (S::Shutdown, Some(S::Paused), Paused, Step::Stop),
            (S::Remove, Some(S::Paused), Paused, Step::Stop),
            (S::Paused, None, Absent, Step::Wait),
            (
                S::Paused,
                Some(S::Paused),
                Exited {
                    code: 137,
                    oom: false,
                },
                Step::Report(S::Failed, Some(137)),
            ),
        ];
        for (desired, reported, container, want) in cases {
            assert_eq!(
                step(&task(desired), reported, container),
                want,
                "desired {desired:?} reported {reported:?} container {container:?}"
            );
        }
    }
}
