//! Failed request-body reads as `io::Error`s whose kind says what went wrong.

use std::io;

/// A failed request-body read as an `io::Error` whose kind tells what went
/// wrong (see "Errors" on [`Body`](crate::Body)); hyper's error stays its source.
pub(super) fn body_error(err: hyper::Error) -> io::Error {
    // hyper wraps the decoder's own io::Error (a bad chunk size, a
    // connection closed mid-body): its kind is the most precise.
    let precise = io_error_kinds(&err)
        .map(|kind| match kind {
            // The chunked decoder's word for a malformed body.
            io::ErrorKind::InvalidInput => io::ErrorKind::InvalidData,
            kind => kind,
        })
        .find(|kind| *kind != io::ErrorKind::Other);
    if let Some(kind) = precise {
        return io::Error::new(kind, err);
    }
    let kind = if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        io::ErrorKind::UnexpectedEof
    } else if err.is_parse() {
        io::ErrorKind::InvalidData
    } else if err.is_timeout() {
        io::ErrorKind::TimedOut
    } else {
        // HTTP/2: the client reset the stream, or the connection failed.
        io::ErrorKind::ConnectionReset
    };
    io::Error::new(kind, err)
}

/// The kinds of the `io::Error`s in `err`'s source chain, outermost first.
pub(crate) fn io_error_kinds(err: &hyper::Error) -> impl Iterator<Item = io::ErrorKind> + '_ {
    std::iter::successors(std::error::Error::source(err), |cause| cause.source())
        .filter_map(|cause| cause.downcast_ref::<io::Error>().map(io::Error::kind))
}
