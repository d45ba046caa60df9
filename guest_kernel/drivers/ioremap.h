/*
 * ioremap.h - mapping guest-physical memory that is not RAM (the device page and the vrings,
 * which the Launcher puts right after the end of RAM, ABI §1.4) into the kernel's address space.
 */
#ifndef DRIVERS_IOREMAP_H
#define DRIVERS_IOREMAP_H

#include "kernel.h"

/* Map `pages` pages from physical `phys` (page-aligned); NULL when the virtual area is full. */
void *ioremap(u32 phys, unsigned int pages);

/* Remove a mapping made by ioremap (its virtual addresses are not reused). */
void iounmap(void *addr, unsigned int pages);

#endif /* DRIVERS_IOREMAP_H */
