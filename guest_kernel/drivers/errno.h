/* errno.h - the error numbers the drivers return, negated as in Linux. */
#ifndef DRIVERS_ERRNO_H
#define DRIVERS_ERRNO_H

#define ENOENT		2
#define EIO		5
#define ENOMEM		12
#define EBUSY		16
#define ENODEV		19
#define EINVAL		22
#define ENOSPC		28
#define ETIMEDOUT	110

#endif /* DRIVERS_ERRNO_H */
