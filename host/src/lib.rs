//! gaussedge host (see issues).
