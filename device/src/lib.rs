//! gaussedge device (see issues).
