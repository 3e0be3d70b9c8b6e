//! Layout store: allocator, file extent maps, grants, commit, recall, fencing, journal, guard.
