//! Progress for long work: a bar on a terminal, plain lines elsewhere.
//!
//! Every long step takes an `indicatif::ProgressBar`. [`progress_bar`] makes one that draws a
//! bar when stderr is a terminal; when it is not (CI, `2> file`, behind `tee`), the bar prints
//! one plain line when a stage starts (its message changes) and then at most one every
//! [`PLAIN_LINE_INTERVAL`]: what, how far, time left. indicatif alone hides the bar there, so
//! a long run would print nothing at all.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Off a terminal, the longest silence within one stage.
pub const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(20);

/// Separates the stage (the bar's message) from the counts in a plain line.
const STAGE_END: &str = " · ";

/// A progress bar on stderr: drawn on a terminal, plain lines otherwise.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if io::stderr().is_terminal() {
        let style =
            ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .map(|s| s.progress_chars("=> "));
        if let Ok(style) = style {
            bar.set_style(style);
        }
    } else {
        let template = format!("{{msg}}{STAGE_END}{{pos}}/{{len}} · {{elapsed}} · eta {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.set_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(PlainLines::new(io::stderr())),
            1,
        ));
    }
    bar
}

/// A `TermLike` that turns redraws into whole lines, throttled per stage.
struct PlainLines<W: Write + Send> {
    out: Mutex<PlainState<W>>,
}

struct PlainState<W> {
    writer: W,
    pending: String,
    stage: String,
    printed_at: Option<Instant>,
}

impl<W: Write + Send> std::fmt::Debug for PlainLines<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainLines")
    }
}

impl<W: Write + Send> PlainLines<W> {
    fn new(writer: W) -> Self {
        Self {
            out: Mutex::new(PlainState {
                writer,
                pending: String::new(),
                stage: String::new(),
                printed_at: None,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut PlainState<W>) -> io::Result<T>) -> io::Result<T> {
        let mut state = self
            .out
            .lock()
            .map_err(|_| io::Error::other("progress output poisoned"))?;
        f(&mut state)
    }
}

impl<W: Write> PlainState<W> {
    /// Prints the pending redraw if it starts a stage or the interval has passed.
    fn emit(&mut self, now: Instant) -> io::Result<()> {
        let line = std::mem::take(&mut self.pending);
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let stage = line.split(STAGE_END).next().unwrap_or(line);
        if stage.is_empty() || line.starts_with(STAGE_END.trim_start()) {
            // A bar drawn before its stage has a name says nothing yet.
            return Ok(());
        }
        let due = match self.printed_at {
            None => true,
            Some(at) => stage != self.stage || now.duration_since(at) >= PLAIN_LINE_INTERVAL,
        };
        if due {
            writeln!(self.writer, "{line}")?;
            self.writer.flush()?;
            self.stage = stage.to_owned();
            self.printed_at = Some(now);
        }
        Ok(())
    }
}

impl<W: Write + Send> TermLike for PlainLines<W> {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _n: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _n: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _n: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _n: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.with(|state| {
            state.pending.push_str(s);
            state.emit(Instant::now())
        })
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.with(|state| {
            state.pending.push_str(s);
            Ok(())
        })
    }
    fn clear_line(&self) -> io::Result<()> {
        self.with(|state| {
            state.pending.clear();
            Ok(())
        })
    }
    fn flush(&self) -> io::Result<()> {
        self.with(|state| state.emit(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(state: &PlainState<Vec<u8>>) -> Vec<String> {
        String::from_utf8_lossy(&state.writer)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn prints_each_stage_once_and_then_at_the_interval() -> io::Result<()> {
        let mut state = PlainState {
            writer: Vec::new(),
            pending: String::new(),
            stage: String::new(),
            printed_at: None,
        };
        let start = Instant::now();
        let mut redraw = |text: &str, at: Duration| {
            state.pending = format!("\r{text}   ");
            state.emit(start + at)
        };
        redraw(" · 0/10 · 0s · eta 0s", Duration::ZERO)?;
        redraw("calibration · 1/10 · 0s · eta 9s", Duration::ZERO)?;
        redraw("calibration · 2/10 · 1s · eta 8s", Duration::from_secs(1))?;
        redraw("calibration · 9/10 · 21s · eta 2s", Duration::from_secs(21))?;
        redraw("factorize · 1/210 · 22s · eta 5m", Duration::from_secs(22))?;
        redraw("", Duration::from_secs(23))?;
        assert_eq!(
            lines(&state),
            [
                "calibration · 1/10 · 0s · eta 9s",
                "calibration · 9/10 · 21s · eta 2s",
                "factorize · 1/210 · 22s · eta 5m",
            ]
        );
        Ok(())
    }
}
