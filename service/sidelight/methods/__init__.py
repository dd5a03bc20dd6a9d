"""Attribution methods: one per module, all answering `sidelight.methods.base.Method`."""

# Captum warns on every call of a hook-based method that it sets (and removes) hooks: that is
# how those methods work, not a problem. `main()` and the test configuration ignore exactly
# these messages; nothing else is silenced.
EXPECTED_LIBRARY_WARNINGS = (
    "Setting backward hooks on ReLU activations",
    "Setting forward, backward hooks and attributes on non-linear",
)
