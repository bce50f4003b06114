/* wgrelay.transport._mmsg: batched UDP receive and send (recvmmsg/sendmmsg).
 *
 * Why: a relay that makes one recvfrom and one sendto per packet spends two
 * thirds of its user time in CPython's socket wrappers (argument parsing,
 * address formatting, GIL hand-off) and pays two system calls per packet
 * (docs/PERFORMANCE.md, section 3). Here one call moves up to BATCH datagrams.
 *
 * What the Python side sees is exactly what recvfrom/sendto give and take:
 *   recv_batch(fd, size) -> list[(bytes, addr)]
 *       One non-blocking recvmmsg of up to BATCH datagrams of at most `size`
 *       bytes each. A longer datagram is cut to `size` bytes, as recvfrom(size)
 *       does. `addr` is the tuple recvfrom returns: (host, port) for IPv4,
 *       (host, port, flowinfo, scope_id) for IPv6. Raises OSError (EAGAIN as
 *       BlockingIOError) when the first datagram cannot be had.
 *   send_batch(fd, family, items) -> list[(index, errno)]
 *       Sends items[i] = (data, addr) in order with sendmmsg, BATCH at a time.
 *       A datagram the kernel refuses is skipped and reported with its errno;
 *       errno -1 means "address not understood here" (not a numeric address of
 *       `family`): the caller sends that one with socket.sendto, which knows
 *       every form CPython accepts.
 *
 * Threads: both calls keep the GIL (the socket is non-blocking and so are the
 * calls, MSG_DONTWAIT), so the module's static buffers are never shared by
 * two threads at once, and there is no GIL hand-off per call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64          /* datagrams per system call */
#define MAX_SIZE 65536    /* largest `size` recv_batch accepts */
#define ADDR_CACHE 8      /* distinct addresses converted once per call */

static char *rx_buf;      /* BATCH * rx_size bytes, allocated on first use */
static Py_ssize_t rx_size;
static struct mmsghdr rx_msgs[BATCH];
static struct iovec rx_iov[BATCH];
static struct sockaddr_storage rx_addr[BATCH];

static struct mmsghdr tx_msgs[BATCH];
static struct iovec tx_iov[BATCH];
static Py_buffer tx_views[BATCH];
static int tx_has_view[BATCH];

static int
ensure_rx(Py_ssize_t size)
{
    if (rx_buf != NULL && rx_size == size)
        return 0;
    char *buf = PyMem_RawRealloc(rx_buf, (size_t)size * BATCH);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    rx_buf = buf;
    rx_size = size;
    for (int i = 0; i < BATCH; i++) {
        rx_iov[i].iov_base = rx_buf + (size_t)i * size;
        rx_iov[i].iov_len = (size_t)size;
    }
    return 0;
}

/* The tuple socket.recvfrom would give for this address (see CPython's
 * makesockaddr: inet_ntop, port in host order, IPv6 flowinfo and scope id). */
static PyObject *
make_addr(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "recv_batch: not an IP socket");
    return NULL;
}

static size_t
addr_key_len(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static PyObject *
recv_batch(PyObject *self, PyObject *args)
{
    int fd;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "in:recv_batch", &fd, &size))
        return NULL;
    if (size <= 0 || size > MAX_SIZE) {
        PyErr_SetString(PyExc_ValueError, "recv_batch: size out of range");
        return NULL;
    }
    if (ensure_rx(size) < 0)
        return NULL;
    for (int i = 0; i < BATCH; i++) {
        struct msghdr *h = &rx_msgs[i].msg_hdr;
        h->msg_name = &rx_addr[i];
        h->msg_namelen = sizeof(rx_addr[i]);
        h->msg_iov = &rx_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        h->msg_flags = 0;
    }
    int n = recvmmsg(fd, rx_msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);

    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    /* packets of one burst mostly come from a few peers: build each address
     * tuple once per call and share it (the kernel zeroes sin_zero, so the
     * bytes compare) */
    int cached = 0;
    int cache_idx[ADDR_CACHE];
    PyObject *cache_obj[ADDR_CACHE];
    for (int i = 0; i < n; i++) {
        PyObject *addr = NULL;
        size_t klen = addr_key_len(&rx_addr[i]);
        for (int c = 0; c < cached; c++) {
            if (memcmp(&rx_addr[cache_idx[c]], &rx_addr[i], klen) == 0) {
                addr = cache_obj[c];
                Py_INCREF(addr);
                break;
            }
        }
        if (addr == NULL) {
            addr = make_addr(&rx_addr[i]);
            if (addr == NULL)
                goto fail;
            if (cached < ADDR_CACHE) {
                cache_idx[cached] = i;
                cache_obj[cached] = addr; /* borrowed: the list holds it */
                cached++;
            }
        }
        PyObject *data = PyBytes_FromStringAndSize(rx_iov[i].iov_base, (Py_ssize_t)rx_msgs[i].msg_len);
        if (data == NULL) {
            Py_DECREF(addr);
            goto fail;
        }
        PyObject *item = PyTuple_New(2);
        if (item == NULL) {
            Py_DECREF(addr);
            Py_DECREF(data);
            goto fail;
        }
        PyTuple_SET_ITEM(item, 0, data);
        PyTuple_SET_ITEM(item, 1, addr);
        PyList_SET_ITEM(out, i, item);
    }
    return out;
fail:
    /* a list with NULL slots is safe to free */
    Py_DECREF(out);
    return NULL;
}

/* Parse addr the way socket.sendto would for a numeric address of `family`.
 * 0: done; 1: not understood here (the caller falls back); -1: Python error. */
static int
parse_addr(PyObject *addr, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    if (!PyTuple_Check(addr))
        return 1;
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2 || !PyUnicode_Check(PyTuple_GET_ITEM(addr, 0)) ||
        !PyLong_Check(PyTuple_GET_ITEM(addr, 1)))
        return 1;
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL) {
        PyErr_Clear();
        return 1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    if (port < 0 || port > 65535)
        return 1;
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        if (n != 2)
            return 1;
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return 1;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof(*a);
        return 0;
    }
    if (family == AF_INET6) {
        if (n > 4)
            return 1;
        unsigned long flowinfo = 0, scope_id = 0;
        if (n >= 3) {
            if (!PyLong_Check(PyTuple_GET_ITEM(addr, 2)))
                return 1;
            flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 2));
            if (flowinfo == (unsigned long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 1;
            }
            if (flowinfo > 0xfffff) /* CPython refuses these too */
                return 1;
        }
        if (n == 4) {
            if (!PyLong_Check(PyTuple_GET_ITEM(addr, 3)))
                return 1;
            scope_id = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
            if (scope_id == (unsigned long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 1;
            }
            if (scope_id > 0xffffffffUL)
                return 1;
        }
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return 1;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl((uint32_t)flowinfo);
        a->sin6_scope_id = (uint32_t)scope_id;
        *len = sizeof(*a);
        return 0;
    }
    return 1;
}

static int
add_failure(PyObject *failures, Py_ssize_t index, int err)
{
    PyObject *f = Py_BuildValue("(ni)", index, err);
    if (f == NULL)
        return -1;
    int r = PyList_Append(failures, f);
    Py_DECREF(f);
    return r;
}

static void
release_views(int count)
{
    for (int j = 0; j < count; j++) {
        if (tx_has_view[j]) {
            PyBuffer_Release(&tx_views[j]);
            tx_has_view[j] = 0;
        }
    }
}

static PyObject *
send_batch(PyObject *self, PyObject *args)
{
    int fd, family;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iiO!:send_batch", &fd, &family, &PyList_Type, &items))
        return NULL;
    PyObject *failures = PyList_New(0);
    if (failures == NULL)
        return NULL;
    static struct sockaddr_storage addrs[ADDR_CACHE];
    static socklen_t addr_lens[ADDR_CACHE];
    PyObject *cache_obj[ADDR_CACHE]; /* borrowed: `items` holds them */
    int cached = 0;

    Py_ssize_t total = PyList_GET_SIZE(items);
    Py_ssize_t start = 0;
    while (start < total) {
        /* fill up to BATCH messages; index[k] is the item of message k */
        Py_ssize_t index[BATCH];
        int count = 0;
        Py_ssize_t i = start;
        for (; i < total && count < BATCH; i++) {
            PyObject *item = PyList_GET_ITEM(items, i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                release_views(count);
                Py_DECREF(failures);
                PyErr_SetString(PyExc_TypeError, "send_batch: items must be (data, addr)");
                return NULL;
            }
            PyObject *data = PyTuple_GET_ITEM(item, 0);
            PyObject *addr = PyTuple_GET_ITEM(item, 1);
            int slot = -1;
            for (int c = 0; c < cached; c++) {
                if (cache_obj[c] == addr) {
                    slot = c;
                    break;
                }
            }
            struct sockaddr_storage one;
            socklen_t one_len = 0;
            struct sockaddr_storage *sa;
            socklen_t sa_len;
            if (slot >= 0) {
                sa = &addrs[slot];
                sa_len = addr_lens[slot];
            } else {
                if (parse_addr(addr, family, &one, &one_len) != 0) {
                    if (add_failure(failures, i, -1) < 0) {
                        release_views(count);
                        Py_DECREF(failures);
                        return NULL;
                    }
                    continue;
                }
                if (cached < ADDR_CACHE) {
                    addrs[cached] = one;
                    addr_lens[cached] = one_len;
                    cache_obj[cached] = addr;
                    sa = &addrs[cached];
                    sa_len = one_len;
                    cached++;
                } else {
                    /* rare (many destinations in one burst): keep a copy per message */
                    sa = NULL;
                    sa_len = one_len;
                }
            }
            struct msghdr *h = &tx_msgs[count].msg_hdr;
            if (PyBytes_CheckExact(data)) {
                tx_iov[count].iov_base = PyBytes_AS_STRING(data);
                tx_iov[count].iov_len = (size_t)PyBytes_GET_SIZE(data);
                tx_has_view[count] = 0;
            } else {
                if (PyObject_GetBuffer(data, &tx_views[count], PyBUF_SIMPLE) < 0) {
                    release_views(count);
                    Py_DECREF(failures);
                    return NULL;
                }
                tx_has_view[count] = 1;
                tx_iov[count].iov_base = tx_views[count].buf;
                tx_iov[count].iov_len = (size_t)tx_views[count].len;
            }
            if (sa == NULL) {
                static struct sockaddr_storage spill[BATCH];
                spill[count] = one;
                sa = &spill[count];
            }
            h->msg_name = sa;
            h->msg_namelen = sa_len;
            h->msg_iov = &tx_iov[count];
            h->msg_iovlen = 1;
            h->msg_control = NULL;
            h->msg_controllen = 0;
            h->msg_flags = 0;
            index[count] = i;
            count++;
        }
        /* send them; a refused one is reported and skipped, as sendto would */
        int done = 0;
        while (done < count) {
            int r = sendmmsg(fd, tx_msgs + done, (unsigned int)(count - done), MSG_DONTWAIT);
            if (r > 0) {
                done += r;
                continue;
            }
            int err = r < 0 ? errno : EIO;
            if (err == EINTR)
                continue;
            if (add_failure(failures, index[done], err) < 0) {
                release_views(count);
                Py_DECREF(failures);
                return NULL;
            }
            done++;
        }
        release_views(count);
        start = i;
    }
    return failures;
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS,
     "recv_batch(fd, size) -> list of (bytes, addr): one non-blocking recvmmsg."},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, family, items) -> list of (index, errno): sendmmsg in order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wgrelay.transport._mmsg",
    "Batched UDP receive and send (recvmmsg/sendmmsg).", -1, methods,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SIZE", MAX_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
