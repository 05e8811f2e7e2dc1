/* coral.sdk._probe: the in-process half of Coral's Python probe.
 *
 * An armed Python function is replaced by a ProbeWrapper. While no tracer is
 * attached (coral_probe_semaphore == 0) the wrapper only forwards the call.
 * While the kernel holds a uprobe with a reference counter on
 * coral_probe_call, the semaphore is non-zero and each call is timed, a
 * struct coral_call (bpf/coral_call.h) is filled on the stack and handed to
 * coral_probe_call, whose first instruction is a 5-byte NOP: the kernel turns
 * a uprobe there into a cheap trampoline jump.
 *
 * Reprs are built without running user code: real repr only for builtin
 * scalars (and shallow containers of them), "<ClassName object>" for
 * everything else, so a __repr__ that raises, sleeps or takes a lock cannot
 * stall the service. Values are redacted by parameter name and by looking
 * like a card number.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "coral_call.h"
#include "_layout.h"

/* A type's name and qualified name, as new references. CPython 3.10 (the
 * oldest the SDK supports) has no PyType_GetName/PyType_GetQualName (3.11):
 * there, the type's own attributes say the same. */
static PyObject *
type_name(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyType_GetName(tp);
#else
    return PyObject_GetAttrString((PyObject *)tp, "__name__");
#endif
}

static PyObject *
type_qualname(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyType_GetQualName(tp);
#else
    return PyObject_GetAttrString((PyObject *)tp, "__qualname__");
#endif
}

/* ------------------------------------------------------------ probe site */

/* Top-level asm, not a C function: the compiler may add a prologue, a
 * CET endbr64 or padding in front of a C body; here the symbol's first
 * instruction is the nop5 by construction. .type/.size make it an STT_FUNC
 * with a size, as symbol readers (coral.elfinfo) expect. */
#if defined(__x86_64__)
__asm__(
    "    .pushsection .text\n"
    "    .globl coral_probe_call\n"
    "    .type coral_probe_call, @function\n"
    "    .p2align 4\n"
    "coral_probe_call:\n"
    "    .cfi_startproc\n"
    "    .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n" /* nopl 0x0(%rax,%rax,1): the uprobe's spot */
    "    ret\n"
    "    .cfi_endproc\n"
    "    .size coral_probe_call, .-coral_probe_call\n"
    "    .popsection\n");
#elif defined(__aarch64__)
/* No trampoline optimisation there: a plain uprobe on a nop still works. */
__asm__(
    "    .pushsection .text\n"
    "    .globl coral_probe_call\n"
    "    .type coral_probe_call, %function\n"
    "    .p2align 4\n"
    "coral_probe_call:\n"
    "    nop\n"
    "    ret\n"
    "    .size coral_probe_call, .-coral_probe_call\n"
    "    .popsection\n");
#else
#error "coral.sdk._probe: no probe site for this architecture"
#endif

__attribute__((visibility("default"))) void coral_probe_call(const struct coral_call *rec);

/* Called through a volatile pointer so the compiler can neither inline nor
 * drop the call, nor the stores into the record before it. */
static void (*volatile probe_site)(const struct coral_call *) = coral_probe_call;

/* USDT-style semaphore: the kernel increments it while a uprobe with
 * ref_ctr_offset pointing here is attached, and decrements it on detach.
 * It lives in ".probes", a writable PROGBITS section backed by the file, so
 * its file offset is what the agent passes as ref_ctr_offset. */
__attribute__((section(".probes"), used, visibility("default"))) volatile unsigned short coral_probe_semaphore = 0;

/* The hot path reads it through a hidden alias: a direct PC-relative load,
 * not a GOT indirection. */
extern volatile unsigned short coral_probe_semaphore_local
    __attribute__((alias("coral_probe_semaphore"), visibility("hidden")));

/* ---------------------------------------------------------------- state */

static unsigned long long call_counter;      /* call ids, per process */
static int test_capture;                     /* _set_test_mode(capture=True) */
static PyObject *test_records;               /* list of dicts, test mode only */
static PyObject *redact_patterns;            /* tuple of lowercase bytes */
static PyObject *safe_repr_types;            /* tuple of types whose repr is C and bounded */

/* coral/redact.py Rules().terms: the default names as the rule compares them */
static const char *const default_patterns[] = {"apikey", "authorization", "bearer", "card", "cookie", "credential",
                                               "passwd", "password", "privatekey", "pw", "secret", "token", NULL};

#define NAME_MATCH_MAX 128    /* bytes of a parameter name compared with the patterns */
#define CONTAINER_ITEMS_MAX 64
#define BIG_INT_BITS 1024     /* bigger ints are summarised: their repr is quadratic */
#define MIN_ARG_BUDGET 48

static inline unsigned long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* ------------------------------------------------------- bounded strings */

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    int full;       /* cut: further appends are dropped */
    int truncated;  /* some text did not fit or was cut */
} sbuf;

static inline int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Where to cut `s` so at most `room` bytes remain: never inside a UTF-8
 * sequence, and never through a run of digits (a cut card number would
 * leak most of its digits and no longer look like one). */
static size_t
safe_cut(const char *s, size_t n, size_t room)
{
    size_t cut = room < n ? room : n;
    while (cut > 0 && cut < n && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    if (cut > 0 && cut < n && is_digit(s[cut])) {
        while (cut > 0 && (is_digit(s[cut - 1]) || s[cut - 1] == ' ' || s[cut - 1] == '-'))
            cut--;
    }
    return cut;
}

static void
sb_append(sbuf *sb, const char *s, size_t n)
{
    if (sb->full)
        return;
    size_t room = sb->cap - sb->len;
    if (n <= room) {
        memcpy(sb->buf + sb->len, s, n);
        sb->len += n;
        return;
    }
    size_t cut = room >= 3 ? safe_cut(s, n, room - 3) : 0;
    memcpy(sb->buf + sb->len, s, cut);
    sb->len += cut;
    if (sb->cap - sb->len >= 3) {
        memcpy(sb->buf + sb->len, "...", 3);
        sb->len += 3;
    }
    sb->full = 1;
    sb->truncated = 1;
}

static inline void
sb_puts(sbuf *sb, const char *s)
{
    sb_append(sb, s, strlen(s));
}

/* Mark a cut made before formatting (a prefix of a long str was used). */
static void
sb_mark_cut(sbuf *sb)
{
    sb->truncated = 1;
    if (!sb->full)
        sb_puts(sb, "...");
    sb->full = 1;
}

/* ---------------------------------------------------------- card numbers */

static int
luhn_ok(const char *digits, int n)
{
    int sum = 0;
    for (int i = 0; i < n; i++) {
        int d = digits[n - 1 - i] - '0';
        if (i % 2 == 1) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
    }
    return sum % 10 == 0;
}

/* Scan a run of digits starting at s[i], allowing single spaces or dashes
 * between digits ("4111 1111 1111 1111"). Returns the run's end and stores
 * its digits (up to 20). */
static size_t
scan_digit_run(const char *s, size_t n, size_t i, char *digits, int *ndigits)
{
    int count = 0;
    size_t end = i;
    while (end < n) {
        if (is_digit(s[end])) {
            if (count < 20)
                digits[count] = s[end];
            count++;
            end++;
        } else if ((s[end] == ' ' || s[end] == '-') && end + 1 < n && is_digit(s[end + 1]) && end > i) {
            end++;
        } else {
            break;
        }
    }
    *ndigits = count;
    return end;
}

static inline int
looks_like_card(const char *digits, int ndigits)
{
    return ndigits >= 13 && ndigits <= 19 && luhn_ok(digits, ndigits);
}

/* Whole text is one card number (e.g. a str argument). */
static int
text_is_card(const char *s, size_t n)
{
    char digits[20];
    int nd;
    if (n == 0 || !is_digit(s[0]))
        return 0;
    return scan_digit_run(s, n, 0, digits, &nd) == n && looks_like_card(digits, nd);
}

#define CARD_RUN_MAX 31   /* digits in a run that may hold a card and what follows it, as in coral/redact.py */

/* Where the card number in the digit run s[i..end) ends: the whole run, or
 * the run cut at one of its spaces or dashes, from the end back (a number
 * followed by a date or a code: "4111 1111 1111 1111 12 26"), down to 13
 * digits; 0 if no head of it is a card number. */
static size_t
card_end(const char *s, size_t i, size_t end, int ndigits)
{
    if (ndigits > CARD_RUN_MAX)
        return 0;
    for (size_t cut = end; cut > i; cut--) {
        if (cut != end && s[cut] != ' ' && s[cut] != '-')
            continue;
        char digits[CARD_RUN_MAX];
        int nd = 0;
        for (size_t k = i; k < cut; k++)
            if (is_digit(s[k]))
                digits[nd++] = s[k];
        if (nd < 13)
            return 0;
        if (looks_like_card(digits, nd))
            return cut;
    }
    return 0;
}

/* Replace every card-number-looking run inside s[0..n) with "<redacted>",
 * in place; the text only shrinks (13+ digits become 10 bytes). */
static size_t
redact_card_runs(char *s, size_t n)
{
    static const char mark[] = "<redacted>";
    size_t i = 0;
    while (i < n) {
        if (!is_digit(s[i]) || (i > 0 && is_digit(s[i - 1]))) {
            i++;
            continue;
        }
        char digits[20];
        int nd;
        size_t end = scan_digit_run(s, n, i, digits, &nd);
        size_t cut = card_end(s, i, end, nd);
        if (cut) {
            end = cut;
            size_t m = sizeof(mark) - 1;
            memcpy(s + i, mark, m);
            memmove(s + i + m, s + end, n - end);
            n -= (end - i) - m;
            i += m;
        } else {
            i = end;
        }
    }
    return n;
}

/* ------------------------------------------------------------- redaction */

/* The name rule of coral/redact.py: the name is split into lowercase words
 * (runs of lowercase letters, camelCase humps, runs of capitals, runs of
 * digits; anything else separates), and it is sensitive when a word, or two
 * adjacent words run together, is one of the terms, or when a word begins or
 * ends with a term of five letters or more. The terms come from Python
 * (Rules.terms), already lowercase and joined. tests/test_sdk_probe.py checks
 * that the two sides agree. */
#define NAME_WORDS_MAX 32

static int
is_up(char c) { return c >= 'A' && c <= 'Z'; }
static int
is_low(char c) { return c >= 'a' && c <= 'z'; }
static int
is_dig(char c) { return c >= '0' && c <= '9'; }

static int
term_matches(const char *w, size_t n, int whole_only)
{
    Py_ssize_t count = PyTuple_GET_SIZE(redact_patterns);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *p = PyTuple_GET_ITEM(redact_patterns, k);
        size_t t = (size_t)PyBytes_GET_SIZE(p);
        const char *term = PyBytes_AS_STRING(p);
        if (t == 0 || t > n)
            continue;
        if (t == n && memcmp(w, term, t) == 0)
            return 1;
        if (!whole_only && t >= 5 && (memcmp(w, term, t) == 0 || memcmp(w + n - t, term, t) == 0))
            return 1;
    }
    return 0;
}

static int
name_is_sensitive_utf8(const char *name, size_t n)
{
    if (redact_patterns == NULL)
        return 0;
    if (n > NAME_MATCH_MAX)
        n = NAME_MATCH_MAX;
    char lower[NAME_MATCH_MAX];
    size_t starts[NAME_WORDS_MAX], lens[NAME_WORDS_MAX];
    size_t nwords = 0, i = 0;
    while (i < n && nwords < NAME_WORDS_MAX) {
        size_t j = i;
        if (is_dig(name[i])) {
            while (j < n && is_dig(name[j]))
                j++;
        } else if (is_up(name[i])) {
            while (j < n && is_up(name[j]))
                j++;
            if (j < n && is_low(name[j])) {
                if (j - i > 1)
                    j--; /* "APIKey": "API", then "Key" */
                else
                    while (j < n && is_low(name[j]))
                        j++;
            }
        } else if (is_low(name[i])) {
            while (j < n && is_low(name[j]))
                j++;
        } else {
            i++;
            continue;
        }
        starts[nwords] = i;
        lens[nwords] = j - i;
        nwords++;
        i = j;
    }
    for (size_t k = 0; k < n; k++) {
        char c = name[k];
        lower[k] = is_up(c) ? (char)(c - 'A' + 'a') : c;
    }
    for (size_t w = 0; w < nwords; w++) {
        if (term_matches(lower + starts[w], lens[w], 0))
            return 1;
        if (w + 1 < nwords) {
            char pair[NAME_MATCH_MAX * 2];
            memcpy(pair, lower + starts[w], lens[w]);
            memcpy(pair + lens[w], lower + starts[w + 1], lens[w + 1]);
            if (term_matches(pair, lens[w] + lens[w + 1], 1))
                return 1;
        }
    }
    return 0;
}

static int
name_is_sensitive(PyObject *name)
{
    if (!PyUnicode_Check(name))
        return 0;
    /* only the start is compared: never encode a long key whole */
    PyObject *head = PyUnicode_GET_LENGTH(name) > NAME_MATCH_MAX ? PyUnicode_Substring(name, 0, NAME_MATCH_MAX)
                                                                  : (Py_INCREF(name), name);
    Py_ssize_t n;
    const char *s = head ? PyUnicode_AsUTF8AndSize(head, &n) : NULL;
    int sensitive = s != NULL && name_is_sensitive_utf8(s, (size_t)n);
    if (s == NULL)
        PyErr_Clear();
    Py_XDECREF(head);
    return sensitive;
}

/* ------------------------------------------------------------ safe reprs */

static void put_value(sbuf *sb, PyObject *v, int depth);

/* Text as is, bounded by the room left: a long str is cut before it is
 * encoded (encoding a non-ASCII str makes, and caches, a full UTF-8 copy). */
static void
put_unicode(sbuf *sb, PyObject *text)
{
    Py_ssize_t room = (Py_ssize_t)(sb->cap - sb->len);
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    PyObject *part = len > room ? PyUnicode_Substring(text, 0, room) : (Py_INCREF(text), text);
    Py_ssize_t n;
    const char *s = part ? PyUnicode_AsUTF8AndSize(part, &n) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<unprintable>");
    } else {
        sb_append(sb, s, (size_t)n);
        if (len > room)
            sb_mark_cut(sb);
    }
    Py_XDECREF(part);
}

/* repr() of an object whose type's repr is known to be C and bounded. */
static void
put_repr(sbuf *sb, PyObject *v, reprfunc repr)
{
    PyObject *r = repr ? repr(v) : PyObject_Repr(v);
    if (r == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<repr failed>");
        return;
    }
    put_unicode(sb, r);
    Py_DECREF(r);
}

static void
put_type_name(sbuf *sb, PyTypeObject *tp)
{
    PyObject *name = type_qualname(tp);
    if (name == NULL) {
        PyErr_Clear();
        sb_puts(sb, "?");
        return;
    }
    put_unicode(sb, name);
    Py_DECREF(name);
}

static void
put_opaque(sbuf *sb, PyObject *v)
{
    sb_puts(sb, "<");
    put_type_name(sb, Py_TYPE(v));
    sb_puts(sb, " object>");
}

static void
put_int(sbuf *sb, PyObject *v)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    char text[32];
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        sb_puts(sb, "<int>");
        return;
    }
    if (!overflow) {
        int n = snprintf(text, sizeof text, "%lld", x);
        if (x > 0 && text_is_card(text, (size_t)n)) {
            sb_puts(sb, "<redacted>");
            return;
        }
        sb_append(sb, text, (size_t)n);
        return;
    }
    if (overflow > 0) {
        /* 19-digit numbers above 2**63 can still be card numbers */
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (!(u == (unsigned long long)-1 && PyErr_Occurred())) {
            int n = snprintf(text, sizeof text, "%llu", u);
            sb_puts(sb, text_is_card(text, (size_t)n) ? "<redacted>" : text);
            return;
        }
        PyErr_Clear();
    }
    PyObject *bits = PyObject_CallMethod(v, "bit_length", NULL);
    long nbits = bits ? PyLong_AsLong(bits) : -1;
    Py_XDECREF(bits);
    if (nbits < 0 || nbits > BIG_INT_BITS) {
        PyErr_Clear();
        snprintf(text, sizeof text, "<int of %ld bits>", nbits);
        sb_puts(sb, text);
        return;
    }
    put_repr(sb, v, PyLong_Type.tp_repr);
}

/* The repr of (at most) the first characters of a str: the work is bounded
 * by the room left, not by the string's length. */
static void
put_str(sbuf *sb, PyObject *v)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(v);
    if (len >= 13 && len <= 40 && PyUnicode_IS_ASCII(v) &&
        text_is_card((const char *)PyUnicode_DATA(v), (size_t)len)) {
        sb_puts(sb, "<redacted>");
        return;
    }
    Py_ssize_t room = (Py_ssize_t)(sb->cap - sb->len);
    PyObject *part = len > room ? PyUnicode_Substring(v, 0, room) : (Py_INCREF(v), v);
    if (part == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<str>");
        return;
    }
    PyObject *r = PyUnicode_Type.tp_repr(part);
    Py_DECREF(part);
    if (r == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<str>");
        return;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(r, &n);
    if (s == NULL) {
        PyErr_Clear();
    } else if (len > room) {
        sb_append(sb, s, n > 0 ? (size_t)n - 1 : 0); /* drop the closing quote: it was cut */
        sb_mark_cut(sb);
    } else {
        sb_append(sb, s, (size_t)n);
    }
    Py_DECREF(r);
}

static void
put_bytes(sbuf *sb, const char *data, Py_ssize_t len, int bytearray)
{
    Py_ssize_t room = (Py_ssize_t)(sb->cap - sb->len);
    Py_ssize_t take = len > room ? room : len;
    PyObject *part = PyBytes_FromStringAndSize(data, take);
    if (part == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<bytes>");
        return;
    }
    PyObject *r = PyBytes_Type.tp_repr(part);
    Py_DECREF(part);
    if (r == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<bytes>");
        return;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(r, &n);
    if (bytearray)
        sb_puts(sb, "bytearray(");
    if (s == NULL) {
        PyErr_Clear();
    } else if (take < len) {
        sb_append(sb, s, n > 0 ? (size_t)n - 1 : 0);
        sb_mark_cut(sb);
    } else {
        sb_append(sb, s, (size_t)n);
        if (bytearray)
            sb_puts(sb, ")");
    }
    Py_DECREF(r);
}

static int
is_container(PyTypeObject *tp)
{
    return tp == &PyList_Type || tp == &PyTuple_Type || tp == &PyDict_Type || tp == &PySet_Type ||
           tp == &PyFrozenSet_Type;
}

/* A nested container is summarised, never walked: depth stays one. */
static void
put_container_summary(sbuf *sb, PyObject *v)
{
    char text[48];
    snprintf(text, sizeof text, " len=%zd>", PyObject_Length(v));
    sb_puts(sb, "<");
    sb_puts(sb, Py_TYPE(v)->tp_name);
    sb_puts(sb, text);
}

static void
put_items_of_iterable(sbuf *sb, PyObject *v)
{
    PyObject *it = PyObject_GetIter(v); /* exact set/frozenset: a C iterator */
    if (it == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *item;
    int i = 0;
    while ((item = PyIter_Next(it)) != NULL) {
        if (i > 0)
            sb_puts(sb, ", ");
        if (i >= CONTAINER_ITEMS_MAX) {
            Py_DECREF(item);
            sb_mark_cut(sb);
            break;
        }
        put_value(sb, item, 1);
        Py_DECREF(item);
        i++;
        if (sb->full)
            break;
    }
    Py_DECREF(it);
    PyErr_Clear();
}

static void
put_container(sbuf *sb, PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    if (tp == &PyList_Type || tp == &PyTuple_Type) {
        int is_list = tp == &PyList_Type;
        sb_puts(sb, is_list ? "[" : "(");
        Py_ssize_t n = is_list ? PyList_GET_SIZE(v) : PyTuple_GET_SIZE(v);
        for (Py_ssize_t i = 0; i < n && !sb->full; i++) {
            if (i > 0)
                sb_puts(sb, ", ");
            if (i >= CONTAINER_ITEMS_MAX) {
                sb_mark_cut(sb);
                break;
            }
            put_value(sb, is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i), 1);
        }
        if (!is_list && n == 1)
            sb_puts(sb, ",");
        sb_puts(sb, is_list ? "]" : ")");
    } else if (tp == &PyDict_Type) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        int i = 0;
        sb_puts(sb, "{");
        while (!sb->full && PyDict_Next(v, &pos, &key, &value)) {
            if (i > 0)
                sb_puts(sb, ", ");
            if (i >= CONTAINER_ITEMS_MAX) {
                sb_mark_cut(sb);
                break;
            }
            put_value(sb, key, 1);
            sb_puts(sb, ": ");
            /* {"password": ...} is redacted like a parameter of that name */
            if (PyUnicode_CheckExact(key) && name_is_sensitive(key))
                sb_puts(sb, "<redacted>");
            else
                put_value(sb, value, 1);
            i++;
        }
        sb_puts(sb, "}");
    } else {
        int frozen = tp == &PyFrozenSet_Type;
        if (PySet_GET_SIZE(v) == 0) {
            sb_puts(sb, frozen ? "frozenset()" : "set()");
            return;
        }
        sb_puts(sb, frozen ? "frozenset({" : "{");
        put_items_of_iterable(sb, v);
        sb_puts(sb, frozen ? "})" : "}");
    }
}

static int
is_safe_repr_type(PyTypeObject *tp)
{
    if (safe_repr_types == NULL)
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(safe_repr_types);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((PyObject *)tp == PyTuple_GET_ITEM(safe_repr_types, i))
            return 1;
    }
    return 0;
}

/* Subclasses of int/float/str (IntEnum, StrEnum, ...): the base type's C
 * repr of the value, under the subclass's name; its own __repr__ is never
 * called. */
static void
put_scalar_subclass(sbuf *sb, PyObject *v, reprfunc base_repr)
{
    put_type_name(sb, Py_TYPE(v));
    sb_puts(sb, "(");
    put_repr(sb, v, base_repr);
    sb_puts(sb, ")");
}

static void
put_value(sbuf *sb, PyObject *v, int depth)
{
    if (v == Py_None) {
        sb_puts(sb, "None");
        return;
    }
    if (v == Py_True || v == Py_False) {
        sb_puts(sb, v == Py_True ? "True" : "False");
        return;
    }
    PyTypeObject *tp = Py_TYPE(v);
    if (tp == &PyLong_Type)
        put_int(sb, v);
    else if (tp == &PyUnicode_Type)
        put_str(sb, v);
    else if (tp == &PyFloat_Type)
        put_repr(sb, v, PyFloat_Type.tp_repr);
    else if (tp == &PyBytes_Type)
        put_bytes(sb, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), 0);
    else if (tp == &PyByteArray_Type)
        put_bytes(sb, PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v), 1);
    else if (is_container(tp))
        depth == 0 ? put_container(sb, v) : put_container_summary(sb, v);
    else if (is_safe_repr_type(tp))
        put_repr(sb, v, tp->tp_repr);
    else if (PyLong_Check(v))
        put_scalar_subclass(sb, v, PyLong_Type.tp_repr);
    else if (PyFloat_Check(v))
        put_scalar_subclass(sb, v, PyFloat_Type.tp_repr);
    else if (PyUnicode_Check(v)) {
        put_type_name(sb, tp);
        sb_puts(sb, "(");
        /* an exact str copy of at most what can be shown */
        Py_ssize_t take = PyUnicode_GET_LENGTH(v);
        if (take > (Py_ssize_t)sb->cap + 1)
            take = (Py_ssize_t)sb->cap + 1;
        PyObject *plain = PyUnicode_Substring(v, 0, take);
        if (plain == NULL)
            PyErr_Clear();
        else {
            put_str(sb, plain);
            Py_DECREF(plain);
        }
        sb_puts(sb, ")");
    } else
        put_opaque(sb, v);
}

/* Format one value into its own bounded slice of a field, then redact the
 * card-number-looking runs inside what was written. */
static void
put_value_redacted(sbuf *field, PyObject *v, size_t budget)
{
    size_t room = field->cap - field->len;
    sbuf sb = {field->buf + field->len, budget < room ? budget : room, 0, 0, 0};
    put_value(&sb, v, 0);
    field->len += redact_card_runs(sb.buf, sb.len);
    field->truncated |= sb.truncated;
}

/* "ValueError: card declined". The message comes from the exception's args
 * (never from a user-defined __str__); builtin exception types whose args
 * are all scalars use their own C __str__ ("[Errno 2] No such file ..."). */
#define EXC_STR_ARG_MAX 4096 /* longer args: their own bounded repr, not str(exc) */

static int
args_are_scalars(PyObject *args)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        PyTypeObject *tp = Py_TYPE(a);
        int overflow = 0;
        if (tp == &PyUnicode_Type) {
            if (PyUnicode_GET_LENGTH(a) > EXC_STR_ARG_MAX)
                return 0;
        } else if (tp == &PyBytes_Type) {
            if (PyBytes_GET_SIZE(a) > EXC_STR_ARG_MAX)
                return 0;
        } else if (tp == &PyLong_Type) {
            PyLong_AsLongLongAndOverflow(a, &overflow);
            if (overflow)
                return 0;
        } else if (!(a == Py_None || tp == &PyBool_Type || tp == &PyFloat_Type)) {
            return 0;
        }
    }
    return 1;
}

static void
put_exception(sbuf *sb, PyObject *type, PyObject *value)
{
    PyObject *name = PyType_Check(type) ? type_name((PyTypeObject *)type) : NULL;
    if (name == NULL) {
        PyErr_Clear();
        sb_puts(sb, "<exception>");
    } else {
        put_unicode(sb, name);
        Py_DECREF(name);
    }
    PyObject *args = NULL;
    if (value != NULL && PyExceptionInstance_Check(value))
        args = ((PyBaseExceptionObject *)value)->args;
    else if (value != NULL && PyTuple_Check(value))
        args = value; /* 3.11: not yet normalised */
    if (value != NULL && PyUnicode_CheckExact(value)) {
        sb_puts(sb, ": ");
        put_unicode(sb, value);
        return;
    }
    if (args == NULL || !PyTuple_Check(args) || PyTuple_GET_SIZE(args) == 0)
        return;
    sb_puts(sb, ": ");
    PyObject *first = PyTuple_GET_ITEM(args, 0);
    if (PyTuple_GET_SIZE(args) == 1 && PyUnicode_CheckExact(first)) {
        put_unicode(sb, first);
        return;
    }
    if (PyExceptionInstance_Check(value) && !(Py_TYPE(value)->tp_flags & Py_TPFLAGS_HEAPTYPE) && args_are_scalars(args)) {
        PyObject *text = PyObject_Str(value);
        if (text != NULL) {
            put_unicode(sb, text);
            Py_DECREF(text);
            return;
        }
        PyErr_Clear();
    }
    put_value(sb, PyTuple_GET_SIZE(args) == 1 ? first : args, 0);
}

/* -------------------------------------------------------------- records */

typedef struct {
    PyObject_HEAD
    PyObject *func;          /* the original callable */
    PyObject *dict;          /* __dict__: functools.update_wrapper metadata */
    PyObject *names;         /* tuple of str: positional parameter names */
    PyObject *redact;        /* bytes: one flag per name */
    PyObject *varargs;       /* str: name of *args, or "" */
    PyObject *weakrefs;      /* functions can be weakly referenced (signal libraries do): so can this */
    PyObject *where_entry;   /* --where (coral/sdk/where.py): reads the arguments before the call, or NULL */
    PyObject *where_return;  /* ... decides at the return, or NULL: where_entry's answer is the verdict */
    unsigned long long fn_id;
    char varargs_redact;
    char capture_args;
    char capture_return;
    char armed;
    unsigned char stack_depth;  /* --stack: Python frames put in each record, at most; 0: none */
    vectorcallfunc vectorcall;
} ProbeWrapper;

static void
capture_for_tests(const struct coral_call *rec)
{
    PyObject *d = Py_BuildValue("{sKsKsKsKsIsy#sy#sy#}", "fn_id", rec->fn_id, "call_id", rec->call_id, "start_ns",
                                rec->start_ns, "end_ns", rec->end_ns, "flags", rec->flags, "args", rec->args,
                                (Py_ssize_t)rec->args_len, "ret", rec->ret, (Py_ssize_t)rec->ret_len, "stack",
                                rec->stack, (Py_ssize_t)rec->stack_len);
    if (d == NULL || test_records == NULL || PyList_Append(test_records, d) < 0)
        PyErr_Clear();
    Py_XDECREF(d);
}

/* One "name=value" entry of the args field. */
static void
put_arg(sbuf *field, const char *name, size_t name_len, PyObject *value, int redacted, size_t budget)
{
    if (field->len > 0)
        sb_append(field, "\0", 1);
    sb_append(field, name, name_len);
    sb_puts(field, "=");
    if (field->full)
        return;
    if (redacted)
        sb_puts(field, "<redacted>");
    else
        put_value_redacted(field, value, budget);
}

static size_t
arg_budget(const sbuf *field, Py_ssize_t left)
{
    size_t room = field->cap - field->len;
    size_t share = left > 0 ? room / (size_t)left : room;
    return share > MIN_ARG_BUDGET ? share : MIN_ARG_BUDGET;
}

/* Arguments as passed: positional ones named after the parameters, extra
 * positional ones as "<varargs>[i]", keyword ones under their own name.
 * Keywords come either as vectorcall kwnames + values or as a dict. */
static void
format_args(ProbeWrapper *w, sbuf *field, PyObject *const *pos, Py_ssize_t npos, PyObject *kwnames,
            PyObject *const *kwvals, PyObject *kwdict)
{
    Py_ssize_t nnames = PyTuple_GET_SIZE(w->names);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : (kwdict ? PyDict_GET_SIZE(kwdict) : 0);
    Py_ssize_t total = npos + nkw;
    const char *flags = PyBytes_AS_STRING(w->redact);
    char name[96];
    for (Py_ssize_t i = 0; i < npos && !field->full; i++) {
        Py_ssize_t n;
        const char *s;
        int redacted;
        if (i < nnames) {
            s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(w->names, i), &n);
            redacted = i < PyBytes_GET_SIZE(w->redact) && flags[i];
        } else {
            const char *va = PyUnicode_AsUTF8AndSize(w->varargs, &n);
            n = snprintf(name, sizeof name, "%s[%zd]", (va && n > 0) ? va : "arg", i - nnames);
            s = name;
            redacted = w->varargs_redact;
        }
        if (s == NULL) {
            PyErr_Clear();
            s = "?";
            n = 1;
        }
        if (n >= (Py_ssize_t)sizeof name)
            n = sizeof name - 1;
        put_arg(field, s, (size_t)n, pos[i], redacted, arg_budget(field, total - i));
    }
    Py_ssize_t k = 0, dpos = 0;
    PyObject *key, *value;
    while (!field->full && k < nkw) {
        if (kwnames) {
            key = PyTuple_GET_ITEM(kwnames, k);
            value = kwvals[k];
        } else if (!PyDict_Next(kwdict, &dpos, &key, &value)) {
            break;
        }
        Py_ssize_t n = 0;
        const char *s = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &n) : NULL;
        if (s == NULL) {
            PyErr_Clear();
            s = "?";
            n = 1;
        }
        put_arg(field, s, (size_t)(n > 96 ? 96 : n), value, name_is_sensitive_utf8(s, (size_t)n),
                arg_budget(field, total - npos - k));
        k++;
    }
}

/* An exception's text may quote an argument whose value was redacted
 * ("bad password hunter2"): each such value (a str, bytes or int of at
 * least SCRUB_MIN bytes as text) is replaced in it by <redacted>, and so is
 * the start of one where the text was cut (a long value, say). Escaped
 * forms (a repr's \n) are not looked for. */
#define SCRUB_MIN 3

static void
scrub_value(sbuf *ret, PyObject *value)
{
    static const char mark[] = "<redacted>";
    const size_t m = sizeof(mark) - 1;
    PyObject *text = NULL;
    const char *secret = NULL;
    Py_ssize_t n = 0;
    if (PyUnicode_CheckExact(value)) {
        secret = PyUnicode_AsUTF8AndSize(value, &n);
    } else if (PyBytes_CheckExact(value)) {
        secret = PyBytes_AS_STRING(value);
        n = PyBytes_GET_SIZE(value);
    } else if (PyLong_CheckExact(value)) {
        text = PyObject_Str(value);
        secret = text ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
    }
    if (secret == NULL) {
        PyErr_Clear();
        Py_XDECREF(text);
        return;
    }
    if ((size_t)n >= SCRUB_MIN) {
        char out[CORAL_RET_MAX];
        size_t o = 0, i = 0;
        while (i < ret->len) {
            /* the whole value, or what is left of it where the text was cut */
            size_t k = ret->len - i < (size_t)n ? ret->len - i : (size_t)n;
            if (k >= SCRUB_MIN && memcmp(ret->buf + i, secret, k) == 0) {
                size_t c = o + m <= sizeof out ? m : sizeof out - o;
                memcpy(out + o, mark, c);
                o += c;
                i += k;
            } else if (o < sizeof out) {
                out[o++] = ret->buf[i++];
            } else {
                break;
            }
        }
        if (o > ret->cap)
            o = ret->cap;
        memcpy(ret->buf, out, o);
        ret->len = o;
    }
    Py_XDECREF(text);
}

static void
scrub_redacted_args(ProbeWrapper *w, sbuf *ret, PyObject *const *pos, Py_ssize_t npos, PyObject *kwnames,
                    PyObject *const *kwvals, PyObject *kwdict)
{
    Py_ssize_t nnames = PyTuple_GET_SIZE(w->names);
    const char *flags = PyBytes_AS_STRING(w->redact);
    for (Py_ssize_t i = 0; i < npos; i++) {
        int redacted = i < nnames ? (i < PyBytes_GET_SIZE(w->redact) && flags[i]) : w->varargs_redact;
        if (redacted)
            scrub_value(ret, pos[i]);
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : (kwdict ? PyDict_GET_SIZE(kwdict) : 0);
    Py_ssize_t k = 0, dpos = 0;
    PyObject *key, *value;
    while (k < nkw) {
        if (kwnames) {
            key = PyTuple_GET_ITEM(kwnames, k);
            value = kwvals[k];
        } else if (!PyDict_Next(kwdict, &dpos, &key, &value)) {
            break;
        }
        Py_ssize_t n = 0;
        const char *s = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &n) : NULL;
        if (s == NULL)
            PyErr_Clear();
        else if (name_is_sensitive_utf8(s, (size_t)n))
            scrub_value(ret, value);
        k++;
    }
}

/* --stack: one frame's line, "qualname\tfile\tline\n", whole or not at all. */
static int
put_frame(sbuf *field, PyCodeObject *code, int line)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *name = code->co_qualname;
#else
    PyObject *name = code->co_name;
#endif
    Py_ssize_t name_len = 0, file_len = 0;
    const char *n = name ? PyUnicode_AsUTF8AndSize(name, &name_len) : NULL;
    const char *f = code->co_filename ? PyUnicode_AsUTF8AndSize(code->co_filename, &file_len) : NULL;
    if (n == NULL || f == NULL) {
        PyErr_Clear();
        n = "?", name_len = 1;
        f = "", file_len = 0;
    }
    char number[16];
    int number_len = snprintf(number, sizeof number, "%d", line);
    if (field->len + (size_t)name_len + (size_t)file_len + (size_t)number_len + 3 > field->cap)
        return 0;
    sb_append(field, n, (size_t)name_len);
    sb_append(field, "\t", 1);
    sb_append(field, f, (size_t)file_len);
    sb_append(field, "\t", 1);
    sb_append(field, number, (size_t)number_len);
    sb_append(field, "\n", 1);
    return 1;
}

/* --stack: the function's own frame (where it is defined: the call has
 * returned), then the Python frames that called it, outward, at most
 * stack_depth in all and what fits in the record; more is marked cut. */
static void
put_stack(ProbeWrapper *w, struct coral_call *rec)
{
    sbuf field = {rec->stack, CORAL_PYSTACK_MAX, 0, 0, 0};
    int depth = 0, cut = 0;
    PyObject *code = PyObject_GetAttrString(w->func, "__code__");
    if (code != NULL && PyCode_Check(code)) {
        PyCodeObject *c = (PyCodeObject *)code;
        depth += put_frame(&field, c, c->co_firstlineno);
    } else {
        PyErr_Clear();
    }
    Py_XDECREF(code);
    PyFrameObject *f = PyEval_GetFrame();  /* the caller's: this wrapper has no Python frame */
    Py_XINCREF(f);
    while (f != NULL) {
        if (depth >= w->stack_depth) {
            cut = 1;
            Py_DECREF(f);
            break;
        }
        PyCodeObject *c = PyFrame_GetCode(f);
        int put = put_frame(&field, c, PyFrame_GetLineNumber(f));
        Py_DECREF(c);
        if (!put) {
            cut = 1;
            Py_DECREF(f);
            break;
        }
        depth++;
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    rec->stack_len = (unsigned int)field.len;
    rec->flags |= CORAL_CALL_STACK | (cut ? CORAL_CALL_STACK_CUT : 0);
}

/* Build the record for one completed call and hand it to the probe site.
 * Must be entered with no exception set; leaves none set. */
static void
emit_record(ProbeWrapper *w, unsigned long long start, unsigned long long end, PyObject *const *pos, Py_ssize_t npos,
            PyObject *kwnames, PyObject *const *kwvals, PyObject *kwdict, PyObject *result, PyObject *exc_type,
            PyObject *exc_value, unsigned int verdict)
{
    struct coral_call rec;
    if (verdict) {
        /* Not shown (--where): the header is all the BPF program reads of it. */
        memset(&rec, 0, offsetof(struct coral_call, args));
        rec.fn_id = w->fn_id;
        rec.call_id = __atomic_add_fetch(&call_counter, 1, __ATOMIC_RELAXED);
        rec.start_ns = start;
        rec.end_ns = end;
        rec.flags = verdict | (exc_type != NULL ? CORAL_CALL_RAISED : 0);
        probe_site(&rec);
        if (test_capture)
            capture_for_tests(&rec);
        return;
    }
    /* all of it: the BPF side copies the whole struct (`stack` only with
     * CORAL_CALL_STACK), stack garbage must not leak into events */
    memset(&rec, 0, w->stack_depth ? sizeof rec : offsetof(struct coral_call, stack));
    rec.fn_id = w->fn_id;
    rec.call_id = __atomic_add_fetch(&call_counter, 1, __ATOMIC_RELAXED);
    rec.start_ns = start;
    rec.end_ns = end;
    int truncated = 0;
    if (w->capture_args) {
        sbuf field = {rec.args, CORAL_ARGS_MAX, 0, 0, 0};
        format_args(w, &field, pos, npos, kwnames, kwvals, kwdict);
        rec.args_len = (unsigned int)field.len;
        truncated |= field.truncated;
    }
    sbuf ret = {rec.ret, CORAL_RET_MAX, 0, 0, 0};
    if (exc_type != NULL) {
        rec.flags |= CORAL_CALL_RAISED;
        put_exception(&ret, exc_type, exc_value);
        scrub_redacted_args(w, &ret, pos, npos, kwnames, kwvals, kwdict);
        ret.len = redact_card_runs(ret.buf, ret.len);
    } else if (w->capture_return) {
        put_value_redacted(&ret, result, CORAL_RET_MAX);
    }
    rec.ret_len = (unsigned int)ret.len;
    truncated |= ret.truncated;
    if (truncated)
        rec.flags |= CORAL_CALL_TRUNCATED;
    if (w->stack_depth)
        put_stack(w, &rec);
    probe_site(&rec);
    if (test_capture)
        capture_for_tests(&rec);
}

/* A verdict from Python (coral/sdk/where.py): 0, CORAL_CALL_FILTERED,
 * CORAL_CALL_WHERE_ERROR or (coral/sdk/countby.py) CORAL_CALL_COUNTED. Anything else, or an exception (which is
 * cleared: a condition never raises into the service), is a where_error. */
static unsigned int
as_verdict(PyObject *v)
{
    if (v == NULL) {
        PyErr_Clear();
        return CORAL_CALL_WHERE_ERROR;
    }
    long x = PyLong_CheckExact(v) ? PyLong_AsLong(v) : -1;
    if (x == -1 && PyErr_Occurred())
        PyErr_Clear();
    return (x == 0 || x == CORAL_CALL_FILTERED || x == CORAL_CALL_WHERE_ERROR || x == CORAL_CALL_COUNTED)
               ? (unsigned int)x : CORAL_CALL_WHERE_ERROR;
}

static inline int
has(PyObject *o)
{
    return o != NULL && o != Py_None;  /* the members are T_OBJECT: Python may set them to None */
}

/* The condition's entry half: the verdict (where_return is NULL), or a new
 * reference to the snapshot where_return decides with (*snapshot). */
static unsigned int
where_at_entry(ProbeWrapper *w, PyObject *const *args, size_t nargsf, PyObject *kwnames, PyObject **snapshot)
{
    *snapshot = NULL;
    if (!has(w->where_entry))
        return 0;
    PyObject *r = PyObject_Vectorcall(w->where_entry, args, nargsf, kwnames);
    if (has(w->where_return) && r != NULL) {
        *snapshot = r;
        return 0;
    }
    unsigned int verdict = as_verdict(r);
    Py_XDECREF(r);
    return verdict;
}

/* The return half, entered with no exception set; leaves none set. */
static unsigned int
where_at_return(ProbeWrapper *w, PyObject *snapshot, PyObject *result, PyObject *exc, unsigned long long duration)
{
    PyObject *d = PyLong_FromUnsignedLongLong(duration);
    if (d == NULL)
        return as_verdict(NULL);
    PyObject *argv[4] = {snapshot ? snapshot : Py_None, result ? result : Py_None, exc ? exc : Py_None, d};
    PyObject *r = PyObject_Vectorcall(w->where_return, argv, 4, NULL);
    Py_DECREF(d);
    unsigned int verdict = as_verdict(r);
    Py_XDECREF(r);
    return verdict;
}

/* Only reached while a tracer is attached: kept out of line so the
 * untraced path stays a load, a compare and a tail call. */
static PyObject *__attribute__((noinline))
traced_call(ProbeWrapper *w, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (!w->armed)
        return PyObject_Vectorcall(w->func, args, nargsf, kwnames);
    PyObject *snapshot;
    /* before the start: the condition's own cost is not in the call's duration */
    unsigned int verdict = where_at_entry(w, args, nargsf, kwnames, &snapshot);
    unsigned long long start = now_ns();
    PyObject *result = PyObject_Vectorcall(w->func, args, nargsf, kwnames);
    unsigned long long end = now_ns();
    Py_ssize_t npos = PyVectorcall_NARGS(nargsf);
    if (result != NULL) {
        if (has(w->where_return) && !verdict)
            verdict = where_at_return(w, snapshot, result, NULL, end - start);
        Py_XDECREF(snapshot);
        emit_record(w, start, end, args, npos, kwnames, args + npos, NULL, result, NULL, NULL, verdict);
        return result;
    }
    /* The original exception goes back exactly as it was, traceback included. */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    if (has(w->where_return) && !verdict)
        verdict = where_at_return(w, snapshot, NULL, exc, end - start);
    Py_XDECREF(snapshot);
    emit_record(w, start, end, args, npos, kwnames, args + npos, NULL, NULL, exc ? (PyObject *)Py_TYPE(exc) : Py_None,
                exc, verdict);
    PyErr_SetRaisedException(exc);
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (has(w->where_return) && !verdict) {
        PyErr_NormalizeException(&type, &value, &tb);
        verdict = where_at_return(w, snapshot, NULL, value, end - start);
    }
    Py_XDECREF(snapshot);
    emit_record(w, start, end, args, npos, kwnames, args + npos, NULL, NULL, type ? type : Py_None, value, verdict);
    PyErr_Restore(type, value, tb);
#endif
    return NULL;
}

static PyObject *
probe_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ProbeWrapper *w = (ProbeWrapper *)self;
    if (__builtin_expect(coral_probe_semaphore_local == 0, 1))
        return PyObject_Vectorcall(w->func, args, nargsf, kwnames);
    return traced_call(w, args, nargsf, kwnames);
}

/* --------------------------------------------------------- ProbeWrapper */

static PyObject *
probe_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"func", "fn_id", "names", "redact", "varargs", "varargs_redact", "capture_args",
                             "capture_return", NULL};
    PyObject *func, *names = NULL, *redact = NULL, *varargs = NULL;
    unsigned long long fn_id = 0;
    int varargs_redact = 0, capture_args = 1, capture_return = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OK|O!O!Up$pp", kwlist, &func, &fn_id, &PyTuple_Type, &names,
                                     &PyBytes_Type, &redact, &varargs, &varargs_redact, &capture_args,
                                     &capture_return))
        return NULL;
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "func must be callable");
        return NULL;
    }
    if (names != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
            if (!PyUnicode_Check(PyTuple_GET_ITEM(names, i))) {
                PyErr_SetString(PyExc_TypeError, "names must be a tuple of str");
                return NULL;
            }
        }
    }
    ProbeWrapper *w = PyObject_GC_New(ProbeWrapper, type);
    if (w == NULL)
        return NULL;
    w->func = Py_NewRef(func);
    w->dict = NULL;
    w->weakrefs = NULL;
    w->where_entry = NULL;
    w->where_return = NULL;
    w->names = names ? Py_NewRef(names) : PyTuple_New(0);
    w->redact = redact ? Py_NewRef(redact) : PyBytes_FromStringAndSize(NULL, 0);
    w->varargs = varargs ? Py_NewRef(varargs) : PyUnicode_FromString("");
    w->fn_id = fn_id;
    w->varargs_redact = (char)varargs_redact;
    w->capture_args = (char)capture_args;
    w->capture_return = (char)capture_return;
    w->armed = 1;
    w->stack_depth = 0;
    w->vectorcall = probe_vectorcall;
    PyObject_GC_Track(w);
    if (w->names == NULL || w->redact == NULL || w->varargs == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static int
probe_traverse(ProbeWrapper *w, visitproc visit, void *arg)
{
    Py_VISIT(w->func);
    Py_VISIT(w->dict);
    Py_VISIT(w->names);
    Py_VISIT(w->redact);
    Py_VISIT(w->varargs);
    Py_VISIT(w->where_entry);
    Py_VISIT(w->where_return);
    return 0;
}

static int
probe_clear(ProbeWrapper *w)
{
    Py_CLEAR(w->func);
    Py_CLEAR(w->dict);
    Py_CLEAR(w->names);
    Py_CLEAR(w->redact);
    Py_CLEAR(w->varargs);
    Py_CLEAR(w->where_entry);
    Py_CLEAR(w->where_return);
    return 0;
}

static void
probe_dealloc(ProbeWrapper *w)
{
    PyObject_GC_UnTrack(w);
    if (w->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)w);
    probe_clear(w);
    PyObject_GC_Del(w);
}

/* A function's descriptor behaviour, so an armed method still binds self. */
static PyObject *
probe_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *
probe_repr(ProbeWrapper *w)
{
    if (w->func != NULL && PyFunction_Check(w->func))
        return PyUnicode_FromFormat("<function %U at %p (armed by coral)>",
                                    ((PyFunctionObject *)w->func)->func_qualname, w->func);
    return PyUnicode_FromFormat("<armed by coral: %R>", w->func);
}

/* Pickle by reference, like a function: pickle looks the qualified name up
 * in __module__ and finds this same object there while it is armed. */
static PyObject *
probe_reduce(ProbeWrapper *w, PyObject *Py_UNUSED(ignored))
{
    PyObject *qualname = w->dict ? PyDict_GetItemString(w->dict, "__qualname__") : NULL;
    if (qualname == NULL || !PyUnicode_Check(qualname)) {
        PyErr_SetString(PyExc_TypeError, "cannot pickle an armed callable without __qualname__");
        return NULL;
    }
    return Py_NewRef(qualname);
}

/* emit(args, kwargs, start_ns, end_ns, result, exc[, verdict]): the record
 * for a call timed in Python (coroutines and generators, whose run is not
 * the call); verdict: what its --where decided (0: show it). */
static PyObject *
probe_emit(ProbeWrapper *w, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long start, end;
    unsigned int verdict = 0;
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "emit(args, kwargs, start_ns, end_ns, result, exc[, verdict])");
        return NULL;
    }
    if (nargs == 7)
        verdict = as_verdict(args[6]);
    PyObject *pos = args[0], *kw = args[1], *result = args[4], *exc = args[5];
    if (!PyTuple_Check(pos) || !(kw == Py_None || PyDict_Check(kw))) {
        PyErr_SetString(PyExc_TypeError, "emit: args must be a tuple and kwargs a dict or None");
        return NULL;
    }
    start = PyLong_AsUnsignedLongLong(args[2]);
    end = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (exc != Py_None && !PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "emit: exc must be an exception or None");
        return NULL;
    }
    if (coral_probe_semaphore_local == 0 || !w->armed)
        Py_RETURN_NONE;
    emit_record(w, start, end, ((PyTupleObject *)pos)->ob_item, PyTuple_GET_SIZE(pos), NULL, NULL,
                kw == Py_None ? NULL : kw, result, exc == Py_None ? NULL : (PyObject *)Py_TYPE(exc),
                exc == Py_None ? NULL : exc, verdict);
    Py_RETURN_NONE;
}

static PyObject *
forward_attr(ProbeWrapper *w, void *name)
{
    return PyObject_GetAttrString(w->func, (const char *)name);
}

static PyGetSetDef probe_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"__code__", (getter)forward_attr, NULL, "the original function's code", "__code__"},
    {"__defaults__", (getter)forward_attr, NULL, "the original function's defaults", "__defaults__"},
    {"__kwdefaults__", (getter)forward_attr, NULL, "the original function's keyword defaults", "__kwdefaults__"},
    {"__globals__", (getter)forward_attr, NULL, "the original function's globals", "__globals__"},
    {"__closure__", (getter)forward_attr, NULL, "the original function's closure", "__closure__"},
    {NULL},
};

static PyMemberDef probe_members[] = {
    {"original", T_OBJECT, offsetof(ProbeWrapper, func), READONLY, "the callable this wrapper calls"},
    {"fn_id", T_ULONGLONG, offsetof(ProbeWrapper, fn_id), 0, "stamped into each record"},
    {"capture_args", T_BOOL, offsetof(ProbeWrapper, capture_args), 0, "record argument reprs"},
    {"capture_return", T_BOOL, offsetof(ProbeWrapper, capture_return), 0, "record the return value's repr"},
    {"armed", T_BOOL, offsetof(ProbeWrapper, armed), 0, "False: a pure pass-through (disarmed)"},
    {"stack_depth", T_UBYTE, offsetof(ProbeWrapper, stack_depth), 0, "--stack: Python frames per record; 0: none"},
    {"where_entry", T_OBJECT, offsetof(ProbeWrapper, where_entry), 0, "--where: reads the arguments (None: no condition)"},
    {"where_return", T_OBJECT, offsetof(ProbeWrapper, where_return), 0, "--where: decides at the return (None: at the entry)"},
    {"__dictoffset__", T_PYSSIZET, offsetof(ProbeWrapper, dict), READONLY},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(ProbeWrapper, vectorcall), READONLY},
    {NULL},
};

static PyMethodDef probe_methods[] = {
    {"emit", (PyCFunction)(void (*)(void))probe_emit, METH_FASTCALL,
     "emit(args, kwargs, start_ns, end_ns, result, exc): record one call timed by the caller"},
    {"__reduce__", (PyCFunction)probe_reduce, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject ProbeWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "coral.sdk._probe.ProbeWrapper",
    .tp_doc = "A function armed by Coral: calls pass through the probe site while a tracer is attached.",
    .tp_basicsize = sizeof(ProbeWrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = probe_new,
    .tp_dealloc = (destructor)probe_dealloc,
    .tp_traverse = (traverseproc)probe_traverse,
    .tp_clear = (inquiry)probe_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ProbeWrapper, vectorcall),
    .tp_descr_get = probe_descr_get,
    .tp_repr = (reprfunc)probe_repr,
    .tp_dictoffset = offsetof(ProbeWrapper, dict),
    .tp_weaklistoffset = offsetof(ProbeWrapper, weakrefs),
    .tp_getset = probe_getset,
    .tp_members = probe_members,
    .tp_methods = probe_methods,
};

/* ------------------------------------------------------- module functions */

static PyObject *
mod_semaphore(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(coral_probe_semaphore_local);
}

static PyObject *
mod_tracing(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(coral_probe_semaphore_local != 0);
}

static PyObject *
mod_set_test_mode(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"semaphore", "capture", NULL};
    int semaphore = 0, capture = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$ip", kwlist, &semaphore, &capture))
        return NULL;
    if (semaphore < 0 || semaphore > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "semaphore must be 0..65535");
        return NULL;
    }
    /* Tests only: the kernel owns this counter while a real probe is attached. */
    coral_probe_semaphore = (unsigned short)semaphore;
    test_capture = capture;
    if (capture && test_records == NULL && (test_records = PyList_New(0)) == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
mod_take_records(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    PyObject *taken = test_records ? test_records : PyList_New(0);
    test_records = PyList_New(0);
    if (test_records == NULL) {
        Py_XDECREF(taken);
        return NULL;
    }
    return taken;
}

static PyObject *
mod_set_redact_patterns(PyObject *module, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "patterns must be a sequence of str");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *patterns = PyTuple_New(n);
    if (patterns == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *lower = PyUnicode_Check(p) ? PyObject_CallMethod(p, "lower", NULL) : NULL;
        PyObject *encoded = lower ? PyUnicode_AsUTF8String(lower) : NULL;
        Py_XDECREF(lower);
        if (encoded == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "patterns must be str");
            Py_DECREF(patterns);
            Py_DECREF(seq);
            return NULL;
        }
        PyTuple_SET_ITEM(patterns, i, encoded);
    }
    Py_DECREF(seq);
    Py_XSETREF(redact_patterns, patterns);
    Py_RETURN_NONE;
}

static PyObject *
mod_redact_patterns(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = PyTuple_GET_SIZE(redact_patterns);
    PyObject *out = PyTuple_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *s = PyUnicode_FromString(PyBytes_AS_STRING(PyTuple_GET_ITEM(redact_patterns, i)));
        if (s == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, s);
    }
    return out;
}

static PyObject *
mod_set_safe_repr_types(PyObject *module, PyObject *arg)
{
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple of types");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(arg); i++) {
        if (!PyType_Check(PyTuple_GET_ITEM(arg, i))) {
            PyErr_SetString(PyExc_TypeError, "expected a tuple of types");
            return NULL;
        }
    }
    Py_XSETREF(safe_repr_types, Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyObject *
mod_safe_repr(PyObject *module, PyObject *arg)
{
    char buf[CORAL_RET_MAX];
    sbuf sb = {buf, sizeof buf, 0, 0, 0};
    put_value_redacted(&sb, arg, sizeof buf);
    return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)sb.len, "replace");
}

/* ------------------------------------------------------ --where reads */

static PyObject *unreadable;                  /* attribute_of's answer for "not read" */
static PyObject *object_getattribute;         /* object.__dict__['__getattribute__'] */
static PyObject *str_getattribute;            /* "__getattribute__", interned */

/* attribute_of(obj, name): obj.name as generic attribute lookup would find
 * it, or UNREADABLE wherever code of the service could run or decide:
 * the type has its own __getattribute__ (a module is read from its
 * dict), the name is a property or another data descriptor other than a
 * slot's member, it is not an instance value and the class has a method
 * or other descriptor under it, or it is nowhere (__getattr__ would
 * answer). Reads class dicts along the MRO and the instance dict, never
 * calls getattr. (An instance whose attributes live in inline values
 * gets its __dict__ made, as vars(obj) would.) */
static PyObject *
mod_attribute_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "attribute_of(obj, name: str)");
        return NULL;
    }
    PyObject *obj = args[0], *name = args[1];
    PyTypeObject *tp = Py_TYPE(obj);
    if (PyModule_CheckExact(obj)) {
        PyObject *d = PyModule_GetDict(obj); /* borrowed */
        PyObject *v = d ? PyDict_GetItemWithError(d, name) : NULL;
        if (v == NULL) {
            PyErr_Clear();
            return Py_NewRef(unreadable);
        }
        return Py_NewRef(v);
    }
    if (_PyType_Lookup(tp, str_getattribute) != object_getattribute)
        return Py_NewRef(unreadable);
    PyObject *found = _PyType_Lookup(tp, name); /* borrowed, no code runs */
    if (found != NULL && Py_TYPE(found)->tp_descr_set != NULL) {
        if (!Py_IS_TYPE(found, &PyMemberDescr_Type))
            return Py_NewRef(unreadable);
        PyObject *v = Py_TYPE(found)->tp_descr_get(found, obj, (PyObject *)tp);
        if (v == NULL) {
            PyErr_Clear(); /* an empty slot */
            return Py_NewRef(unreadable);
        }
        return v;
    }
    PyObject **dictptr = _PyObject_GetDictPtr(obj);
    if (dictptr != NULL && *dictptr != NULL && PyDict_CheckExact(*dictptr)) {
        PyObject *v = PyDict_GetItemWithError(*dictptr, name);
        if (v != NULL)
            return Py_NewRef(v);
    }
    PyErr_Clear();
    if (found != NULL && Py_TYPE(found)->tp_descr_get == NULL)
        return Py_NewRef(found); /* a plain class attribute */
    return Py_NewRef(unreadable);
}

static PyObject *mod_python_layout(PyObject *self, PyObject *unused)
{
    return coral_python_layout();
}

static PyMethodDef module_methods[] = {
    {"python_layout", mod_python_layout, METH_NOARGS,
     "python_layout() -> dict | None: this interpreter's frame layout for the profiler (coral/sdk/_layout.c)"},
    {"attribute_of", (PyCFunction)(void (*)(void))mod_attribute_of, METH_FASTCALL,
     "attribute_of(obj, name) -> the value, or UNREADABLE: read without running code of the object's (--where)"},
    {"semaphore", mod_semaphore, METH_NOARGS, "semaphore() -> int: the probe semaphore's current value"},
    {"tracing", mod_tracing, METH_NOARGS, "tracing() -> bool: a tracer is attached (semaphore > 0)"},
    {"safe_repr", mod_safe_repr, METH_O, "safe_repr(obj) -> str: the bounded, redacted repr a record would carry"},
    {"_set_test_mode", (PyCFunction)(void (*)(void))mod_set_test_mode, METH_VARARGS | METH_KEYWORDS,
     "_set_test_mode(*, semaphore=0, capture=False): tests only; force the semaphore, keep records in memory"},
    {"_take_records", mod_take_records, METH_NOARGS, "_take_records() -> list[dict]: records kept in test mode"},
    {"_set_redact_patterns", mod_set_redact_patterns, METH_O, "the name rule's terms (coral/redact.py Rules.terms)"},
    {"_redact_patterns", mod_redact_patterns, METH_NOARGS, "the patterns in force"},
    {"_set_safe_repr_types", mod_set_safe_repr_types, METH_O, "exact types whose (C) repr may be called"},
    {NULL},
};

static struct PyModuleDef probe_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "coral.sdk._probe",
    .m_doc = "Coral's probe site, semaphore and armed-function wrapper (see coral/sdk/_probe.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__probe(void)
{
    if (PyType_Ready(&ProbeWrapperType) < 0)
        return NULL;
    int npatterns = 0;
    while (default_patterns[npatterns] != NULL)
        npatterns++;
    redact_patterns = PyTuple_New(npatterns);
    safe_repr_types = PyTuple_New(0);
    test_records = PyList_New(0);
    if (redact_patterns == NULL || safe_repr_types == NULL || test_records == NULL)
        return NULL;
    for (int i = 0; i < npatterns; i++) {
        PyObject *p = PyBytes_FromString(default_patterns[i]);
        if (p == NULL)
            return NULL;
        PyTuple_SET_ITEM(redact_patterns, i, p);
    }
    unreadable = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    str_getattribute = PyUnicode_InternFromString("__getattribute__");
    /* borrowed: object's own, for as long as the interpreter runs (tp_dict of a
     * static type is not to be read directly since 3.12) */
    object_getattribute = str_getattribute ? _PyType_Lookup(&PyBaseObject_Type, str_getattribute) : NULL;
    if (unreadable == NULL || object_getattribute == NULL || str_getattribute == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&probe_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "ProbeWrapper", (PyObject *)&ProbeWrapperType) < 0 ||
        PyModule_AddStringConstant(m, "PROBE_SYMBOL", "coral_probe_call") < 0 ||
        PyModule_AddStringConstant(m, "SEMAPHORE_SYMBOL", "coral_probe_semaphore") < 0 ||
        PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(struct coral_call)) < 0 ||
        PyModule_AddIntConstant(m, "ARGS_MAX", CORAL_ARGS_MAX) < 0 ||
        PyModule_AddIntConstant(m, "RET_MAX", CORAL_RET_MAX) < 0 ||
        PyModule_AddIntConstant(m, "STACK_MAX", CORAL_PYSTACK_MAX) < 0 ||
        PyModule_AddIntConstant(m, "CALL_RAISED", CORAL_CALL_RAISED) < 0 ||
        PyModule_AddIntConstant(m, "CALL_TRUNCATED", CORAL_CALL_TRUNCATED) < 0 ||
        PyModule_AddObjectRef(m, "UNREADABLE", unreadable) < 0 ||
        PyModule_AddIntConstant(m, "CALL_FILTERED", CORAL_CALL_FILTERED) < 0 ||
        PyModule_AddIntConstant(m, "CALL_WHERE_ERROR", CORAL_CALL_WHERE_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "CALL_COUNTED", CORAL_CALL_COUNTED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
