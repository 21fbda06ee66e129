"""Every canonical field a backend reads reaches its engine with the job's value (being written)."""


class FieldsReachEngine:
    """Mixin of the conformance suite: one test per readable field (being written)."""
