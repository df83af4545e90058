//! The pool's run queues: connection tasks, the fresh tasks that take turns
//! with them, and jobs (user code); what a worker takes next.

use super::*;

/// At most this many tasks wait in the fresh queue; the rest of what a
/// poll between tasks wakes joins the back of the main queue. In interleaved
/// pinned hello runs at 1,000 connections 32 did better than 128 (80 against
/// 69 thousand req/s, medians of 4): the fewer connections served out of
/// turn, the more of what they touch is likely still in this core's cache.
pub(super) const FRESH_CAP: usize = 32;

/// Turns the fresh queue gets for each of the main queue's. Interleaved
/// pinned hello runs at 1,000 connections: 74.6 against 68.1 thousand req/s
/// for 2 over 1 (medians of 6, 2 ahead in 5 of the 6 rounds; hyper_tokio
/// 74.5), p99 47-52 against 32-43 ms (hyper_tokio's 150).
pub(super) const FRESH_TURNS: u8 = 2;

impl State {
    /// Appends to the matching queue (a task to `fresh` if asked and there
    /// is room); returns whether it was a task.
    pub(super) fn enqueue(&mut self, runnable: Runnable, fresh: bool) -> bool {
        match runnable {
            Runnable::Task(task) => {
                if fresh && self.fresh.len() < FRESH_CAP {
                    self.fresh.push_back(task);
                } else {
                    self.tasks.push_back(task);
                }
                true
            }
            Runnable::Job(job) => {
                self.jobs.push_back(job);
                false
            }
        }
    }

    /// Takes queued work: a task or a job, whichever `prefer_jobs` says first.
    pub(super) fn pop(&mut self, prefer_jobs: bool) -> Option<Runnable> {
        if prefer_jobs {
            if let Some(job) = self.jobs.pop_front() {
                return Some(Runnable::Job(job));
            }
        }
        if let Some(task) = self.pop_task() {
            return Some(Runnable::Task(task));
        }
        self.jobs.pop_front().map(Runnable::Job)
    }

    /// Takes a task, from `fresh` and `tasks` in turn while both hold some.
    pub(super) fn pop_task(&mut self) -> Option<TaskRef> {
        let fresh_turn = self.turn < FRESH_TURNS;
        self.turn = (self.turn + 1) % (FRESH_TURNS + 1);
        let (first, second) = if fresh_turn {
            (&mut self.fresh, &mut self.tasks)
        } else {
            (&mut self.tasks, &mut self.fresh)
        };
        first.pop_front().or_else(|| second.pop_front())
    }
}
