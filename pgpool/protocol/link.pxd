# Cython's C types for link.py (an augmenting .pxd: the .py stays plain Python and the source).
# Link becomes an extension type with C fields; prepared.py's ServerStatements subclasses it. A
# field added to a class's __slots__ must be declared here too (tests/protocol/test_build.py).

cdef class Injected:
    cdef public object done
    cdef public object error
    cdef public list rows

cdef class Link:
    cdef public object scanner
    cdef public object _queue
    cdef public bint _skipping
    cdef public bint _copy_in
    cdef public int tx_status
    cdef public bint _head_failed
    cdef public list _to_client
    cdef public bint open_extended
    cdef public Py_ssize_t injected
    cdef public list rows
    cdef public bint watch_tags
