/* victim: runs libvictim's modular exponentiation forever, with a short
 * pause now and then, like a TLS server signing requests. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

uint64_t victim_modexp(uint64_t base, uint64_t exp, uint64_t mod);

int main(void)
{
	uint64_t acc = 3, key = 0xb3a5c7e9f1d20847ULL;
	printf("victim: pid %d\n", getpid());
	fflush(stdout);
	for (unsigned long n = 0;; n++) {
		acc = victim_modexp(acc | 2, key ^ n, 0xffffffffffffffc5ULL);
		if (n % 4096 == 0)
			usleep(1000);
	}
	return (int)acc;
}
