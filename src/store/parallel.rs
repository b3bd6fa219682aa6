//! Independent pieces of work spread over a few threads.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `work(state, i)` for every `i` in `0..count`, on one thread per
/// element of `states` (each thread owns one: a store handle, or nothing),
/// taking indexes in order as threads come free. Returns the results by
/// index. After a result for which `stop` is true no new index is started
/// (those running finish); indexes never run, or lost to a thread that
/// panicked, are `None`.
pub fn run<S, R>(
    states: Vec<S>,
    count: usize,
    work: impl Fn(&mut S, usize) -> R + Sync,
    stop: impl Fn(&R) -> bool + Sync,
) -> Vec<Option<R>>
where
    S: Send,
    R: Send,
{
    let next = AtomicUsize::new(0);
    let done: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = states
            .into_iter()
            .map(|mut state| {
                let (next, work, stop) = (&next, &work, &stop);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let r = work(&mut state, i);
                        if stop(&r) {
                            next.store(count, Ordering::Relaxed);
                        }
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_in_order() {
        let out = run(vec![(); 3], 100, |_, i| i * 2, |_| false);
        assert_eq!(out, (0..100).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn stops_taking_work_after_a_stop() {
        let out = run(vec![(); 1], 10, |_, i| i, |r| *r == 3);
        assert_eq!(&out[..4], &[Some(0), Some(1), Some(2), Some(3)]);
        assert!(out[4..].iter().all(Option::is_none));
    }
}
