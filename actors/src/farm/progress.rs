//! The progress bar of a run: indicatif's on stderr when it is a terminal, with the default
//! `progress` feature; nothing without it.

/// A run's progress: tasks done out of the inputs' length, when known.
#[derive(Debug)]
pub(super) struct Progress {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar on stderr when `enabled` and stderr is a terminal (indicatif hides it otherwise),
    /// with rate and ETA; `size_hint` is the inputs'.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub(super) fn new(enabled: bool, size_hint: (usize, Option<usize>)) -> Self {
        #[cfg(feature = "progress")]
        {
            Progress { bar: bar(enabled, size_hint) }
        }
        #[cfg(not(feature = "progress"))]
        Progress {}
    }

    /// One more task done.
    pub(super) fn inc(&self) {
        #[cfg(feature = "progress")]
        self.bar.inc(1);
    }

    /// The run ended: the bar goes.
    pub(super) fn finish(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}

#[cfg(feature = "progress")]
fn bar(enabled: bool, size_hint: (usize, Option<usize>)) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size_hint.1 {
        Some(len) => indicatif::ProgressBar::new(len as u64),
        None => indicatif::ProgressBar::no_length(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}  {elapsed_precise}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}
