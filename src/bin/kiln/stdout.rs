//! Standard output that a closed pipe ends quietly: `kiln train … | head -1` stops with
//! exit status 0 once `head` has read its line, instead of panicking in `println!`.

use std::io::{self, ErrorKind, Write};
use std::process;

/// Writes to standard output and flushes. When the reader has gone (a closed pipe) the
/// program ends quietly with status 0; another write error ends it with status 2.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        process::exit(2);
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($t:tt)*) => {
        $crate::stdout::write(format_args!($($t)*))
    };
}

/// `println!` through [`write`].
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub(crate) use {out, outln};
