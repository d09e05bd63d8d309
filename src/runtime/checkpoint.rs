//! Being written (see the runtime module docs).
