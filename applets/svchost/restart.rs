//! The failure policy (Windows SERVICE_FAILURE_ACTIONS): what the host does
//! when a run of a service ends. Sans-IO: the caller passes the time and
//! performs the action (sleeps, starts again).

use std::time::{Duration, Instant};

use super::config::FailureAction;
use super::status::State;

/// A service's failures since its count was last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCount {
    failures: u32,
    last: Option<Instant>,
}

impl FailureCount {
    /// What to do after a run ended at `now`. A run that ended cleanly or
    /// was asked to stop is no failure: nothing to do, nothing counted.
    /// Otherwise the Nth failure takes the Nth action (the last one
    /// repeating for later failures), and a failure more than
    /// `reset_period` after the previous one counts as the first again.
    pub fn after_run(
        &mut self,
        failed: bool,
        stop_requested: bool,
        now: Instant,
        actions: &[FailureAction],
        reset_period: Duration,
    ) -> Option<FailureAction> {
        if stop_requested || !failed {
            return None;
        }
        if self
            .last
            .is_some_and(|t| now.duration_since(t) > reset_period)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last = Some(now);
        let nth = (self.failures as usize - 1).min(actions.len().saturating_sub(1));
        actions.get(nth).copied()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Whether a restart is still due once its delay has passed: not if the
/// service was stopped meanwhile, nor if someone started it (`sc start`).
pub fn still_due(stop_requested: bool, state: State) -> bool {
    !stop_requested && state == State::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn restart(ms: u64) -> FailureAction {
        FailureAction::Restart(Duration::from_millis(ms))
    }

    #[test]
    fn each_failure_takes_the_next_action_and_the_last_repeats() {
        let actions = [restart(100), restart(5000), FailureAction::None];
        let mut count = FailureCount::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            count.after_run(true, false, at(0), &actions, DAY),
            Some(restart(100))
        );
        assert_eq!(
            count.after_run(true, false, at(1), &actions, DAY),
            Some(restart(5000))
        );
        assert_eq!(
            count.after_run(true, false, at(2), &actions, DAY),
            Some(FailureAction::None)
        );
        assert_eq!(
            count.after_run(true, false, at(3), &actions, DAY),
            Some(FailureAction::None),
            "the last action repeats"
        );
        assert_eq!(count.failures(), 4);

        let repeating = [restart(100)];
        let mut count = FailureCount::default();
        for s in 0..5 {
            assert_eq!(
                count.after_run(true, false, at(s), &repeating, DAY),
                Some(restart(100))
            );
        }
    }

    #[test]
    fn clean_exits_and_requested_stops_are_not_failures() {
        let actions = [restart(100), FailureAction::None];
        let mut count = FailureCount::default();
        let now = Instant::now();
        assert_eq!(count.after_run(false, false, now, &actions, DAY), None);
        assert_eq!(count.after_run(true, true, now, &actions, DAY), None);
        assert_eq!(count.after_run(false, true, now, &actions, DAY), None);
        assert_eq!(count, FailureCount::default(), "nothing counted");
        assert_eq!(
            count.after_run(true, false, now, &actions, DAY),
            Some(restart(100)),
            "the first real failure is still the first"
        );
    }

    #[test]
    fn a_quiet_reset_period_starts_the_count_again() {
        let actions = [restart(100), FailureAction::None];
        let reset = Duration::from_secs(60);
        let mut count = FailureCount::default();
        let t0 = Instant::now();
        assert_eq!(
            count.after_run(true, false, t0, &actions, reset),
            Some(restart(100))
        );
        // Within the period: the second failure's action.
        assert_eq!(
            count.after_run(true, false, t0 + reset, &actions, reset),
            Some(FailureAction::None)
        );
        // Longer than the period since the last failure: first again.
        let later = t0 + reset + reset + Duration::from_millis(1);
        assert_eq!(
            count.after_run(true, false, later, &actions, reset),
            Some(restart(100))
        );
        assert_eq!(count.failures(), 1);
    }

    #[test]
    fn no_actions_means_no_restart() {
        let mut count = FailureCount::default();
        assert_eq!(count.after_run(true, false, Instant::now(), &[], DAY), None);
        assert_eq!(count.failures(), 1);
    }

    #[test]
    fn a_restart_is_dropped_when_stopped_or_started_meanwhile() {
        assert!(still_due(false, State::Stopped));
        assert!(!still_due(true, State::Stopped), "sc stop during the delay");
        for state in [State::StartPending, State::Running, State::StopPending] {
            assert!(
                !still_due(false, state),
                "sc start during the delay: {state:?}"
            );
        }
    }
}
