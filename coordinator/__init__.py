"""The coordinator (registry, routing, revocation relay, Flower training runs).

Not built yet: it arrives with its own issue. The package exists so the layout of
``../shared/DESIGN.md`` is in place from the start.
"""
