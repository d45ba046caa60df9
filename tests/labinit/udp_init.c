/*
 * udp_init.c - /init for a lab of two real 2.6.24 guests (tests/test_lab.py): no libc, raw
 * i386 system calls.  It gives eth0 an address, then either pings over UDP ("ping" on the
 * kernel command line: 10.0.0.1 sends to 10.0.0.2 port 7000, resending after a second
 * without an answer) or echoes ("echo": 10.0.0.2 sends every datagram back), prints what it
 * sent and received on the console, and powers the guest off.
 */
#define AF_INET 2
#define SOCK_DGRAM 2
#define SIOCSIFADDR 0x8916
#define SIOCSIFFLAGS 0x8914
#define IFF_UP 1
#define SOL_SOCKET 1
#define SO_RCVTIMEO 20
#define ROUNDS 3
#define PORT 7000

struct sockaddr_in { unsigned short family, port; unsigned int addr; char zero[8]; };
struct ifreq { char name[16]; union { struct sockaddr_in addr; short flags; char pad[16]; } u; };

static long sys(long n, long a, long b, long c, long d)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d) : "memory");
	return r;
}

static long socketcall(long call, long *args) { return sys(102, call, (long)args, 0, 0); }

static unsigned long len(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }
static void say(const char *s) { sys(4, 1, (long)s, len(s), 0); }

static void say_num(unsigned long v)
{
	char buf[12], *p = buf + sizeof(buf) - 1;
	*p = 0;
	do { *--p = '0' + v % 10; v /= 10; } while (v);
	say(p);
}

static unsigned int ip(unsigned int a, unsigned int b, unsigned int c, unsigned int d)
{
	return a | b << 8 | c << 16 | d << 24; /* network order on a little-endian CPU */
}

static void power_off(void) { sys(88, 0xfee1dead, 672274793, 0x4321fedc, 0); }

void _start(void) __attribute__((noreturn));
void _start_c(int argc, char **argv) __attribute__((noreturn, used));

__asm__(".globl _start\n_start:\n\tmov (%esp), %eax\n\tlea 4(%esp), %ecx\n"
	"\tpush %ecx\n\tpush %eax\n\tcall _start_c\n");

void _start_c(int argc, char **argv)
{
	int ping = argc > 1 && argv[1][0] == 'p';
	struct ifreq ifr = { "eth0" };
	struct sockaddr_in me = { AF_INET, PORT >> 8 | (PORT & 0xff) << 8, 0 }, from;
	struct sockaddr_in peer = { AF_INET, PORT >> 8 | (PORT & 0xff) << 8, ip(10, 0, 0, 2) };
	long timeout[2] = { 1, 0 }, fromlen, args[6], s, n;
	char buf[64], msg[] = "hello 0";
	int round, got = 0;

	args[0] = AF_INET; args[1] = SOCK_DGRAM; args[2] = 0;
	s = socketcall(1, args);
	ifr.u.addr.family = AF_INET;
	ifr.u.addr.addr = ping ? ip(10, 0, 0, 1) : ip(10, 0, 0, 2);
	if (s < 0 || sys(54, s, SIOCSIFADDR, (long)&ifr, 0) < 0) {
		say("udp_init: cannot configure eth0\n");
		power_off();
	}
	ifr.u.flags = IFF_UP;
	sys(54, s, SIOCSIFFLAGS, (long)&ifr, 0);
	args[0] = s; args[1] = (long)&me; args[2] = sizeof(me);
	socketcall(2, args);					/* bind */
	args[0] = s; args[1] = SOL_SOCKET; args[2] = SO_RCVTIMEO;
	args[3] = (long)timeout; args[4] = sizeof(timeout);
	socketcall(14, args);					/* setsockopt */
	say(ping ? "udp_init: ping 10.0.0.1 -> 10.0.0.2\n" : "udp_init: echo 10.0.0.2\n");
	for (round = 0; round < (ping ? 20 : 40) && got < ROUNDS; round++) {
		if (ping) {
			msg[6] = '0' + got;
			args[0] = s; args[1] = (long)msg; args[2] = sizeof(msg); args[3] = 0;
			args[4] = (long)&peer; args[5] = sizeof(peer);
			socketcall(11, args);			/* sendto */
		}
		fromlen = sizeof(from);
		args[0] = s; args[1] = (long)buf; args[2] = sizeof(buf) - 1; args[3] = 0;
		args[4] = (long)&from; args[5] = (long)&fromlen;
		n = socketcall(12, args);			/* recvfrom */
		if (n <= 0)
			continue;
		buf[n] = 0;
		say(ping ? "udp_init: echoed: " : "udp_init: got: ");
		say(buf);
		say(" (");
		say_num(n);
		say(" bytes)\n");
		if (!ping) {
			args[0] = s; args[1] = (long)buf; args[2] = n; args[3] = 0;
			args[4] = (long)&from; args[5] = sizeof(from);
			socketcall(11, args);
		}
		got++;
	}
	say("udp_init: ");
	say_num(got);
	say(" rounds\n");
	power_off();
	for (;;)
		;
}
