/* CKVM: the only C in VMMHarness.
 *
 * It re-exports <linux/kvm.h> and turns the ioctl request macros the project uses into real
 * constants (Swift cannot import function-like macros), plus fixed-arity wrappers around the
 * variadic ioctl(2), mmap(2) and friends. No logic lives here: every decision is made in Swift.
 * Every symbol is prefixed ckvm_.
 */
#ifndef CKVM_H
#define CKVM_H

#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>

/* System ioctls (on /dev/kvm). */
extern const unsigned long ckvm_KVM_GET_API_VERSION;
extern const unsigned long ckvm_KVM_CREATE_VM;
extern const unsigned long ckvm_KVM_CHECK_EXTENSION;
extern const unsigned long ckvm_KVM_GET_VCPU_MMAP_SIZE;
/* VM ioctls. */
extern const unsigned long ckvm_KVM_CREATE_VCPU;
extern const unsigned long ckvm_KVM_SET_USER_MEMORY_REGION;
extern const unsigned long ckvm_KVM_SET_TSS_ADDR;
/* vCPU ioctls. */
extern const unsigned long ckvm_KVM_RUN;
extern const unsigned long ckvm_KVM_GET_REGS;
extern const unsigned long ckvm_KVM_SET_REGS;
extern const unsigned long ckvm_KVM_GET_SREGS;
extern const unsigned long ckvm_KVM_SET_SREGS;
extern const unsigned long ckvm_KVM_NMI;
extern const unsigned long ckvm_KVM_SET_GUEST_DEBUG;
extern const unsigned long ckvm_KVM_GET_VCPU_EVENTS;
extern const unsigned long ckvm_KVM_SET_VCPU_EVENTS;
extern const unsigned long ckvm_KVM_SET_SIGNAL_MASK;

/* Byte offsets inside struct kvm_run (its exit-data union and the sync-regs area are unions,
 * which Swift imports as computed properties, so their addresses are taken from here). */
extern const size_t ckvm_KVM_RUN_EXIT_DATA_OFFSET;
extern const size_t ckvm_KVM_RUN_SYNC_REGS_OFFSET;
extern const size_t ckvm_KVM_RUN_SYNC_SREGS_OFFSET;

/* Capabilities and flags used by the project (plain enums in kvm.h import fine; these are macros). */
extern const int ckvm_KVM_CAP_SYNC_REGS;
extern const int ckvm_KVM_CAP_IMMEDIATE_EXIT;
extern const int ckvm_KVM_CAP_USER_NMI;
extern const int ckvm_KVM_CAP_SET_GUEST_DEBUG;
extern const uint64_t ckvm_KVM_SYNC_X86_REGS;
extern const uint64_t ckvm_KVM_SYNC_X86_SREGS;
extern const uint64_t ckvm_KVM_SYNC_X86_EVENTS;
extern const uint32_t ckvm_KVM_INTERNAL_ERROR_EMULATION;
extern const uint32_t ckvm_KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
extern const uint8_t ckvm_KVM_EXIT_IO_IN;
extern const uint8_t ckvm_KVM_EXIT_IO_OUT;
extern const uint32_t ckvm_KVM_GUESTDBG_ENABLE;
extern const uint32_t ckvm_KVM_GUESTDBG_USE_HW_BP;
extern const uint32_t ckvm_KVM_GUESTDBG_SINGLESTEP;
extern const uint32_t ckvm_KVM_VCPUEVENT_VALID_NMI_PENDING;
extern const uint32_t ckvm_KVM_VCPUEVENT_VALID_SHADOW;
extern const uint8_t ckvm_KVM_X86_SHADOW_INT_MOV_SS;
extern const uint8_t ckvm_KVM_X86_SHADOW_INT_STI;

/* Fixed-arity wrappers. Each returns what the syscall returns (-1 with errno set on failure). */
int ckvm_open(const char *path, int flags);
int ckvm_close(int fd);
int ckvm_ioctl_none(int fd, unsigned long request);
int ckvm_ioctl_int(int fd, unsigned long request, unsigned long arg);
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg);
void *ckvm_mmap_shared(int fd, size_t length);
int ckvm_munmap(void *addr, size_t length);
int ckvm_errno(void);

/* KVM_SET_SIGNAL_MASK with `blocked` (a C library sigset_t) as the signals blocked while KVM_RUN
 * runs. Builds the variable-length struct kvm_signal_mask (len = 8, the kernel's sigset size on
 * x86-64) from the first 8 bytes of the sigset_t. Declared with void * so that this header does
 * not pull <signal.h> into the CKVM module (Swift would then see two owners of SIGUSR2 & co.). */
int ckvm_set_signal_mask(int vcpu_fd, const void *blocked);

/* kvm_run.immediate_exit, stored atomically (sequentially consistent, then a full fence) because
 * another thread sets it while the vCPU thread may be entering KVM_RUN. */
void ckvm_kick_store(struct kvm_run *run);
void ckvm_kick_clear(struct kvm_run *run);

/* The calling thread's kernel thread id (gettid(2)), and tgkill(2) to a thread of this process. */
int ckvm_gettid(void);
int ckvm_tgkill(int tid, int signal);

/* Flags for ckvm_open. */
extern const int ckvm_O_RDWR_CLOEXEC;

#endif
