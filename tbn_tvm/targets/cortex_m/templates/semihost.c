/* Semihosting calls used by the QEMU firmware (see semihost.h). */
#include "semihost.h"

int32_t tbn_sh_open(const char *name, uint32_t mode)
{
    uint32_t len = 0;
    while (name[len]) len++;
    const uint32_t arg[3] = {(uint32_t)(uintptr_t)name, mode, len};
    return tbn_semihost(TBN_SYS_OPEN, arg);
}

void tbn_sh_close(int32_t handle)
{
    const uint32_t arg[1] = {(uint32_t)handle};
    (void)tbn_semihost(TBN_SYS_CLOSE, arg);
}

int32_t tbn_sh_read(int32_t handle, void *buf, uint32_t len)
{
    const uint32_t arg[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, len};
    return tbn_semihost(TBN_SYS_READ, arg);
}

int32_t tbn_sh_write(int32_t handle, const void *buf, uint32_t len)
{
    const uint32_t arg[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, len};
    return tbn_semihost(TBN_SYS_WRITE, arg);
}

int32_t tbn_sh_flen(int32_t handle)
{
    const uint32_t arg[1] = {(uint32_t)handle};
    return tbn_semihost(TBN_SYS_FLEN, arg);
}

void tbn_sh_write0(const char *text)
{
    (void)tbn_semihost(TBN_SYS_WRITE0, text);
}

void tbn_sh_exit(int status)
{
    const uint32_t arg[2] = {TBN_ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    for (;;) (void)tbn_semihost(TBN_SYS_EXIT_EXTENDED, arg);
}
