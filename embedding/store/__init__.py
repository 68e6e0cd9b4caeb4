"""Where things are kept: file primitives, manifests, the output partition (layout, schemas, the commit
protocol), the lease of one writer, the user's cache, and the fault points of the commit protocol's tests."""
