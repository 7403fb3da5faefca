/* The session page: the shared-memory clock of one Revati session.
 *
 * One file per session (created by revatid), mapped by revatid and by every participant:
 *
 *   page 0   clock      written by revatid only (participants map it read-only):
 *                       V = base_virt + rate * (E - base_eff), read under a sequence lock,
 *                       where E is the "effective" monotonic time: real monotonic time minus
 *                       every interval during which some participant was frozen.
 *   page 1   freeze     the union freeze: a count of participants inside Revati's own code
 *                       (plus one while no participant thread runs: the idle freeze), the
 *                       start of the current frozen interval and the frozen total (written by
 *                       participants under a robust process-shared mutex, read under a
 *                       sequence lock).
 *   page 2+  slots      one 64-byte slot per participant: pid, threads running, activity
 *                       counter and earliest virtual deadline, so that the timekeeper learns
 *                       a participant's state without a round trip; and the real time its
 *                       process has spent inside Revati (holding a freeze), for the summary.
 *
 * Wake-ups: revatid bumps the `wake` word after each clock change and FUTEX_WAKEs it; a waiter
 * sleeps on it with a real-time timeout equal to its remaining virtual time / rate.
 *
 * Hot paths (now, freeze enter/exit) are a handful of loads and one clock_gettime.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x34304b4c43545652ULL /* "RVTCLK04": layout 4 times each slot's freezes */
#define PAGE 4096
#define SLOT_SIZE 64
#define MAX_SLOTS 256
#define FILE_SIZE (2 * PAGE + MAX_SLOTS * SLOT_SIZE)
#define NO_DEADLINE INT64_MAX

typedef struct {
    uint64_t magic;
    uint64_t seq;
    int64_t base_virt;
    int64_t base_eff;
    double rate;
    uint32_t wake;
    uint32_t _pad;
    int64_t origin_mono;  /* real monotonic ns at session creation: V=0 there */
    int64_t origin_wall;  /* real wall-clock ns at session creation */
} clock_hdr;

typedef struct {
    pthread_mutex_t lock; /* robust and process-shared: see page_lock */
    uint32_t count;
    uint64_t seq;
    int64_t start;
    int64_t total;
    int64_t sections;
    uint32_t quiesce;  /* futex word bumped when a participant's last running thread waits */
    int32_t running;   /* threads running in all participants; 0: the idle freeze is on */
    int32_t active;    /* participants with a running thread: processes that want a CPU */
    int32_t ncpu;      /* host CPUs the session's processes share; 0: no contention model */
    double frac;       /* share of real time not flowing now: 1 frozen, 1 - ncpu/active
                          while more processes run than there are CPUs, else 0 */
    int64_t contended; /* real ns kept out because processes waited for a CPU */
    int64_t credited;  /* real ns kept out as the ops' way into Revati (freeze_enter_op) */
    int32_t unslotted; /* freezes held by processes without a slot (revatid, joiners) */
} freeze_hdr;

typedef struct {
    uint32_t pid;
    int32_t running;     /* threads of the process not inside a hooked wait */
    uint64_t activity;   /* bumped at every state change */
    int64_t deadline;    /* earliest virtual deadline of a hooked waiter, NO_DEADLINE if none */
    int64_t waits;       /* hooked waits entered (statistics) */
    int32_t freezes;     /* freezes this participant holds now (released if it dies) */
    uint32_t wake;       /* futex word: bumped after each clock change and by local pokes */
    int64_t held_since;  /* real ns when its freezes went from none to some */
    int64_t held_ns;     /* real ns it has held a freeze in all: its time inside Revati */
    uint8_t _rest[SLOT_SIZE - 56];
} slot_t;
_Static_assert(sizeof(slot_t) == SLOT_SIZE, "a slot is SLOT_SIZE bytes");

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

typedef struct {
    PyObject_HEAD
    char *base;       /* whole mapping */
    clock_hdr *clk;
    freeze_hdr *frz;
    slot_t *slots;
    int writer;
    int my_slot;      /* this participant's slot, -1 until claimed */
    int64_t last;     /* the largest V this process has returned (monotonic clamp) */
    int64_t op_credit; /* ns: the cost of an op's way into Revati (set_op_credit) */
} PageObject;

/* The freeze header's lock. Participants take it around every hook, so one may be killed while
 * holding it (SIGKILL, or SIGTERM's default action, land at any instruction). A spin lock
 * would then wedge every process of the session and revatid's own loop. A robust mutex
 * passes to the next locker instead (EOWNERDEAD), which closes the sequence the dead holder
 * left open and rebuilds the counts it may have half-written (repair). */
static void repair(freeze_hdr *f);

static void page_lock(freeze_hdr *f) {
    if (pthread_mutex_lock(&f->lock) == EOWNERDEAD) {
        repair(f);
        pthread_mutex_consistent(&f->lock);
    }
}

static inline void page_unlock(freeze_hdr *f) { pthread_mutex_unlock(&f->lock); }

static int page_lock_init(freeze_hdr *f) {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (!rc) rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = pthread_mutex_init(&f->lock, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

/* Effective monotonic time: real time minus what does not flow. Frozen, it stands still; while
 * more participant processes run than the host has CPUs, it flows at ncpu/active of real time:
 * on the emulated server each process has a core of its own, so a process that waits here for
 * a CPU would be running there. */
static inline int64_t effective(freeze_hdr *f, int64_t m) {
    for (unsigned spins = 0;; spins++) {
        uint64_t s1 = LOAD(&f->seq);
        if (s1 & 1) {
            /* A writer is inside (for ~50 ns), was preempted there, or died there: after a
             * while, wait for the lock, which also repairs a dead writer's open sequence. */
            if (spins > (1u << 16)) {
                page_lock(f);
                page_unlock(f);
                spins = 0;
            }
            continue;
        }
        double frac = f->frac;
        int64_t start = f->start, total = f->total;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LOAD(&f->seq) != s1) continue;
        return m - total - (int64_t)(frac * (double)(m - start));
    }
}

static inline int64_t virt_at(PageObject *p, int64_t m, double *rate_out) {
    clock_hdr *c = p->clk;
    for (;;) {
        uint64_t s1 = LOAD(&c->seq);
        if (s1 & 1) continue;
        int64_t bv = c->base_virt, be = c->base_eff;
        double rate = c->rate;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LOAD(&c->seq) != s1) continue;
        int64_t e = effective(p->frz, m);
        int64_t v = bv + (int64_t)(rate * (double)(e - be));
        if (v < bv) v = bv;
        if (rate_out) *rate_out = rate;
        return v;
    }
}

static inline int64_t virt_now(PageObject *p) {
    int64_t v = virt_at(p, mono_ns(), NULL);
    int64_t last = __atomic_load_n(&p->last, __ATOMIC_RELAXED);
    while (v > last) {
        if (__atomic_compare_exchange_n(&p->last, &last, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return v;
    }
    return v > last ? v : last;
}

static int futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
    return (int)syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

/* ------------------------------------------------------------------ object lifecycle */

static int Page_init(PageObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "writer", "create", "rate", "cpus", NULL};
    const char *path;
    int writer = 0, create = 0;
    double rate = 1.0;
    int cpus = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|ppdi", kwlist, &path, &writer, &create, &rate,
                                     &cpus))
        return -1;
    int fd = open(path, (writer || create) ? (O_RDWR | (create ? O_CREAT | O_EXCL : 0)) : O_RDWR,
                  0600);
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        return -1;
    }
    if (create && ftruncate(fd, FILE_SIZE) != 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        close(fd);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < FILE_SIZE) {
        close(fd);
        PyErr_Format(PyExc_ValueError, "%s is not a Revati session page", path);
        return -1;
    }
    /* One reservation, then the clock page re-mapped read-only for participants. */
    char *base = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base != MAP_FAILED && !writer && !create) {
        if (mmap(base, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
            munmap(base, FILE_SIZE);
            base = MAP_FAILED;
        }
    }
    close(fd);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        return -1;
    }
    self->base = base;
    self->clk = (clock_hdr *)base;
    self->frz = (freeze_hdr *)(base + PAGE);
    self->slots = (slot_t *)(base + 2 * PAGE);
    self->writer = writer || create;
    if (create) {
        int64_t m = mono_ns();
        self->clk->base_virt = 0;
        self->clk->base_eff = m;
        self->clk->rate = rate;
        self->clk->origin_mono = m;
        self->clk->origin_wall = wall_ns();
        for (int i = 0; i < MAX_SLOTS; i++) self->slots[i].deadline = NO_DEADLINE;
        self->frz->count = 1; /* the idle freeze: nobody runs yet */
        self->frz->frac = 1.0;
        self->frz->ncpu = cpus > 0 ? cpus : 0;
        self->frz->start = m;
        int rc = page_lock_init(self->frz);
        if (rc) {
            munmap(base, FILE_SIZE);
            self->base = NULL;
            errno = rc;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
            return -1;
        }
        STORE(&self->clk->magic, MAGIC);
    } else if (LOAD(&self->clk->magic) != MAGIC) {
        munmap(base, FILE_SIZE);
        self->base = NULL;
        PyErr_Format(PyExc_ValueError, "%s is not a Revati session page", path);
        return -1;
    }
    self->last = INT64_MIN;
    self->op_credit = 0;
    self->my_slot = -1;
    return 0;
}

static void Page_dealloc(PageObject *self) {
    if (self->base) munmap(self->base, FILE_SIZE);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------------ readers (hot) */

static PyObject *Page_now(PageObject *self, PyObject *unused) {
    return PyLong_FromLongLong(virt_now(self));
}

/* Virtual monotonic and wall clocks, ns: the session origin plus virtual elapsed. */
static PyObject *Page_monotonic_ns(PageObject *self, PyObject *unused) {
    return PyLong_FromLongLong(self->clk->origin_mono + virt_now(self));
}

static PyObject *Page_monotonic(PageObject *self, PyObject *unused) {
    return PyFloat_FromDouble((double)(self->clk->origin_mono + virt_now(self)) * 1e-9);
}

static PyObject *Page_time_ns(PageObject *self, PyObject *unused) {
    return PyLong_FromLongLong(self->clk->origin_wall + virt_now(self));
}

static PyObject *Page_time(PageObject *self, PyObject *unused) {
    return PyFloat_FromDouble((double)(self->clk->origin_wall + virt_now(self)) * 1e-9);
}

/* A process that joins late (attach) must not read a smaller monotonic time than it read
 * before: its reads stay at `mono_ns` until the session clock passes it. */
static PyObject *Page_floor_monotonic(PageObject *self, PyObject *args) {
    long long mono;
    if (!PyArg_ParseTuple(args, "L", &mono)) return NULL;
    int64_t floor = mono - self->clk->origin_mono;
    if (floor > self->last) self->last = floor;
    Py_RETURN_NONE;
}

static PyObject *Page_origins(PageObject *self, PyObject *unused) {
    return Py_BuildValue("LL", (long long)self->clk->origin_mono, (long long)self->clk->origin_wall);
}

/* ------------------------------------------------------------------ freeze (participants) */

/* The segments of real time: each change of the freeze count or of the active participants
 * closes the current segment at its fraction and opens one at the new fraction. The caller
 * holds f->lock and has made the seq odd. */
static inline void close_segment(freeze_hdr *f, int64_t now) {
    int64_t lost = (int64_t)(f->frac * (double)(now - f->start));
    f->total += lost;
    if (f->count == 0) f->contended += lost;
    f->start = now;
}

static inline void set_frac(freeze_hdr *f) {
    if (f->count) f->frac = 1.0;
    else if (f->ncpu > 0 && f->active > f->ncpu) f->frac = 1.0 - (double)f->ncpu / f->active;
    else f->frac = 0.0;
}

/* The lock's holder died inside a locked section: rebuild the session-wide counts from the
 * slots, which hold each participant's share of them (revatid then releases the dead one's
 * share as for any participant that dies), and close the sequence the holder left open. The
 * counts hold: running and active are sums over the slots, and count is every freeze held
 * (the slots', the unslotted ones) plus the idle freeze. At worst the segment of real time
 * the holder was closing is counted twice. */
static void repair(freeze_hdr *f) {
    slot_t *slots = (slot_t *)((char *)f + PAGE);
    if (!(LOAD(&f->seq) & 1)) __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
    close_segment(f, mono_ns());
    int64_t running = 0, active = 0, freezes = f->unslotted;
    for (int i = 0; i < MAX_SLOTS; i++) {
        running += slots[i].running;
        active += slots[i].running > 0;
        freezes += slots[i].freezes;
    }
    f->running = (int32_t)running;
    f->active = (int32_t)active;
    f->count = (uint32_t)((freezes > 0 ? freezes : 0) + (running <= 0));
    set_frac(f);
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
}

/* Add (+1) or drop (-1) one freeze; the caller holds f->lock. */
static inline void freeze_step(freeze_hdr *f, int delta) {
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
    close_segment(f, mono_ns());
    if (delta > 0) {
        f->count++;
    } else if (f->count > 0 && --f->count == 0) {
        f->sections++;
    }
    set_frac(f);
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
}

/* A participant's running threads go from `before` to `after` (under f->lock): it starts or
 * stops wanting a CPU. */
static inline void active_step(freeze_hdr *f, int32_t before, int32_t after) {
    int delta = (before <= 0 && after > 0) - (before > 0 && after <= 0);
    if (!delta) return;
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
    close_segment(f, mono_ns());
    f->active += delta;
    set_frac(f);
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
}

/* Threads running across the session change by `delta` (under f->lock). While none runs,
 * the idle freeze holds the clock: no program code runs, only wake-ups are on their way
 * (the scheduling latency of a host with fewer cores than the emulated one) or everybody
 * waits for a deadline, which the timekeeper reaches by a jump. */
static inline void running_step(freeze_hdr *f, int delta) {
    int32_t before = f->running;
    f->running += delta;
    if (before <= 0 && f->running > 0) freeze_step(f, -1);
    else if (before > 0 && f->running <= 0) freeze_step(f, 1);
}

/* Wake revatid's watcher thread. */
static void poke_quiesce(freeze_hdr *f) {
    __atomic_add_fetch(&f->quiesce, 1, __ATOMIC_ACQ_REL);
    futex(&f->quiesce, FUTEX_WAKE, INT32_MAX, NULL);
}

/* Freezes held now, the idle freeze not counted (read under f->lock). */
static inline uint32_t held_freezes(freeze_hdr *f) { return f->count - (f->running <= 0); }

/* A slot takes (+1) or drops (-1) one freeze, right after freeze_step (under f->lock), whose
 * segment start is the time now: the slot's time inside Revati runs while it holds any. */
static inline void slot_hold(freeze_hdr *f, slot_t *s, int delta) {
    if (delta > 0) {
        if (s->freezes++ == 0) s->held_since = f->start;
    } else if (--s->freezes == 0) {
        s->held_ns += f->start - s->held_since;
    }
}

static PyObject *Page_freeze_enter(PageObject *self, PyObject *unused) {
    freeze_hdr *f = self->frz;
    page_lock(f);
    freeze_step(f, 1);
    if (self->my_slot >= 0) slot_hold(f, &self->slots[self->my_slot], 1);
    else f->unslotted++;
    page_unlock(f);
    Py_RETURN_NONE;
}

/* The freeze around Revati's handling of one intercepted op. The op's way in (the torch
 * dispatcher's call into Python, before any Revati code can freeze) and the previous op's way
 * back are Revati's overhead too, so the last `op_credit` ns of real time (their measured cost
 * per op) are kept out as well, where that is safe: time flows
 * at full rate (no freeze, no contention), no other participant runs (so nobody else read the
 * clock in that window; this process's own reads are held monotonic by `last`), and never
 * beyond the current segment. */
static PyObject *Page_freeze_enter_op(PageObject *self, PyObject *unused) {
    freeze_hdr *f = self->frz;
    page_lock(f);
    int64_t credit = self->op_credit;
    if (credit > 0 && f->count == 0 && f->frac == 0.0 && self->my_slot >= 0 &&
        f->running == self->slots[self->my_slot].running) {
        int64_t since = mono_ns() - f->start;
        if (credit > since) credit = since;
        if (credit > 0) {
            __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
            f->total += credit;
            f->credited += credit;
            __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
        }
    }
    freeze_step(f, 1);
    if (self->my_slot >= 0) slot_hold(f, &self->slots[self->my_slot], 1);
    else f->unslotted++;
    page_unlock(f);
    Py_RETURN_NONE;
}

static PyObject *Page_set_op_credit(PageObject *self, PyObject *args) {
    long long ns;
    if (!PyArg_ParseTuple(args, "L", &ns)) return NULL;
    if (ns < 0) {
        PyErr_SetString(PyExc_ValueError, "op credit must be >= 0");
        return NULL;
    }
    self->op_credit = ns;
    Py_RETURN_NONE;
}

static PyObject *Page_freeze_exit(PageObject *self, PyObject *unused) {
    freeze_hdr *f = self->frz;
    page_lock(f);
    if (f->count == 0) {
        page_unlock(f);
        PyErr_SetString(PyExc_RuntimeError, "freeze_exit without freeze_enter");
        return NULL;
    }
    freeze_step(f, -1);
    if (self->my_slot >= 0) slot_hold(f, &self->slots[self->my_slot], -1);
    else f->unslotted--;
    int quiet = f->running <= 0 && held_freezes(f) == 0;
    page_unlock(f);
    if (quiet) poke_quiesce(f);  /* everyone waits, and now nobody is inside Revati */
    Py_RETURN_NONE;
}

/* Release every freeze held by a participant that died inside one (revatid only). */
static PyObject *Page_freeze_release(PageObject *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    if (i < 0 || i >= MAX_SLOTS) return PyErr_Format(PyExc_IndexError, "slot %d", i);
    freeze_hdr *f = self->frz;
    page_lock(f);
    int held = self->slots[i].freezes;
    self->slots[i].freezes = 0;
    uint32_t n = held > 0 ? (uint32_t)held : 0;
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
    if (n > f->count) n = f->count;
    close_segment(f, mono_ns());
    if (held > 0) self->slots[i].held_ns += f->start - self->slots[i].held_since;
    if (n && f->count == n) f->sections++;
    f->count -= n;
    set_frac(f);
    __atomic_add_fetch(&f->seq, 1, __ATOMIC_ACQ_REL);
    page_unlock(f);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Page_freeze_stats(PageObject *self, PyObject *unused) {
    freeze_hdr *f = self->frz;
    int64_t m = mono_ns();
    page_lock(f);
    int64_t current = (int64_t)(f->frac * (double)(m - f->start));
    int64_t contended = f->contended + (f->count ? 0 : current);
    int64_t total = f->total + current - contended;
    uint32_t count = f->count;
    int64_t sections = f->sections;
    int idle = f->running <= 0;
    int64_t credited = f->credited;
    page_unlock(f);
    return Py_BuildValue("ILLiLL", count - idle, (long long)total, (long long)sections, idle,
                         (long long)contended, (long long)credited);
}

/* ------------------------------------------------------------------ clock writes (revatid) */

static void publish(PageObject *self, int64_t base_virt, int64_t base_eff, double rate) {
    clock_hdr *c = self->clk;
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_ACQ_REL);
    c->base_virt = base_virt;
    c->base_eff = base_eff;
    c->rate = rate;
    __atomic_add_fetch(&c->seq, 1, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&c->wake, 1, __ATOMIC_ACQ_REL);
    futex(&c->wake, FUTEX_WAKE, INT32_MAX, NULL);
    for (int i = 0; i < MAX_SLOTS; i++) {
        slot_t *s = &self->slots[i];
        if (!LOAD(&s->pid)) continue;
        __atomic_add_fetch(&s->wake, 1, __ATOMIC_ACQ_REL);
        futex(&s->wake, FUTEX_WAKE, INT32_MAX, NULL);
    }
}

/* Jump forward to `target` (never backward): returns the virtual time before the jump. */
static PyObject *Page_jump(PageObject *self, PyObject *args) {
    long long target;
    if (!PyArg_ParseTuple(args, "L", &target)) return NULL;
    if (!self->writer) {
        PyErr_SetString(PyExc_PermissionError, "only revatid writes the session clock");
        return NULL;
    }
    int64_t m = mono_ns();
    int64_t before = virt_at(self, m, NULL);
    int64_t v = target > before ? target : before;
    publish(self, v, effective(self->frz, m), self->clk->rate);
    return PyLong_FromLongLong(before);
}

/* Change the rate from now on (continuous: no jump at the switch). */
static PyObject *Page_set_rate(PageObject *self, PyObject *args) {
    double rate;
    if (!PyArg_ParseTuple(args, "d", &rate)) return NULL;
    if (!self->writer || rate < 0) {
        PyErr_SetString(PyExc_ValueError, "only revatid sets the rate, and it must be >= 0");
        return NULL;
    }
    int64_t m = mono_ns();
    publish(self, virt_at(self, m, NULL), effective(self->frz, m), rate);
    Py_RETURN_NONE;
}

/* Wake every sleeper of one slot (i >= 0) so that it re-reads its deadlines. */
static PyObject *Page_poke(PageObject *self, PyObject *args) {
    int i = -1;
    if (!PyArg_ParseTuple(args, "|i", &i)) return NULL;
    if (i < 0) i = self->my_slot;
    if (i < 0 || i >= MAX_SLOTS) return PyErr_Format(PyExc_IndexError, "slot %d", i);
    __atomic_add_fetch(&self->slots[i].wake, 1, __ATOMIC_ACQ_REL);
    futex(&self->slots[i].wake, FUTEX_WAKE, INT32_MAX, NULL);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ waits (participants) */

/* Sleep until virtual time >= deadline, or until `max_real_ns` real ns have passed (< 0:
 * no cap), or until the wake word moves past `stop_wake` (>= 0). Sleeps on this process's
 * slot word (the clock's word before a slot is claimed). Releases the GIL. Each futex sleep
 * is bounded by the remaining virtual time / rate, so time flowing at real rate wakes the
 * sleeper too. Returns the virtual time on return. */
static PyObject *Page_wait_until(PageObject *self, PyObject *args) {
    long long deadline, max_real = -1, stop_wake = -1;
    if (!PyArg_ParseTuple(args, "L|LL", &deadline, &max_real, &stop_wake)) return NULL;
    int64_t v;
    int64_t real_end = max_real >= 0 ? mono_ns() + max_real : INT64_MAX;
    uint32_t *word = self->my_slot >= 0 ? &self->slots[self->my_slot].wake : &self->clk->wake;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        uint32_t seen = LOAD(word);
        if (stop_wake >= 0 && seen != (uint32_t)stop_wake) { v = virt_now(self); break; }
        double rate;
        int64_t m = mono_ns();
        v = virt_at(self, m, &rate);
        if (v >= deadline || m >= real_end) break;
        int64_t sleep_ns = 1000000; /* frozen or stopped clock: re-check each ms */
        if (rate > 0 && LOAD(&self->frz->count) == 0) {
            double s = (double)(deadline - v) / rate;
            sleep_ns = s < 1e12 ? (int64_t)s + 1 : 1000000000000LL;
        }
        if (real_end - m < sleep_ns) sleep_ns = real_end - m;
        struct timespec ts = {sleep_ns / 1000000000LL, sleep_ns % 1000000000LL};
        futex(word, FUTEX_WAIT, seen, &ts);
    }
    Py_END_ALLOW_THREADS
    int64_t last = __atomic_load_n(&self->last, __ATOMIC_RELAXED);
    return PyLong_FromLongLong(v > last ? v : last);
}

/* revatid's watcher: sleep until some participant's last running thread waits, or timeout.
 * Returns the quiesce word (pass it back as `seen`). Releases the GIL. */
static PyObject *Page_wait_quiesce(PageObject *self, PyObject *args) {
    unsigned int seen;
    long long timeout_ns;
    if (!PyArg_ParseTuple(args, "IL", &seen, &timeout_ns)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (LOAD(&self->frz->quiesce) == seen) {
        struct timespec ts = {timeout_ns / 1000000000LL, timeout_ns % 1000000000LL};
        futex(&self->frz->quiesce, FUTEX_WAIT, seen, &ts);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(LOAD(&self->frz->quiesce));
}

static PyObject *Page_poke_quiesce(PageObject *self, PyObject *unused) {
    poke_quiesce(self->frz);
    Py_RETURN_NONE;
}

static PyObject *Page_wake_word(PageObject *self, PyObject *unused) {
    uint32_t *word = self->my_slot >= 0 ? &self->slots[self->my_slot].wake : &self->clk->wake;
    return PyLong_FromUnsignedLong(LOAD(word));
}

/* ------------------------------------------------------------------ slots */

static slot_t *slot_arg(PageObject *self, int i) {
    if (i < 0 || i >= MAX_SLOTS) {
        PyErr_Format(PyExc_IndexError, "slot %d out of range", i);
        return NULL;
    }
    return &self->slots[i];
}

/* Wake revatid's watcher, but only when no participant runs: the last one to wait pokes.
 * While some participant is inside a freeze, the timekeeper could not jump anyway: the last
 * freeze to end pokes instead (Page_freeze_exit), so that revatid never polls. */
static void poke_if_quiet(PageObject *self) {
    for (int i = 0; i < MAX_SLOTS; i++) {
        slot_t *s = &self->slots[i];
        if (LOAD(&s->pid) && LOAD(&s->running) > 0) return;
    }
    if (LOAD(&self->frz->count) > 1) return;  /* frozen beyond the idle freeze */
    poke_quiesce(self->frz);
}

static PyObject *Page_slot_claim(PageObject *self, PyObject *args) {
    int i, running;
    unsigned int pid;
    if (!PyArg_ParseTuple(args, "iIi", &i, &pid, &running)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    page_lock(self->frz);
    running_step(self->frz, running - s->running);
    active_step(self->frz, s->running, running);
    s->running = running;
    page_unlock(self->frz);
    s->deadline = NO_DEADLINE;
    s->waits = 0;
    s->freezes = 0;
    s->held_ns = 0;
    if (!self->writer) self->my_slot = i;
    __atomic_add_fetch(&s->activity, 1, __ATOMIC_ACQ_REL);
    STORE(&s->pid, pid);
    Py_RETURN_NONE;
}

static PyObject *Page_slot_free(PageObject *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    STORE(&s->pid, 0);
    page_lock(self->frz);
    running_step(self->frz, -s->running);
    active_step(self->frz, s->running, 0);
    s->running = 0;
    page_unlock(self->frz);
    s->deadline = NO_DEADLINE;
    Py_RETURN_NONE;
}

/* A thread enters (delta=-1) or leaves (+1) a hooked wait, or starts (+1) / ends (-1). */
static PyObject *Page_slot_running(PageObject *self, PyObject *args) {
    int i, delta;
    if (!PyArg_ParseTuple(args, "ii", &i, &delta)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    page_lock(self->frz);
    running_step(self->frz, delta);
    int32_t now = __atomic_add_fetch(&s->running, delta, __ATOMIC_ACQ_REL);
    active_step(self->frz, now - delta, now);
    page_unlock(self->frz);
    __atomic_add_fetch(&s->activity, 1, __ATOMIC_ACQ_REL);
    if (delta < 0) {
        s->waits++;
        if (now <= 0) poke_if_quiet(self);
    }
    return PyLong_FromLong(now);
}

static PyObject *Page_slot_deadline(PageObject *self, PyObject *args) {
    int i;
    long long deadline;
    if (!PyArg_ParseTuple(args, "iL", &i, &deadline)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    STORE(&s->deadline, (int64_t)deadline);
    __atomic_add_fetch(&s->activity, 1, __ATOMIC_ACQ_REL);
    if (LOAD(&s->running) <= 0) poke_if_quiet(self);
    Py_RETURN_NONE;
}

/* (pid, running, activity, deadline, waits, freezes) for the timekeeper. */
static PyObject *Page_slot_read(PageObject *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    return Py_BuildValue("IiKLLi", LOAD(&s->pid), LOAD(&s->running),
                         (unsigned long long)LOAD(&s->activity), (long long)LOAD(&s->deadline),
                         (long long)s->waits, s->freezes);
}

/* Real ns the slot's process has spent inside Revati's own code (holding a freeze), the
 * freeze it holds now included. */
static PyObject *Page_slot_held_ns(PageObject *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    slot_t *s = slot_arg(self, i);
    if (!s) return NULL;
    freeze_hdr *f = self->frz;
    page_lock(f);
    int64_t held = s->held_ns + (s->freezes > 0 ? mono_ns() - s->held_since : 0);
    page_unlock(f);
    return PyLong_FromLongLong((long long)held);
}

static PyMethodDef Page_methods[] = {
    {"now", (PyCFunction)Page_now, METH_NOARGS, "Virtual ns since the session began."},
    {"monotonic", (PyCFunction)Page_monotonic, METH_NOARGS, "Virtual time.monotonic()."},
    {"monotonic_ns", (PyCFunction)Page_monotonic_ns, METH_NOARGS, "Virtual monotonic_ns()."},
    {"time", (PyCFunction)Page_time, METH_NOARGS, "Virtual time.time()."},
    {"time_ns", (PyCFunction)Page_time_ns, METH_NOARGS, "Virtual time.time_ns()."},
    {"origins", (PyCFunction)Page_origins, METH_NOARGS, "(origin_mono_ns, origin_wall_ns)."},
    {"floor_monotonic", (PyCFunction)Page_floor_monotonic, METH_VARARGS, "Never read below."},
    {"freeze_enter", (PyCFunction)Page_freeze_enter, METH_NOARGS, "Stop the session clock."},
    {"freeze_enter_op", (PyCFunction)Page_freeze_enter_op, METH_NOARGS,
     "Stop the clock for an op's handling, its way in (the op credit) kept out too."},
    {"set_op_credit", (PyCFunction)Page_set_op_credit, METH_VARARGS, "This process's op credit."},
    {"freeze_exit", (PyCFunction)Page_freeze_exit, METH_NOARGS, "Let it run again."},
    {"freeze_release", (PyCFunction)Page_freeze_release, METH_VARARGS, "Drop a slot's freezes."},
    {"freeze_stats", (PyCFunction)Page_freeze_stats, METH_NOARGS,
     "(freezes held by Revati code, frozen ns, frozen sections, idle freeze on, contended ns, "
     "credited ns)."},
    {"jump", (PyCFunction)Page_jump, METH_VARARGS, "Jump forward to a virtual time."},
    {"set_rate", (PyCFunction)Page_set_rate, METH_VARARGS, "Set the rate (dilation)."},
    {"poke", (PyCFunction)Page_poke, METH_VARARGS, "Wake a slot's sleepers."},
    {"wait_until", (PyCFunction)Page_wait_until, METH_VARARGS, "Sleep until a virtual time."},
    {"wake_word", (PyCFunction)Page_wake_word, METH_NOARGS, "The futex word's value."},
    {"wait_quiesce", (PyCFunction)Page_wait_quiesce, METH_VARARGS, "Watcher sleep."},
    {"poke_quiesce", (PyCFunction)Page_poke_quiesce, METH_NOARGS, "Wake the watcher."},
    {"slot_claim", (PyCFunction)Page_slot_claim, METH_VARARGS, "Take a slot (i, pid, running)."},
    {"slot_free", (PyCFunction)Page_slot_free, METH_VARARGS, "Free a slot."},
    {"slot_running", (PyCFunction)Page_slot_running, METH_VARARGS, "Add to the running count."},
    {"slot_deadline", (PyCFunction)Page_slot_deadline, METH_VARARGS, "Publish a deadline."},
    {"slot_read", (PyCFunction)Page_slot_read, METH_VARARGS, "Read a slot."},
    {"slot_held_ns", (PyCFunction)Page_slot_held_ns, METH_VARARGS,
     "Real ns a slot's process has held a freeze (its time inside Revati)."},
    {NULL}};

static PyTypeObject PageType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "revati.adapters.clock._vclock.Page",
    .tp_basicsize = sizeof(PageObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Page_init,
    .tp_dealloc = (destructor)Page_dealloc,
    .tp_methods = Page_methods,
    .tp_doc = "A mapped Revati session page.",
};

static PyObject *mod_real_monotonic_ns(PyObject *m, PyObject *unused) {
    return PyLong_FromLongLong(mono_ns());
}

static PyMethodDef module_methods[] = {
    {"real_monotonic_ns", mod_real_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC, ns."},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_vclock",
                                       "Revati session page (shared virtual clock).", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__vclock(void) {
    if (PyType_Ready(&PageType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&PageType);
    PyModule_AddObject(m, "Page", (PyObject *)&PageType);
    PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS);
    PyModule_AddIntConstant(m, "FILE_SIZE", FILE_SIZE);
    PyModule_AddObject(m, "NO_DEADLINE", PyLong_FromLongLong(NO_DEADLINE));
    return m;
}
