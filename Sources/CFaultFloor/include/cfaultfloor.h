/* CFaultFloor: the fault benchmark's C baseline ("floor").
 *
 * A minimal KVM fault loop with no Swift in it, so the harness's overhead can be reported as a
 * ratio measured in the same run on the same host. It creates its own VM and vCPU, builds a flat
 * 32-bit GDT, an IDT and a TSS in guest memory, and runs
 *
 *     loop: ud2; dec %ecx; jnz loop; hlt
 *
 * at ring 0. #UD goes through the IDT to a stub `pushl $0; pushal; outb %al, $0x86` (the shape of the
 * harness's runtime stubs); the host reads the registers from kvm_run's sync-regs area (or with
 * KVM_GET_REGS where the host lacks KVM_CAP_SYNC_REGS), reads EIP and EFLAGS from the frame,
 * advances EIP past the UD2, pops the frame and resumes. No IRET runs in the guest.
 *
 * Not part of the harness: nothing else uses it. Every symbol is prefixed cfloor_.
 */
#ifndef CFAULTFLOOR_H
#define CFAULTFLOOR_H

#include <stdint.h>

/* Runs `iterations + 1` #UD round trips after `warmup` unmeasured ones and stores the `iterations`
 * intervals between consecutive fault exits, in nanoseconds of CLOCK_MONOTONIC, in `ns_samples`
 * (which must hold `iterations` values). Each interval is one full round trip: host handling,
 * KVM_RUN, the guest's DEC/JNZ/UD2, exception delivery, the stub, the exit.
 *
 * Returns 0 on success, or a negative value; cfloor_last_error() then says what failed (with the
 * errno). `device` is the KVM device path (NULL: /dev/kvm). `used_sync_regs` (may be NULL) receives 1
 * when registers travelled through kvm_run's sync-regs area, 0 when through ioctls. */
int cfloor_run(const char *device, uint64_t warmup, uint64_t iterations, uint64_t *ns_samples,
               int *used_sync_regs);

/* A description of the last failure of cfloor_run on any thread (a static buffer). */
const char *cfloor_last_error(void);

#endif
