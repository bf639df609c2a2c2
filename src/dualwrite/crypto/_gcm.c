/* dualwrite.crypto._gcm: a page's column of field ciphertexts opened in one call (optional).
 *
 * The wire format is dualwrite.crypto.cipher's (DESIGN.md section 3):
 *
 *     ciphertext = "v" N ":" nonce(12) AES-256-GCM(plaintext) tag(16)      (N one digit here)
 *     aad        = prefix(version, table, column, len(row_key)) + row_key
 *
 * open_column(versions, cts, row_keys) -> list[str] | None
 *
 *   versions  dict: version digit's byte (ct[1], an int) -> (32-byte key, prefixes), where
 *             prefixes[len(row_key)] is the associated data before the row key (the tuple
 *             FieldCipher.openers gives);
 *   cts       the column's ciphertexts, one per row (bytes), a list or a tuple;
 *   row_keys  the rows' keys (UTF-8 bytes), a list or a tuple of the same length.
 *
 * Returns the decrypted values as str, in order, or None as soon as any value is not the fast
 * path's (not bytes, another header, a version not in `versions`, too short, a failed tag, not
 * UTF-8): the caller then opens that column on its general path, which names the failure. It
 * never answers differently from FieldCipher.decrypt, only sooner: one EVP context per key
 * version for the whole column (the key schedule once), no Python object per step.
 *
 * The plaintext buffer is cleansed before it is freed. The GIL is held (the values become
 * Python objects at once; a page is well under a millisecond).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#include <openssl/core_names.h>
#include <openssl/params.h>
#endif

#define NONCE 12
#define TAG 16
#define HEAD 3
#define DIGITS 10
#define AAD_STACK 512 /* associated data up to this long is passed in one update */

typedef struct {
    EVP_CIPHER_CTX *ctx[DIGITS];
    PyObject *pres[DIGITS]; /* borrowed from `versions`, which the caller holds */
} Keys;

static void keys_free(Keys *k) {
    for (int d = 0; d < DIGITS; d++) {
        EVP_CIPHER_CTX_free(k->ctx[d]); /* frees (and cleanses) the key schedule */
        k->ctx[d] = NULL;
    }
}

/* 0 on success; -1 with a Python exception set (bad `versions`: a caller's bug). */
static int keys_load(Keys *k, PyObject *versions) {
    PyObject *digit, *entry;
    Py_ssize_t pos = 0;
    memset(k, 0, sizeof(*k));
    if (!PyDict_Check(versions)) {
        PyErr_SetString(PyExc_TypeError, "versions must be a dict");
        return -1;
    }
    while (PyDict_Next(versions, &pos, &digit, &entry)) {
        long d = PyLong_Check(digit) ? PyLong_AsLong(digit) - '0' : -1;
        PyObject *key = PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 2
                            ? PyTuple_GET_ITEM(entry, 0) : NULL;
        PyObject *pres = key ? PyTuple_GET_ITEM(entry, 1) : NULL;
        if (d < 1 || d > 9 || !key || !PyBytes_Check(key) || PyBytes_GET_SIZE(key) != 32 ||
            !PyTuple_Check(pres)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError,
                            "versions maps a version digit's byte to (32-byte key, prefixes)");
            return -1;
        }
        k->ctx[d] = EVP_CIPHER_CTX_new();
        if (!k->ctx[d] || EVP_DecryptInit_ex(k->ctx[d], EVP_aes_256_gcm(), NULL,
                                             (const unsigned char *)PyBytes_AS_STRING(key),
                                             NULL) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-256-GCM");
            return -1;
        }
        k->pres[d] = pres;
    }
    return 0;
}

/* The tag, set as OpenSSL 3 does natively (its ctrl call is translated to these params). */
static int set_tag(EVP_CIPHER_CTX *ctx, const unsigned char *tag) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag, TAG),
        OSSL_PARAM_construct_end(),
    };
    return EVP_CIPHER_CTX_set_params(ctx, params);
#else
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)tag);
#endif
}

/* The associated data prefix + row key, in one update when it fits the stack buffer. */
static int put_aad(EVP_CIPHER_CTX *ctx, PyObject *pre, PyObject *rk) {
    const char *p = PyBytes_AS_STRING(pre), *r = PyBytes_AS_STRING(rk);
    Py_ssize_t plen = PyBytes_GET_SIZE(pre), rlen = PyBytes_GET_SIZE(rk);
    unsigned char joined[AAD_STACK];
    int outl = 0;
    if (plen + rlen <= AAD_STACK) {
        memcpy(joined, p, (size_t)plen);
        memcpy(joined + plen, r, (size_t)rlen);
        return EVP_DecryptUpdate(ctx, NULL, &outl, joined, (int)(plen + rlen));
    }
    return EVP_DecryptUpdate(ctx, NULL, &outl, (const unsigned char *)p, (int)plen) == 1 &&
                   EVP_DecryptUpdate(ctx, NULL, &outl, (const unsigned char *)r, (int)rlen) == 1
               ? 1
               : 0;
}

/* The plaintext of one value into buf (capacity >= its length), or -1 if it does not open. */
static Py_ssize_t open_one(Keys *k, PyObject *ct, PyObject *rk, unsigned char *buf) {
    const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(ct);
    Py_ssize_t n = PyBytes_GET_SIZE(ct), rklen = PyBytes_GET_SIZE(rk), body = n - HEAD - NONCE - TAG;
    int d = c[1] - '0', outl = 0, fin = 0;
    if (body < 0 || n > INT_MAX || rklen > INT_MAX || c[0] != 'v' || c[2] != ':' || d < 1 ||
        d > 9 || !k->ctx[d] || rklen >= PyTuple_GET_SIZE(k->pres[d]))
        return -1;
    PyObject *pre = PyTuple_GET_ITEM(k->pres[d], rklen);
    if (!PyBytes_Check(pre) || PyBytes_GET_SIZE(pre) > INT_MAX)
        return -1;
    EVP_CIPHER_CTX *ctx = k->ctx[d];
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, c + HEAD) != 1 || put_aad(ctx, pre, rk) != 1 ||
        EVP_DecryptUpdate(ctx, buf, &outl, c + HEAD + NONCE, (int)body) != 1 ||
        set_tag(ctx, c + n - TAG) != 1 || EVP_DecryptFinal_ex(ctx, buf + outl, &fin) != 1)
        return -1;
    return (Py_ssize_t)outl + fin;
}

static PyObject *open_column(PyObject *self, PyObject *args) {
    PyObject *versions, *cts_in, *rks_in, *cts = NULL, *rks = NULL, *out = NULL, *result = NULL;
    unsigned char *buf = NULL;
    Py_ssize_t cap = 0;
    Keys keys;
    (void)self;
    memset(&keys, 0, sizeof(keys));
    if (!PyArg_ParseTuple(args, "OOO:open_column", &versions, &cts_in, &rks_in))
        return NULL;
    if (!(PyList_Check(cts_in) || PyTuple_Check(cts_in)) ||
        !(PyList_Check(rks_in) || PyTuple_Check(rks_in))) {
        PyErr_SetString(PyExc_TypeError, "cts and row_keys must be lists or tuples");
        return NULL;
    }
    if (!(cts = PySequence_Fast(cts_in, "cts")) || !(rks = PySequence_Fast(rks_in, "row_keys")))
        goto done;
    if (PySequence_Fast_GET_SIZE(cts) != PySequence_Fast_GET_SIZE(rks)) {
        PyErr_SetString(PyExc_ValueError, "cts and row_keys differ in length");
        goto done;
    }
    if (keys_load(&keys, versions) < 0)
        goto done;
    Py_ssize_t rows = PySequence_Fast_GET_SIZE(cts);
    if (!(out = PyList_New(rows)))
        goto done;
    for (Py_ssize_t i = 0; i < rows; i++) {
        PyObject *ct = PySequence_Fast_GET_ITEM(cts, i), *rk = PySequence_Fast_GET_ITEM(rks, i);
        PyObject *text;
        if (!PyBytes_Check(ct) || !PyBytes_Check(rk))
            goto miss;
        Py_ssize_t need = PyBytes_GET_SIZE(ct), got;
        if (need > cap) {
            if (buf) {
                OPENSSL_cleanse(buf, (size_t)cap);
                PyMem_Free(buf);
            }
            cap = need < 1024 ? 1024 : need;
            if (!(buf = PyMem_Malloc((size_t)cap))) {
                cap = 0;
                PyErr_NoMemory();
                goto done;
            }
        }
        if ((got = open_one(&keys, ct, rk, buf)) < 0)
            goto miss;
        if (!(text = PyUnicode_DecodeUTF8((const char *)buf, got, "strict"))) {
            PyErr_Clear();
            goto miss;
        }
        PyList_SET_ITEM(out, i, text);
    }
    result = out;
    out = NULL;
    goto done;
miss:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    Py_XDECREF(out);
    Py_XDECREF(cts);
    Py_XDECREF(rks);
    if (buf) {
        OPENSSL_cleanse(buf, (size_t)cap);
        PyMem_Free(buf);
    }
    keys_free(&keys);
    return result;
}

static PyMethodDef methods[] = {
    {"open_column", open_column, METH_VARARGS,
     "open_column(versions, cts, row_keys) -> list[str] | None: a column of ciphertexts "
     "opened at once, or None if any value is not the fast path's."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gcm", "A page's column of field ciphertexts opened in one call.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gcm(void) { return PyModule_Create(&module); }
