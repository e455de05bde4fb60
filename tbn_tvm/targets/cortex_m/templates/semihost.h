/* ARM semihosting (the host debugger or QEMU performs I/O for the target), freestanding.
 * A call is "r0 = operation, r1 = argument block; bkpt 0xAB".  Needs QEMU's
 * -semihosting-config enable=on,target=native or an attached debugger: on a bare board without
 * one, bkpt faults. */
#ifndef TBN_SEMIHOST_H
#define TBN_SEMIHOST_H

#include <stdint.h>

#define TBN_SYS_OPEN 0x01u
#define TBN_SYS_CLOSE 0x02u
#define TBN_SYS_WRITE0 0x04u
#define TBN_SYS_WRITE 0x05u
#define TBN_SYS_READ 0x06u
#define TBN_SYS_FLEN 0x0Cu
#define TBN_SYS_EXIT_EXTENDED 0x20u
#define TBN_ADP_STOPPED_APPLICATION_EXIT 0x20026u

#define TBN_OPEN_RB 1u /* fopen mode "rb" */
#define TBN_OPEN_WB 5u /* fopen mode "wb" */

static inline int32_t tbn_semihost(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

int32_t tbn_sh_open(const char *name, uint32_t mode);          /* handle, or -1 */
void tbn_sh_close(int32_t handle);
int32_t tbn_sh_read(int32_t handle, void *buf, uint32_t len);   /* 0 when all len bytes were read */
int32_t tbn_sh_write(int32_t handle, const void *buf, uint32_t len); /* 0 when all were written */
int32_t tbn_sh_flen(int32_t handle);
void tbn_sh_write0(const char *text); /* to QEMU's stderr */
void tbn_sh_exit(int status) __attribute__((noreturn));

#endif /* TBN_SEMIHOST_H */
