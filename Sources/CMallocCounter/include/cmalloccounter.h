/* CMallocCounter: counts heap allocations made by the whole process, for `vmm-harness bench`.
 *
 * Defines malloc, calloc, realloc, free, posix_memalign, aligned_alloc and memalign, each counting
 * (relaxed atomic increment; free is not counted) and forwarding to glibc's __libc_* entry points.
 * Because the definitions live in the executable, they interpose on every library's calls. Linked
 * into the vmm-harness executable only. Every symbol it adds is prefixed cmalloc_.
 */
#ifndef CMALLOCCOUNTER_H
#define CMALLOCCOUNTER_H

#include <stdint.h>

/* Allocation calls (malloc, calloc, realloc, the aligned forms) made so far by any thread. */
uint64_t cmalloc_allocations(void);

/* 1 when the interposer is really in use (a probe malloc was counted), else 0. */
int cmalloc_active(void);

#endif
