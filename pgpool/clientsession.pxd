# Cython's C types for clientsession.py (an augmenting .pxd: the .py stays plain Python and the
# source). ClientSession becomes an extension type: `self.x` in its methods is a struct read.
# Its fields are exactly the class's __slots__ (tests/protocol/test_build.py).

cdef class ClientSession:
    cdef public object host
    cdef public object params
    cdef public object statements
    cdef public object stats
    cdef public object pool_name
    cdef public object reported_names
    cdef public object session_mode
    cdef public object log_prefix
    cdef public object stmt_verdicts
    cdef public object portal_verdicts
    cdef public object pending_changes
    cdef public object tx_changes
    cdef public object tx_snapshot
    cdef public object rfq_seen
    cdef public object query_failed
    cdef public object last_tag
    cdef public object pinned
    cdef public object audit_due
    cdef public object auditing
    cdef public object audit_cause
    cdef public object resync_due
    cdef public object resync_reported
