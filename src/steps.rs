//! The one executor loop. A plan is a list of steps, decided before
//! anything is done; every executor (backup, consolidation, sync, prune,
//! restore, adopt) runs its list through `run`, which says each step and
//! does it, or, in a dry run, says what it would do and does nothing. So a
//! dry run names exactly the steps a real run takes, in its order (as
//! just's `recipe.rs` runs a recipe's lines), and the executors hold no
//! dry-run branches of their own.

use crate::error::Result;

/// A step of a plan, as it is said.
pub trait Said {
    /// What the step does, one line or more (a copy of several files says
    /// each), each completing "would ...".
    fn lines(&self) -> Vec<String>;
}

/// Runs `steps` for `who` (a domain, or a domain and a destination): in a
/// dry run each line is said at info level as `[dry run] {who}: would
/// {line}` and nothing is done; otherwise each step is said at trace
/// level, the run stops if a signal asked it to, and `act` does it. The
/// first error stops the loop and is returned.
pub fn run<S: Said>(
    who: &str,
    steps: &[S],
    dry_run: bool,
    mut act: impl FnMut(&S) -> Result<()>,
) -> Result<()> {
    for step in steps {
        for line in step.lines() {
            if dry_run {
                log::info!("[dry run] {who}: would {line}");
            } else {
                log::trace!("step for {who}: {line}");
            }
        }
        if !dry_run {
            crate::cmd::signals::check()?;
            act(step)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Line(&'static str, usize);

    impl Said for Line {
        fn lines(&self) -> Vec<String> {
            vec![self.0.to_string(); self.1]
        }
    }

    /// A dry run does no step; a real run does each in order and stops at
    /// the first error.
    #[test]
    fn a_dry_run_does_nothing_and_a_real_run_stops_at_the_first_error() {
        let steps = [Line("a", 1), Line("b", 2), Line("c", 1)];
        let mut done = Vec::new();
        run("d", &steps, true, |s| {
            done.push(s.0);
            Ok(())
        })
        .unwrap();
        assert!(done.is_empty());
        run("d", &steps, false, |s| {
            done.push(s.0);
            Ok(())
        })
        .unwrap();
        assert_eq!(done, ["a", "b", "c"]);
        done.clear();
        let e = run("d", &steps, false, |s| {
            done.push(s.0);
            if s.0 == "b" {
                Err(crate::error::Error::Job("b failed".into()))
            } else {
                Ok(())
            }
        });
        assert!(e.is_err());
        assert_eq!(done, ["a", "b"]);
    }
}
