//! gaussedge tests (see issues).
