/* The syscall fast path (issue 15): Unicorn's syscall hook entered straight from C.
 *
 * A SyscallHook object is registered with uc_hook_add as a vCPU's UC_HOOK_INSN (syscall)
 * callback, and as its UC_HOOK_INTR callback (int 0x80 of an i386 instance). On a syscall
 * it reads the number's and the six arguments' registers with one uc_reg_read_batch into
 * a C array, counts the call in the vCPU's counter row (syscall_counts.py), calls ONE
 * Python callable with seven plain ints (vectorcall), adds the time taken to the vCPU's
 * CpuMeter.system, and writes the int it returns to the result register; None means
 * "nothing to write" (the call blocked or exited, and Python stopped emulation itself). Any other interrupt, and int 0x80 in a
 * 64-bit instance, goes to a second callable with the interrupt number, as before.
 *
 * libunicorn is not linked: the addresses of uc_hook_add, uc_reg_read_batch and
 * uc_reg_write come from the ctypes library the binding already loaded (see
 * syscall_fastpath.py), so this module builds with nothing but Python's headers.
 *
 * A Python exception raised by a callable is handed to the binding's Uc object as its
 * ``_hook_exception`` (the binding re-raises it from emu_start, as it does for its own
 * hooks) and emulation stops; uc_emu_stop is reached through the ``emu_stop`` callable
 * given at construction so that nothing here depends on the binding's internals beyond
 * that attribute.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define SYSCALL_HOOK_ABI 2
#define NREGS 7

typedef int (*uc_hook_add_fn)(void *uc, size_t *hh, int type, void *callback,
                              void *user_data, uint64_t begin, uint64_t end, ...);
typedef int (*uc_reg_read_batch_fn)(void *uc, int *regs, void **vals, int count);
typedef int (*uc_reg_write_fn)(void *uc, int regid, const void *value);

/* unicorn.h's values (stable across unicorn 2.x) */
#define UC_HOOK_INTR 1
#define UC_HOOK_INSN 2
#define UC_X86_INS_SYSCALL 699

typedef struct {
    PyObject_HEAD
    void *uc;                       /* the uc_engine* this hook is registered on */
    uc_reg_read_batch_fn read_batch;
    uc_reg_write_fn reg_write;
    int ids[NREGS];                 /* the number's and the arguments' registers */
    uint64_t vals[NREGS];
    void *ptrs[NREGS];
    int ret_reg;
    int int80;                      /* 1: int 0x80 is a syscall here (an i386 instance) */
    uint64_t mask;                  /* of the result (32 bits on i386) */
    PyObject *on_syscall;           /* (nr, a1..a6) -> int | None */
    PyObject *on_interrupt;         /* (intno) -> None */
    PyObject *uc_object;            /* the binding's Uc: where a hook exception goes */
    PyObject *emu_stop;             /* () -> None */
    unsigned long long calls;       /* syscalls entered through this hook */
    Py_buffer counts;               /* the vCPU's counter row (syscall_counts.py), held */
    Py_ssize_t count_base;          /* this instance's arch's first slot in the row */
    Py_ssize_t count_other;         /* the slot every number >= it shares */
    PyObject *meter;                /* CpuMeter: handler time goes to its ``system`` */
} SyscallHook;

static PyObject *str_system;        /* "system", interned */

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* meter.system += seconds (a failure is reported, never raised into the guest's call). */
static void charge_system(SyscallHook *self, double seconds)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);     /* keep a pending hook exception as it is */
    PyObject *old = PyObject_GetAttr(self->meter, str_system);
    double total = old == NULL ? -1.0 : PyFloat_AsDouble(old);
    Py_XDECREF(old);
    PyObject *new = total == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(total + seconds);
    if (new == NULL || PyObject_SetAttr(self->meter, str_system, new) < 0) {
        PyErr_WriteUnraisable(self->meter);
    }
    Py_XDECREF(new);
    PyErr_Restore(type, value, tb);
}

/* Hand the pending exception to the Uc object (first one wins) and stop emulation. */
static void hook_failed(SyscallHook *self)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (exc == NULL) {
        exc = Py_NewRef(PyExc_RuntimeError);   /* raised as a class: no message */
    }
    if (self->uc_object == NULL) {
        Py_DECREF(exc);
        return;
    }
    PyObject *prev = PyObject_GetAttrString(self->uc_object, "_hook_exception");
    if (prev == NULL) {
        PyErr_Clear();
    }
    if (prev == NULL || prev == Py_None) {
        if (PyObject_SetAttrString(self->uc_object, "_hook_exception", exc) < 0) {
            PyErr_WriteUnraisable(self->uc_object);
        }
    }
    Py_XDECREF(prev);
    Py_XDECREF(exc);
    if (self->emu_stop == NULL) {
        return;
    }
    PyObject *r = PyObject_CallNoArgs(self->emu_stop);
    if (r == NULL) {
        PyErr_WriteUnraisable(self->emu_stop);
    }
    Py_XDECREF(r);
}

static void run_syscall(SyscallHook *self)
{
    if (self->on_syscall == NULL || self->meter == NULL) {  /* cleared by the GC: dead */
        return;
    }
    self->calls++;
    double began = monotonic_seconds();
    if (self->read_batch(self->uc, self->ids, self->ptrs, NREGS) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "uc_reg_read_batch failed in the syscall hook");
        hook_failed(self);
        return;
    }
    uint64_t nr = self->vals[0];
    uint64_t *counts = (uint64_t *)self->counts.buf;
    counts[self->count_base + (nr < (uint64_t)self->count_other
                               ? (Py_ssize_t)nr : self->count_other)]++;
    PyObject *args[NREGS];
    int n = 0;
    for (; n < NREGS; n++) {
        args[n] = PyLong_FromUnsignedLongLong(self->vals[n]);
        if (args[n] == NULL) {
            break;
        }
    }
    PyObject *result = NULL;
    if (n == NREGS) {
        result = PyObject_Vectorcall(self->on_syscall, args, NREGS, NULL);
    }
    for (int i = 0; i < n; i++) {
        Py_DECREF(args[i]);
    }
    charge_system(self, monotonic_seconds() - began);
    if (result == NULL) {
        hook_failed(self);
        return;
    }
    if (result != Py_None) {
        uint64_t value = PyLong_AsUnsignedLongLongMask(result);
        if (value == (uint64_t)-1 && PyErr_Occurred()) {
            Py_DECREF(result);
            hook_failed(self);
            return;
        }
        value &= self->mask;
        if (self->reg_write(self->uc, self->ret_reg, &value) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "uc_reg_write failed in the syscall hook");
            Py_DECREF(result);
            hook_failed(self);
            return;
        }
    }
    Py_DECREF(result);
}

static void on_syscall_insn(void *uc, void *user_data)
{
    (void)uc;
    PyGILState_STATE gil = PyGILState_Ensure();
    run_syscall((SyscallHook *)user_data);
    PyGILState_Release(gil);
}

static void on_intr(void *uc, uint32_t intno, void *user_data)
{
    (void)uc;
    SyscallHook *self = (SyscallHook *)user_data;
    PyGILState_STATE gil = PyGILState_Ensure();
    if (intno == 0x80 && self->int80) {
        run_syscall(self);
    } else if (self->on_interrupt != NULL) {
        PyObject *no = PyLong_FromUnsignedLong(intno);
        PyObject *r = no == NULL ? NULL : PyObject_CallOneArg(self->on_interrupt, no);
        Py_XDECREF(no);
        if (r == NULL) {
            hook_failed(self);
        }
        Py_XDECREF(r);
    }
    PyGILState_Release(gil);
}

static int address_arg(PyObject *obj, void **out, const char *what)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v == 0) {
        PyErr_Format(PyExc_ValueError, "%s: null address", what);
        return -1;
    }
    *out = (void *)(uintptr_t)v;
    return 0;
}

static int SyscallHook_init(SyscallHook *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "hook_add", "read_batch", "reg_write", "regs", "ret_reg",
                             "int80", "mask", "on_syscall", "on_interrupt", "uc_object",
                             "emu_stop", "counts", "count_base", "count_other", "meter",
                             NULL};
    PyObject *uc, *hook_add, *read_batch, *reg_write, *regs, *on_syscall, *on_interrupt;
    PyObject *uc_object, *emu_stop, *counts, *meter;
    Py_ssize_t count_base, count_other;
    int ret_reg, int80;
    unsigned long long mask;
    if (self->uc != NULL || self->counts.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SyscallHook is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOipKOOOOOnnO", kwlist, &uc,
                                     &hook_add, &read_batch, &reg_write, &regs, &ret_reg,
                                     &int80, &mask, &on_syscall, &on_interrupt, &uc_object,
                                     &emu_stop, &counts, &count_base, &count_other, &meter)) {
        return -1;
    }
    void *ucp, *add, *rb, *rw;
    if (address_arg(uc, &ucp, "uc") < 0 || address_arg(hook_add, &add, "hook_add") < 0
        || address_arg(read_batch, &rb, "read_batch") < 0
        || address_arg(reg_write, &rw, "reg_write") < 0) {
        return -1;
    }
    if (!PyCallable_Check(on_syscall) || !PyCallable_Check(on_interrupt)
        || !PyCallable_Check(emu_stop)) {
        PyErr_SetString(PyExc_TypeError, "on_syscall, on_interrupt, emu_stop: callables");
        return -1;
    }
    if (count_base < 0 || count_other < 0) {
        PyErr_SetString(PyExc_ValueError, "count_base, count_other: not negative");
        return -1;
    }
    if (PyObject_GetBuffer(counts, &self->counts, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (self->counts.len < (count_base + count_other + 1) * (Py_ssize_t)sizeof(uint64_t)
        || ((uintptr_t)self->counts.buf % sizeof(uint64_t)) != 0) {
        PyBuffer_Release(&self->counts);
        PyErr_SetString(PyExc_ValueError, "counts: too small for count_base + count_other");
        return -1;
    }
    self->count_base = count_base;
    self->count_other = count_other;
    PyObject *seq = PySequence_Fast(regs, "regs: a sequence of 7 register ids");
    if (seq == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != NREGS) {
        Py_DECREF(seq);
        PyBuffer_Release(&self->counts);
        PyErr_SetString(PyExc_ValueError, "regs: exactly 7 register ids");
        return -1;
    }
    for (int i = 0; i < NREGS; i++) {
        long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (id == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            PyBuffer_Release(&self->counts);
            return -1;
        }
        self->ids[i] = (int)id;
        self->vals[i] = 0;          /* a 32-bit read fills only the low half */
        self->ptrs[i] = &self->vals[i];
    }
    Py_DECREF(seq);
    self->read_batch = (uc_reg_read_batch_fn)rb;
    self->reg_write = (uc_reg_write_fn)rw;
    self->ret_reg = ret_reg;
    self->int80 = int80;
    self->mask = (uint64_t)mask;
    Py_INCREF(on_syscall);
    self->on_syscall = on_syscall;
    Py_INCREF(on_interrupt);
    self->on_interrupt = on_interrupt;
    Py_INCREF(uc_object);
    self->uc_object = uc_object;
    Py_INCREF(emu_stop);
    self->emu_stop = emu_stop;
    Py_INCREF(meter);
    self->meter = meter;
    uc_hook_add_fn hook_add_fn = (uc_hook_add_fn)add;
    size_t hh = 0;
    int err = hook_add_fn(ucp, &hh, UC_HOOK_INTR, (void *)on_intr, self, (uint64_t)1,
                          (uint64_t)0);
    if (err == 0 && !int80) {
        err = hook_add_fn(ucp, &hh, UC_HOOK_INSN, (void *)on_syscall_insn, self, (uint64_t)1,
                          (uint64_t)0, (int)UC_X86_INS_SYSCALL);
    }
    if (err != 0) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed: unicorn error %d", err);
        return -1;
    }
    self->uc = ucp;
    return 0;
}

static int SyscallHook_traverse(SyscallHook *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_syscall);
    Py_VISIT(self->on_interrupt);
    Py_VISIT(self->uc_object);
    Py_VISIT(self->emu_stop);
    Py_VISIT(self->meter);
    return 0;
}

static int SyscallHook_clear(SyscallHook *self)
{
    Py_CLEAR(self->on_syscall);
    Py_CLEAR(self->on_interrupt);
    Py_CLEAR(self->uc_object);
    Py_CLEAR(self->emu_stop);
    Py_CLEAR(self->meter);
    return 0;
}

static void SyscallHook_dealloc(SyscallHook *self)
{
    PyObject_GC_UnTrack(self);
    SyscallHook_clear(self);
    if (self->counts.obj != NULL) {
        PyBuffer_Release(&self->counts);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *SyscallHook_get_calls(SyscallHook *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->calls);
}

static PyGetSetDef SyscallHook_getset[] = {
    {"calls", (getter)SyscallHook_get_calls, NULL, "syscalls entered through this hook",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SyscallHookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "node_agent.runtime._syscall_hook.SyscallHook",
    .tp_doc = "A vCPU's syscall and interrupt hooks on one Unicorn instance, in C.",
    .tp_basicsize = sizeof(SyscallHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SyscallHook_init,
    .tp_dealloc = (destructor)SyscallHook_dealloc,
    .tp_traverse = (traverseproc)SyscallHook_traverse,
    .tp_clear = (inquiry)SyscallHook_clear,
    .tp_getset = SyscallHook_getset,
};

static struct PyModuleDef syscall_hook_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "node_agent.runtime._syscall_hook",
    .m_doc = "Viridian's syscall fast path: Unicorn's syscall hook entered from C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__syscall_hook(void)
{
    str_system = PyUnicode_InternFromString("system");
    if (str_system == NULL || PyType_Ready(&SyscallHookType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&syscall_hook_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "ABI", SYSCALL_HOOK_ABI) < 0
        || PyModule_AddIntConstant(m, "HOOK_INTR", UC_HOOK_INTR) < 0
        || PyModule_AddIntConstant(m, "HOOK_INSN", UC_HOOK_INSN) < 0
        || PyModule_AddIntConstant(m, "INS_SYSCALL", UC_X86_INS_SYSCALL) < 0
        || PyModule_AddObjectRef(m, "SyscallHook", (PyObject *)&SyscallHookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
