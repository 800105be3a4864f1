# Cython's C types for pool.py (an augmenting .pxd: the .py stays plain Python and the source).
# Pool becomes an extension type: `self.x` in its methods is a struct read, not a dict or slot
# lookup. Its fields are exactly the class's __slots__ (tests/protocol/test_build.py).

cdef class Pool:
    cdef dict __dict__
    cdef public object app
    cdef public object db
    cdef public object user
    cdef public object conf
    cdef public object server_user
    cdef public object server_password
    cdef public object scram_keys
    cdef public object name
    cdef public object stats
    cdef public object statement_registry
    cdef public object connecting
    cdef public object idle
    cdef public object active
    cdef public object maintenance
    cdef public object idle_clients
    cdef public object waiting
    cdef public object active_clients
    cdef public object server_params
    cdef public object reported_names
    cdef public object _server_params_probe
    cdef public object normalized
    cdef public object _normalizing
    cdef public object login_error
    cdef public object login_error_at
    cdef public object login_failures
    cdef public object login_failing_since
    cdef public object next_login_at
    cdef public object _login_retry_timer
    cdef public object paused
    cdef public object disabled
    cdef public object replication
    cdef public object _reserve_timer
    cdef public object hosts
