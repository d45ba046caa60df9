/*
 * virtio_console.h - hvc0 over the virtio console (ABI §12.1): output through a vring once the
 * driver has probed, input from one posted page-sized buffer.
 */
#ifndef DRIVERS_VIRTIO_CONSOLE_H
#define DRIVERS_VIRTIO_CONSOLE_H

#include "kernel.h"

/* Is the virtio console probed (console output goes through its vring)? */
bool virtcons_ready(void);

/*
 * hvc's get_chars: copy up to `count` bytes of console input that the Host has returned, 0 if
 * there is none yet.  Never waits: as in 2.6.24 the input queue raises no interrupts and is
 * polled.  The input buffer is posted again once it has been read to the end.
 */
int virtcons_get_chars(char *buf, int count);

/* Has the Host returned an input buffer with 0 bytes in it (its end of input)? */
bool virtcons_input_ended(void);

#endif /* DRIVERS_VIRTIO_CONSOLE_H */
