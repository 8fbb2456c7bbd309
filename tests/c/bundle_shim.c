/* The manifest reader's number parser, callable from the host tests (ctypes). */
#include "bundle.c"

int shim_real(const char *text, size_t len, float *out)
{
    span v = {text, text + len};
    return real(v, out);
}
