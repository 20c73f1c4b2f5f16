//! Where berth's log lines go and what they look like, chosen once at start.
//!
//! - On a terminal: human-readable lines with a timestamp and colour.
//! - Into a file or a pipe (the non-systemd install appends stderr to /var/log/berth.log):
//!   the same lines without colour escape codes, which would otherwise litter the file.
//! - Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`): no timestamp
//!   (journald adds its own) and a `<N>` syslog priority prefix per line, which journald
//!   turns into the entry's `PRIORITY`, so `journalctl -p warning -u berth` works.
//! - `--log-json`: one JSON object per line, for log shippers.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The shape of berth's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// Timestamped text with colour, for a terminal.
    Terminal,
    /// Timestamped text without colour, for a file or a pipe.
    Plain,
    /// Text with a syslog priority prefix and no timestamp, for journald.
    Journal,
    /// JSON lines.
    Json,
}

impl LogStyle {
    /// Chooses the style from the `--log-json` flag and what stderr is.
    pub fn choose(json: bool, stderr_is_terminal: bool, stderr_is_journal: bool) -> Self {
        if json {
            Self::Json
        } else if stderr_is_journal {
            Self::Journal
        } else if stderr_is_terminal {
            Self::Terminal
        } else {
            Self::Plain
        }
    }

    /// The style for this process's stderr.
    pub fn detect(json: bool) -> Self {
        Self::choose(
            json,
            std::io::stderr().is_terminal(),
            stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
        )
    }
}

/// Whether stderr is the journal stream systemd named in `JOURNAL_STREAM` (`DEVICE:INODE`).
/// Comparing the device and inode, as systemd.exec(5) advises, keeps a child whose stderr was
/// redirected elsewhere from mistaking a file for the journal.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // /proc/self/fd/2 resolves to the open file itself, socket or not.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber: level from `BERTH_LOG` (default `info`), lines to stderr.
pub fn init(style: LogStyle) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match style {
        LogStyle::Json => builder.json().init(),
        LogStyle::Terminal => builder.with_ansi(true).init(),
        LogStyle::Plain => builder.with_ansi(false).init(),
        LogStyle::Journal => builder.with_ansi(false).event_format(JournalFormat).init(),
    }
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<6>span{fields}: message key=value`: journald's priority prefix, no timestamp.
struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_in_the_journal() {
        assert_eq!(LogStyle::choose(false, true, false), LogStyle::Terminal);
        assert_eq!(LogStyle::choose(false, false, false), LogStyle::Plain);
        assert_eq!(LogStyle::choose(false, false, true), LogStyle::Journal);
        assert_eq!(LogStyle::choose(false, true, true), LogStyle::Journal);
        assert_eq!(LogStyle::choose(true, true, true), LogStyle::Json);
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_ignored() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("0:0")));
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
    }
}
