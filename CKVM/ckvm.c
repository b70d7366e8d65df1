/* See include/ckvm.h. Constants and thin wrappers only. */
#include "ckvm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

const unsigned long ckvm_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long ckvm_KVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long ckvm_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long ckvm_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long ckvm_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long ckvm_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long ckvm_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
const unsigned long ckvm_KVM_RUN = KVM_RUN;
const unsigned long ckvm_KVM_GET_REGS = KVM_GET_REGS;
const unsigned long ckvm_KVM_SET_REGS = KVM_SET_REGS;
const unsigned long ckvm_KVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long ckvm_KVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long ckvm_KVM_NMI = KVM_NMI;
const unsigned long ckvm_KVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
const unsigned long ckvm_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
const unsigned long ckvm_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
const unsigned long ckvm_KVM_SET_SIGNAL_MASK = KVM_SET_SIGNAL_MASK;

const size_t ckvm_KVM_RUN_EXIT_DATA_OFFSET = offsetof(struct kvm_run, io);
const size_t ckvm_KVM_RUN_SYNC_REGS_OFFSET = offsetof(struct kvm_run, s.regs.regs);
const size_t ckvm_KVM_RUN_SYNC_SREGS_OFFSET = offsetof(struct kvm_run, s.regs.sregs);

const int ckvm_KVM_CAP_SYNC_REGS = KVM_CAP_SYNC_REGS;
const int ckvm_KVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
const int ckvm_KVM_CAP_USER_NMI = KVM_CAP_USER_NMI;
const int ckvm_KVM_CAP_SET_GUEST_DEBUG = KVM_CAP_SET_GUEST_DEBUG;
const uint64_t ckvm_KVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
const uint64_t ckvm_KVM_SYNC_X86_SREGS = KVM_SYNC_X86_SREGS;
const uint64_t ckvm_KVM_SYNC_X86_EVENTS = KVM_SYNC_X86_EVENTS;
const uint32_t ckvm_KVM_INTERNAL_ERROR_EMULATION = KVM_INTERNAL_ERROR_EMULATION;
const uint32_t ckvm_KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES =
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
const uint8_t ckvm_KVM_EXIT_IO_IN = KVM_EXIT_IO_IN;
const uint8_t ckvm_KVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;
const uint32_t ckvm_KVM_GUESTDBG_ENABLE = KVM_GUESTDBG_ENABLE;
const uint32_t ckvm_KVM_GUESTDBG_USE_HW_BP = KVM_GUESTDBG_USE_HW_BP;
const uint32_t ckvm_KVM_GUESTDBG_SINGLESTEP = KVM_GUESTDBG_SINGLESTEP;
const uint32_t ckvm_KVM_VCPUEVENT_VALID_NMI_PENDING = KVM_VCPUEVENT_VALID_NMI_PENDING;
const uint32_t ckvm_KVM_VCPUEVENT_VALID_SHADOW = KVM_VCPUEVENT_VALID_SHADOW;
const uint8_t ckvm_KVM_X86_SHADOW_INT_MOV_SS = KVM_X86_SHADOW_INT_MOV_SS;
const uint8_t ckvm_KVM_X86_SHADOW_INT_STI = KVM_X86_SHADOW_INT_STI;
const int ckvm_O_RDWR_CLOEXEC = O_RDWR | O_CLOEXEC;

int ckvm_open(const char *path, int flags) { return open(path, flags); }
int ckvm_close(int fd) { return close(fd); }
int ckvm_ioctl_none(int fd, unsigned long request) { return ioctl(fd, request, 0); }
int ckvm_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

void *ckvm_mmap_shared(int fd, size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int ckvm_munmap(void *addr, size_t length) { return munmap(addr, length); }
int ckvm_errno(void) { return errno; }

int ckvm_set_signal_mask(int vcpu_fd, const void *blocked) {
    /* struct kvm_signal_mask ends in a flexible array; the buffer holds the header and 8 bytes. */
    union {
        struct kvm_signal_mask header;
        unsigned char bytes[sizeof(struct kvm_signal_mask) + 8];
    } mask;
    memset(&mask, 0, sizeof mask);
    mask.header.len = 8;
    memcpy(mask.bytes + sizeof(struct kvm_signal_mask), blocked, 8);
    return ioctl(vcpu_fd, KVM_SET_SIGNAL_MASK, &mask);
}

void ckvm_kick_store(struct kvm_run *run) {
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void ckvm_kick_clear(struct kvm_run *run) { __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST); }

int ckvm_gettid(void) { return (int)syscall(SYS_gettid); }
int ckvm_tgkill(int tid, int signal) { return (int)syscall(SYS_tgkill, (int)getpid(), tid, signal); }
