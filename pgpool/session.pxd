# Cython's C types for session.py (an augmenting .pxd: the .py stays plain Python and the source).
# prefilter_at, and the call check it shares with prefilter, run as C loops over the statement's
# bytes, read in place (bounds-checked); the statement heads are C integers.
import cython

cdef int _SEL, _INS, _UPD, _DEL, _WIT, _VAL, _TAB, _BEG, _COM, _END, _ABO, _STA, _SHO, _FET, _MOV, _ROL

@cython.locals(pos=Py_ssize_t, head=int, paren=bint, temp=bint, previous=int, scan=Py_ssize_t, byte=int)
cpdef int prefilter_at(bytes buf, Py_ssize_t start, Py_ssize_t end, bint calls=*) except -1

@cython.locals(paren=Py_ssize_t, last=Py_ssize_t, first=Py_ssize_t)
cpdef bint _calls_are_safe(bytes text, Py_ssize_t start, Py_ssize_t end) except -1

@cython.locals(first=Py_ssize_t)
cdef bint _grammar_word(bytes text, Py_ssize_t start, Py_ssize_t before, bytes word) except -1
