/*
 * cpuid.c - "lgemu.test=cpuid": the processor the guest is told it runs on.
 *
 * lgemu answers `cpuid` and `rdtsc` itself so a run never depends on the host machine: the
 * vendor is "GenuineIntel", the family 6, every answer is the same each time, and the TSC
 * counts virtual CPU cycles - strictly increasing, and the same count for the same code.
 * The answers are printed so that comparing two runs' output compares them too.
 */
#include "ktest.h"
#include "tests.h"

struct cpuid_regs {
	u32 eax, ebx, ecx, edx;
};

static struct cpuid_regs cpuid(u32 leaf)
{
	struct cpuid_regs r;

	__asm__ __volatile__("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
			     : "a"(leaf), "c"(0));
	return r;
}

static const u32 leaves[] = { 0, 1, 0x80000000, 0x80000002, 0x80000003, 0x80000004 };

static void test_identity(void)
{
	struct cpuid_regs r0 = cpuid(0), r1 = cpuid(1), rx = cpuid(0x80000000);
	char vendor[13], brand[49];
	unsigned int i, differ = 0;

	memcpy(vendor, &r0.ebx, 4);
	memcpy(vendor + 4, &r0.edx, 4);
	memcpy(vendor + 8, &r0.ecx, 4);
	vendor[12] = '\0';
	printk("cpuid: vendor \"%s\", max leaf %#x, leaf 1 %08x %08x %08x %08x\n", vendor,
	       r0.eax, r1.eax, r1.ebx, r1.ecx, r1.edx);
	check(!strcmp(vendor, "GenuineIntel") && r0.eax >= 1, "cpuid.vendor",
	      "vendor \"%s\", max leaf %#x", vendor, r0.eax);
	check(((r1.eax >> 8) & 0xF) == 6, "cpuid.family6", "leaf 1 EAX %#x: family %u",
	      r1.eax, (r1.eax >> 8) & 0xF);

	if (rx.eax >= 0x80000004) {
		for (i = 0; i < 3; i++) {
			struct cpuid_regs b = cpuid(0x80000002 + i);

			memcpy(brand + 16 * i, &b, 16);
		}
		brand[48] = '\0';
		printk("cpuid: brand \"%s\"\n", brand);
	}

	for (i = 0; i < ARRAY_SIZE(leaves); i++) {
		struct cpuid_regs a = cpuid(leaves[i]);
		unsigned int k;

		for (k = 0; k < 50; k++) {
			struct cpuid_regs b = cpuid(leaves[i]);

			if (memcmp(&a, &b, sizeof(a)))
				differ++;
		}
	}
	check(!differ, "cpuid.same_answer", "%u of %u repeated cpuid answers differed", differ,
	      50 * (unsigned int)ARRAY_SIZE(leaves));
}

static u64 tsc_around_spin(u32 iterations)
{
	u64 t0, t1;

	t0 = rdtsc();
	spin(iterations);
	t1 = rdtsc();
	return t1 - t0;
}

static void test_tsc(void)
{
	u64 prev = rdtsc(), d1, d2, d3;
	unsigned int i, backwards = 0;

	for (i = 0; i < 1000; i++) {
		u64 now = rdtsc();

		if (now <= prev)
			backwards++;
		prev = now;
	}
	check(!backwards, "cpuid.rdtsc_monotonic", "%u of 1000 readings not above the one before",
	      backwards);

	/* One count per virtual cycle: the same code costs the same count every time, and a
	 * loop of 2000 instructions costs 2000 and a little. */
	d1 = tsc_around_spin(1000);
	d2 = tsc_around_spin(1000);
	d3 = tsc_around_spin(2000);
	printk("cpuid: rdtsc around 2000, 2000 and 4000 instructions: %llu %llu %llu\n", d1, d2, d3);
	check(d1 == d2 && d1 >= 2000 && d1 <= 2100 && d3 - d1 == 2000,
	      "cpuid.rdtsc_deterministic", "deltas %llu, %llu, %llu", d1, d2, d3);
}

void test_cpuid(void)
{
	ktest_begin("cpuid");
	test_identity();
	test_tsc();
	ktest_end();
}
